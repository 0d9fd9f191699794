"""The mapping language: how rows of any relation become batches.

A plain table needs none of this. A job framework's table may need a
SELECT instead of a table, columns read through fallback chains or JSON
paths, statuses derived by rules, epoch timestamps, and roles that are
meaningful only for some statuses. These are the settings for that; the
store compiles them to SQL when it binds (``_relation.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CONDITION_OPS",
    "TIME_ENCODINGS",
    "Condition",
    "JsonPath",
    "RoleSource",
    "RowMapping",
    "StatusRule",
]

CONDITION_OPS = (
    "is_null",
    "not_null",
    "eq",
    "ne",
    "gt",
    "ge",
    "lt",
    "le",
    "in",
    "not_in",
    "starts_with",
    "is_true",
    "is_false",
    "past",
    "future",
    "any",
)
TIME_ENCODINGS = (
    "auto",
    "aware",
    "naive",
    "epoch_s",
    "epoch_ms",
    "epoch_float",
)


@dataclass(frozen=True)
class JsonPath:
    """A value inside a JSON column: ``{ json = "params", path = ["a"] }``."""

    column: str
    path: tuple[str, ...]


# Where a role's value comes from: a column, a fallback chain (the first
# non-NULL of several columns) or a path into a JSON column.
RoleSource = str | tuple[str, ...] | JsonPath


@dataclass(frozen=True)
class Condition:
    """One test on a row, as in ``filter`` and ``status_rules``.

    ``op`` is one of CONDITION_OPS; ``value`` is the literal compared with,
    ``other`` a second column. ``any_of`` (with ``op = "any"``) is an OR
    of AND-groups.
    """

    op: str
    column: RoleSource | None = None
    value: Any = None
    other: str | None = None
    any_of: tuple[tuple[Condition, ...], ...] = ()


@dataclass(frozen=True)
class StatusRule:
    """A canonical status given to rows where every condition holds."""

    name: str
    status: str
    when: tuple[Condition, ...]


@dataclass(frozen=True)
class RowMapping:
    """How rows of a relation become batches, beyond plain columns.

    Everything here is optional: a plain ``table`` with a status column
    needs none of it. ``query`` (per dialect, ``""`` for any) replaces the
    table by a read-only SELECT; ``parameters`` are the ``{name}``
    placeholders of a preset's table or query as (kind, value) pairs.
    """

    query: Mapping[str, str] = field(default_factory=dict)
    parameters: Mapping[str, tuple[str, str | None]] = field(
        default_factory=dict
    )
    filter: tuple[Condition, ...] = ()
    status_rules: tuple[StatusRule, ...] = ()
    default_status: str | None = None
    optional_roles: frozenset[str] = frozenset()
    window_by: str = "started_at"
    only_when: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    finish_optional_for: tuple[str, ...] = ()
    time_encoding: str = "auto"
    column_encodings: Mapping[str, str] = field(default_factory=dict)
    unavailable: Mapping[str, str] = field(default_factory=dict)
    preset: str | None = None
    # "writer_local": naive times are in the writing program's zone, so the
    # store's timezone must be set (check warns while it is UTC).
    zone_hint: str | None = None

    @property
    def read_only(self) -> bool:
        """True when writes (stuck actions) must never touch the rows."""
        return self.preset is not None or bool(self.query)

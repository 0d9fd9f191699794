"""Settings: loaded from a TOML file and ``OTEL_BATCHMON_*`` variables.

Every problem is collected and raised together in one ConfigError, each
naming where it is, what was found and what to write instead.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from otel_batchmon.errors import ConfigError
from otel_batchmon.mapping import (
    Condition,
    JsonPath,
    RoleSource,
    RowMapping,
    StatusRule,
)

__all__ = [
    "CANONICAL_STATUSES",
    "COLUMN_ROLES",
    "ColumnMap",
    "Condition",
    "JsonPath",
    "MonitorConfig",
    "RowMapping",
    "StatusRule",
    "StoreConfig",
    "load_config",
    "parse_config",
]

ENV_PREFIX = "OTEL_BATCHMON_"
ENV_CONFIG_FILE = "OTEL_BATCHMON_CONFIG"

CANONICAL_STATUSES = ("pending", "processing", "completed", "failed")
REQUIRED_ROLES = ("id", "status", "started_at", "finished_at")
OPTIONAL_ROLES = (
    "queued_at",
    "records_total",
    "records_failed",
    "kind",
    "error",
    "due_at",
    "heartbeat_at",
)
COLUMN_ROLES = REQUIRED_ROLES + OPTIONAL_ROLES
TIME_ROLES = (
    "queued_at",
    "started_at",
    "finished_at",
    "due_at",
    "heartbeat_at",
)
# Roles a mapping may leave out ("") although a plain table needs them: the
# status when status_rules decide it, the start when the table has none.
DISPENSABLE_ROLES = ("status", "started_at")
# Column names of the table `otel-batchmon init-db` creates; due_at and
# heartbeat_at are not among them, so they are used only when mapped.
DEFAULT_COLUMNS: dict[str, str] = {
    role: role
    for role in COLUMN_ROLES
    if role not in ("due_at", "heartbeat_at")
} | {"queued_at": "created_at"}

STORE_KEYS = (
    "name",
    "database_url",
    "table",
    "query",
    "preset",
    "preset_parameters",
    "preset_rules",
    "filter",
    "columns",
    "optional_roles",
    "statuses",
    "null_status",
    "status_rules",
    "default_status",
    "stuck_statuses",
    "window_by",
    "only_when",
    "finish_optional_for",
    "timestamps",
    "unavailable",
    "window",
    "stuck_after",
    "timezone",
    "stuck_after_by_kind",
    "no_success_within",
    "failure_streak",
    "renotify_every",
    "stuck",
)
MONITOR_KEYS = (
    "refresh_interval",
    "refresh_mode",
    "reconcile_every",
    "stale_after",
    "statement_timeout",
    "connect_timeout",
    "clock_offset",
    "shutdown_timeout",
    "stores",
    "state_url",
    "state_table_prefix",
    "events",
    "settle_lag",
    "backfill",
    "event_page_size",
    "compat_names",
    "leader_election",
    "health_address",
)


@dataclass(frozen=True)
class ColumnMap:
    """Which column of the table plays which role; None means absent.

    ``explicit`` holds the roles the user named, which must exist; the
    other optional roles are used only when the table has that column.
    ``sources`` holds the roles read from a fallback chain or a JSON path;
    their plain-name field is None.
    """

    id: str | None
    status: str | None
    started_at: str | None
    finished_at: str | None
    queued_at: str | None = None
    records_total: str | None = None
    records_failed: str | None = None
    kind: str | None = None
    error: str | None = None
    due_at: str | None = None
    heartbeat_at: str | None = None
    explicit: frozenset[str] = frozenset()
    sources: Mapping[str, RoleSource] = field(default_factory=dict)

    def get(self, role: str) -> str | None:
        """Return the plain column mapped to ``role``, if it is one."""
        value: str | None = getattr(self, role)
        return value

    def source(self, role: str) -> RoleSource | None:
        """Return where ``role`` is read from, or None when it is off."""
        return self.sources.get(role) or self.get(role)


@dataclass(frozen=True)
class AlertConfig:
    """When a store's incidents open, and what may be done about them.

    ``stuck_action = "fail"`` marks batches stuck past
    ``stuck_action_after_seconds`` as failed; with ``stuck_action_dry_run``
    (the default) it only says what it would change.
    """

    stuck_after_by_kind: Mapping[str, float] = field(default_factory=dict)
    no_success_within_seconds: float | None = None
    failure_streak: int = 0
    renotify_every_seconds: float | None = None
    stuck_action: str = "none"
    stuck_action_after_seconds: float | None = None
    stuck_action_dry_run: bool = True


@dataclass(frozen=True)
class StoreConfig:
    """One monitored batch table and how to read it."""

    name: str
    database_url: str
    table: str
    schema: str | None = None
    columns: ColumnMap = field(
        default_factory=lambda: ColumnMap(
            id="id",
            status="status",
            started_at="started_at",
            finished_at="finished_at",
        )
    )
    statuses: Mapping[str, tuple[str | int, ...]] = field(
        default_factory=lambda: {s: (s,) for s in CANONICAL_STATUSES}
    )
    stuck_statuses: tuple[str, ...] = ("processing",)
    window_seconds: float = 24 * 3600.0
    stuck_after_seconds: float = 4 * 3600.0
    timezone: str = "UTC"
    alerts: AlertConfig = field(default_factory=lambda: AlertConfig())
    mapping: RowMapping = field(default_factory=lambda: RowMapping())

    @property
    def qualified_table(self) -> str:
        """The table name as a user writes it, schema included."""
        if not self.table and self.mapping.query:
            preset = self.mapping.preset
            return f"(query of preset {preset})" if preset else "(query)"
        return f"{self.schema}.{self.table}" if self.schema else self.table


@dataclass(frozen=True)
class MonitorConfig:
    """Everything the monitor needs: stores and the refresh schedule."""

    stores: tuple[StoreConfig, ...]
    refresh_interval_seconds: float = 30.0
    # "incremental" keeps the window in memory and reads what changed,
    # with a full read every reconcile_every_seconds; "full" reads the
    # whole window each time.
    refresh_mode: str = "full"
    reconcile_every_seconds: float = 600.0
    stale_after_seconds: float = 90.0
    statement_timeout_seconds: float = 10.0
    connect_timeout_seconds: float = 10.0
    clock_offset_seconds: float = 0.0
    shutdown_timeout_seconds: float = 10.0
    # The monitor's own tables; None means each store's database_url.
    state_url: str | None = None
    state_table_prefix: str = "batchmon_"
    events: bool = True
    settle_lag_seconds: float = 30.0
    backfill_seconds: float = 0.0
    event_page_size: int = 1000
    compat_names: bool = False
    # None lets the caller decide: `run` and the instrumentor elect a
    # leader (replicas are likely), a library monitor and `--once` do not.
    leader_election: bool | None = None
    # (host, port) of the /livez and /readyz endpoint; None serves none.
    health_address: tuple[str, int] | None = None


def load_config(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> MonitorConfig:
    """Read the TOML file (if any), overlay the environment, validate.

    ``path`` defaults to ``$OTEL_BATCHMON_CONFIG``; with neither, only the
    environment is read.
    """
    env = os.environ if environ is None else environ
    path = path or env.get(ENV_CONFIG_FILE) or None
    data: dict[str, Any] = _read_toml(Path(path)) if path else {}
    problems: list[str] = []
    from_env = _environment_overlay(env, problems)
    if from_env:
        data = _merge_environment(data, from_env, problems)
    return parse_config(data, problems)


def parse_config(
    data: Mapping[str, Any], problems: list[str] | None = None
) -> MonitorConfig:
    """Validate a mapping shaped like the TOML file into a MonitorConfig."""
    from otel_batchmon._config_reader import Reader

    found = [] if problems is None else problems
    config = Reader(found).monitor(data)
    if found or config is None:
        raise ConfigError(found)
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(
            [f"config file {str(path)!r} does not exist"]
        ) from None
    except OSError as exc:
        raise ConfigError(
            [f"config file {str(path)!r} cannot be read: {exc.strerror}"]
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            [f"config file {str(path)!r} is not valid TOML: {exc}"]
        ) from None


def _environment_overlay(
    env: Mapping[str, str], problems: list[str]
) -> dict[str, Any]:
    """Turn OTEL_BATCHMON_A__B=v into {"a": {"b": "v"}}."""
    overlay: dict[str, Any] = {}
    for variable in sorted(env):
        if not variable.startswith(ENV_PREFIX) or variable == ENV_CONFIG_FILE:
            continue
        path = variable[len(ENV_PREFIX) :].lower().split("__")
        if not all(path):
            problems.append(
                f"environment variable {variable}: empty name part; "
                "nest settings with a double underscore, like "
                "OTEL_BATCHMON_STORES__MAIN__WINDOW"
            )
            continue
        node = overlay
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            node[path[-1]] = _EnvValue(env[variable], variable)
    return overlay


class _EnvValue(str):
    """A string from the environment that remembers its variable."""

    variable: str

    def __new__(cls, value: str, variable: str) -> _EnvValue:
        text = super().__new__(cls, value)
        text.variable = variable
        return text


def _merge_environment(
    data: dict[str, Any], overlay: dict[str, Any], problems: list[str]
) -> dict[str, Any]:
    _check_store_names(data, overlay, problems)
    merged = _deep_merge(data, dict(overlay.items()))
    stores = merged.get("stores")
    top_store_keys = [k for k in overlay if k in STORE_KEYS]
    # A deployment that keeps one [stores.x] table in the file may still set
    # OTEL_BATCHMON_DATABASE_URL: it applies to that one store.
    if top_store_keys and isinstance(stores, dict) and len(stores) == 1:
        (only,) = stores
        moved = {k: merged.pop(k) for k in top_store_keys}
        stores[only] = _deep_merge(stores[only], moved)
    return merged


def _check_store_names(
    data: dict[str, Any], overlay: dict[str, Any], problems: list[str]
) -> None:
    """A store named only in the environment, close to one in the file, is
    a typo that would otherwise show up as a store missing its URL."""
    in_file, in_env = data.get("stores"), overlay.get("stores")
    if not isinstance(in_file, dict) or not isinstance(in_env, dict):
        return
    for name in in_env:
        if name in in_file:
            continue
        near = difflib.get_close_matches(name, list(in_file), n=1)
        if near:
            problems.append(
                f"OTEL_BATCHMON_STORES__{name.upper()}__*: the config file "
                f"has no store {name!r}; did you mean {near[0]!r}?"
            )


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _deep_merge(result[key], value)
        else:
            result[key] = value
    return result

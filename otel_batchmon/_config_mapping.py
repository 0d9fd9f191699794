"""Validation of a store's mapping settings (query, roles, rules, ...).

Like the rest of the config reader, every problem is collected with its
location and nothing stops at the first one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from otel_batchmon._config_values import identifier
from otel_batchmon.config import (
    CANONICAL_STATUSES,
    COLUMN_ROLES,
    DEFAULT_COLUMNS,
    DISPENSABLE_ROLES,
    OPTIONAL_ROLES,
    TIME_ROLES,
    ColumnMap,
)
from otel_batchmon.mapping import (
    CONDITION_OPS,
    TIME_ENCODINGS,
    Condition,
    JsonPath,
    RoleSource,
    RowMapping,
    StatusRule,
)

if TYPE_CHECKING:
    from otel_batchmon._config_reader import Reader

__all__ = ["MappingReader"]

WITH_OTHER = (*CANONICAL_STATUSES, "other")
_DIALECT_KEYS = ("default", "postgresql", "mysql", "sqlite")
_WINDOW_BY = ("started_at", "queued_at", "finished_at")
_JSON_KEY = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_SELECT = re.compile(r"\s*(select|with)\b", re.IGNORECASE)
_PARAMETER_KINDS = {
    "identifier": re.compile(r"[A-Za-z_][A-Za-z0-9_]*"),
    "schema": re.compile(r"[A-Za-z_][A-Za-z0-9_]*"),
    "identifier_prefix": re.compile(
        r"([A-Za-z_][A-Za-z0-9_]*\.)?[A-Za-z0-9_]*"
    ),
}
_ROLE_KEYS = ("column", "op", "value", "other", "any")


class MappingReader:
    """Reads the mapping keys of one store into a RowMapping."""

    def __init__(self, reader: Reader, where: str) -> None:
        self.reader = reader
        self.where = where

    def fail(self, key: str, value: object, message: str) -> None:
        self.reader.fail(f"{self.where}{key}", value, message)

    def mapping(
        self,
        data: Mapping[str, Any],
        preset: str | None = None,
        parameters: Mapping[str, tuple[str, str | None]] | None = None,
        zone_hint: str | None = None,
    ) -> RowMapping:
        encodings = self.timestamps(data.get("timestamps", {}))
        return RowMapping(
            query=self.query(data.get("query")),
            parameters=dict(parameters or {}),
            filter=self.conditions(data.get("filter", []), "filter"),
            status_rules=self.rules(data.get("status_rules", [])),
            default_status=self.one_status(data, "default_status"),
            optional_roles=frozenset(
                self.roles(data.get("optional_roles", []), "optional_roles")
            ),
            window_by=self.window_by(data.get("window_by", "started_at")),
            only_when=self.only_when(data.get("only_when", {})),
            finish_optional_for=self.statuses(
                data.get("finish_optional_for", []), "finish_optional_for"
            ),
            time_encoding=encodings[0],
            column_encodings=encodings[1],
            unavailable=self.unavailable(data.get("unavailable", {})),
            preset=preset,
            zone_hint=zone_hint,
        )

    def with_value_rules(
        self,
        mapping: RowMapping,
        columns: ColumnMap,
        booleans: list[tuple[str, bool]],
        null_status: object,
    ) -> RowMapping:
        """Turn boolean status values and ``null_status`` into rules that
        run before the mapping's own."""
        if null_status is not None and null_status not in WITH_OTHER:
            self.fail(
                "null_status",
                null_status,
                f"use one of {', '.join(WITH_OTHER)}",
            )
            null_status = None
        if not booleans and null_status is None:
            return mapping
        status = columns.get("status")
        if status is None:
            self.fail(
                "statuses",
                None,
                "true/false values and null_status need a status column",
            )
            return mapping
        rules = [
            StatusRule(
                f"status is {value}".lower(),
                canonical,
                (Condition("is_true" if value else "is_false", status),),
            )
            for canonical, value in booleans
        ]
        if null_status is not None:
            rules.insert(
                0,
                StatusRule(
                    "status is null",
                    str(null_status),
                    (Condition("is_null", status),),
                ),
            )
        # Value lists come after the rules, which refine them.
        return replace(mapping, status_rules=(*mapping.status_rules, *rules))

    def query(self, value: object) -> dict[str, str]:
        if value is None:
            return {}
        texts = {"default": value} if isinstance(value, str) else value
        if not isinstance(texts, dict):
            self.fail("query", value, "must be a SELECT statement")
            return {}
        found: dict[str, str] = {}
        for dialect, text in texts.items():
            key = "query" if isinstance(value, str) else f"query.{dialect}"
            if dialect not in _DIALECT_KEYS:
                self.fail(key, text, f"use one of {', '.join(_DIALECT_KEYS)}")
            elif not isinstance(text, str) or not _SELECT.match(text):
                self.fail(key, text, "must be a SELECT (or WITH) statement")
            elif ";" in _outside_quotes(text.rstrip().rstrip(";")):
                self.fail(key, "", "must be one statement, without ';'")
            else:
                found["" if dialect == "default" else dialect] = text.rstrip(
                    " \n\t;"
                )
        return found

    def columns(self, data: object, has_query: bool) -> ColumnMap:
        where = "columns"
        if not isinstance(data, dict):
            self.fail(where, data, "must be a table of role = column")
            data = {}
        self.reader.unknown_keys(data, COLUMN_ROLES, f"{self.where}{where}")
        plain: dict[str, str | None] = {}
        sources: dict[str, RoleSource] = {}
        for role in COLUMN_ROLES:
            value = data.get(role, DEFAULT_COLUMNS.get(role))
            source = self.role_source(role, value)
            if isinstance(source, str):
                plain[role] = source
            else:
                plain[role] = None
                if source is not None:
                    sources[role] = source
        explicit = frozenset(r for r in data if plain.get(r) or r in sources)
        return ColumnMap(
            **plain,
            explicit=explicit,
            sources=sources,
        )

    def role_source(self, role: str, value: object) -> RoleSource | None:
        key = f"columns.{role}"
        if value in ("", False, None):
            if role in OPTIONAL_ROLES or role in DISPENSABLE_ROLES:
                return None
            self.fail(key, value, "this role cannot be turned off")
            return None
        if isinstance(value, list):
            names = [self.identifier(key, v) for v in value]
            if not names:
                self.fail(key, value, "an empty fallback chain")
                return None
            return names[0] if len(names) == 1 else tuple(names)
        if isinstance(value, dict):
            return self.json_path(key, value)
        return self.identifier(key, value)

    def json_path(self, key: str, value: dict[str, Any]) -> JsonPath | None:
        self.reader.unknown_keys(value, ("json", "path"), f"{self.where}{key}")
        column = self.identifier(f"{key}.json", value.get("json"))
        path = value.get("path")
        if not isinstance(path, list) or not path:
            self.fail(f"{key}.path", path, 'must be a list of keys: ["a"]')
            return None
        for part in path:
            if not isinstance(part, str) or not _JSON_KEY.fullmatch(part):
                self.fail(
                    f"{key}.path",
                    part,
                    f"{part!r} is not a JSON key of letters, digits, _ and -",
                )
                return None
        return JsonPath(column, tuple(path))

    def identifier(self, key: str, value: object) -> str:
        try:
            return identifier(value)
        except ValueError as exc:
            self.fail(key, value, str(exc))
            return "_"

    def conditions(self, value: object, key: str) -> tuple[Condition, ...]:
        if not isinstance(value, list):
            self.fail(key, value, "must be a list of conditions")
            return ()
        found = [self.condition(f"{key}[{i}]", c) for i, c in enumerate(value)]
        return tuple(c for c in found if c is not None)

    def condition(self, key: str, data: object) -> Condition | None:
        if not isinstance(data, dict):
            self.fail(key, data, "must be a table like {column, op, value}")
            return None
        self.reader.unknown_keys(data, _ROLE_KEYS, f"{self.where}{key}")
        if "any" in data:
            groups = data["any"]
            if (
                not isinstance(groups, list)
                or not groups
                or not all(isinstance(g, list) and g for g in groups)
            ):
                self.fail(
                    f"{key}.any",
                    groups,
                    "must be a list of non-empty lists of conditions",
                )
                return None
            return Condition(
                op="any",
                any_of=tuple(
                    self.conditions(g, f"{key}.any[{i}]")
                    for i, g in enumerate(groups)
                ),
            )
        op = data.get("op")
        if op not in CONDITION_OPS or op == "any":
            self.fail(
                f"{key}.op", op, f"use one of {', '.join(CONDITION_OPS[:-1])}"
            )
            return None
        column = data.get("column")
        source = (
            self.json_path(f"{key}.column", column)
            if isinstance(column, dict)
            else self.identifier(f"{key}.column", column)
        )
        other = data.get("other")
        if other is not None:
            other = self.identifier(f"{key}.other", other)
        value = data.get("value")
        self.check_operand(key, str(op), value, other)
        return Condition(op=str(op), column=source, value=value, other=other)

    def check_operand(
        self, key: str, op: str, value: object, other: object
    ) -> None:
        if op in (
            "is_null",
            "not_null",
            "is_true",
            "is_false",
            "past",
            "future",
        ):
            if value is not None or other is not None:
                self.fail(key, value, f"{op} takes no value or other")
        elif op in ("in", "not_in"):
            if not isinstance(value, list) or not value:
                self.fail(f"{key}.value", value, f"{op} needs a list")
        elif op == "starts_with":
            if not isinstance(value, str) or not value:
                self.fail(f"{key}.value", value, "starts_with needs text")
        elif (value is None) == (other is None):
            self.fail(key, value, f"{op} needs either value or other")
        elif value is not None and not isinstance(value, str | int | float):
            self.fail(f"{key}.value", value, "must be text or a number")

    def rules(self, value: object) -> tuple[StatusRule, ...]:
        if not isinstance(value, list):
            self.fail("status_rules", value, "must be a list of rules")
            return ()
        rules = []
        for i, data in enumerate(value):
            key = f"status_rules[{i}]"
            if not isinstance(data, dict):
                self.fail(key, data, "must be a table: name, status, when")
                continue
            self.reader.unknown_keys(
                data,
                ("name", "status", "when", "enabled", "why"),
                f"{self.where}{key}",
            )
            status = self.one_status(data, "status", key)
            when = self.conditions(data.get("when", []), f"{key}.when")
            if not when:
                self.fail(f"{key}.when", None, "a rule needs conditions")
            if data.get("enabled", True) is not True:
                continue
            if status is not None and when:
                rules.append(
                    StatusRule(str(data.get("name", i)), status, when)
                )
        return tuple(rules)

    def one_status(
        self, data: Mapping[str, Any], key: str, where: str = ""
    ) -> str | None:
        value = data.get(key)
        place = f"{where}.{key}" if where else key
        if value is None:
            if where:
                self.fail(place, None, "missing; name a canonical status")
            return None
        if value not in WITH_OTHER:
            self.fail(place, value, f"use one of {', '.join(WITH_OTHER)}")
            return None
        return str(value)

    def statuses(self, value: object, key: str) -> tuple[str, ...]:
        if not isinstance(value, list) or any(
            v not in WITH_OTHER for v in value
        ):
            self.fail(key, value, f"a list of {', '.join(WITH_OTHER)}")
            return ()
        return tuple(value)

    def roles(self, value: object, key: str) -> list[str]:
        if not isinstance(value, list) or any(
            v not in COLUMN_ROLES for v in value
        ):
            self.fail(
                key, value, f"a list of roles: {', '.join(COLUMN_ROLES)}"
            )
            return []
        return list(value)

    def window_by(self, value: object) -> str:
        if value not in _WINDOW_BY:
            self.fail(
                "window_by", value, f"use one of {', '.join(_WINDOW_BY)}"
            )
            return "started_at"
        return str(value)

    def only_when(self, value: object) -> dict[str, tuple[str, ...]]:
        if not isinstance(value, dict):
            self.fail("only_when", value, "a table of role = [statuses]")
            return {}
        found = {}
        for role, statuses in value.items():
            if role not in TIME_ROLES:
                self.fail(
                    f"only_when.{role}",
                    statuses,
                    f"only time roles: {', '.join(TIME_ROLES)}",
                )
                continue
            found[role] = self.statuses(statuses, f"only_when.{role}")
        return found

    def timestamps(self, value: object) -> tuple[str, dict[str, str]]:
        if not isinstance(value, dict):
            self.fail("timestamps", value, "a table: default, per_column")
            return "auto", {}
        self.reader.unknown_keys(
            value, ("default", "per_column"), f"{self.where}timestamps"
        )
        default = self.encoding("timestamps.default", value.get("default"))
        per_column = value.get("per_column", {})
        if not isinstance(per_column, dict):
            self.fail("timestamps.per_column", per_column, "column = encoding")
            per_column = {}
        return default, {
            self.identifier(f"timestamps.per_column.{c}", c): self.encoding(
                f"timestamps.per_column.{c}", e
            )
            for c, e in per_column.items()
        }

    def encoding(self, key: str, value: object) -> str:
        if value is None:
            return "auto"
        if value not in TIME_ENCODINGS:
            self.fail(key, value, f"use one of {', '.join(TIME_ENCODINGS)}")
            return "auto"
        return str(value)

    def unavailable(self, value: object) -> dict[str, str]:
        from otel_batchmon.instruments import CATALOGUE

        if not isinstance(value, dict):
            self.fail("unavailable", value, 'a table: "metric" = "why"')
            return {}
        names = {spec.name for spec in CATALOGUE}
        found = {}
        for metric, why in value.items():
            if metric not in names or not metric.startswith("batch."):
                self.fail(
                    f"unavailable.{metric}",
                    why,
                    "not a batch.* metric of the catalogue",
                )
                continue
            if not isinstance(why, str) or not why.strip():
                self.fail(
                    f"unavailable.{metric}",
                    why,
                    "say why in words, so check can print it",
                )
                continue
            found[str(metric)] = why
        return found


def parameter_problem(kind: str, value: str) -> str | None:
    """Say why ``value`` cannot fill a placeholder of ``kind``."""
    pattern = _PARAMETER_KINDS.get(kind)
    if pattern is None:
        return f"unknown parameter kind {kind!r}"
    if not pattern.fullmatch(value):
        return (
            f"{value!r} is not a valid {kind.replace('_', ' ')} (letters, "
            "digits and _, not starting with a digit)"
        )
    return None


def _outside_quotes(sql: str) -> str:
    """The SQL text with its quoted strings and identifiers blanked."""
    return re.sub(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|`[^`]*`", "''", sql)

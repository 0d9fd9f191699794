"""Settings: loaded from a TOML file and ``OTEL_BATCHMON_*`` variables.

Every problem is collected and raised together in one ConfigError, each
naming where it is, what was found and what to write instead.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from otel_batchmon._parse import parse_duration, split_list
from otel_batchmon.errors import ConfigError

__all__ = [
    "CANONICAL_STATUSES",
    "COLUMN_ROLES",
    "ColumnMap",
    "MonitorConfig",
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
)
COLUMN_ROLES = REQUIRED_ROLES + OPTIONAL_ROLES
# Column names of the table `otel-batchmon init-db` creates.
DEFAULT_COLUMNS = {role: role for role in COLUMN_ROLES} | {
    "queued_at": "created_at"
}

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")
_STORE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_STORE_KEYS = (
    "name",
    "database_url",
    "table",
    "columns",
    "statuses",
    "stuck_statuses",
    "window",
    "stuck_after",
    "timezone",
)
_MONITOR_KEYS = (
    "refresh_interval",
    "stale_after",
    "statement_timeout",
    "connect_timeout",
    "clock_offset",
    "shutdown_timeout",
    "stores",
)


@dataclass(frozen=True)
class ColumnMap:
    """Which column of the table plays which role; None means absent.

    ``explicit`` holds the roles the user named, which must exist; the
    other optional roles are used only when the table has that column.
    """

    id: str
    status: str
    started_at: str
    finished_at: str
    queued_at: str | None = None
    records_total: str | None = None
    records_failed: str | None = None
    kind: str | None = None
    error: str | None = None
    explicit: frozenset[str] = frozenset()

    def get(self, role: str) -> str | None:
        """Return the column mapped to ``role``."""
        value: str | None = getattr(self, role)
        return value


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

    @property
    def qualified_table(self) -> str:
        """The table name as a user writes it, schema included."""
        return f"{self.schema}.{self.table}" if self.schema else self.table


@dataclass(frozen=True)
class MonitorConfig:
    """Everything the monitor needs: stores and the refresh schedule."""

    stores: tuple[StoreConfig, ...]
    refresh_interval_seconds: float = 30.0
    stale_after_seconds: float = 90.0
    statement_timeout_seconds: float = 10.0
    connect_timeout_seconds: float = 10.0
    clock_offset_seconds: float = 0.0
    shutdown_timeout_seconds: float = 10.0


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
    found = [] if problems is None else problems
    reader = _Reader(found)
    config = reader.monitor(data)
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
    merged = _deep_merge(data, dict(overlay.items()))
    stores = merged.get("stores")
    top_store_keys = [k for k in overlay if k in _STORE_KEYS]
    # A deployment that keeps one [stores.x] table in the file may still set
    # OTEL_BATCHMON_DATABASE_URL: it applies to that one store.
    if top_store_keys and isinstance(stores, dict) and len(stores) == 1:
        (only,) = stores
        moved = {k: merged.pop(k) for k in top_store_keys}
        stores[only] = _deep_merge(stores[only], moved)
    return merged


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _deep_merge(result[key], value)
        else:
            result[key] = value
    return result


_T = TypeVar("_T")


class _Reader:
    """Walks the settings mapping, collecting every problem it sees."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems

    def fail(self, where: str, value: object, message: str) -> None:
        origin = getattr(value, "variable", None)
        place = f"{where} (from {origin})" if origin else where
        self.problems.append(f"{place}: {message}")

    def unknown_keys(
        self, data: Mapping[str, Any], known: tuple[str, ...], where: str
    ) -> None:
        for key in data:
            if key in known:
                continue
            near = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            prefix = f"{where}." if where else ""
            self.fail(
                f"{prefix}{key}",
                data[key],
                f"unknown setting{hint} (known: {', '.join(known)})",
            )

    def take(
        self,
        data: Mapping[str, Any],
        key: str,
        where: str,
        parse: Callable[[Any], _T],
        default: _T,
    ) -> _T:
        if key not in data:
            return default
        value = data[key]
        try:
            return parse(value)
        except (ValueError, TypeError) as exc:
            self.fail(f"{where}{key}", value, str(exc))
            return default

    def monitor(self, data: Mapping[str, Any]) -> MonitorConfig | None:
        top_store = {k: v for k, v in data.items() if k in _STORE_KEYS}
        self.unknown_keys(data, _MONITOR_KEYS + _STORE_KEYS, "")
        interval = self.take(
            data, "refresh_interval", "", _positive_duration, 30.0
        )
        config = MonitorConfig(
            stores=self.stores(data.get("stores"), top_store),
            refresh_interval_seconds=interval,
            stale_after_seconds=self.take(
                data, "stale_after", "", _positive_duration, 3 * interval
            ),
            statement_timeout_seconds=self.take(
                data,
                "statement_timeout",
                "",
                _positive_duration,
                min(10.0, 0.8 * interval),
            ),
            connect_timeout_seconds=self.take(
                data, "connect_timeout", "", _positive_duration, 10.0
            ),
            clock_offset_seconds=self.take(
                data, "clock_offset", "", _signed_duration, 0.0
            ),
            shutdown_timeout_seconds=self.take(
                data, "shutdown_timeout", "", _positive_duration, 10.0
            ),
        )
        self.check_schedule(config, data)
        return config

    def check_schedule(
        self, config: MonitorConfig, data: Mapping[str, Any]
    ) -> None:
        interval = config.refresh_interval_seconds
        if config.statement_timeout_seconds >= interval:
            self.fail(
                "statement_timeout",
                data.get("statement_timeout"),
                f"{config.statement_timeout_seconds:g}s must be shorter "
                f"than refresh_interval ({interval:g}s), so a slow query "
                "is cancelled before the next refresh is due",
            )
        if config.stale_after_seconds < interval:
            self.fail(
                "stale_after",
                data.get("stale_after"),
                f"{config.stale_after_seconds:g}s is shorter than "
                f"refresh_interval ({interval:g}s); every snapshot would "
                "be stale before the next refresh",
            )

    def stores(
        self, stores: object, top_store: dict[str, Any]
    ) -> tuple[StoreConfig, ...]:
        if stores is not None and top_store:
            self.fail(
                "stores",
                stores,
                "store settings at the top level "
                f"({', '.join(sorted(top_store))}) and a [stores] table "
                "cannot be mixed; move them into one [stores.NAME] table",
            )
            return ()
        if stores is None:
            if not top_store:
                self.problems.append(
                    "no store configured: set database_url and table (or "
                    "OTEL_BATCHMON_DATABASE_URL and OTEL_BATCHMON_TABLE), "
                    "or add a [stores.NAME] table"
                )
                return ()
            return self.optional_store(None, top_store, "")
        if not isinstance(stores, dict) or not stores:
            self.fail(
                "stores", stores, "must be a table of [stores.NAME] tables"
            )
            return ()
        result: list[StoreConfig] = []
        for name, body in stores.items():
            where = f"stores.{name}."
            if not isinstance(body, dict):
                self.fail(where[:-1], body, "must be a table of settings")
                continue
            if "name" in body:
                self.fail(f"{where}name", body["name"], "the key is the name")
            result.extend(self.optional_store(name, body, where))
        return tuple(result)

    def optional_store(
        self, name: str | None, data: Mapping[str, Any], where: str
    ) -> tuple[StoreConfig, ...]:
        store = _StoreReader(self, where).read(name, data)
        return (store,) if store else ()


class _StoreReader:
    """Reads one store's settings on behalf of a _Reader."""

    def __init__(self, reader: _Reader, where: str) -> None:
        self.reader = reader
        self.where = where

    def read(
        self, name: str | None, data: Mapping[str, Any]
    ) -> StoreConfig | None:
        r, w = self.reader, self.where
        known = _STORE_KEYS if name is None else _STORE_KEYS[1:]
        if name is not None:
            r.unknown_keys(data, known, w[:-1])
        before = len(r.problems)
        url = r.take(data, "database_url", w, _database_url, "")
        if "database_url" not in data:
            r.problems.append(f"{w}database_url: missing; set it")
        no_table: tuple[str | None, str] = (None, "")
        schema, table = r.take(data, "table", w, _table_name, no_table)
        if "table" not in data:
            r.problems.append(f"{w}table: missing; name the batch table")
        store_name = name or r.take(data, "name", w, _store_name, table)
        if name is not None and not _STORE_NAME.fullmatch(name):
            r.fail(w[:-1], name, "store names use 1-64 letters, digits, _.-")
        store = StoreConfig(
            name=store_name or "default",
            database_url=url,
            table=table,
            schema=schema,
            columns=self.columns(data.get("columns", {})),
            statuses=self.statuses(data.get("statuses", {})),
            stuck_statuses=r.take(
                data, "stuck_statuses", w, _stuck_statuses, ("processing",)
            ),
            window_seconds=r.take(
                data, "window", w, _positive_duration, 24 * 3600.0
            ),
            stuck_after_seconds=r.take(
                data, "stuck_after", w, _positive_duration, 4 * 3600.0
            ),
            timezone=r.take(data, "timezone", w, _timezone, "UTC"),
        )
        return store if len(r.problems) == before else None

    def columns(self, data: object) -> ColumnMap:
        where = f"{self.where}columns"
        if not isinstance(data, dict):
            self.reader.fail(where, data, "must be a table of role = column")
            data = {}
        self.reader.unknown_keys(data, COLUMN_ROLES, where)
        chosen: dict[str, str | None] = {}
        for role in COLUMN_ROLES:
            value = data.get(role, DEFAULT_COLUMNS[role])
            if value in ("", False) and role in OPTIONAL_ROLES:
                chosen[role] = None
                continue
            try:
                chosen[role] = _identifier(value)
            except (ValueError, TypeError) as exc:
                self.reader.fail(f"{where}.{role}", value, str(exc))
                chosen[role] = DEFAULT_COLUMNS[role]
        explicit = frozenset(r for r in data if chosen.get(r))
        return ColumnMap(**chosen, explicit=explicit)  # type: ignore[arg-type]

    def statuses(self, data: object) -> dict[str, tuple[str | int, ...]]:
        where = f"{self.where}statuses"
        if not isinstance(data, dict):
            self.reader.fail(where, data, "must be a table of status = [..]")
            data = {}
        self.reader.unknown_keys(data, CANONICAL_STATUSES, where)
        mapping: dict[str, tuple[str | int, ...]] = {}
        owner: dict[str | int, str] = {}
        for canonical in CANONICAL_STATUSES:
            raw = split_list(data.get(canonical, [canonical]))
            values: list[str | int] = []
            for value in raw:
                if isinstance(value, bool) or not isinstance(value, str | int):
                    self.reader.fail(
                        f"{where}.{canonical}",
                        value,
                        f"{value!r} is not a string or integer status value",
                    )
                    continue
                if value in owner and owner[value] != canonical:
                    self.reader.fail(
                        f"{where}.{canonical}",
                        value,
                        f"{value!r} is already mapped to {owner[value]!r}; "
                        "a table value can mean only one status",
                    )
                owner[value] = canonical
                values.append(value)
            mapping[canonical] = tuple(values)
        return mapping


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"{value!r} must be longer than zero")
    return seconds


def _signed_duration(value: object) -> float:
    return parse_duration(value, signed=True)


def _database_url(value: object) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a database URL like sqlite:///batches.db")
    try:
        make_url(value)
    except ArgumentError:
        raise ValueError(
            "is not a database URL; write it like "
            "postgresql+psycopg://user@host/db, "
            "mysql+pymysql://user@host/db or sqlite:///path.db"
        ) from None
    return value


def _identifier(value: object) -> str:
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a plain SQL identifier (letters, digits, _ "
            "and $, not starting with a digit, at most 63 characters); "
            "write the bare name without quotes, otel_batchmon quotes it"
        )
    return value


def _table_name(value: object) -> tuple[str | None, str]:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a table name")
    parts = value.split(".")
    if len(parts) > 2:
        raise ValueError(
            f"{value!r} has more than one dot; write table or schema.table"
        )
    names = [_identifier(part) for part in parts]
    return (names[0], names[1]) if len(names) == 2 else (None, names[0])


def _store_name(value: object) -> str:
    if not isinstance(value, str) or not _STORE_NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a store name (1-64 letters, digits, _ . -)"
        )
    return value


def _stuck_statuses(value: object) -> tuple[str, ...]:
    items = split_list(value)
    allowed = ("pending", "processing")
    bad = [item for item in items if item not in allowed]
    if bad or not items:
        raise ValueError(
            f"{bad or items!r}: stuck_statuses lists canonical statuses "
            f"that mean still running, from {allowed}"
        )
    return tuple(str(item) for item in items)


def _timezone(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a zone name like UTC or Europe/Berlin")
    if re.fullmatch(r"[+-]\d{2}:\d{2}", value):
        return value
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{value!r} is not a known time zone; use an IANA name like "
            "Europe/Berlin or a fixed offset like +02:00"
        ) from None
    return value

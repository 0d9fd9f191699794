"""Validation of the settings mapping into the config dataclasses.

Every problem is collected with its location; nothing stops at the first.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from otel_batchmon._config_mapping import WITH_OTHER, MappingReader
from otel_batchmon._config_preset import apply_preset
from otel_batchmon._config_values import (
    STORE_NAME,
    backfill,
    boolean,
    database_url,
    non_negative_duration,
    optional_duration,
    page_size,
    positive_duration,
    refresh_mode,
    signed_duration,
    store_name,
    streak_length,
    stuck_action,
    stuck_statuses,
    table_name,
    table_prefix,
    timezone,
)
from otel_batchmon._parse import split_list
from otel_batchmon.config import (
    MONITOR_KEYS,
    STORE_KEYS,
    AlertConfig,
    ColumnMap,
    MonitorConfig,
    StoreConfig,
)
from otel_batchmon.mapping import RowMapping

__all__ = ["Reader"]

_T = TypeVar("_T")


class Reader:
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
        top_store = {k: v for k, v in data.items() if k in STORE_KEYS}
        self.unknown_keys(data, MONITOR_KEYS + STORE_KEYS, "")
        interval = self.take(
            data, "refresh_interval", "", positive_duration, 30.0
        )
        config = MonitorConfig(
            stores=self.stores(data.get("stores"), top_store),
            refresh_interval_seconds=interval,
            refresh_mode=self.take(
                data, "refresh_mode", "", refresh_mode, "full"
            ),
            reconcile_every_seconds=self.take(
                data,
                "reconcile_every",
                "",
                positive_duration,
                max(600.0, interval),
            ),
            stale_after_seconds=self.take(
                data, "stale_after", "", positive_duration, 3 * interval
            ),
            statement_timeout_seconds=self.take(
                data,
                "statement_timeout",
                "",
                positive_duration,
                min(10.0, 0.8 * interval),
            ),
            connect_timeout_seconds=self.take(
                data, "connect_timeout", "", positive_duration, 10.0
            ),
            clock_offset_seconds=self.take(
                data, "clock_offset", "", signed_duration, 0.0
            ),
            shutdown_timeout_seconds=self.take(
                data, "shutdown_timeout", "", positive_duration, 10.0
            ),
            health_address=self.take(
                data, "health_address", "", _health_address, None
            ),
            **self.events(data),
        )
        self.check_schedule(config, data)
        return config

    def events(self, data: Mapping[str, Any]) -> dict[str, Any]:
        state_url: str | None = self.take(
            data, "state_url", "", database_url, None
        )
        return {
            "state_url": state_url,
            "state_table_prefix": self.take(
                data, "state_table_prefix", "", table_prefix, "batchmon_"
            ),
            "events": self.take(data, "events", "", boolean, True),
            "settle_lag_seconds": self.take(
                data, "settle_lag", "", non_negative_duration, 30.0
            ),
            "backfill_seconds": self.take(data, "backfill", "", backfill, 0.0),
            "event_page_size": self.take(
                data, "event_page_size", "", page_size, 1000
            ),
            "compat_names": self.take(
                data, "compat_names", "", boolean, False
            ),
            "leader_election": self.take(
                data, "leader_election", "", boolean, None
            ),
        }

    def check_schedule(
        self, config: MonitorConfig, data: Mapping[str, Any]
    ) -> None:
        interval = config.refresh_interval_seconds
        incremental = config.refresh_mode == "incremental"
        if incremental and config.reconcile_every_seconds < interval:
            # Unused with full reads, so not an error there.
            self.fail(
                "reconcile_every",
                data.get("reconcile_every"),
                f"{config.reconcile_every_seconds:g}s is shorter than "
                f"refresh_interval ({interval:g}s); every incremental "
                'refresh would reconcile (use refresh_mode = "full" '
                "instead, or a longer reconcile_every)",
            )
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
    """Reads one store's settings on behalf of a Reader."""

    def __init__(self, reader: Reader, where: str) -> None:
        self.reader = reader
        self.where = where
        self.booleans: list[tuple[str, bool]] = []

    def read(
        self, name: str | None, given: Mapping[str, Any]
    ) -> StoreConfig | None:
        r, w = self.reader, self.where
        known = STORE_KEYS if name is None else STORE_KEYS[1:]
        if name is not None:
            r.unknown_keys(given, known, w[:-1])
        before = len(r.problems)
        data, preset = apply_preset(r, w, given)
        url = r.take(data, "database_url", w, database_url, "")
        if "database_url" not in data:
            r.problems.append(f"{w}database_url: missing; set it")
        no_table: tuple[str | None, str] = (None, "")
        schema, table = r.take(data, "table", w, table_name, no_table)
        if "table" in data and "query" in data:
            r.fail(f"{w}query", "", "set either table or query, not both")
        elif "table" not in data and "query" not in data and not preset.failed:
            r.problems.append(
                f"{w}table: missing; name the batch table (or set query, "
                "or a preset)"
            )
        chosen = name or r.take(data, "name", w, store_name, table)
        if name is not None and not STORE_NAME.fullmatch(name):
            r.fail(w[:-1], name, "store names use 1-64 letters, digits, _.-")
        mapper = MappingReader(r, w)
        mapping = mapper.mapping(
            data, preset.name, preset.parameters, preset.zone_hint
        )
        columns = mapper.columns(data.get("columns", {}), bool(mapping.query))
        self.booleans = []
        statuses = self.statuses(data.get("statuses", {}))
        mapping = mapper.with_value_rules(
            mapping, columns, self.booleans, data.get("null_status")
        )
        self.check_mapping(columns, mapping, data.get("stuck"))
        store = StoreConfig(
            name=chosen or "default",
            database_url=url,
            table=table,
            schema=schema,
            columns=columns,
            mapping=mapping,
            statuses=statuses,
            stuck_statuses=r.take(
                data, "stuck_statuses", w, stuck_statuses, ("processing",)
            ),
            window_seconds=r.take(
                data, "window", w, positive_duration, 24 * 3600.0
            ),
            stuck_after_seconds=r.take(
                data, "stuck_after", w, positive_duration, 4 * 3600.0
            ),
            timezone=r.take(data, "timezone", w, timezone, "UTC"),
            alerts=self.alerts(data),
        )
        return store if len(r.problems) == before else None

    def alerts(self, data: Mapping[str, Any]) -> AlertConfig:
        r, w = self.reader, self.where
        by_kind = data.get("stuck_after_by_kind", {})
        thresholds: dict[str, float] = {}
        if not isinstance(by_kind, dict):
            r.fail(f"{w}stuck_after_by_kind", by_kind, "must be kind = 4h")
            by_kind = {}
        for kind in by_kind:
            thresholds[str(kind)] = r.take(
                by_kind,
                kind,
                f"{w}stuck_after_by_kind.",
                positive_duration,
                0.0,
            )
        stuck = data.get("stuck", {})
        if not isinstance(stuck, dict):
            r.fail(f"{w}stuck", stuck, "must be a table: action, after")
            stuck = {}
        r.unknown_keys(stuck, ("action", "after", "dry_run"), f"{w}stuck")
        action = r.take(stuck, "action", f"{w}stuck.", stuck_action, "none")
        after = r.take(stuck, "after", f"{w}stuck.", positive_duration, None)
        if action == "fail" and after is None:
            r.problems.append(
                f'{w}stuck.after: missing; stuck.action = "fail" needs '
                "the age (longer than stuck_after) past which to fail"
            )
        return AlertConfig(
            stuck_after_by_kind=thresholds,
            no_success_within_seconds=r.take(
                data, "no_success_within", w, optional_duration, None
            ),
            failure_streak=r.take(data, "failure_streak", w, streak_length, 0),
            renotify_every_seconds=r.take(
                data, "renotify_every", w, optional_duration, None
            ),
            stuck_action=action,
            stuck_action_after_seconds=after,
            stuck_action_dry_run=r.take(
                stuck, "dry_run", f"{w}stuck.", boolean, True
            ),
        )

    def check_mapping(
        self,
        columns: ColumnMap,
        mapping: RowMapping,
        stuck: object,
    ) -> None:
        w = self.where
        derived = mapping.status_rules or any(
            not columns.get(r) for r in ("id", "status", "finished_at")
        )
        action = stuck.get("action") if isinstance(stuck, dict) else None
        if action == "fail" and (mapping.read_only or derived):
            self.reader.problems.append(
                f"{w}stuck.action: otel-batchmon never writes through a "
                "preset, a query or a derived status or finish time; "
                'use action = "none" and resolve stuck jobs with the '
                "framework's own tools"
            )
        if columns.source("status") is None:
            if not mapping.status_rules:
                self.reader.problems.append(
                    f"{w}columns.status: turned off, but no status_rules "
                    "decide the status; map the status column or add rules"
                )
            elif mapping.default_status is None:
                self.reader.problems.append(
                    f"{w}default_status: missing; without a status column "
                    "it is the status of rows no rule matches"
                )
        for role in mapping.only_when:
            if columns.source(role) is None:
                self.reader.problems.append(
                    f"{w}only_when.{role}: the role is not mapped"
                )
        if columns.source(mapping.window_by) is None:
            self.reader.problems.append(
                f"{w}window_by: {mapping.window_by} is not mapped"
            )

    def statuses(self, data: object) -> dict[str, tuple[str | int, ...]]:
        where = f"{self.where}statuses"
        if not isinstance(data, dict):
            self.reader.fail(where, data, "must be a table of status = [..]")
            data = {}
        self.reader.unknown_keys(data, WITH_OTHER, where)
        mapping: dict[str, tuple[str | int, ...]] = {}
        owner: dict[str | int, str] = {}
        for canonical in WITH_OTHER:
            default = [] if canonical == "other" else [canonical]
            raw = split_list(data.get(canonical, default))
            values: list[str | int] = []
            for value in raw:
                if isinstance(value, bool):
                    # true/false of a boolean column: compared as booleans
                    # by a status rule, since each database spells them
                    # differently as text.
                    self.booleans.append((canonical, value))
                    continue
                if not isinstance(value, str | int):
                    self.reader.fail(
                        f"{where}.{canonical}",
                        value,
                        f"{value!r} is not a string, integer or boolean "
                        "status value",
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


def _health_address(value: object) -> tuple[str, int] | None:
    """Parse ``HOST:PORT`` (``[::1]:8081`` for IPv6); empty means off."""
    text = value.strip() if isinstance(value, str) else None
    if text == "":
        return None
    host, _, port = (text or "").rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host and port.isdigit() and 1 <= int(port) <= 65535:
        return host, int(port)
    raise ValueError(
        f"{value!r} is not an address to listen on; write HOST:PORT "
        "with a port from 1 to 65535, like 127.0.0.1:8081"
    )

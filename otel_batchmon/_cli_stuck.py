"""``otel-batchmon stuck list`` and ``stuck resolve``: the on-call tools."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from sqlalchemy import create_engine

from otel_batchmon._alert_rows import StuckBatch, stuck_batches
from otel_batchmon._engine import classify, create_monitor_engine
from otel_batchmon._state_handle import StateHandle
from otel_batchmon.config import MonitorConfig, StoreConfig
from otel_batchmon.errors import ConfigError, StoreError
from otel_batchmon.incidents import Incident, IncidentLog
from otel_batchmon.remedy import find_batch, finish_stuck
from otel_batchmon.store import BatchStore

__all__ = ["EXIT_UNCHANGED", "add_stuck_commands", "list_stuck", "resolve"]

# `stuck resolve` found the batch but did not change it.
EXIT_UNCHANGED = 4


def add_stuck_commands(
    commands: Any, common: argparse.ArgumentParser, handler: Any
) -> None:
    """Register ``stuck list`` and ``stuck resolve`` on the parser."""
    stuck = commands.add_parser("stuck", help="list or resolve stuck batches")
    actions = stuck.add_subparsers(dest="stuck_command", required=True)
    listing = actions.add_parser(
        "list", parents=[common], help="open incidents and stuck batches"
    )
    listing.add_argument("--json", action="store_true", help="as JSON")
    listing.set_defaults(handler=handler)
    resolving = actions.add_parser(
        "resolve",
        parents=[common],
        help="finish a stuck batch if it is still stuck",
    )
    resolving.add_argument("batch_id", metavar="ID")
    resolving.add_argument(
        "--status", choices=("failed", "completed"), default="failed"
    )
    resolving.add_argument("--reason", help="kept on the incident")
    resolving.add_argument("--store", help="store name (several stores)")
    resolving.add_argument(
        "--dry-run",
        action="store_true",
        help="show the statement without running it",
    )
    resolving.set_defaults(handler=handler)


@contextmanager
def _bound(config: MonitorConfig, store: StoreConfig) -> Iterator[Any]:
    engine = create_monitor_engine(
        store.database_url,
        config.statement_timeout_seconds,
        config.connect_timeout_seconds,
    )
    batch_store = BatchStore(store, config.clock_offset_seconds)
    try:
        with engine.connect() as connection, connection.begin():
            batch_store.bind(connection)
            yield batch_store, connection
    except (ConfigError, StoreError):
        raise
    except Exception as exc:
        failure = classify(exc)
        raise StoreError(
            f"store {store.name}: cannot read the table "
            f"({failure.error_type}): {failure.message}"
        ) from None
    finally:
        engine.dispose()


def _incidents(
    config: MonitorConfig, store: StoreConfig
) -> IncidentLog | None:
    handle = StateHandle(config.state_url or store.database_url, config)
    state = handle.ready()
    return None if state is None else IncidentLog(state)


def list_stuck(config: MonitorConfig, as_json: bool, out: TextIO) -> int:
    """Print every store's stuck batches and open incidents."""
    report = []
    for store in config.stores:
        lowest = min(
            [
                store.stuck_after_seconds,
                *store.alerts.stuck_after_by_kind.values(),
            ]
        )
        with _bound(config, store) as (batch_store, connection):
            stuck = stuck_batches(batch_store, connection, lowest)
        log = _incidents(config, store)
        incidents = [] if log is None else log.open_incidents(store.name)
        report.append((store.name, stuck, incidents))
    if as_json:
        json.dump(
            [
                {
                    "store": name,
                    "stuck": [_batch_dict(b) for b in stuck],
                    "incidents": [i.as_dict() for i in incidents],
                }
                for name, stuck, incidents in report
            ],
            out,
            indent=2,
            default=str,
        )
        out.write("\n")
        return 0
    for name, stuck, incidents in report:
        _print_store(name, stuck, incidents, out)
    return 0


def _batch_dict(batch: StuckBatch) -> dict[str, Any]:
    return {
        "batch_id": batch.batch_id,
        "kind": batch.kind,
        "status": batch.status,
        "started_us": batch.started_us,
        "age_seconds": round(batch.age_seconds, 3),
    }


def _print_store(
    name: str, stuck: list[StuckBatch], incidents: list[Incident], out: TextIO
) -> None:
    print(
        f"store {name}: {len(stuck)} stuck, {len(incidents)} open incident(s)",
        file=out,
    )
    if stuck:
        print(f"  {'batch id':<38} {'kind':<18} {'status':<12} age", file=out)
    for batch in stuck:
        hours = batch.age_seconds / 3600
        print(
            f"  {batch.batch_id:<38} {batch.kind or '-':<18} "
            f"{batch.status:<12} {hours:.1f}h",
            file=out,
        )
    for incident in incidents:
        print(
            f"  incident {incident.alert_type} {incident.key}"
            + (f" (noted: {incident.reason})" if incident.reason else ""),
            file=out,
        )


def resolve(
    config: MonitorConfig, args: argparse.Namespace, out: TextIO
) -> int:
    """Finish one stuck batch, only if it is still stuck."""
    store = _pick_store(config, args.store)
    with _bound(config, store) as (batch_store, connection):
        found = find_batch(batch_store, connection, args.batch_id)
    if found is None:
        raise StoreError(
            f"store {store.name}: no batch with id {args.batch_id!r} in "
            f"{store.qualified_table}"
        )
    raw_id, status, raw_started = found
    stuck = batch_store.statuses.raw_values(store.stuck_statuses)
    if status not in {str(s) for s in stuck}:
        print(
            f"batch {args.batch_id} is not in a stuck status (it is "
            f"{status!r}); nothing changed",
            file=out,
        )
        return EXIT_UNCHANGED
    writer = create_engine(store.database_url)
    try:
        change = finish_stuck(
            batch_store,
            writer,
            raw_id,
            raw_started,
            args.status,
            args.reason,
            args.dry_run,
        )
    finally:
        writer.dispose()
    print(f"batch {args.batch_id}: {change.detail}", file=out)
    if args.dry_run:
        print(f"statement: {change.statement}", file=out)
        return 0
    if not change.changed:
        return EXIT_UNCHANGED
    log = _incidents(config, store)
    if log is not None:
        reason = args.reason or f"resolved by hand as {args.status}"
        noted = log.note(store.name, f"{raw_id}@", reason)
        print(f"reason recorded on {noted} open incident(s)", file=out)
    return 0


def _pick_store(config: MonitorConfig, name: str | None) -> StoreConfig:
    if name is None and len(config.stores) == 1:
        return config.stores[0]
    for store in config.stores:
        if store.name == name:
            return store
    names = ", ".join(s.name for s in config.stores)
    raise ConfigError([f"--store {name!r}: choose one of {names}"])

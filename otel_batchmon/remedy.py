"""Finishing a stuck batch by hand or by the configured action.

The only writes otel_batchmon ever makes to a batch table. The update is
conditional: the row changes only if it is still in a stuck status with
the same start time, so a batch that finished meanwhile keeps its status.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import String, and_, cast, column, select, update
from sqlalchemy.engine import Connection, Engine

from otel_batchmon.config import StoreConfig
from otel_batchmon.errors import ConfigError
from otel_batchmon.store import BatchStore

__all__ = [
    "Change",
    "find_batch",
    "finish_stuck",
    "foreign_framework",
    "refuse_foreign",
]

_log = logging.getLogger(__name__)

# Default tables of the job frameworks researched in otel_batchmon/presets
# (docs/presets.md). Their rows belong to the framework's own state
# machine: finishing one behind its back can corrupt it (retries, locks,
# batch callbacks), so otel-batchmon never writes there. Generic names
# (Dagster's `runs`) are left out rather than refuse a user's own table.
_FRAMEWORK_TABLES = {
    "batch_job_execution": "Spring Batch",
    "dag_run": "Apache Airflow",
    "celery_taskmeta": "Celery",
    "celery_tasksetmeta": "Celery",
    "oban_jobs": "Oban",
    "pgboss.job": "pg-boss",
    "pgboss.archive": "pg-boss",
    "river_job": "River",
    "flow_run": "Prefect",
    "job_batches": "Laravel",
    "failed_jobs": "Laravel",
    "good_jobs": "GoodJob",
    "solid_queue_jobs": "Solid Queue",
}


def foreign_framework(store: StoreConfig) -> str | None:
    """The job framework that owns the store's table, if it is one."""
    # Schema-qualified names first (pg-boss lives in its own schema); other
    # frameworks' tables count in any schema.
    owner = _FRAMEWORK_TABLES.get(store.qualified_table.casefold())
    return owner or _FRAMEWORK_TABLES.get(store.table.casefold())


def refuse_foreign(store: StoreConfig) -> None:
    """Raise ConfigError when the table belongs to a job framework, or is
    read through a preset, a query or roles that are not plain columns."""
    mapping, columns = store.mapping, store.columns
    if mapping.preset is not None or mapping.query:
        how = f"preset {mapping.preset!r}" if mapping.preset else "a query"
        raise ConfigError(
            [
                f"store {store.name}: it is read through {how}; otel-batchmon "
                "never writes to another framework's tables or through a "
                "query; resolve the job with the framework's own tools"
            ]
        )
    plain = ("id", "status", "finished_at")
    if mapping.status_rules or not all(columns.get(r) for r in plain):
        raise ConfigError(
            [
                f"store {store.name}: its status or finish time is derived "
                "(status_rules, a fallback chain or a JSON path), so there "
                "is no single column to write; resolve the batch in the "
                "table yourself"
            ]
        )
    owner = foreign_framework(store)
    if owner is not None:
        raise ConfigError(
            [
                f"store {store.name}: table {store.qualified_table!r} is "
                f"{owner}'s; otel-batchmon does not write to another "
                f"framework's tables (it would bypass {owner}'s own "
                f"state handling); resolve the job through {owner}"
            ]
        )


@dataclass(frozen=True)
class Change:
    """What finishing a batch did (or, in a dry run, would do)."""

    batch_id: str
    changed: bool
    statement: str
    detail: str


def find_batch(
    store: BatchStore, connection: Connection, batch_id: str
) -> tuple[Any, str, Any] | None:
    """The row's (raw id, status, raw start) by id given as text."""
    bound = store._require_bound()
    id_column: Any = column(bound.columns["id"])
    status: Any = column(bound.columns["status"])
    start: Any = column(bound.columns["started_at"])
    row = connection.execute(
        select(id_column, cast(status, String(255)), start)
        .select_from(store.table_clause())
        .where(cast(id_column, String(255)) == batch_id)
    ).first()
    return None if row is None else (row[0], str(row[1]), row[2])


def finish_stuck(
    store: BatchStore,
    engine: Engine,
    raw_id: Any,
    raw_started: Any,
    status: str,
    reason: str | None,
    dry_run: bool,
) -> Change:
    """Set ``status`` and the finish time if the batch is still stuck."""
    refuse_foreign(store.config)
    bound = store._require_bound()
    new_status = store.statuses.raw_values((status,))[0]
    statement = _statement(store, raw_id, raw_started, new_status, reason)
    shown = _render(statement, engine)
    batch_id = str(raw_id)
    if dry_run:
        return Change(batch_id, False, shown, "dry run: nothing written")
    params = {"now_shift": store.shift(0)}
    with engine.begin() as connection:
        result = connection.execute(statement, params)
    if result.rowcount == 1:
        _log.warning(
            "store %s: batch %s marked %s (%s): %s",
            store.name,
            batch_id,
            status,
            bound.columns["status"],
            reason or "no reason given",
        )
        return Change(batch_id, True, shown, f"marked {status}")
    return Change(
        batch_id,
        False,
        shown,
        "left unchanged: it is no longer stuck with that start time",
    )


def _statement(
    store: BatchStore,
    raw_id: Any,
    raw_started: Any,
    new_status: str | int,
    reason: str | None,
) -> Any:
    bound = store._require_bound()
    columns = bound.columns
    stuck = store.statuses.raw_values(store.config.stuck_statuses)
    values: dict[str, Any] = {
        columns["status"]: new_status,
        columns["finished_at"]: _finish_time(store),
    }
    if reason is not None and columns.get("error"):
        values[columns["error"]] = reason
    table = store.table_clause()
    return (
        update(table)
        .where(
            and_(
                table.c[columns["id"]] == raw_id,
                table.c[columns["status"]].in_(stuck),
                table.c[columns["started_at"]].is_(None)
                if raw_started is None
                else table.c[columns["started_at"]] == raw_started,
            )
        )
        .values(values)
    )


def _finish_time(store: BatchStore) -> Any:
    bound = store._require_bound()
    if bound.dialect == "sqlite":
        # SQLite has no server clock; write UTC in the layout SQLAlchemy
        # uses for its DateTime columns.
        now = datetime.now(UTC) + timedelta(seconds=store.clock_offset_seconds)
        return now.strftime("%Y-%m-%d %H:%M:%S.%f")
    finish = bound.times["finished_at"]
    return store.time_sql().at(finish, "now_shift")


def _render(statement: Any, engine: Engine) -> str:
    compiled = statement.compile(
        dialect=engine.dialect, compile_kwargs={"literal_binds": False}
    )
    return str(compiled).replace("\n", " ")

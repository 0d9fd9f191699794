"""Every preset read incrementally on every database it supports: the
framework's own tables with generated rows (tests/preset_rows.py), a
reconciliation, then changes written in the framework's layout (a running
job finishes, a finished one is retried, a new one starts, the clock
moves past due times) and, after each, the incremental snapshot compared
with the full read.

Tables go to a schema (PostgreSQL) or database (MariaDB) named
``inc2_...`` of this test's own, dropped afterwards.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from otel_batchmon import parse_config
from otel_batchmon._engine import create_monitor_engine
from otel_batchmon.incremental import IncrementalRefresh
from otel_batchmon.presets._selfcheck import substitute
from otel_batchmon.store import BatchStore
from tests import preset_oracle as oracle
from tests.conftest import open_database
from tests.preset_rows import (
    DIALECT_OF,
    Generated,
    Placement,
    _ddl_facts,
    backends_of,
    bare_table,
    generate,
    insert_rows,
    load_preset,
    parameters_for,
    preset_names,
    render_ddl,
)
from tests.test_incremental import assert_same

ROWS = 120
HOUR = 3600.0
NOW, SOON = "now", "soon"
_NAMES: dict[str, Any] = {"test": {"tables": [], "objects": []}}
Values = dict[str, Any]


def _solid_finish(rows: Rows, job: Values, now: dt.datetime) -> None:
    job["finished_at"] = now
    rows.drop("solid_queue_claimed_executions", job["id"])


def _solid_retry(rows: Rows, job: Values, now: dt.datetime) -> None:
    later = now + dt.timedelta(minutes=30)
    job |= {"finished_at": None, "scheduled_at": later}
    rows.drop("solid_queue_failed_executions", job["id"])
    rows.add(
        "solid_queue_scheduled_executions",
        {
            "job_id": job["id"],
            "queue_name": job["queue_name"],
            "priority": 0,
            "scheduled_at": later,
            "created_at": now,
        },
    )


def _solid_start(rows: Rows, job: Values, now: dt.datetime) -> None:
    rows.add(
        "solid_queue_claimed_executions",
        {"job_id": job["id"], "process_id": 1, "created_at": now},
    )


# Per preset: the main table, then what finishing a running job and
# retrying a finished one write there (NOW and SOON, half an hour
# later, are the database clock's), or functions for a layout of
# several tables.
LAYOUTS: dict[str, tuple[str, Any, Any]] = {
    "airflow_dag_run": (
        "dag_run",
        {"state": "success", "end_date": NOW},
        {
            "state": "queued",
            "queued_at": NOW,
            "start_date": None,
            "end_date": None,
            "run_after": SOON,
        },
    ),
    "celery_sqlalchemy": (
        "celery_taskmeta",
        {"status": "SUCCESS", "date_done": NOW},
        {"status": "RETRY", "date_done": None},
    ),
    "dagster_runs": (
        "runs",
        {"status": "SUCCESS", "end_time": NOW},
        {"status": "QUEUED", "start_time": None, "end_time": None},
    ),
    "good_job": (
        "good_jobs",
        {"finished_at": NOW, "error": None},
        {"finished_at": None, "scheduled_at": SOON, "error": "timeout"},
    ),
    "laravel_job_batches": (
        "job_batches",
        # Ran with failures: failed, and Laravel never sets a finish.
        {"failed_jobs": 2, "pending_jobs": 2},
        {"finished_at": None, "pending_jobs": 5, "failed_jobs": 0},
    ),
    "oban": (
        "oban_jobs",
        {"state": "completed", "completed_at": NOW},
        {"state": "retryable", "completed_at": None, "scheduled_at": SOON},
    ),
    "pgboss": (
        "job",
        {"state": "completed", "completed_on": NOW},
        {"state": "retry", "completed_on": None, "start_after": SOON},
    ),
    "pgboss_legacy": (
        "job",
        {"state": "completed", "completedOn": NOW},
        {"state": "retry", "completedOn": None, "startAfter": SOON},
    ),
    "prefect_flow_run": (
        "flow_run",
        {
            "state_type": "COMPLETED",
            "state_name": "Completed",
            "end_time": NOW,
        },
        {
            "state_type": "SCHEDULED",
            "state_name": "Scheduled",
            "start_time": None,
            "end_time": None,
            "expected_start_time": SOON,
        },
    ),
    "river": (
        "river_job",
        {"state": "completed", "finalized_at": NOW},
        {"state": "retryable", "finalized_at": None, "scheduled_at": SOON},
    ),
    "solid_queue": ("solid_queue_jobs", _solid_finish, _solid_retry),
    "spring_batch": (
        "JOB_EXECUTION",
        {"STATUS": "COMPLETED", "EXIT_CODE": "COMPLETED", "END_TIME": NOW},
        {"STATUS": "STARTED", "START_TIME": NOW, "END_TIME": None},
    ),
}
CASES = [
    pytest.param(name, backend, id=f"{name}-{backend}")
    for name in preset_names()
    for backend in backends_of(load_preset(name))
]


def test_every_preset_is_laid_out_here() -> None:
    assert sorted(LAYOUTS) == preset_names()


class Rows:
    """The generated rows of a preset, changed in place and written back
    whole (a reader sees only the committed result, the same as of
    UPDATE, INSERT and DELETE statements)."""

    def __init__(self, placement: Placement, data: Generated) -> None:
        self.placement = placement
        self.data = data
        preset = placement.preset
        self.id_column = preset["test"]["id_column"]
        self.main = LAYOUTS[preset["name"]][0].lower()
        self.unique = _ddl_facts(preset).unique.get(self.main, set())
        self.serial = 0

    def group(self, table: str) -> list[Values]:
        for found in self.data.groups:
            if bare_table(found.table).lower() == table.lower():
                return found.rows
        raise AssertionError(f"no rows of table {table}")

    def drop(self, table: str, job_id: Any) -> None:
        rows = self.group(table)
        rows[:] = [r for r in rows if r.get("job_id") != job_id]

    def add(self, table: str, row: Values) -> None:
        self.group(table).append(row)

    def by_status(self, status: str) -> list[Values]:
        """Rows of the main table the relation gives ``status``."""
        statuses = self.statuses()
        return [
            r
            for r in self.group(self.main)
            if statuses.get(str(r.get(self.id_column))) == status
        ]

    def statuses(self) -> dict[str, str]:
        """Job id -> canonical status, as the preset reads the rows."""
        preset = self.placement.preset
        relation = oracle.relation_rows(preset, self.data.rows_of)
        id_spec = preset["columns"]["id"]
        return {
            str(oracle.value(r, id_spec)): oracle.canonical(preset, r)
            for r in relation
        }

    def status_of(self, row: Values) -> str | None:
        return self.statuses().get(str(row.get(self.id_column)))

    def clone(self, row: Values, now: dt.datetime) -> Values:
        """A new job like ``row``: new unique values, its latest time two
        minutes ago."""
        self.serial += 1
        copy = dict(row)
        for key, value in row.items():
            if key.lower() in self.unique or key == self.id_column:
                copy[key] = self._fresh(value)
        times = [v for v in row.values() if isinstance(v, dt.datetime)]
        latest = max(times, default=now - dt.timedelta(minutes=2))
        shift = now - dt.timedelta(minutes=2) - latest
        for key, value in row.items():
            if isinstance(value, dt.datetime):
                copy[key] = value + shift
        self.group(self.main).append(copy)
        return copy

    def _fresh(self, value: Any) -> Any:
        if isinstance(value, int):
            return 900_000 + self.serial
        if isinstance(value, str) and len(value) == 36:
            return str(uuid.uuid4())
        return f"{value}-n{self.serial}"

    def write(self) -> None:
        """Replace every table's rows by the rows held here."""
        placement = self.placement
        with placement.engine.begin() as connection:
            for group in reversed(self.data.groups):
                table = substitute(group.table, _NAMES, placement.parameters)
                connection.execute(sa.text(f"DELETE FROM {table}"))
        insert_rows(placement, self.data)


@pytest.mark.parametrize(("name", "backend"), CASES)
def test_preset_incremental_reads_match_the_full_read(
    name: str, backend: str, tmp_path: Path
) -> None:
    preset = load_preset(name)
    data = generate(preset, ROWS, seed=41)
    with _placed(preset, backend, tmp_path) as (placement, reader):
        insert_rows(placement, data)
        store, incremental = _store(placement, reader)
        rows = Rows(placement, data)
        rng = random.Random(name)
        check = _checker(store, incremental, reader)
        check("full")

        now = _now(store)
        running = rng.sample(rows.by_status("processing"), 2)
        _apply(rows, name, 1, running[0], now)
        assert rows.status_of(running[0]) in ("completed", "failed")
        # pg-boss v9 keeps no completed job in its job table: the one
        # just finished is retried there.
        done = rows.by_status("completed")
        retried = rng.choice([r for r in done if r is not running[0]] or done)
        _apply(rows, name, 2, retried, now)
        started = rows.clone(running[1], now)
        if name == "solid_queue":
            _solid_start(rows, started, now)
        assert rows.status_of(retried) in ("pending", "processing")
        assert rows.status_of(started) == "processing"
        rows.write()
        check("incremental")

        # Past the retry's due time, then far enough for the window and
        # the stuck threshold to pass rows.
        store.clock_offset_seconds += HOUR
        check("incremental")
        now = _now(store)
        _apply(rows, name, 1, started, now)
        rows.write()
        store.clock_offset_seconds += 5 * HOUR
        check("incremental")
        assert incremental.reconciles == 1


def _apply(
    rows: Rows, name: str, which: int, row: Values, now: dt.datetime
) -> None:
    change = LAYOUTS[name][which]
    if callable(change):
        change(rows, row, now)
        return
    soon = now + dt.timedelta(minutes=30)
    for key, value in change.items():
        row[key] = {NOW: now, SOON: soon}.get(value, value)


def _now(store: BatchStore) -> dt.datetime:
    offset = dt.timedelta(seconds=store.clock_offset_seconds)
    return (dt.datetime.now(dt.UTC) + offset).replace(microsecond=0)


def _store(
    placement: Placement, reader: Engine
) -> tuple[BatchStore, IncrementalRefresh]:
    name = placement.preset["name"]
    config = parse_config(
        {
            "stores": {
                name: {
                    "preset": name,
                    "database_url": placement.url,
                    "preset_parameters": dict(placement.parameters),
                    "window": "24h",
                    "stuck_after": "4h",
                }
            }
        }
    )
    store = BatchStore(config.stores[0])
    with reader.connect() as connection:
        store.bind(connection)
    incremental = IncrementalRefresh(
        store, reconcile_every_seconds=HOUR, settle_lag_seconds=30
    )
    return store, incremental


def _checker(
    store: BatchStore, incremental: IncrementalRefresh, reader: Engine
) -> Callable[[str], None]:
    def check(mode: str) -> None:
        with reader.connect() as c, c.begin():
            got = incremental.read(c)
        with reader.connect() as c, c.begin():
            full = store.read(c)
        assert incremental.last_mode == mode
        assert_same(got, full)

    return check


@contextmanager
def _placed(
    preset: dict[str, Any], backend: str, tmp_path: Path
) -> Iterator[tuple[Placement, Engine]]:
    """The preset's tables in a namespace of this test, a writing engine
    and a monitor engine (read-only session, UTC) reading them."""
    database = open_database(backend, tmp_path)
    dialect = DIALECT_OF[backend]
    namespace = None if backend == "sqlite" else f"inc2_{uuid.uuid4().hex[:8]}"
    url = make_url(database.url)
    if backend == "postgresql":
        url = url.update_query_dict({"options": f"-csearch_path={namespace}"})
        create, drop = "CREATE SCHEMA", "DROP SCHEMA IF EXISTS {} CASCADE"
    elif backend == "mariadb":
        url = url.set(database=namespace)
        create, drop = "CREATE DATABASE", "DROP DATABASE IF EXISTS {}"
    admin = database.engine
    if namespace is not None:
        with admin.begin() as connection:
            connection.exec_driver_sql(f"{create} {namespace}")
    text_url = url.render_as_string(hide_password=False)
    writer = sa.create_engine(url)
    reader = create_monitor_engine(text_url, 10.0, 5.0)
    try:
        parameters = parameters_for(preset, dialect, namespace)
        placement = Placement(
            preset, backend, text_url, writer, parameters, namespace
        )
        for statement in render_ddl(preset, dialect, parameters):
            with writer.begin() as connection:
                connection.exec_driver_sql(statement)
        yield placement, reader
    finally:
        reader.dispose()
        writer.dispose()
        if namespace is not None:
            with admin.begin() as connection:
                connection.exec_driver_sql(drop.format(namespace))
        admin.dispose()

"""The application's own engine: one connection per refresh, its sessions
left as they were, and a starved pool skipped rather than waited on."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy import create_engine, event, insert, text
from sqlalchemy.engine import Engine

from otel_batchmon import BatchMonitor, parse_config
from otel_batchmon.tables import default_batch_table
from tests.conftest import Database
from tests.metrics import collect, value


def _table(db: Database) -> str:
    name = db.table_name()
    table = default_batch_table(name)
    table.create(db.engine)
    started = datetime.now(UTC) - timedelta(hours=5)
    with db.engine.begin() as connection:
        connection.execute(
            insert(table),
            [
                {
                    "id": "b1",
                    "status": "processing",
                    "created_at": started,
                    "started_at": started,
                    "finished_at": None,
                }
            ],
        )
    return name


def _app_engine(db: Database) -> Engine:
    url = db.url
    if db.backend == "postgresql":
        url += "?options=-c%20TimeZone%3DAsia/Tokyo"
    kwargs: dict[str, Any] = {}
    if db.backend != "sqlite":
        kwargs = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 30}
    return create_engine(url, **kwargs)


def _monitor(
    db: Database, name: str, engine: Engine
) -> tuple[BatchMonitor, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    config = parse_config(
        {"database_url": db.url, "table": name, "events": False}
    )
    monitor = BatchMonitor(
        config,
        MeterProvider(metric_readers=[reader]),
        engines={name: engine},
    )
    return monitor, reader


def _session(connection: Any, backend: str) -> tuple[Any, ...]:
    if backend == "postgresql":
        queries = (
            "SHOW TimeZone",
            "SHOW statement_timeout",
            "SHOW transaction_read_only",
        )
    elif backend == "mariadb":
        queries = ("SELECT @@session.time_zone", "SELECT @@max_statement_time")
    else:
        return ()
    return tuple(connection.exec_driver_sql(q).scalar() for q in queries)


def test_refresh_uses_one_connection_and_leaves_the_session_as_it_was(
    db: Database,
) -> None:
    name = _table(db)
    engine = _app_engine(db)
    with engine.connect() as connection:
        before = _session(connection, db.backend)
    peak = []

    @event.listens_for(engine, "checkout")
    def count(*_args: Any) -> None:
        peak.append(engine.pool.checkedout() if db.backend != "sqlite" else 1)

    monitor, reader = _monitor(db, name, engine)
    try:
        (outcome,) = monitor.refresh_now()
        points = collect(reader)
        with engine.connect() as connection:
            after = _session(connection, db.backend)
    finally:
        monitor.stop()
    assert outcome.ok, outcome.failure
    assert value(points, "batch.stuck.count", batch__store=name) == 1
    assert max(peak) == 1
    assert after == before
    if db.backend != "sqlite":
        assert engine.pool.checkedout() == 0
    engine.dispose()


@pytest.mark.parametrize("backend", ["postgres", "mariadb"])
def test_exhausted_application_pool_skips_the_refresh_at_once(
    backend: str, request: pytest.FixtureRequest
) -> None:
    db: Database = request.getfixturevalue(backend)
    name = _table(db)
    engine = _app_engine(db)
    monitor, reader = _monitor(db, name, engine)
    try:
        with engine.connect() as busy:  # the application's only connection
            begun = time.monotonic()
            (outcome,) = monitor.refresh_now()
            took = time.monotonic() - begun
            assert busy.exec_driver_sql("SELECT 1").scalar() == 1
        points = collect(reader)
    finally:
        monitor.stop()
        engine.dispose()
    assert outcome.failure is not None
    assert outcome.failure.error_type == "pool"
    assert took < 1.0
    errors = value(
        points,
        "batchmon.refresh.errors",
        batch__store=name,
        error__type="pool",
    )
    assert errors == 1


def test_monitor_never_disposes_the_application_engine(
    sqlite: Database,
) -> None:
    name = _table(sqlite)
    engine = _app_engine(sqlite)
    monitor, _ = _monitor(sqlite, name, engine)
    monitor.refresh_now()
    monitor.stop()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT 1")).scalar() == 1
    engine.dispose()


def test_instrumentor_takes_the_application_engine(
    postgres: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    from otel_batchmon.instrumentor import BatchmonInstrumentor

    name = _table(postgres)
    engine = _app_engine(postgres)
    for variable in [v for v in __import__("os").environ if "OTEL_" in v]:
        monkeypatch.delenv(variable)
    monkeypatch.setenv("OTEL_BATCHMON_TABLE", name)
    monkeypatch.setenv("OTEL_BATCHMON_EVENTS", "false")
    monkeypatch.setenv("OTEL_BATCHMON_LEADER_ELECTION", "false")
    monkeypatch.setenv("OTEL_BATCHMON_REFRESH_INTERVAL", "200ms")
    reader = InMemoryMetricReader()
    instrumentor = BatchmonInstrumentor()
    instrumentor.instrument(
        meter_provider=MeterProvider(metric_readers=[reader]), engine=engine
    )
    try:
        deadline = time.monotonic() + 10
        points: dict[str, Any] = {}
        while (
            time.monotonic() < deadline and "batch.stuck.count" not in points
        ):
            points = collect(reader)
            time.sleep(0.05)
    finally:
        instrumentor.uninstrument()
    assert value(points, "batch.stuck.count", batch__store=name) == 1
    with engine.connect() as connection:  # still the application's
        assert connection.exec_driver_sql("SELECT 1").scalar() == 1
    assert engine.pool.checkedout() == 0
    engine.dispose()

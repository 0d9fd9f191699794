"""The monitor's behaviour: stuck batches, the database clock, staleness,
refresh errors, timeouts and callbacks that never raise."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from opentelemetry import context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy import create_engine, event, insert, text
from sqlalchemy.engine import Connection

from otel_batchmon import BatchMonitor, parse_config
from otel_batchmon import monitor as monitor_module
from otel_batchmon.demo import INCIDENT_BATCH_ID
from otel_batchmon.tables import default_batch_table
from tests.conftest import Database
from tests.metrics import collect, value


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _table(db: Database, rows: list[dict[str, Any]]) -> str:
    name = db.table_name()
    table = default_batch_table(name)
    table.create(db.engine)
    if rows:
        with db.engine.begin() as connection:
            connection.execute(insert(table), rows)
    return name


def _monitor(
    db: Database, name: str, clock: FakeClock | None = None, **settings: Any
) -> tuple[BatchMonitor, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    config = parse_config(
        {"database_url": db.url, "table": name, "refresh_interval": "1s"}
        | settings
    )
    monitor = BatchMonitor(
        config,
        MeterProvider(metric_readers=[reader]),
        clock or time.monotonic,
    )
    return monitor, reader


def _batch(
    batch_id: str,
    status: str,
    started_hours_ago: float,
    ran_hours: float | None = None,
) -> dict[str, Any]:
    now = datetime.now(UTC)
    started = now - timedelta(hours=started_hours_ago)
    finished = (
        None if ran_hours is None else started + timedelta(hours=ran_hours)
    )
    return {
        "id": batch_id,
        "status": status,
        "created_at": started - timedelta(seconds=10),
        "started_at": started,
        "finished_at": finished,
    }


def test_incident_batch_processing_past_4h_is_the_one_stuck_batch(
    db: Database,
) -> None:
    name = _table(
        db,
        [
            _batch(INCIDENT_BATCH_ID, "processing", 5.2),
            _batch("long-but-done", "completed", 6.0, ran_hours=5.0),
            _batch("young", "processing", 0.5),
        ],
    )
    monitor, reader = _monitor(db, name)

    monitor.refresh_now()

    points = collect(reader)
    assert value(points, "batch.stuck.count", batch__store=name) == 1
    assert (
        value(
            points,
            "batch.active.count",
            batch__store=name,
            batch__status="processing",
        )
        == 2
    )
    oldest = value(points, "batch.processing.oldest_age", batch__store=name)
    assert oldest == pytest.approx(5.2 * 3600, abs=30)


def test_clock_offset_moves_batches_past_the_threshold_without_sleeping(
    db: Database,
) -> None:
    name = _table(db, [_batch("b1", "processing", 3.0)])
    plain, plain_reader = _monitor(db, name)
    ahead, ahead_reader = _monitor(db, name, clock_offset="2h")

    plain.refresh_now()
    ahead.refresh_now()

    before, after = collect(plain_reader), collect(ahead_reader)
    assert value(before, "batch.stuck.count", batch__store=name) == 0
    assert value(after, "batch.stuck.count", batch__store=name) == 1
    age_before = value(
        before, "batch.processing.oldest_age", batch__store=name
    )
    age_after = value(after, "batch.processing.oldest_age", batch__store=name)
    assert age_after - age_before == pytest.approx(7200, abs=30)


def test_stale_snapshot_reports_nothing_but_its_growing_age(
    sqlite: Database,
) -> None:
    name = _table(sqlite, [_batch("b1", "processing", 1.0)])
    clock = FakeClock()
    monitor, reader = _monitor(sqlite, name, clock, stale_after="3s")
    monitor.refresh_now()
    with sqlite.engine.begin() as connection:
        connection.execute(text(f"DROP TABLE {name}"))

    clock.now += 2
    failed = monitor.refresh_now()
    fresh_points = collect(reader)
    clock.now += 2
    stale_points = collect(reader)

    assert failed[0].failure is not None
    assert failed[0].failure.error_type == "schema"
    assert value(fresh_points, "batch.stuck.count", batch__store=name) == 0
    assert "batch.stuck.count" not in stale_points
    assert "batch.window.count" not in stale_points
    age = value(stale_points, "batchmon.snapshot.age", batch__store=name)
    assert age == pytest.approx(4.0)
    errors = value(
        stale_points,
        "batchmon.refresh.errors",
        batch__store=name,
        error__type="schema",
    )
    assert errors == 1


def test_never_refreshed_monitor_reports_age_since_start(
    sqlite: Database,
) -> None:
    clock = FakeClock()
    monitor, reader = _monitor(sqlite, "never_created", clock)
    clock.now += 7

    outcome = monitor.refresh_now()[0]
    points = collect(reader)

    assert outcome.failure is not None

    age = value(points, "batchmon.snapshot.age", batch__store="never_created")
    assert age == pytest.approx(7.0)
    assert "batch.window.count" not in points


def test_unreachable_database_counts_connection_errors_and_recovers(
    tmp_path: Any,
) -> None:
    path = tmp_path / "later.db"
    url = f"sqlite:///{path}"
    reader = InMemoryMetricReader()
    config = parse_config({"database_url": url, "table": "batches"})
    # A SQLite file in a folder that does not exist cannot be opened.
    missing = parse_config(
        {"database_url": f"sqlite:///{tmp_path}/nope/x.db", "table": "b"}
    )
    broken = BatchMonitor(missing, MeterProvider(metric_readers=[reader]))

    outcome = broken.refresh_now()[0]

    assert outcome.failure is not None
    assert outcome.failure.error_type == "connection"
    points = collect(reader)
    assert (
        value(
            points,
            "batchmon.refresh.errors",
            batch__store="b",
            error__type="connection",
        )
        == 1
    )
    engine = create_engine(url)
    default_batch_table("batches").create(engine)
    engine.dispose()
    assert BatchMonitor(config).refresh_now()[0].ok


@pytest.fixture
def table_lock(db: Database) -> Iterator[tuple[str, threading.Event]]:
    """A table held under an exclusive lock by another session."""
    name = _table(db, [_batch("b1", "processing", 1.0)])
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        engine = create_engine(db.url)
        with engine.connect() as connection:
            _lock(connection, db.backend, name)
            held.set()
            release.wait(30)
            connection.rollback()
            if db.backend == "mariadb":
                connection.execute(text("UNLOCK TABLES"))
        engine.dispose()

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(10)
    yield name, release
    release.set()
    holder.join(30)


def _lock(connection: Connection, backend: str, name: str) -> None:
    if backend == "postgresql":
        connection.execute(text(f"LOCK TABLE {name} IN ACCESS EXCLUSIVE MODE"))
    elif backend == "mariadb":
        connection.execute(text(f"LOCK TABLES {name} WRITE"))
    else:
        connection.exec_driver_sql("BEGIN EXCLUSIVE")


def test_refresh_behind_a_lock_is_cancelled_by_the_timeout(
    db: Database, table_lock: tuple[str, threading.Event]
) -> None:
    name, _release = table_lock
    monitor, reader = _monitor(
        db, name, refresh_interval="2s", statement_timeout="500ms"
    )

    begun = time.monotonic()
    outcome = monitor.refresh_now()[0]
    took = time.monotonic() - begun

    assert outcome.failure is not None
    assert outcome.failure.error_type == "timeout", outcome.failure
    # MariaDB's lock_wait_timeout counts whole seconds: 1 s at least.
    assert took < 5
    points = collect(reader)
    assert (
        value(
            points,
            "batchmon.refresh.errors",
            batch__store=name,
            error__type="timeout",
        )
        == 1
    )


def test_failing_gauge_is_logged_once_and_others_still_export(
    sqlite: Database,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = _table(sqlite, [_batch("b1", "processing", 1.0)])

    def broken(_snapshot: Any) -> Any:
        raise RuntimeError("boom")

    gauges = dict(monitor_module._SNAPSHOT_GAUGES)
    gauges["batch.stuck.count"] = broken
    monkeypatch.setattr(monitor_module, "_SNAPSHOT_GAUGES", gauges)
    monitor, reader = _monitor(sqlite, name)
    monitor.refresh_now()

    with caplog.at_level(logging.ERROR, logger="otel_batchmon"):
        first, second = collect(reader), collect(reader)

    assert "batch.stuck.count" not in first
    assert (
        value(
            second,
            "batch.active.count",
            batch__store=name,
            batch__status="processing",
        )
        == 1
    )
    failures = [r for r in caplog.records if "batch.stuck.count" in r.message]
    assert len(failures) == 1


def test_background_refresher_runs_below_a_second_and_stops(
    sqlite: Database,
) -> None:
    name = _table(sqlite, [_batch("b1", "processing", 1.0)])
    monitor, reader = _monitor(sqlite, name, refresh_interval="100ms")
    seen = threading.Event()
    outcomes: list[Any] = []
    original = monitor._record

    def observe(outcome: Any) -> None:
        original(outcome)
        outcomes.append(outcome)
        if len(outcomes) >= 3:
            seen.set()

    monitor.refresher._on_outcome = observe
    monitor.start()
    try:
        assert seen.wait(10), "three refreshes within 10 s"
    finally:
        monitor.stop(5)
    assert all(o.ok for o in outcomes)
    assert monitor.refresher._thread is None
    assert "batch.stuck.count" not in collect(reader)


def test_monitor_sql_is_not_traced_by_other_instrumentations(
    sqlite: Database,
) -> None:
    name = _table(sqlite, [])
    seen: list[object] = []
    monitor, _ = _monitor(sqlite, name)
    engine = monitor.refresher._states[name].engine

    @event.listens_for(engine, "before_cursor_execute")
    def spy(*_args: Any) -> None:
        # The key instrumentations consult before making a span.
        seen.append(context.get_value(context._SUPPRESS_INSTRUMENTATION_KEY))

    monitor.refresh_now()

    assert seen
    assert all(flag is True for flag in seen)


def test_pending_listed_as_stuck_counts_by_its_queued_time(
    db: Database,
) -> None:
    queued = datetime.now(UTC) - timedelta(hours=30)
    old_pending = {
        "id": "waiting",
        "status": "pending",
        "created_at": queued,
        "started_at": None,
        "finished_at": None,
    }
    name = _table(db, [old_pending, _batch("young", "pending", 0.1)])
    monitor, reader = _monitor(
        db, name, stuck_statuses=["processing", "pending"]
    )

    monitor.refresh_now()

    points = collect(reader)
    assert value(points, "batch.stuck.count", batch__store=name) == 1

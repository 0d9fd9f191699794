"""Finished rows recorded once, on SQLite, PostgreSQL and MariaDB.

Record counts are powers of two in the multi-monitor tests, so the sum
received is a bitmask of exactly which rows were recorded: a duplicate or
a loss changes it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy import insert

from otel_batchmon import BatchMonitor, parse_config
from otel_batchmon import events as events_module
from otel_batchmon.state import StateStore, create_state_engine
from otel_batchmon.tables import default_batch_table
from tests.conftest import Database
from tests.metrics import Points, collect
from tests.otlp_receiver import Received, grpc_receiver

STORE = "orders"


@pytest.fixture
def prefix(db: Database) -> Iterator[str]:
    """A unique state prefix on ``db``; its tables are dropped after."""
    chosen = f"bm{uuid.uuid4().hex[:8]}_"
    yield chosen
    state = StateStore(create_state_engine(db.url, 5.0, 5.0), chosen)
    state.drop()
    state.close()


def make_table(db: Database) -> str:
    name = db.table_name()
    default_batch_table(name).create(db.engine)
    return name


def add_rows(db: Database, name: str, rows: list[dict[str, Any]]) -> None:
    full = [
        {
            "kind": None,
            "created_at": None,
            "started_at": None,
            "records_total": None,
            "records_failed": None,
        }
        | row
        for row in rows
    ]
    with db.engine.begin() as connection:
        connection.execute(insert(default_batch_table(name)), full)


def batch(
    batch_id: str,
    finished_ago: float,
    duration: float | None = 60.0,
    status: str = "completed",
    **extra: Any,
) -> dict[str, Any]:
    """A row that finished ``finished_ago`` seconds before now."""
    finished = datetime.now(UTC) - timedelta(seconds=finished_ago)
    started = (
        None if duration is None else finished - timedelta(seconds=duration)
    )
    return {
        "id": batch_id,
        "status": status,
        "started_at": started,
        "finished_at": finished,
    } | extra


def monitor_for(
    db: Database, name: str, prefix: str, **settings: Any
) -> tuple[BatchMonitor, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    config = parse_config(
        {
            "database_url": db.url,
            "table": name,
            "name": STORE,
            "refresh_interval": "2s",
            "state_table_prefix": prefix,
            "backfill": "2h",
            "settle_lag": "1m",
        }
        | settings
    )
    return BatchMonitor(config, MeterProvider(metric_readers=[reader])), reader


def total(points: Points, metric: str, **attributes: str) -> Any:
    """Sum of a metric's points whose attributes include ``attributes``."""
    wanted = {k.replace("__", "."): v for k, v in attributes.items()}
    return sum(
        value
        for key, value in points.get(metric, {}).items()
        if wanted.items() <= dict(key).items()
    )


def series(points: Points, metric: str) -> dict[tuple[Any, ...], Any]:
    """{sorted attribute values except store and source: value}."""
    result = {}
    for key, value in points.get(metric, {}).items():
        attributes = dict(key)
        assert attributes.pop("batch.store") == STORE
        if metric.startswith("batch."):
            assert attributes.pop("batch.source") == "store"
        result[tuple(sorted(attributes.items()))] = value
    return result


def refreshed(monitor: BatchMonitor, reader: InMemoryMetricReader) -> Points:
    (outcome,) = monitor.refresh_now()
    assert outcome.ok, outcome.failure
    return collect(reader)


def test_rows_finished_before_the_first_start_are_not_replayed(
    db: Database, prefix: str
) -> None:
    name = make_table(db)
    add_rows(db, name, [batch(f"old-{i}", 600) for i in range(3)])
    monitor, reader = monitor_for(
        db, name, prefix, backfill="false", settle_lag="0s"
    )
    try:
        assert "batch.finished" not in refreshed(monitor, reader)
        add_rows(db, name, [batch("new-1", 0), batch("new-2", 0)])
        points = refreshed(monitor, reader)
    finally:
        monitor.stop()
    assert total(points, "batch.finished") == 2


def test_each_finished_row_is_recorded_once_with_its_exact_values(
    db: Database, prefix: str
) -> None:
    name = make_table(db)
    minute = 60.0
    queued_30s = {"created_at": None}  # filled below from the start time
    rows = [
        batch("a", 80 * minute, 120, kind="import", records_total=10,
              records_failed=2, **queued_30s),
        batch("b", 70 * minute, 600, "failed", kind="import",
              records_total=5, records_failed=5, **queued_30s),
        batch("c", 60 * minute, 30, kind="export"),
        batch("d", 50 * minute, -60, records_total=3, records_failed=4),
        batch("e", 40 * minute, None, "failed", kind="export"),
        batch("f", 30 * minute, 50),
        batch("g", 20 * minute, 10, "processing"),
        batch("h", 10.0, 10),
        batch("i", 5 * minute, 10, "cancelled"),
    ]  # fmt: skip
    for row in rows[:2]:
        row["created_at"] = row["started_at"] - timedelta(seconds=30)
    rows[4]["created_at"] = rows[4]["finished_at"] - timedelta(minutes=5)
    rows[5]["created_at"] = rows[5]["started_at"] + timedelta(seconds=10)
    add_rows(db, name, rows)
    monitor, reader = monitor_for(db, name, prefix)
    try:
        refreshed(monitor, reader)
        points = refreshed(monitor, reader)  # a second refresh adds nothing
    finally:
        monitor.stop()
    completed, failed = (
        ("batch.status", "completed"),
        ("batch.status", "failed"),
    )
    other = ("batch.status", "other")
    imp, exp = ("batch.kind", "import"), ("batch.kind", "export")
    assert series(points, "batch.finished") == {
        (imp, completed): 1,
        (imp, failed): 1,
        (exp, completed): 1,
        (exp, failed): 1,
        (completed,): 2,
        (other,): 1,
    }
    durations = series(points, "batch.duration")
    assert {k: v[0] for k, v in durations.items()} == {
        (imp, completed): 1,
        (imp, failed): 1,
        (exp, completed): 1,
        (completed,): 1,
        (other,): 1,
    }
    want_sums = {
        (imp, completed): 120,
        (imp, failed): 600,
        (exp, completed): 30,
        (completed,): 50,
        (other,): 10,
    }
    for key, seconds in want_sums.items():
        assert durations[key][1] == pytest.approx(seconds, abs=0.01), key
    queue = series(points, "batch.queue.duration")
    assert list(queue) == [(imp,)]
    assert queue[(imp,)][0] == 2
    assert queue[(imp,)][1] == pytest.approx(60, abs=0.01)
    assert series(points, "batch.records") == {
        (imp, ("batch.record.outcome", "ok")): 8,
        (imp, ("batch.record.outcome", "failed")): 7,
    }
    assert series(points, "batchmon.events.invalid") == {
        (("batchmon.reason", "finish_before_start"),): 1,
        (("batchmon.reason", "finish_without_start"),): 1,
        (("batchmon.reason", "start_before_queued"),): 1,
        (("batchmon.reason", "records_inconsistent"),): 1,
        (("batchmon.reason", "unfinished_status"),): 1,
    }


def test_a_restarted_monitor_goes_on_where_the_last_one_stopped(
    db: Database, prefix: str
) -> None:
    name = make_table(db)
    add_rows(db, name, [batch(f"w1-{i}", 600 + i) for i in range(5)])
    first, first_reader = monitor_for(db, name, prefix)
    try:
        assert total(refreshed(first, first_reader), "batch.finished") == 5
    finally:
        first.stop()
    add_rows(db, name, [batch(f"w2-{i}", 300 + i) for i in range(3)])
    second, second_reader = monitor_for(db, name, prefix)
    try:
        points = refreshed(second, second_reader)
    finally:
        second.stop()
    assert total(points, "batch.finished") == 3


def test_a_backlog_is_read_in_bounded_pages_across_refreshes(
    db: Database, prefix: str
) -> None:
    name = make_table(db)
    rows = 2 * events_module.MAX_PAGES + 5
    add_rows(db, name, [batch(f"r{i:03}", 900 - i) for i in range(rows)])
    monitor, reader = monitor_for(db, name, prefix, event_page_size=2)
    try:
        first = total(refreshed(monitor, reader), "batch.finished")
        second = total(refreshed(monitor, reader), "batch.finished")
    finally:
        monitor.stop()
    assert first == 2 * events_module.MAX_PAGES
    assert second == rows
    state = StateStore(create_state_engine(db.url, 5.0, 5.0), prefix)
    try:
        claims = state.due_claims(STORE, 2**62, 100)
    finally:
        state.close()
    assert [c.rows for c in claims] == [2] * (rows // 2) + [1]


def test_two_monitors_at_once_record_every_row_exactly_once(
    db: Database, prefix: str
) -> None:
    name = make_table(db)

    def wave(start: int, stop: int) -> list[dict[str, Any]]:
        return [
            batch(f"r{i:02}", 1200 - i, records_total=2**i)
            for i in range(start, stop)
        ]

    add_rows(db, name, wave(0, 30))
    monitors = [monitor_for(db, name, prefix, event_page_size=3) for _ in "ab"]
    barrier = threading.Barrier(3, timeout=20)
    failures: list[BaseException] = []

    def run(monitor: BatchMonitor) -> None:
        barrier.wait()
        try:
            for _ in range(6):
                monitor.refresh_now()
        except BaseException as exc:  # reported by the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(m,)) for m, _ in monitors]
    for thread in threads:
        thread.start()
    barrier.wait()
    add_rows(db, name, wave(30, 45))
    for thread in threads:
        thread.join(60)
    try:
        assert not failures
        points = [refreshed(m, r) for m, r in monitors]
    finally:
        for m, _ in monitors:
            m.stop()
    ok = [
        total(p, "batch.records", batch__record__outcome="ok") for p in points
    ]
    assert sum(ok) == 2**45 - 1
    assert ok[0] & ok[1] == 0
    assert sum(total(p, "batch.finished") for p in points) == 45


def test_rows_committed_after_their_range_was_claimed_are_counted_late(
    db: Database, prefix: str
) -> None:
    name = make_table(db)
    add_rows(db, name, [batch("on-time", 10)])
    monitor, reader = monitor_for(db, name, prefix, settle_lag="200ms")
    try:
        assert total(refreshed(monitor, reader), "batch.finished") == 1
        add_rows(db, name, [batch("late", 20)])
        late = _poll(
            lambda: total(refreshed(monitor, reader), "batchmon.rows.late"),
            until=lambda found: found > 0,
        )
        points = refreshed(monitor, reader)
    finally:
        monitor.stop()
    assert late == 1
    assert total(points, "batchmon.rows.late") == 1
    assert total(points, "batch.finished") == 1


def test_kinds_beyond_the_cap_fold_into_other(
    sqlite: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cap is database independent: SQLite (a temporary file) is enough.
    db = sqlite
    prefix = f"bm{uuid.uuid4().hex[:8]}_"
    monkeypatch.setattr(events_module, "MAX_KINDS", 2)
    name = make_table(db)
    add_rows(
        db,
        name,
        [batch(f"k{i}", 600 - i, kind=k) for i, k in enumerate("abcd")],
    )
    monitor, reader = monitor_for(db, name, prefix)
    try:
        points = refreshed(monitor, reader)
    finally:
        monitor.stop()
    kinds = {
        dict(key)["batch.kind"]: value
        for key, value in points["batch.finished"].items()
    }
    assert kinds == {"a": 1, "b": 1, "_other": 2}


def _poll(
    read: Callable[[], Any],
    until: Callable[[Any], bool],
    seconds: float = 15.0,
) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        found = read()
        if until(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _cli_env(
    db: Database, name: str, prefix: str, **extra: str
) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "PG"))
    }
    return (
        env
        | {
            "OTEL_SERVICE_NAME": "batchmon-events-test",
            "OTEL_BATCHMON_DATABASE_URL": db.url,
            "OTEL_BATCHMON_TABLE": name,
            "OTEL_BATCHMON_NAME": STORE,
            "OTEL_BATCHMON_STATE_TABLE_PREFIX": prefix,
            "OTEL_BATCHMON_BACKFILL": "1h",
        }
        | extra
    )


def _cli(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "otel_batchmon", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def records_by_replica(received: Received) -> dict[str, int]:
    """The last cumulative batch.records{ok} each replica exported."""
    last: dict[str, int] = {}
    for request in list(received.requests):
        for resource in request.resource_metrics:
            replica = next(
                (
                    a.value.string_value
                    for a in resource.resource.attributes
                    if a.key == "batchmon.replica"
                ),
                "?",
            )
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name != "batch.records":
                        continue
                    last[replica] = sum(
                        p.as_int
                        for p in metric.sum.data_points
                        if any(
                            a.key == "batch.record.outcome"
                            and a.value.string_value == "ok"
                            for a in p.attributes
                        )
                    )
    return last


def _mask(start: int, stop: int) -> int:
    return sum(2**i for i in range(start, stop))


def _wave(start: int, stop: int, finished_ago: float) -> list[dict[str, Any]]:
    return [
        batch(f"r{i:02}", finished_ago - i, records_total=2**i)
        for i in range(start, stop)
    ]


def test_run_once_exports_the_rows_it_claimed_in_its_one_export(
    db: Database, prefix: str
) -> None:
    name = make_table(db)
    add_rows(db, name, _wave(0, 4, 600))
    for run, expected in enumerate((_mask(0, 4), _mask(4, 6))):
        if run:
            add_rows(db, name, _wave(4, 6, 300))
        with grpc_receiver() as (endpoint, received):
            env = _cli_env(
                db,
                name,
                prefix,
                OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
                OTEL_RESOURCE_ATTRIBUTES="batchmon.replica=once",
            )
            process = _cli("run", "--once", env=env)
            _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr
        assert len(received.requests) == 1
        assert records_by_replica(received) == {"once": expected}


def test_sigkill_loses_only_points_recorded_since_the_last_export(
    db: Database, prefix: str
) -> None:
    """A killed monitor loses at most what it recorded since its last
    successful export; the next one records the rest; nothing twice."""
    name = make_table(db)
    add_rows(db, name, _wave(0, 10, 900))
    state = StateStore(create_state_engine(db.url, 5.0, 5.0), prefix)
    processes: list[subprocess.Popen[str]] = []
    try:
        with grpc_receiver() as (endpoint, received):

            def start(replica: str) -> subprocess.Popen[str]:
                env = _cli_env(
                    db,
                    name,
                    prefix,
                    OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
                    OTEL_RESOURCE_ATTRIBUTES=f"batchmon.replica={replica}",
                    OTEL_METRIC_EXPORT_INTERVAL="1500",
                    OTEL_BATCHMON_REFRESH_INTERVAL="200ms",
                    OTEL_BATCHMON_SETTLE_LAG="0s",
                )
                processes.append(_cli("run", env=env))
                return processes[-1]

            first = start("a")
            exported = _poll(
                lambda: records_by_replica(received).get("a", 0),
                until=lambda value: value == _mask(0, 10),
                seconds=30,
            )
            assert exported == _mask(0, 10)
            # Right after an export: claimed rows now wait ~1.5 s for the
            # next one, so the kill lands between record and export.
            add_rows(db, name, _wave(10, 20, 800))
            mark = _poll(
                lambda: state.watermark(STORE),
                until=lambda m: m is not None and m.batch_id == "r19",
            )
            first.kill()
            first.wait(15)
            assert mark is not None
            assert mark.batch_id == "r19"
            lost = _mask(0, 20) - records_by_replica(received)["a"]
            add_rows(db, name, _wave(20, 30, 700))
            second = start("b")
            got = _poll(
                lambda: records_by_replica(received).get("b", 0),
                until=lambda value: value == _mask(20, 30),
                seconds=30,
            )
            second.terminate()
            second.wait(15)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(15)
        state.close()
    # B recorded exactly the rows A never claimed; A's lost points are all
    # from the page claimed after its last export (rows 10-19), or none.
    assert got == _mask(20, 30)
    assert lost in (0, _mask(10, 20))
    final = records_by_replica(received)
    assert final["a"] & final["b"] == 0
    assert final["a"] + final["b"] + lost == _mask(0, 30)

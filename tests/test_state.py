"""The monitor's own state tables on SQLite, PostgreSQL and MariaDB:
migration, version checks, compare-and-set and unwritable databases."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy import select, update

from otel_batchmon import BatchMonitor, parse_config
from otel_batchmon.state import (
    SCHEMA_VERSION,
    StateError,
    StateStore,
    StateUnavailable,
    Watermark,
    create_state_engine,
)
from otel_batchmon.tables import default_batch_table
from tests.conftest import Database
from tests.metrics import collect


def new_prefix() -> str:
    """A state table prefix no other test or agent uses."""
    return f"bm{uuid.uuid4().hex[:8]}_"


def open_state(url: str, prefix: str) -> StateStore:
    return StateStore(create_state_engine(url, 5.0, 5.0), prefix)


@pytest.fixture
def prefix(db: Database) -> Iterator[str]:
    """A unique state prefix on ``db``; its tables are dropped after."""
    chosen = new_prefix()
    yield chosen
    cleanup = open_state(db.url, chosen)
    cleanup.drop()
    cleanup.close()


def read_only_url(db: Database) -> str:
    """The same database reached through a session that cannot write."""
    if db.backend == "sqlite":
        path = db.url.removeprefix("sqlite:///")
        return f"sqlite:///file:{path}?mode=ro&uri=true"
    if db.backend == "postgresql":
        return db.url + "?options=-c%20default_transaction_read_only%3Don"
    return db.url + "?init_command=SET%20SESSION%20TRANSACTION%20READ%20ONLY"


def _in_threads(count: int, work: Callable[[], Any]) -> list[Any]:
    barrier = threading.Barrier(count, timeout=20)
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = work()
        except Exception as exc:  # reported by the assertion below
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads)
    return results


def test_first_open_creates_version_1_and_reopening_changes_nothing(
    db: Database, prefix: str
) -> None:
    state = open_state(db.url, prefix)
    try:
        state.open()
        state.open()
        with state.engine.connect() as connection:
            version = state.tables.version
            rows = connection.execute(select(version)).all()
        assert [tuple(r) for r in rows] == [(1, SCHEMA_VERSION)]
        assert state.watermark("orders") is None
    finally:
        state.close()


def test_four_monitors_opening_at_once_all_succeed(
    db: Database, prefix: str
) -> None:
    states = [open_state(db.url, prefix) for _ in range(4)]
    try:
        results = iter(states)
        lock = threading.Lock()

        def open_one() -> None:
            with lock:
                state = next(results)
            state.open()

        assert _in_threads(4, open_one) == [None] * 4
    finally:
        for state in states:
            state.close()


def test_a_schema_newer_than_the_code_is_refused_by_name(
    db: Database, prefix: str
) -> None:
    state = open_state(db.url, prefix)
    try:
        state.open()
        with state.engine.begin() as connection:
            connection.execute(update(state.tables.version).values(version=99))
        with pytest.raises(StateError) as raised:
            state.open()
        message = str(raised.value)
        assert "schema version 99" in message
        assert f"up to {SCHEMA_VERSION}" in message
        assert "state_table_prefix" in message
        assert not isinstance(raised.value, StateUnavailable)
    finally:
        state.close()


def test_compare_and_set_moves_only_from_the_current_watermark(
    db: Database, prefix: str
) -> None:
    state = open_state(db.url, prefix)
    try:
        state.open()
        first = state.start("orders", Watermark(1_000, None), 5_000)
        assert first == Watermark(1_000, None)
        # A second first start keeps the existing mark.
        assert state.start("orders", Watermark(9, None), 6_000) == first
        moved = Watermark(2_000, "b-7")
        assert state.advance("orders", first, moved, 3, 7_000)
        assert not state.advance("orders", first, Watermark(3_000, "x"), 1, 8)
        assert state.watermark("orders") == moved
        (claim,) = state.due_claims("orders", 7_000, 10)
        assert (claim.after, claim.upto, claim.rows) == (first, moved, 3)
        assert state.settle("orders", claim)
        assert not state.settle("orders", claim)
        assert state.due_claims("orders", 7_000, 10) == []
    finally:
        state.close()


def test_eight_racing_claims_from_one_watermark_let_exactly_one_win(
    db: Database, prefix: str
) -> None:
    states = [open_state(db.url, prefix) for _ in range(8)]
    try:
        states[0].open()
        start = states[0].start("orders", Watermark(1_000, "a"), 1)
        racers = iter(enumerate(states))
        lock = threading.Lock()

        def claim() -> int | None:
            with lock:
                index, state = next(racers)
            new = Watermark(2_000 + index, f"b-{index}")
            won = state.advance("orders", start, new, 1, 2)
            return index if won else None

        results = _in_threads(8, claim)
        winners = [r for r in results if r is not None]
        assert len(winners) == 1, results
        winner = winners[0]
        assert states[0].watermark("orders") == Watermark(
            2_000 + winner, f"b-{winner}"
        )
        assert len(states[0].due_claims("orders", 10, 100)) == 1
    finally:
        for state in states:
            state.close()


def test_read_only_state_database_is_reported_as_unavailable(
    db: Database, prefix: str
) -> None:
    if db.backend == "sqlite":
        with db.engine.begin():  # mode=ro needs the file to exist
            pass
    state = open_state(read_only_url(db), prefix)
    try:
        with pytest.raises(StateUnavailable) as raised:
            state.open()
        assert "cannot write" in str(raised.value)
        assert "password" not in str(raised.value).lower()
    finally:
        state.close()


def test_unwritable_state_turns_events_off_with_one_warning_and_gauges_stay(
    db: Database, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    name = db.table_name()
    default_batch_table(name).create(db.engine)
    reader = InMemoryMetricReader()
    config = parse_config(
        {
            "database_url": db.url,
            "table": name,
            "name": "orders",
            "refresh_interval": "1s",
            "state_url": read_only_url(db),
            "state_table_prefix": prefix,
        }
    )
    monitor = BatchMonitor(config, MeterProvider(metric_readers=[reader]))
    caplog.set_level(logging.WARNING, logger="otel_batchmon")
    try:
        for _ in range(3):
            (outcome,) = monitor.refresh_now()
            assert outcome.ok
        points = collect(reader)
    finally:
        monitor.stop()
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "events" in r.getMessage()
    ]
    assert len(warnings) == 1, warnings
    assert "gauges keep working" in warnings[0]
    assert "state_url" in warnings[0]
    completed = frozenset(
        {("batch.store", "orders"), ("batch.status", "completed")}
    )
    assert points["batch.window.count"][completed] == 0
    assert "batch.finished" not in points


def test_state_database_away_at_start_is_waited_for_not_given_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from otel_batchmon._state_handle import StateHandle

    folder = tmp_path / "later"
    config = parse_config(
        {
            "database_url": f"sqlite:///{tmp_path / 'b.db'}",
            "table": "b",
            "state_url": f"sqlite:///{folder / 'state.db'}",
        }
    )
    handle = StateHandle(config.state_url or "", config)

    first = handle.ready()
    second = handle.ready()
    folder.mkdir()
    third = handle.ready()

    assert first is None
    assert second is None
    assert third is not None
    assert not handle.off
    waits = [r for r in caplog.records if "wait for the state" in r.message]
    assert "state.db" in waits[0].message
    assert len(waits) == 1
    handle.close()

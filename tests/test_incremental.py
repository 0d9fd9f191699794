"""Incremental refresh against the full read, on SQLite, PostgreSQL and
MariaDB: after every change the incremental snapshot must equal the one a
full read gives at the same moment."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    MetaData,
    String,
    Table,
    delete,
    event,
    insert,
    update,
)
from sqlalchemy.dialects import mysql

from otel_batchmon import parse_config
from otel_batchmon.incremental import IncrementalRefresh
from otel_batchmon.refresher import Refresher
from otel_batchmon.snapshot import StoreSnapshot
from otel_batchmon.store import BatchStore
from otel_batchmon.tables import default_batch_table
from tests.conftest import Database
from tests.reference import generate_rows

LAG = 60.0
HOUR = 3600.0
SECOND = timedelta(seconds=1)


@dataclass
class Setup:
    """A table, its bound store and an incremental refresh of it."""

    db: Database
    table: Table
    store: BatchStore
    incremental: IncrementalRefresh

    def now(self) -> datetime:
        """The store's database clock, as far as the host can tell."""
        offset = timedelta(seconds=self.store.clock_offset_seconds)
        return datetime.now(UTC) + offset

    def read(self) -> tuple[StoreSnapshot, StoreSnapshot]:
        """The incremental snapshot, then the full read's."""
        with self.db.engine.connect() as c, c.begin():
            got = self.incremental.read(c)
        with self.db.engine.connect() as c, c.begin():
            full = self.store.read(c)
        return got, full

    def check(self, mode: str = "incremental") -> StoreSnapshot:
        """Read both ways; they must agree, the incremental in ``mode``."""
        got, full = self.read()
        assert self.incremental.last_mode == mode
        assert_same(got, full)
        return got

    def write(self, *statements: Any) -> None:
        with self.db.engine.begin() as c:
            for statement in statements:
                c.execute(statement)

    def insert(self, rows: Iterable[dict[str, Any]]) -> None:
        self.write(insert(self.table).values(list(rows)))

    def set(self, batch_id: str, **values: Any) -> Any:
        return (
            update(self.table)
            .where(self.table.c.id == batch_id)
            .values(**values)
        )


def make(
    db: Database,
    rows: list[dict[str, Any]],
    table: Table | None = None,
    **settings: Any,
) -> Setup:
    if table is None:
        table = default_batch_table(db.table_name("inc_batches"))
    name = table.name
    table.create(db.engine)
    if rows:
        with db.engine.begin() as c:
            c.execute(insert(table), rows)
    config = parse_config({"database_url": db.url, "table": name, **settings})
    store = BatchStore(config.stores[0])
    with db.engine.connect() as c:
        store.bind(c)
    incremental = IncrementalRefresh(
        store, reconcile_every_seconds=HOUR, settle_lag_seconds=LAG
    )
    return Setup(db, table, store, incremental)


def assert_same(got: StoreSnapshot, full: StoreSnapshot) -> None:
    assert dict(got.window_counts) == dict(full.window_counts)
    assert dict(got.active_counts) == dict(full.active_counts)
    assert got.stuck_count == full.stuck_count
    assert dict(got.invalid_rows) == dict(full.invalid_rows)
    assert got.unmapped_statuses == full.unmapped_statuses
    assert got.failure_ratio == pytest.approx(full.failure_ratio)
    assert got.duration_mean_seconds == pytest.approx(
        full.duration_mean_seconds, abs=1e-4
    )
    # The two reads run apart: by milliseconds, or by seconds on a loaded
    # machine; each age is measured at its own read's database clock.
    apart = abs(got.database_time - full.database_time)
    for name in (
        "processing_oldest_age_seconds",
        "pending_oldest_age_seconds",
        "last_success_age_seconds",
    ):
        mine, theirs = getattr(got, name), getattr(full, name)
        assert (mine is None) == (theirs is None), name
        if mine is not None:
            assert mine == pytest.approx(theirs, abs=1.0 + apart), name


def row(
    batch_id: str,
    status: str,
    started: datetime | None,
    finished: datetime | None = None,
    queued: datetime | None = None,
) -> dict[str, Any]:
    queued = queued or (started or datetime.now(UTC)) - timedelta(seconds=5)
    return {
        "id": batch_id,
        "status": status,
        "created_at": queued,
        "started_at": started,
        "finished_at": finished,
    }


def settled_completed(rows: list[dict[str, Any]], now: datetime) -> list[str]:
    """Ids of completed rows well inside the window, finished long ago."""
    return [
        r["id"]
        for r in rows
        if r["status"] == "completed"
        and r["started_at"] is not None
        and r["finished_at"] is not None
        and now - timedelta(hours=20) < r["started_at"] < r["finished_at"]
        and r["finished_at"] < now - timedelta(hours=1)
    ]


def test_inserts_status_changes_reopens_and_late_commits_match(
    db: Database,
) -> None:
    rows = generate_rows(datetime.now(UTC), count=200, seed=21)
    s = make(db, rows)
    s.check(mode="full")
    now = s.now()
    minute = timedelta(minutes=1)

    s.insert(
        [
            row("n1", "pending", None, queued=now - minute),
            row("n2", "pending", None, queued=now - 2 * minute),
            row("n3", "processing", now - 3 * minute),
            row("n4", "completed", now - 9 * minute, now - minute),
            row("n5", "failed", now - 8 * minute, now - minute / 2),
        ]
    )
    s.check()

    now = s.now()
    s.write(s.set("n1", status="processing", started_at=now))
    s.check()

    now = s.now()
    s.write(
        s.set("n1", status="completed", finished_at=now),
        s.set("n3", status="failed", finished_at=now),
    )
    s.check()

    # Retries re-open finished rows: the finish time is cleared.
    first, second = settled_completed(rows, now)[:2]
    s.write(
        s.set(first, status="pending", started_at=None, finished_at=None),
        s.set(second, status="processing", started_at=now, finished_at=None),
        s.set("n4", status="processing", finished_at=None),
    )
    s.check()

    now = s.now()
    s.write(
        s.set(second, status="completed", finished_at=now),
        s.set(first, status="processing", started_at=now),
    )
    s.check()
    s.write(s.set(first, status="failed", finished_at=s.now()))
    s.check()

    # Committed now, finished half a settle lag ago: still counted.
    now = s.now()
    late = timedelta(seconds=LAG / 2)
    s.insert([row("late", "completed", now - 2 * late, now - late)])
    s.check()
    assert s.incremental.reconciles == 1


def test_random_churn_matches_at_every_step(db: Database) -> None:
    rows = generate_rows(datetime.now(UTC), count=150, seed=25)
    s = make(db, rows)
    s.check(mode="full")
    status = {r["id"]: r["status"] for r in rows}
    rng = random.Random(26)
    for step in range(25):
        now = s.now()
        # Rows the last read saw active; only these may leave the active
        # set without a recent finish time (see test_only_reconciliation).
        seen = {k for k, v in status.items() if v in ("pending", "processing")}
        for n in range(rng.randint(2, 6)):
            _random_change(s, rng, status, seen, now, f"s{step:02d}-{n}")
        s.check()
        s.store.clock_offset_seconds += rng.choice((0, 0, 60, 900, 5400))
    assert s.incremental.reconciles == 1


def _random_change(
    s: Setup,
    rng: random.Random,
    status: dict[str, str],
    seen: set[str],
    now: datetime,
    new_id: str,
) -> None:
    def pick(*wanted: str, among: set[str] | None = None) -> str | None:
        found = sorted(
            k
            for k, v in status.items()
            if v in wanted and (among is None or k in among)
        )
        return rng.choice(found) if found else None

    def ago(seconds: float) -> datetime:
        return now - timedelta(seconds=seconds)

    soon = ago(rng.uniform(0, LAG / 2))
    kind = rng.randrange(9)
    target = None
    if kind == 0:
        status[new_id] = "pending"
        s.insert(
            [row(new_id, "pending", None, queued=ago(rng.uniform(0, 600)))]
        )
    elif kind == 1:
        status[new_id] = "processing"
        s.insert([row(new_id, "processing", ago(rng.uniform(0, 6 * HOUR)))])
    elif kind == 2 and (target := pick("pending")):
        status[target] = "processing"
        s.write(s.set(target, status="processing", started_at=now))
    elif kind == 3 and (target := pick("processing")):
        # Finished now, or committed up to half a settle lag late.
        status[target] = rng.choice(("completed", "failed"))
        s.write(s.set(target, status=status[target], finished_at=soon))
    elif kind == 4 and (target := pick("processing", "pending", among=seen)):
        # Leaves the active set without a recent finish time.
        status[target] = rng.choice(("archived", "completed", "failed"))
        finish = None if status[target] == "archived" else ago(3 * HOUR)
        start = ago(4 * HOUR)
        s.write(
            s.set(
                target,
                status=status[target],
                started_at=start,
                finished_at=finish,
            )
        )
    elif kind == 5 and (target := pick("completed", "failed")):
        # A retry re-opens a finished row.
        status[target] = rng.choice(("pending", "processing"))
        start = None if status[target] == "pending" else now
        s.write(
            s.set(
                target,
                status=status[target],
                started_at=start,
                finished_at=None,
            )
        )
    elif kind == 6:
        status[new_id] = rng.choice(("completed", "failed"))
        start = ago(rng.uniform(60, 30 * HOUR))
        s.insert([row(new_id, status[new_id], start, soon)])
    elif kind == 7:
        # Times ahead of the clock: not settled until the clock passes.
        status[new_id] = "completed"
        start = now + timedelta(minutes=rng.choice((-30, 10)))
        finish = now + timedelta(minutes=20)
        s.insert([row(new_id, "completed", start, finish)])
    elif kind == 8 and (target := pick("pending", "processing")):
        del status[target]
        s.write(delete(s.table).where(s.table.c.id == target))


def test_rows_leaving_the_active_set_are_looked_up_by_id(
    db: Database,
) -> None:
    now = datetime.now(UTC)
    hours = [now - timedelta(hours=h) for h in range(6)]
    s = make(
        db,
        [
            row("a", "processing", hours[2]),
            row("b", "processing", hours[3]),
            row("c", "processing", hours[1]),
            row("d", "pending", None, queued=hours[4]),
            row("e", "processing", hours[5]),
        ],
    )
    s.check(mode="full")

    # None of these finish after the watermark: only the lookup by id
    # of rows that left the active set can see them.
    s.write(
        s.set("a", status="archived"),
        s.set("b", status="completed", finished_at=hours[2]),
        delete(s.table).where(s.table.c.id == "c"),
        s.set("d", status="failed", started_at=hours[4], finished_at=hours[3]),
    )
    got = s.check()
    assert got.window_counts["other"] == 1
    assert got.window_counts["completed"] == 1
    assert s.incremental.rows_held == 3


def test_rows_age_out_as_the_window_slides(db: Database) -> None:
    now = datetime.now(UTC)
    rows = []
    for i in range(60):
        started = now - timedelta(minutes=30 * i + 7)
        status = "failed" if i % 4 == 0 else "completed"
        finished = started + timedelta(minutes=5 + i % 7)
        rows.append(row(f"r{i:02d}", status, started, finished))
    rows.append(row("p1", "processing", now - timedelta(hours=2, minutes=7)))
    s = make(db, rows)
    s.check(mode="full")
    held = [s.incremental.rows_held]

    for hours in (1, 3, 6, 12, 25, 31):
        s.store.clock_offset_seconds = hours * HOUR
        got = s.check()
        held.append(s.incremental.rows_held)
        finished = got.window_counts["completed"] + got.window_counts["failed"]
        assert s.incremental.rows_held == finished

    assert held == sorted(held, reverse=True)
    assert held[-1] == 0


def test_only_reconciliation_sees_writes_outside_the_watermark(
    db: Database,
) -> None:
    rows = generate_rows(datetime.now(UTC), count=120, seed=22)
    s = make(db, rows)
    s.check(mode="full")
    now = s.now()
    hour = timedelta(hours=1)
    old = settled_completed(rows, now)

    s.insert(
        [
            # Inserted straight into a status that is not active, with no
            # finish time, or finished longer ago than the settle lag.
            row("x1", "completed", now - hour),
            row("x2", "archived", now - hour),
            row(
                "x3", "completed", now - hour, now - timedelta(seconds=3 * LAG)
            ),
        ]
    )
    s.write(
        s.set(old[0], status="failed"),
        delete(s.table).where(s.table.c.id == old[1]),
    )
    got, full = s.read()
    assert s.incremental.last_mode == "incremental"
    assert dict(got.window_counts) != dict(full.window_counts)

    with s.db.engine.connect() as c, c.begin():
        fixed = s.incremental.reconcile(c)
    assert_same(fixed, full)
    assert "window count other" in s.incremental.last_corrections
    s.check()


def _completed(prefix: str, count: int, now: datetime) -> list[dict[str, Any]]:
    """Completed rows well inside the window, ids prefix0, prefix1, ..."""
    hour = timedelta(hours=1)
    return [
        row(f"{prefix}{n}", "completed", now - 3 * hour, now - 2 * hour)
        for n in range(count)
    ]


def _table_without_key(db: Database, name: str) -> Table:
    return Table(
        db.table_name(name),
        MetaData(),
        Column("id", String(64)),
        Column("status", String(32)),
        Column("created_at", DateTime(timezone=True)),
        Column("started_at", DateTime(timezone=True)),
        Column("finished_at", DateTime(timezone=True)),
    )


def test_reconciliation_is_one_statement_over_the_window(
    db: Database,
) -> None:
    rows = generate_rows(datetime.now(UTC), count=200, seed=27)
    s = make(db, rows)
    sent: list[str] = []

    def count(*args: Any) -> None:
        sent.append(args[2])

    event.listen(s.db.engine, "before_cursor_execute", count)
    try:
        with s.db.engine.connect() as c, c.begin():
            got = s.incremental.reconcile(c)
    finally:
        event.remove(s.db.engine, "before_cursor_execute", count)
    # The snapshot comes from the rows read, not from a full read besides.
    assert len(sent) == 1, sent
    assert s.store.last_snapshot is got
    with s.db.engine.connect() as c, c.begin():
        full = s.store.read(c)
    assert_same(got, full)
    assert sum(got.window_counts.values()) > 100


def test_ids_that_are_not_unique_fall_back_to_full_reads(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    # No primary key: two rows may carry one id, which cannot be held by
    # id; the full read counts both, so the incremental must too.
    table = _table_without_key(db, "inc_shared")
    now = datetime.now(UTC)
    hour = timedelta(hours=1)
    rows = _completed("r", 5, now)
    rows += [
        row("r0", "failed", now - 4 * hour, now - 3 * hour),
        row("r1", "processing", now - hour),
    ]
    s = make(db, rows, table)
    caplog.set_level("INFO", logger="otel_batchmon.incremental")
    got = s.check(mode="full")
    assert got.window_counts["completed"] == 5
    assert got.window_counts["failed"] == 1
    assert "2 rows share their id" in caplog.text
    s.insert([row("r9", "completed", now - hour, s.now())])
    s.check(mode="full")

    s.write(
        delete(s.table).where(
            s.table.c.id.in_(["r0", "r1"]), s.table.c.status != "completed"
        )
    )
    s.incremental.request_reconcile()
    s.check(mode="full")
    assert "every id is unique again" in caplog.text
    s.insert([row("r10", "completed", now - hour, s.now())])
    s.check()
    assert caplog.text.count("share their id") == 1


@pytest.mark.parametrize("second", ["processing", "failed"])
def test_an_id_shared_with_an_active_row_after_a_reconciliation_is_caught(
    db: Database, second: str
) -> None:
    # A second row takes the id of a running one: both active, or the new
    # one finished (read with the running one in the same statement).
    table = _table_without_key(db, "inc_shared_later")
    now = datetime.now(UTC)
    hour = timedelta(hours=1)
    rows = _completed("c", 4, now)
    rows.append(row("d", "processing", now - hour))
    s = make(db, rows, table)
    s.check(mode="full")
    s.check()
    finish = s.now() if second == "failed" else None
    s.insert([row("d", second, now - hour / 2, finish)])
    s.check(mode="full")
    assert s.incremental.reconciles == 2
    s.check(mode="full")  # full reads while the id is shared


def test_an_id_reused_outside_the_window_is_reconciled_not_confused(
    db: Database,
) -> None:
    # A run id used again two days later: looking the new row up by id
    # also finds the old one, which must not take its place.
    table = _table_without_key(db, "inc_reused")
    now = datetime.now(UTC)
    hour = timedelta(hours=1)
    rows = [
        row("nightly", "processing", now - hour),
        row("nightly", "completed", now - 50 * hour, now - 49 * hour),
        row("other", "completed", now - 3 * hour, now - 2 * hour),
    ]
    s = make(db, rows, table)
    s.check(mode="full")
    s.check()
    # Finished with a time older than the settle lag: not among the newly
    # finished rows, so it is looked up by id, and both rows come back.
    s.write(
        update(s.table)
        .where(s.table.c.id == "nightly", s.table.c.status == "processing")
        .values(status="failed", finished_at=s.now() - 3 * LAG * SECOND)
    )
    got = s.check(mode="full")
    assert got.window_counts["failed"] == 1
    assert s.incremental.reconciles == 2
    s.insert([row("late", "completed", now - hour, s.now())])
    s.check()


@pytest.mark.parametrize("first", ["processing", "processing "])
def test_a_status_with_a_trailing_space_counts_as_sql_compares_it(
    db: Database, first: str
) -> None:
    # MariaDB's default collation ignores trailing spaces, so SQL groups
    # both spellings as one value and returns either; the mapping must
    # agree with it whichever comes back. Elsewhere they differ.
    now = datetime.now(UTC)
    second = "processing " if first == "processing" else "processing"
    rows = [
        row("a", first, now - timedelta(hours=5)),
        row("b", second, now - timedelta(hours=6)),
        row("c", "completed", now - timedelta(hours=2), now - HOUR * SECOND),
    ]
    s = make(db, rows)
    got = s.check(mode="full")
    padded = db.backend == "mariadb"
    assert got.active_counts["processing"] == (2 if padded else 1)
    assert got.stuck_count == (2 if padded else 1)
    assert got.window_counts["other"] == (0 if padded else 1)
    s.check()


# Whole-second DATETIME would drop fractions; naive, so the zone applies.
NAIVE = DateTime(timezone=False).with_variant(
    mysql.DATETIME(fsp=6), "mysql", "mariadb"
)
ZONE = timedelta(hours=5, minutes=30)
WORDS = {
    "pending": "queued",
    "processing": "running",
    "completed": "success",
    "failed": "error",
}


def local(moment: datetime | None) -> datetime | None:
    return None if moment is None else (moment + ZONE).replace(tzinfo=None)


def test_naive_zone_and_mapped_statuses_match(db: Database) -> None:
    table = Table(
        db.table_name("inc_mapped"),
        MetaData(),
        Column("id", String(16), primary_key=True),
        Column("state", String(16)),
        Column("queued", NAIVE),
        Column("begun", NAIVE),
        Column("completed_at", NAIVE),
    )
    rows = generate_rows(datetime.now(UTC), count=150, seed=23, raw=WORDS)
    s = make(
        db,
        [
            {
                "id": r["id"],
                "state": r["status"],
                "queued": local(r["created_at"]),
                "begun": local(r["started_at"]),
                "completed_at": local(r["finished_at"]),
            }
            for r in rows
        ],
        table,
        timezone="+05:30",
        columns={
            "status": "state",
            "queued_at": "queued",
            "started_at": "begun",
            "finished_at": "completed_at",
            "records_total": "",
            "records_failed": "",
        },
        statuses={k: [v] for k, v in WORDS.items()},
    )
    s.check(mode="full")
    now = s.now()
    running = [r["id"] for r in rows if r["status"] == "running"]
    s.write(
        s.set(running[0], state="success", completed_at=local(now)),
        s.set(running[1], state="error", completed_at=local(now)),
        s.set(running[2], state="queued", begun=None),
    )
    s.insert(
        [
            {
                "id": "z1",
                "state": "success",
                "queued": local(now - timedelta(minutes=6)),
                "begun": local(now - timedelta(minutes=5)),
                "completed_at": local(now),
            }
        ]
    )
    got = s.check()
    assert got.window_counts["completed"] > 0


def test_memory_follows_the_window_over_repeated_cycles(
    sqlite: Database,
) -> None:
    s = make(sqlite, [], window="1h")
    s.check(mode="full")
    held, minutes = [], []
    for cycle in range(24):
        now = s.now()
        s.insert(
            row(
                f"c{cycle:02d}-{i:02d}",
                "completed" if i % 5 else "failed",
                now - timedelta(minutes=5, seconds=i),
                now - timedelta(minutes=1),
            )
            for i in range(20)
        )
        s.store.clock_offset_seconds += 600
        got = s.check()
        held.append(s.incremental.rows_held)
        minutes.append(s.incremental.minutes_held)
        finished = got.window_counts["completed"] + got.window_counts["failed"]
        assert s.incremental.rows_held == finished

    # Six cycles of 20 rows fill the hour; after that nothing grows.
    assert max(held[6:]) == held[-1] <= 120
    assert max(minutes[6:]) <= 12


def test_periodic_reconciliation_and_a_clock_that_goes_back(
    sqlite: Database,
) -> None:
    rows = generate_rows(datetime.now(UTC), count=50, seed=24)
    s = make(sqlite, rows)
    ticks = [0.0]
    s.incremental = IncrementalRefresh(
        s.store, reconcile_every_seconds=600, clock=lambda: ticks[0]
    )
    s.check(mode="full")
    s.check()
    ticks[0] += 601
    s.check(mode="full")
    s.check()
    s.store.clock_offset_seconds = -HOUR
    s.check(mode="full")
    assert s.incremental.reconciles == 3


def test_refresher_reads_incrementally_and_reconciles_on_leader_change(
    sqlite: Database,
) -> None:
    now = datetime.now(UTC)
    s = make(sqlite, [row("p", "processing", now - timedelta(hours=1))])
    settings = {"database_url": sqlite.url, "table": s.table.name}
    by_config = parse_config(
        {**settings, "refresh_mode": "incremental", "reconcile_every": "1h"}
    )
    refreshers = [
        Refresher(by_config),
        Refresher(parse_config(settings), incremental=True),
    ]
    full_only = Refresher(by_config, incremental=False)
    try:
        for refresher in refreshers:
            refresh(refresher)
            refresh(refresher)
        # Invisible to the incremental reads: no finish time, never active.
        s.insert([row("hidden", "completed", now - timedelta(minutes=5))])
        assert refresh(full_only).window_counts["completed"] == 1
        for refresher in refreshers:
            assert refresh(refresher).window_counts["completed"] == 0
            refresher._leader_changed(True)
            assert refresh(refresher).window_counts["completed"] == 1
    finally:
        for refresher in [*refreshers, full_only]:
            refresher.stop()


def refresh(refresher: Refresher) -> StoreSnapshot:
    [outcome] = refresher.refresh_all()
    assert outcome.snapshot is not None, outcome.failure
    return outcome.snapshot


def test_status_rules_and_epoch_seconds_read_incrementally(
    db: Database,
) -> None:
    table = Table(
        db.table_name("inc_rules"),
        MetaData(),
        Column("id", String(16), primary_key=True),
        Column("begun", BigInteger),
        Column("ended", BigInteger),
        Column("crashed", BigInteger),
    )
    now = datetime.now(UTC).timestamp()

    def at(minutes_ago: float) -> int:
        return round(now - 60 * minutes_ago)

    s = make(
        db,
        [
            {"id": "r1", "begun": at(300), "ended": None, "crashed": None},
            {"id": "r2", "begun": at(90), "ended": at(80), "crashed": None},
            {"id": "r3", "begun": at(70), "ended": None, "crashed": at(60)},
            {"id": "r4", "begun": None, "ended": None, "crashed": None},
        ],
        table,
        columns={
            "status": "",
            "queued_at": "",
            "started_at": "begun",
            "finished_at": ["ended", "crashed"],
            "records_total": "",
            "records_failed": "",
            "kind": "",
            "error": "",
        },
        status_rules=[
            {
                "name": "crashed",
                "status": "failed",
                "when": [{"column": "crashed", "op": "not_null"}],
            },
            {
                "name": "ended",
                "status": "completed",
                "when": [{"column": "ended", "op": "not_null"}],
            },
            {
                "name": "running",
                "status": "processing",
                "when": [{"column": "begun", "op": "not_null"}],
            },
        ],
        default_status="pending",
        timestamps={"default": "epoch_s"},
    )
    s.check(mode="full")
    s.write(
        s.set("r1", ended=at(0)),
        s.set("r4", begun=at(1)),
        s.set("r2", ended=None),
    )
    got = s.check()
    assert dict(got.active_counts) == {"pending": 0, "processing": 2}
    s.write(s.set("r4", crashed=at(0)))
    assert s.check().window_counts["failed"] == 2


CLOCK_RULE = {
    "name": "scheduled",
    "status": "pending",
    "when": [{"column": "started_at", "op": "future"}],
}


@pytest.mark.parametrize(
    "mapping",
    [
        {"status_rules": [CLOCK_RULE]},
        {"filter": [{"column": "finished_at", "op": "past"}]},
    ],
    ids=["clock_rule", "clock_filter"],
)
def test_mappings_not_mirrored_fall_back_to_full_reads(
    sqlite: Database,
    caplog: pytest.LogCaptureFixture,
    mapping: dict[str, Any],
) -> None:
    now = datetime.now(UTC)
    s = make(
        sqlite,
        [row("f", "completed", now - timedelta(hours=2), now)],
        **mapping,
    )
    for _ in range(3):
        s.check(mode="full")
    assert s.incremental.reconciles == 0
    warned = [r for r in caplog.records if "does not support" in r.message]
    assert len(warned) == 1

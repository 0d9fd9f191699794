"""Incremental refresh of the mappings a job framework needs: a due time,
no start time, a window by finish or queued time, ``only_when`` and
``finish_optional_for``. On SQLite, PostgreSQL and MariaDB, after every
change the incremental snapshot must equal the full read's."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Column, DateTime, Table
from sqlalchemy.dialects import mysql

from otel_batchmon.tables import default_batch_table
from tests.conftest import Database
from tests.reference import generate_rows
from tests.test_incremental import HOUR, Setup, _random_change, make, row

AWARE = DateTime(timezone=True).with_variant(
    mysql.DATETIME(fsp=6), "mysql", "mariadb"
)
STUCK_PENDING = ["pending", "processing"]
# Each mapping the incremental refresh used to read in full, as store
# settings over the default table (plus a due column where named).
MAPPINGS: dict[str, dict[str, Any]] = {
    "due_at": {
        "columns": {"due_at": "scheduled_at"},
        "stuck_statuses": STUCK_PENDING,
    },
    "no_start": {
        "columns": {"started_at": ""},
        "window_by": "queued_at",
        "stuck_statuses": STUCK_PENDING,
    },
    "window_by_finished_at": {"window_by": "finished_at"},
    "window_by_queued_at": {"window_by": "queued_at"},
    "only_when": {
        "only_when": {
            "started_at": ["processing"],
            "finished_at": ["completed", "failed", "other"],
        },
        "finish_optional_for": ["failed"],
        "statuses": {"other": ["archived"]},
    },
}


def due_table(db: Database) -> Table:
    """The default table with a due time, ``scheduled_at``."""
    table = default_batch_table(db.table_name("inc2_due"))
    table.append_column(Column("scheduled_at", AWARE))
    return table


def make_mapped(db: Database, name: str, rows: list[dict[str, Any]]) -> Setup:
    settings = MAPPINGS[name]
    if "due_at" in settings.get("columns", {}):
        return make(db, rows, due_table(db), **settings)
    table = default_batch_table(db.table_name(f"inc2_{name}"))
    return make(db, rows, table, **settings)


@pytest.mark.parametrize("name", list(MAPPINGS))
def test_random_churn_matches_for_every_mapping(
    db: Database, name: str
) -> None:
    now = datetime.now(UTC)
    rows = generate_rows(now, count=120, seed=31)
    rng = random.Random(f"{name}:32")
    if name == "due_at":
        for r in rows:
            r["scheduled_at"] = _maybe_due(rng, now)
    s = make_mapped(db, name, rows)
    s.check(mode="full")
    status = {r["id"]: r["status"] for r in rows}
    for step in range(14):
        now = s.now()
        seen = {k for k, v in status.items() if v in ("pending", "processing")}
        for n in range(rng.randint(2, 5)):
            _random_change(s, rng, status, seen, now, f"m{step:02d}-{n}")
        if name == "due_at":
            _reschedule(s, rng, status, now)
        s.check()
        s.store.clock_offset_seconds += rng.choice((0, 60, 1800, 5400))
    assert s.incremental.reconciles == 1


def _maybe_due(rng: random.Random, now: datetime) -> datetime | None:
    if rng.random() < 0.3:
        return None
    return now + timedelta(hours=rng.uniform(-8, 3))


def _reschedule(
    s: Setup, rng: random.Random, status: dict[str, str], now: datetime
) -> None:
    """A retry pushed to later, or a job made due at once."""
    pending = sorted(k for k, v in status.items() if v == "pending")
    for target in rng.sample(pending, min(2, len(pending))):
        s.write(s.set(target, scheduled_at=_maybe_due(rng, now)))


def test_pending_rows_count_in_age_and_stuck_only_once_due(
    db: Database,
) -> None:
    now = datetime.now(UTC)
    hour = timedelta(hours=1)

    def pending(
        batch_id: str, queued: datetime, due: datetime | None
    ) -> dict[str, Any]:
        return row(batch_id, "pending", None, queued=queued) | {
            "scheduled_at": due
        }

    def done(batch_id: str, started: datetime) -> dict[str, Any]:
        finished = started + hour / 2
        return row(batch_id, "completed", started, finished) | {
            "scheduled_at": None
        }

    s = make_mapped(
        db,
        "due_at",
        [
            pending("later", now - 6 * hour, now + 2 * hour),
            pending("due", now - 6 * hour, now - 5 * hour),
            pending("due_late", now - 5 * hour, now - 3 * hour),
            pending("undated", now - 1 * hour, None),
            row("run", "processing", now - 2 * hour) | {"scheduled_at": None},
            done("d1", now - 3 * hour),
            done("d2", now - 9 * hour),
        ],
    )
    got = s.check(mode="full")
    assert got.active_counts["pending"] == 4
    assert got.stuck_count == 1
    assert got.pending_oldest_age_seconds == pytest.approx(5 * HOUR, abs=5)

    # A retry of a finished job, due in half an hour; the first due job
    # starts; the running one finishes.
    now = s.now()
    s.write(
        s.set(
            "d1",
            status="pending",
            started_at=None,
            finished_at=None,
            scheduled_at=now + hour / 2,
        ),
        s.set("due", status="processing", started_at=now),
        s.set("run", status="completed", finished_at=now),
    )
    got = s.check()
    assert got.pending_oldest_age_seconds == pytest.approx(3 * HOUR, abs=5)

    # The clock passes both future due times.
    s.store.clock_offset_seconds += 2.5 * HOUR
    got = s.check()
    assert got.stuck_count == 1
    assert got.active_counts["pending"] == 4
    assert s.incremental.reconciles == 1


def test_rows_without_a_start_time_age_and_stick_by_queued_time(
    db: Database,
) -> None:
    now = datetime.now(UTC)
    hour = timedelta(hours=1)

    def queued(batch_id: str, status: str, ago: float) -> dict[str, Any]:
        return row(batch_id, status, None, queued=now - ago * hour)

    s = make_mapped(
        db,
        "no_start",
        [
            queued("old", "pending", 5),
            queued("new", "pending", 1),
            queued("run", "processing", 6),
            queued("nofinish", "failed", 2),
            queued("cancelled", "archived", 3) | {"finished_at": now - hour},
            queued("done", "completed", 6) | {"finished_at": now - hour},
        ],
    )
    got = s.check(mode="full")
    assert got.stuck_count == 1
    assert got.duration_mean_seconds is None
    assert got.invalid_rows["finished_without_finish_time"] == 1
    assert got.invalid_rows["finish_without_start"] == 0

    now = s.now()
    s.write(
        s.set("run", status="completed", finished_at=now),
        s.set("done", status="pending", finished_at=None),
        s.set("new", status="failed", finished_at=now),
    )
    s.insert([queued("late", "completed", 0.5) | {"finished_at": now}])
    got = s.check()
    assert got.stuck_count == 2
    s.store.clock_offset_seconds += 20 * HOUR
    s.check()
    assert s.incremental.reconciles == 1


@pytest.mark.parametrize("by", ["finished_at", "queued_at"])
def test_window_by_finish_or_queued_time_slides_with_the_clock(
    db: Database, by: str
) -> None:
    now = datetime.now(UTC)
    hour = timedelta(hours=1)
    rows = [
        row(f"r{i:02d}", "completed", now - (i + 3) * hour, now - i * hour)
        for i in range(0, 30, 2)
    ]
    rows.append(row("run", "processing", now - 2 * hour))
    rows.append(row("old", "processing", now - 30 * hour))
    s = make_mapped(db, f"window_by_{by}", rows)
    got = s.check(mode="full")
    assert got.window_counts["processing"] == int(by == "queued_at")

    now = s.now()
    s.write(s.set("old", status="failed", finished_at=now))
    s.write(s.set("r04", status="processing", finished_at=None))
    got = s.check()
    # Finished now after starting 30 h ago: in a window by finish only.
    assert got.window_counts["failed"] == int(by == "finished_at")
    for hours in (3, 8, 13):
        s.store.clock_offset_seconds = hours * HOUR
        s.check()
    assert s.incremental.reconciles == 1


def test_only_when_and_optional_finish_decide_invalid_rows(
    db: Database,
) -> None:
    now = datetime.now(UTC)
    hour = timedelta(hours=1)
    s = make_mapped(
        db,
        "only_when",
        [
            # A start kept only while processing, a finish only once
            # finished or cancelled: none of these is invalid.
            row("ok", "completed", now - 3 * hour, now - 2 * hour),
            row("optional", "failed", now - 3 * hour),
            row("cancel", "archived", None, now - hour),
            row("run", "processing", now - 2 * hour, now - hour),
            # Completed with no finish time: invalid.
            row("bad", "completed", now - 3 * hour),
        ],
    )
    got = s.check(mode="full")
    assert got.invalid_rows["finished_without_finish_time"] == 1
    assert got.invalid_rows["finish_without_start"] == 0
    assert got.unmapped_statuses == frozenset()

    # The running batch fails without a finish time (Laravel's "ran with
    # failures"): it leaves the active rows and is looked up by id.
    s.write(s.set("run", status="failed", finished_at=None))
    got = s.check()
    assert got.window_counts["failed"] == 2
    s.write(s.set("ok", status="processing", finished_at=None))
    s.check()
    assert s.incremental.reconciles == 1

"""An independent, pure-Python reading of the design's gauge definitions,
and a generator of batch rows that exercises every branch of them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

CANONICAL = ("pending", "processing", "completed", "failed")
WINDOW = timedelta(hours=24)
STUCK = timedelta(hours=4)


@dataclass(frozen=True)
class Expected:
    window_counts: dict[str, int]
    failure_ratio: float | None
    duration_mean: float | None
    stuck: int
    active: dict[str, int]
    processing_oldest_age: float | None
    pending_oldest_age: float | None
    last_success_age: float | None
    invalid: dict[str, int]


def expected(
    rows: list[dict[str, Any]],
    now: datetime,
    mapping: dict[str, str],
    window: timedelta = WINDOW,
    stuck_after: timedelta = STUCK,
) -> Expected:
    """Compute every gauge straight from the design's definitions."""
    status_of = [mapping.get(r["status"], "other") for r in rows]
    in_window = [_in_window(r, now, window) for r in rows]
    counts = dict.fromkeys((*CANONICAL, "other"), 0)
    durations: list[float] = []
    invalid = dict.fromkeys(
        (
            "finish_before_start",
            "finish_without_start",
            "finished_without_finish_time",
            "future_timestamp",
        ),
        0,
    )
    for row, status, inside in zip(rows, status_of, in_window, strict=True):
        if not inside:
            continue
        counts[status] += 1
        start, finish = row["started_at"], row["finished_at"]
        if finish is not None and start is not None and finish < start:
            invalid["finish_before_start"] += 1
        if (
            finish is not None
            and start is None
            and status in ("completed", "failed")
        ):
            invalid["finish_without_start"] += 1
        if finish is None and status in ("completed", "failed"):
            invalid["finished_without_finish_time"] += 1
        if finish is not None and finish > now:
            invalid["future_timestamp"] += 1
        if (
            status in ("completed", "failed")
            and start is not None
            and finish is not None
            and start <= finish <= now
        ):
            durations.append((finish - start).total_seconds())
    for row, status in zip(rows, status_of, strict=True):
        start = row["started_at"]
        if status in ("pending", "processing") and start and start > now:
            invalid["future_timestamp"] += 1
    decided = counts["completed"] + counts["failed"]
    return Expected(
        window_counts=counts,
        failure_ratio=counts["failed"] / decided if decided else None,
        duration_mean=sum(durations) / len(durations) if durations else None,
        stuck=sum(
            1
            for row, status in zip(rows, status_of, strict=True)
            if status == "processing"
            and row["started_at"] is not None
            and row["started_at"] < now - stuck_after
        ),
        active={
            s: sum(1 for x in status_of if x == s)
            for s in ("pending", "processing")
        },
        processing_oldest_age=_oldest(
            rows, status_of, "processing", "started_at", now
        ),
        pending_oldest_age=_oldest(
            rows, status_of, "pending", "created_at", now
        ),
        last_success_age=_last_success(rows, status_of, now),
        invalid=invalid,
    )


def _in_window(row: dict[str, Any], now: datetime, window: timedelta) -> bool:
    start = row["started_at"]
    if start is None:
        start = row.get("created_at")
    return start is not None and now - window <= start <= now


def _oldest(
    rows: list[dict[str, Any]],
    statuses: list[str],
    wanted: str,
    role: str,
    now: datetime,
) -> float | None:
    times = [
        row[role]
        for row, status in zip(rows, statuses, strict=True)
        if status == wanted and row[role] is not None and row[role] <= now
    ]
    return (now - min(times)).total_seconds() if times else None


def _last_success(
    rows: list[dict[str, Any]], statuses: list[str], now: datetime
) -> float | None:
    times = [
        row["finished_at"]
        for row, status in zip(rows, statuses, strict=True)
        if status == "completed"
        and row["finished_at"] is not None
        and row["finished_at"] <= now
    ]
    return (now - max(times)).total_seconds() if times else None


def generate_rows(
    now: datetime,
    count: int = 400,
    seed: int = 1,
    raw: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Rows over 48 h with every status, NULLs and invalid timestamps.

    ``raw`` renames canonical statuses to the table's own words. No time
    falls within a minute of a window or stuck boundary, so the few
    seconds between generating and reading cannot change the answer.
    """
    rng = random.Random(seed)
    words = raw or {s: s for s in CANONICAL}
    rows = [_random_row(rng, now, words, i) for i in range(count)]
    return rows


def _safe(
    rng: random.Random, now: datetime, low_h: float, high_h: float
) -> datetime:
    for _ in range(100):
        moment = now - timedelta(hours=rng.uniform(low_h, high_h))
        if all(
            abs((moment - edge).total_seconds()) > 60
            for edge in (now - WINDOW, now - STUCK, now)
        ):
            return moment
    raise AssertionError("could not place a time away from the boundaries")


def _random_row(
    rng: random.Random, now: datetime, words: dict[str, str], index: int
) -> dict[str, Any]:
    status = rng.choices([*CANONICAL, "other"], weights=[8, 10, 60, 15, 2])[0]
    queued = _safe(rng, now, 0.1, 48)
    started = queued + timedelta(seconds=rng.uniform(1, 300))
    finish = started + timedelta(seconds=rng.uniform(5, 3 * 3600))
    row: dict[str, Any] = {
        "id": f"b{index:05d}",
        "status": words.get(status, "archived"),
        "created_at": queued,
        "started_at": started,
        "finished_at": finish,
        "records_total": rng.randint(0, 10_000),
        "records_failed": 0,
    }
    if status == "pending":
        row |= {"started_at": None, "finished_at": None}
    elif status == "processing":
        row["finished_at"] = None
        row["started_at"] = _safe(rng, now, 0.1, 30)
    elif finish > now - timedelta(seconds=60):
        row["finished_at"] = now - timedelta(minutes=rng.uniform(2, 10))
        row["started_at"] = row["finished_at"] - timedelta(minutes=1)
    flaw = rng.random()
    if status in ("completed", "failed") and flaw < 0.02:
        row["finished_at"] = row["started_at"] - timedelta(minutes=5)
    elif status in ("completed", "failed") and flaw < 0.04:
        row["finished_at"] = None
    elif status == "completed" and flaw < 0.05:
        row["finished_at"] = now + timedelta(hours=2)
    elif status == "failed" and flaw < 0.06:
        row["started_at"] = None
    return row

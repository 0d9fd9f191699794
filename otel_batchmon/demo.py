"""Realistic demo batches for ``otel-batchmon demo`` and the tests."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["INCIDENT_BATCH_ID", "demo_rows"]

# The batch of the original incident: it sat in 'processing' for hours
# (started 2025-08-06T05:09:50Z) while the alert fired every 5 minutes.
INCIDENT_BATCH_ID = "1eb6c582-68e9-4987-a92f-13da7327ef23"
_KINDS = ("customer-import", "invoice-sync", "catalog-refresh")


@dataclass(frozen=True)
class _Plan:
    kind: str
    queued: datetime
    wait: timedelta
    run: timedelta
    records: int
    failed: bool


def demo_rows(
    now: datetime | None = None, count: int = 300, seed: int = 7
) -> list[dict[str, Any]]:
    """Return ``count`` batches spread over the 48 hours before ``now``.

    Mostly completed, some failed, a few pending and processing, the
    incident's batch stuck in processing for 5 h 12 min, and one batch
    that ran for 5 h and finished (long, but never stuck).
    """
    now = now or datetime.now(UTC)
    rng = random.Random(seed)
    rows = [_row(_plan(rng, now), now, rng) for _ in range(count)]
    rows.append(
        _fixed(INCIDENT_BATCH_ID, "processing", now, hours_ago=5.2, ran=None)
    )
    rows.append(_fixed(_uuid(rng), "completed", now, hours_ago=6.0, ran=5.0))
    for minutes in (2, 5, 9, 14):
        queued = now - timedelta(minutes=minutes)
        rows.append(_fixed(_uuid(rng), "pending", queued, 0, None))
    for minutes in (3, 11, 26):
        rows.append(_fixed(_uuid(rng), "processing", now, minutes / 60, None))
    return rows


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _plan(rng: random.Random, now: datetime) -> _Plan:
    return _Plan(
        kind=rng.choice(_KINDS),
        queued=now - timedelta(seconds=rng.uniform(0, 48 * 3600)),
        wait=timedelta(seconds=rng.expovariate(1 / 40)),
        run=timedelta(seconds=min(rng.lognormvariate(6.0, 0.9), 3 * 3600)),
        records=int(rng.lognormvariate(8.0, 1.2)),
        failed=rng.random() < 0.08,
    )


def _row(plan: _Plan, now: datetime, rng: random.Random) -> dict[str, Any]:
    started = plan.queued + plan.wait
    finished = started + plan.run
    row: dict[str, Any] = {
        "id": _uuid(rng),
        "kind": plan.kind,
        "created_at": plan.queued,
        "started_at": None,
        "finished_at": None,
        "records_total": plan.records,
        "records_failed": 0,
        "error": None,
    }
    if started > now:
        return row | {"status": "pending"}
    if finished > now:
        return row | {"status": "processing", "started_at": started}
    failed_records = rng.randint(1, max(1, plan.records // 10))
    outcome = {"started_at": started, "finished_at": finished}
    if plan.failed:
        return (
            row
            | outcome
            | {
                "status": "failed",
                "records_failed": failed_records,
                "error": "upstream API returned 503",
            }
        )
    return row | outcome | {"status": "completed"}


def _fixed(
    batch_id: str,
    status: str,
    now: datetime,
    hours_ago: float,
    ran: float | None,
) -> dict[str, Any]:
    started = now - timedelta(hours=hours_ago)
    finished = None if ran is None else started + timedelta(hours=ran)
    return {
        "id": batch_id,
        "kind": "customer-import",
        "status": status,
        "created_at": started - timedelta(seconds=30),
        "started_at": None if status == "pending" else started,
        "finished_at": finished,
        "records_total": 125_000,
        "records_failed": 0,
        "error": None,
    }

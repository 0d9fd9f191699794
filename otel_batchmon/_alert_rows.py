"""The reads behind alerts: which batches are stuck, which kinds fail.

Run on the store's read-only engine, after a good refresh, only by the
instance that reports the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, cast, column, func, literal, null, select
from sqlalchemy.engine import Connection

from otel_batchmon.store import BatchStore

__all__ = ["StuckBatch", "failed_streak_kinds", "stuck_batches"]

# Enough to act on; a table with more stuck batches has a bigger problem,
# and the stuck count gauge still reports all of them.
_STUCK_LIMIT = 500


@dataclass(frozen=True)
class StuckBatch:
    """A batch in a stuck status started before the (lowest) threshold."""

    batch_id: str
    raw_id: Any
    status: str
    kind: str | None
    started_us: int
    raw_started: Any
    age_seconds: float

    @property
    def key(self) -> str:
        """Incident identity: the batch and its start, so a retry is new."""
        return f"{self.batch_id}@{self.started_us}"


def stuck_batches(
    store: BatchStore, connection: Connection, threshold_seconds: float
) -> list[StuckBatch]:
    """Batches stuck past ``threshold_seconds``, oldest first."""
    bound = store._require_bound()
    ts = store.time_sql()
    start = bound.times.get("started_at")
    queued = bound.times.get("queued_at")
    status: Any = column(bound.columns["status"])
    kind_name = bound.columns.get("kind")
    kind = column(kind_name) if kind_name else literal(None)
    raw = store.statuses.raw_values(store.config.stuck_statuses)
    if start is None and queued is None:
        return []
    raw_start: Any = start.column if start is not None else null()
    since: Any = ts.epoch(start) if start is not None else None
    if queued is not None:
        # A pending batch that never started is stuck by its queued time.
        waited = ts.epoch(queued)
        since = waited if since is None else func.coalesce(since, waited)
    query = (
        select(
            column(bound.columns["id"]),
            cast(status, String(255)),
            cast(kind, String(255)),
            since,
            raw_start,
            ts.now_epoch("now_shift"),
        )
        .select_from(store.table_clause())
        .where(status.in_(raw))
        .where(store.stuck_condition())
        .order_by(since)
        .limit(_STUCK_LIMIT)
    )
    params = {
        "now_shift": store.shift(0),
        "stuck_shift": store.shift(-threshold_seconds),
    }
    batches = []
    for (
        raw_id,
        state,
        kind_value,
        started,
        raw_started,
        now,
    ) in connection.execute(query, params).all():
        batches.append(
            StuckBatch(
                batch_id=str(raw_id),
                raw_id=raw_id,
                status=store.statuses.shown(state),
                kind=kind_value,
                started_us=round(float(started) * 1_000_000),
                raw_started=raw_started,
                age_seconds=float(now) - float(started),
            )
        )
    return batches


def failed_streak_kinds(
    store: BatchStore, connection: Connection, length: int
) -> dict[str, int]:
    """Kinds whose last ``length`` finished batches in the window all
    failed, with the finish time (µs) of the latest of them.

    Without a kind column the whole store is one kind, ``""``.
    """
    bound = store._require_bound()
    ts = store.time_sql()
    finish = bound.times["finished_at"]
    status: Any = column(bound.columns["status"])
    kind_name = bound.columns.get("kind")
    kind = cast(column(kind_name), String(255)) if kind_name else literal("")
    finished = store.statuses.raw_values(("completed", "failed"))
    failed = {str(v) for v in store.statuses.raw_values(("failed",))}
    position = (
        func.row_number()
        .over(
            partition_by=kind if kind_name else None,
            order_by=ts.value(finish).desc(),
        )
        .label("position")
    )
    recent = (
        select(
            kind.label("kind"),
            cast(status, String(255)).label("status"),
            ts.epoch(finish).label("finished"),
            position,
        )
        .select_from(store.table_clause())
        .where(status.in_(finished))
        .where(ts.value(finish) >= ts.at(finish, "window_shift"))
        .where(ts.value(finish) <= ts.at(finish, "now_shift"))
        .subquery()
    )
    query = select(recent.c.kind, recent.c.status, recent.c.finished).where(
        recent.c.position <= length
    )
    params = {
        "now_shift": store.shift(0),
        "window_shift": store.shift(-store.config.window_seconds),
    }
    seen: dict[str, list[tuple[str, float]]] = {}
    for kind_value, state, finished_at in connection.execute(query, params):
        seen.setdefault(kind_value or "", []).append(
            (str(state), float(finished_at))
        )
    streaks = {}
    for kind_value, rows in seen.items():
        if len(rows) == length and all(s in failed for s, _ in rows):
            streaks[kind_value] = round(max(f for _, f in rows) * 1_000_000)
    return streaks

"""Finished rows turned into counters and histograms, each recorded once.

After each gauge read, on the refresher's thread (never the exporter's),
the monitor claims the rows whose (finish time, id) lies past the store's
watermark and whose finish is older than the settle lag, one page at a
time. A claim is a compare-and-set on the watermark in the state tables:
of two monitors (or a deposed leader) only one moves it, and only the one
that moved it records the page, with ``batch.source = "store"``.

Delivery is not transactional: a process killed after recording loses
the points recorded since its last successful export, and never
duplicates any. Rows committed after their range was claimed are counted
in ``batchmon.rows.late`` by a trailing recount, not recorded.
"""

from __future__ import annotations

import logging
import operator
import os
import threading
import weakref
from typing import Any, cast

from opentelemetry.metrics import Counter, Histogram, Meter
from sqlalchemy.engine import Engine

from otel_batchmon._attributes import AttributeSetCap
from otel_batchmon._engine import classify
from otel_batchmon._event_rows import FinishedRow, RowQuery
from otel_batchmon._recording import create_instrument
from otel_batchmon._state_handle import StateHandle, handle_for
from otel_batchmon.config import MonitorConfig
from otel_batchmon.state import (
    StateStore,
    Watermark,
)
from otel_batchmon.store import BatchStore

__all__ = ["INVALID_EVENT_REASONS", "SOURCE", "EventRecorder"]

_log = logging.getLogger(__name__)

SOURCE = "store"
INVALID_EVENT_REASONS = (
    "finish_before_start",
    "finish_without_start",
    "start_before_queued",
    "records_inconsistent",
    "unfinished_status",
)
# Distinct batch.kind values per store before new ones fold to _other;
# each makes a few series per instrument, far below the SDK's 2000.
MAX_KINDS = 100
# Pages claimed per store and refresh; a backlog continues next refresh.
MAX_PAGES = 20
MAX_RECOUNTS = 20
_MICROS = 1_000_000


class EventRecorder:
    """Claims every store's newly finished rows and records them once.

    ``after_read`` is what the refresher calls after a good gauge read.
    """

    def __init__(
        self,
        config: MonitorConfig,
        meter: Meter,
        handles: dict[str, StateHandle] | None = None,
    ) -> None:
        self.config = config
        self.instruments = _Instruments(meter)
        # Shared with the alert evaluator: one state database, one engine,
        # one warning when it cannot be written.
        self._states = {} if handles is None else handles
        self._stores: dict[str, _StoreEvents] = {}
        self._lock = threading.Lock()
        _watch_forks(self)

    def after_read(self, store: BatchStore, engine: Engine) -> None:
        """Claim and record the store's settled finished rows; never raises."""
        try:
            self._events_for(store).run(engine)
        except Exception:
            _log.exception("store %s: events failed", store.name)

    def close(self) -> None:
        """Release the state engines."""
        with self._lock:
            for handle in self._states.values():
                handle.close()

    def _after_fork_in_child(self) -> None:
        # The parent's pooled connections must not be used or closed here
        # (SQLAlchemy's advice for os.fork); the child opens its own.
        self._lock = threading.Lock()
        for handle in self._states.values():
            if handle.state is not None:
                handle.state.engine.dispose(close=False)

    def _events_for(self, store: BatchStore) -> _StoreEvents:
        with self._lock:
            events = self._stores.get(store.name)
            if events is None:
                url = self.config.state_url or store.config.database_url
                handle = handle_for(self._states, url, self.config)
                events = _StoreEvents(
                    store, handle, self.config, self.instruments
                )
                self._stores[store.name] = events
            return events


_recorders: weakref.WeakSet[EventRecorder] = weakref.WeakSet()
_fork_hook_lock = threading.Lock()


def _watch_forks(recorder: EventRecorder) -> None:
    with _fork_hook_lock:
        if not _recorders and not getattr(_watch_forks, "hooked", False):
            os.register_at_fork(after_in_child=_reset_in_child)
            _watch_forks.hooked = True  # type: ignore[attr-defined]
        _recorders.add(recorder)


def _reset_in_child() -> None:
    for recorder in list(_recorders):
        recorder._after_fork_in_child()


class _Instruments:
    def __init__(self, meter: Meter) -> None:
        self.finished = _counter(meter, "batch.finished")
        self.duration = _histogram(meter, "batch.duration")
        self.queue = _histogram(meter, "batch.queue.duration")
        self.records = _counter(meter, "batch.records")
        self.invalid = _counter(meter, "batchmon.events.invalid")
        self.late = _counter(meter, "batchmon.rows.late")
        self.errors = _counter(meter, "batchmon.refresh.errors")


def _counter(meter: Meter, name: str) -> Counter:
    return cast(Counter, create_instrument(meter, name))


def _histogram(meter: Meter, name: str) -> Histogram:
    return cast(Histogram, create_instrument(meter, name))


class _StoreEvents:
    """The claim loop, recount and recording of one store."""

    def __init__(
        self,
        store: BatchStore,
        handle: StateHandle,
        config: MonitorConfig,
        instruments: _Instruments,
    ) -> None:
        self.store = store
        self.name = store.name
        self.handle = handle
        self.config = config
        self.instruments = instruments
        self.mark: Watermark | None = None
        self.query: RowQuery | None = None
        self.kinds = AttributeSetCap(
            f"batch.kind of store {self.name}", MAX_KINDS
        )
        self._last_problem: str | None = None
        self.unavailable = store.unavailable()

    def run(self, engine: Engine) -> None:
        state = self.handle.ready()
        if state is None:
            return
        try:
            now_us = self._claim(engine, state)
            self._recount(engine, state, now_us)
        except Exception as exc:
            self.mark = None  # read it again from the state next time
            failure = classify(exc)
            self.instruments.errors.add(
                1, {"batch.store": self.name, "error.type": "events"}
            )
            if failure.message != self._last_problem:
                self._last_problem = failure.message
                _log.warning(
                    "store %s: claiming finished rows failed (%s): %s",
                    self.name,
                    failure.error_type,
                    failure.message,
                )
            return
        if self._last_problem is not None:
            _log.info("store %s: claiming finished rows recovered", self.name)
            self._last_problem = None

    def _rows(self) -> RowQuery:
        if self.query is None or self.query.bound is not self.store.bound:
            self.query = RowQuery(
                self.store,
                self.config.clock_offset_seconds,
                self.config.settle_lag_seconds,
            )
        return self.query

    def _claim(self, engine: Engine, state: StateStore) -> int:
        query, size = self._rows(), self.config.event_page_size
        now_us = 0
        for _ in range(MAX_PAGES):
            with engine.connect() as connection, connection.begin():
                now_us = query.now_us(connection)
                mark = self.mark or self._first_mark(state, now_us)
                rows = query.page(connection, mark, now_us, size)
            if not rows:
                break
            last = Watermark(rows[-1].key, rows[-1].batch_id)
            if not state.advance(self.name, mark, last, len(rows), now_us):
                # Another monitor claimed this range: go on from its mark.
                self.mark = state.watermark(self.name)
                continue
            self.mark = last
            for row in rows:
                self._record(row)
            if len(rows) < size:
                break
        return now_us

    def _first_mark(self, state: StateStore, now_us: int) -> Watermark:
        mark = state.watermark(self.name)
        if mark is None:
            backfill = round(self.config.backfill_seconds * _MICROS)
            mark = state.start(
                self.name, Watermark(now_us - backfill, None), now_us
            )
            _log.info(
                "store %s: first start; batches finished from %gs before "
                "now on are recorded (set backfill to record older ones)",
                self.name,
                self.config.backfill_seconds,
            )
        self.mark = mark
        return mark

    def _recount(self, engine: Engine, state: StateStore, now_us: int) -> None:
        lag_us = round(self.config.settle_lag_seconds * _MICROS)
        due = state.due_claims(self.name, now_us - lag_us, MAX_RECOUNTS)
        query = self._rows()
        for claim in due:
            with engine.connect() as connection, connection.begin():
                found = query.count(connection, claim, now_us)
            if not state.settle(self.name, claim):
                continue  # another monitor recounted it
            late = found - claim.rows
            if late > 0:
                self.instruments.late.add(late, {"batch.store": self.name})
                _log.warning(
                    "store %s: %d finished rows were committed after their "
                    "time range was claimed; counted in batchmon.rows.late, "
                    "not in batch.finished (raise settle_lag?)",
                    self.name,
                    late,
                )

    def _record(self, row: FinishedRow) -> None:
        status = self.store.statuses.canonical(row.status, self.name)
        base = self._base(row.kind)
        if status in ("pending", "processing"):
            self._invalid("unfinished_status")
            return
        with_status = {**base, "batch.status": status}
        self.instruments.finished.add(1, with_status)
        self._durations(row, base, with_status)
        self._records(row, base)

    def _durations(
        self,
        row: FinishedRow,
        base: dict[str, str],
        with_status: dict[str, str],
    ) -> None:
        unavailable = self.unavailable
        if "batch.duration" in unavailable:
            pass
        elif row.duration is None:
            # A batch cancelled before it ran has no start: not invalid.
            if with_status["batch.status"] != "other":
                self._invalid("finish_without_start")
        elif row.duration < 0:
            self._invalid("finish_before_start")
        else:
            self.instruments.duration.record(row.duration, with_status)
        if row.queue is None or "batch.queue.duration" in unavailable:
            return
        if row.queue < 0:
            self._invalid("start_before_queued")
        else:
            self.instruments.queue.record(row.queue, base)

    def _records(self, row: FinishedRow, base: dict[str, str]) -> None:
        if row.records_total is None or "batch.records" in self.unavailable:
            return
        total = _whole(row.records_total)
        failed = (
            0 if row.records_failed is None else _whole(row.records_failed)
        )
        if total is None or failed is None or not 0 <= failed <= total:
            self._invalid("records_inconsistent")
            return
        records = self.instruments.records
        records.add(total - failed, {**base, "batch.record.outcome": "ok"})
        records.add(failed, {**base, "batch.record.outcome": "failed"})

    def _base(self, kind: Any) -> dict[str, str]:
        base = {"batch.store": self.name, "batch.source": SOURCE}
        if kind is not None:
            admitted, _ = self.kinds.admit({"batch.kind": str(kind)})
            base["batch.kind"] = str(admitted["batch.kind"])
        return base

    def _invalid(self, reason: str) -> None:
        self.instruments.invalid.add(
            1, {"batch.store": self.name, "batchmon.reason": reason}
        )


def _whole(value: Any) -> int | None:
    try:
        number = operator.index(value)
    except TypeError:
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            return None
        if not as_float.is_integer():
            return None
        number = int(as_float)
    return number if number >= 0 else None

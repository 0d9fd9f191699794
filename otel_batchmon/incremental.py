"""Incremental refresh: a store's snapshot at a cost that follows change.

A full read aggregates every row of the window at every refresh, so its
cost grows with the window. An incremental refresh keeps the window's
rows in memory (``_buckets``) and asks the database, in one round trip,
only for:

- the active rows (pending, processing and the stuck statuses), in full:
  they change all the time, and the recommended partial index serves them;
- the rows whose finish time is past the last refresh's database clock
  minus the settle lag (and a small margin), so a row committed up to the
  settle lag after it finished is still seen; rows read twice replace
  each other by id, so nothing counts twice;
- the latest finish of a completed row, and the database clock.

Rows that left the active set since the last refresh and were not among
the newly finished rows (cancelled without a finish time, finished with
an old finish time, deleted) are looked up by id in a second statement,
only when there are any. A row that comes back to an active status (a
retry re-opening a finished batch) leaves the held window and is counted
with the active rows again.

A full reconciliation (a per-row read of the whole window that reseeds
the buckets) runs at the first read, whenever the store was bound again,
after a failed read, when the database clock went back, on
``request_reconcile`` (the refresher asks on a leader change) and every
``reconcile_every_seconds``. Its snapshot is assembled from those rows
like any other read's, so it costs one statement over the window and no
full read besides. A table whose id is not unique cannot be held by id:
while a reconciliation finds rows sharing an id, every refresh is the
store's full read, with one warning. An id shared only with a row
outside the window (a run id used again) costs a reconciliation each
time a read by id returns both rows.

What only a reconciliation corrects, because no cheap read sees it:

- a row written straight into a status that is not active without a
  finish time past the watermark: inserted as completed (or an unmapped
  status) with no finish time, or with a finish older than the settle lag
  (a late commit), when it was never seen active;
- an edit of a finished row that leaves its finish time where it was
  (completed changed to failed, a corrected start time), and a deleted
  finished row;
- finished rows without an id (held each under a key of its own);
- rows within float rounding of a window edge, which the database and
  this module may place on different sides.

The mapping's rules are mirrored row by row (``_window_reads``): a
window by the start, queued or finish time; tables without a start time;
a due time, carried with each active row, before which a pending row is
neither waiting nor stuck; ``only_when`` (applied in SQL by the derived
table) and ``finish_optional_for`` in what makes a row invalid. Status
rules or filters that compare with the clock are not: a row's status or
presence would change with no write to it, so such mappings are read in
full at every refresh, with one warning.

Memory holds one small record per finished row in the window (rows are
dropped as the window's lower edge passes them) and the ids of the
active rows.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection

from otel_batchmon._buckets import Tally, WindowBuckets, WindowRow
from otel_batchmon._window_reads import ACTIVE_OWN, WindowRead, WindowReads
from otel_batchmon.errors import StoreError
from otel_batchmon.mapping import Condition
from otel_batchmon.snapshot import StoreSnapshot
from otel_batchmon.store import BatchStore

__all__ = ["IncrementalRefresh"]

_log = logging.getLogger(__name__)
# Rows that left the active set are looked up by id in chunks this big.
_LOOKUP_CHUNK = 500
# The finished-rows bound is set from the host's monotonic clock; this
# margin (plus 1% of the time since the last read) covers any drift
# between it and the database clock. Reading a little more costs nothing
# in correctness: rows read again replace themselves.
_MARGIN_SECONDS = 5.0
_MARGIN_SHARE = 0.01
# Condition operators (status rules, filters) that read the clock.
_CLOCK_OPS = ("past", "future")


@dataclass(frozen=True)
class _Mark:
    """The last read: its database clock and offset, and the host's
    monotonic clock when it began."""

    now: float
    offset: float
    monotonic: float


class IncrementalRefresh:
    """Reads a bound store incrementally; see the module for what it reads.

    >>> incremental = IncrementalRefresh(store, reconcile_every_seconds=600)
    >>> with engine.connect() as connection, connection.begin():
    ...     store.bind(connection)
    ...     snapshot = incremental.read(connection)

    ``clock`` (monotonic seconds) schedules the periodic reconciliation;
    ``settle_lag_seconds`` is how late after its finish time a row may be
    committed and still be counted without a reconciliation.
    """

    def __init__(
        self,
        store: BatchStore,
        reconcile_every_seconds: float = 600.0,
        settle_lag_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if reconcile_every_seconds < 0 or settle_lag_seconds < 0:
            raise ValueError(
                "reconcile_every_seconds and settle_lag_seconds must be 0 "
                f"or more, got {reconcile_every_seconds} and "
                f"{settle_lag_seconds}"
            )
        self.store = store
        self.reconcile_every_seconds = reconcile_every_seconds
        self.settle_lag_seconds = settle_lag_seconds
        self._clock = clock
        self._buckets = WindowBuckets(store.config.window_seconds)
        self._reads: WindowReads | None = None
        self._bound: object | None = None
        self._fallback: str | None = None
        self._shared = 0
        self._mark: _Mark | None = None
        self._watched: set[Hashable] = set()
        self._reconciled_at = -math.inf
        # A failed read sets _broken; requests (from another thread, on a
        # leader change) count up, so one made during a reconciliation
        # is not lost when it ends.
        self._broken = True
        self._requests = 0
        self._requests_done = -1
        self.reconciles = 0
        self.last_mode: str | None = None
        self.last_corrections: tuple[str, ...] = ()

    @property
    def rows_held(self) -> int:
        """Finished rows of the window held in memory."""
        return len(self._buckets)

    @property
    def minutes_held(self) -> int:
        """Minutes of window time that hold at least one settled row."""
        return self._buckets.bucket_count

    def request_reconcile(self) -> None:
        """Make the next ``read`` a full reconciliation (thread-safe)."""
        self._requests += 1

    def read(self, connection: Connection) -> StoreSnapshot:
        """Read what changed and return the store's snapshot."""
        if self._full_reads_only():
            self.last_mode = "full"
            return self.store.read(connection)
        if self._reconcile_due():
            return self.reconcile(connection)
        if self._shared:
            self.last_mode = "full"
            return self.store.read(connection)
        try:
            snapshot = self._read_changes(connection)
        except BaseException:
            # The held window may be half updated: start again next time.
            self._broken = True
            raise
        if snapshot is None:
            return self.reconcile(connection)
        return snapshot

    def reconcile(self, connection: Connection) -> StoreSnapshot:
        """Read the window row by row, reseed it, return the snapshot.

        The snapshot is assembled from the rows read, as every
        incremental read's is, so a reconciliation costs one statement
        over the window, not a full read besides. Ids that are not unique
        cannot be held by id: while any row shares its id with another,
        the store's full read answers instead.
        """
        requests = self._requests
        self._broken = True
        began = time.monotonic()
        reads = self._reads_for_binding()
        got = reads.run(connection, reads.seed, self._params())
        shared = _repeats((*got.active, *got.rows))
        self._warn_shared(shared)
        before = self._held_tally(got.now)
        self._buckets.clear()
        for row, _ in got.rows:
            if row.key is None:
                # Without an id the row cannot be found again; it is held
                # under a key of its own until it leaves the window.
                row.key = object()
            self._buckets.put(row)
        self._buckets.advance(got.now)
        self.last_corrections = _differences(before, self._held(got.now))
        if self.last_corrections:
            _log.debug(
                "store %s: reconciliation corrected %s",
                self.store.name,
                ", ".join(self.last_corrections),
            )
        self._watched = _keys(got.active)
        self._mark = _Mark(got.now, self.store.clock_offset_seconds, began)
        self._reconciled_at = self._clock()
        self._broken = False
        self._requests_done = requests
        self.reconciles += 1
        self.last_mode = "full"
        if shared:
            return self.store.read(connection)
        snapshot = self._snapshot(got)
        self.store.last_snapshot = snapshot
        return snapshot

    def _warn_shared(self, shared: int) -> None:
        if shared and not self._shared:
            _log.warning(
                "store %s: %d rows share their id with another row; "
                "incremental refresh needs a unique id and reads the whole "
                "window until they are gone (map the id role to a unique "
                "column)",
                self.store.name,
                shared,
            )
        elif self._shared and not shared:
            _log.info(
                "store %s: every id is unique again; reading incrementally",
                self.store.name,
            )
        self._shared = shared

    def _full_reads_only(self) -> bool:
        # Mappings whose window, waiting or validity rules this module
        # does not mirror are read in full every time, said once.
        if self.store.bound is None:
            return False
        reason = _unsupported(self.store)
        if reason is not None and reason != self._fallback:
            _log.warning(
                "store %s: incremental refresh does not support %s; "
                "reading the whole window at every refresh",
                self.store.name,
                reason,
            )
        self._fallback = reason
        return reason is not None

    def _reconcile_due(self) -> bool:
        bound = self.store.bound
        return (
            self._broken
            or self._requests != self._requests_done
            or self._mark is None
            or bound is None
            or bound is not self._bound
            or self._clock() - self._reconciled_at
            >= self.reconcile_every_seconds
        )

    def _reads_for_binding(self) -> WindowReads:
        bound = self.store.bound
        if bound is None:
            raise StoreError(
                f"store {self.store.name!r} is not bound to a table"
            )
        if self._reads is None or bound is not self._bound:
            self._reads = WindowReads(self.store)
            self._bound = bound
        return self._reads

    def _read_changes(self, connection: Connection) -> StoreSnapshot | None:
        reads, mark = self._reads_for_binding(), self._mark
        assert mark is not None
        began = time.monotonic()
        params = self._params() | {"since_shift": self._since(mark, began)}
        got = reads.run(connection, reads.changes, params)
        if got.now < mark.now:
            _log.info(
                "store %s: the database clock went back; reconciling",
                self.store.name,
            )
            return None
        if _repeats(got.active):
            # Two active rows with one id: counted apart only in full.
            return None
        active = _keys(got.active)
        for key in active:
            self._buckets.discard(key)
        seen: set[Hashable] = set()
        watch: set[Hashable] = set()
        repeated = self._take(got.rows, active, seen, watch)
        departed = self._watched - active - seen
        if departed:
            for chunk in _chunks(sorted(departed, key=repr), _LOOKUP_CHUNK):
                found = reads.lookup(connection, chunk, params)
                repeated |= self._take(found, active, seen, watch)
        if repeated:
            # An id reused by another row (an older run, outside the
            # window): which row is held cannot be told by id.
            _log.debug(
                "store %s: rows share an id; reconciling",
                self.store.name,
            )
            return None
        self._watched = active | watch
        self._buckets.advance(got.now)
        self._mark = _Mark(got.now, self.store.clock_offset_seconds, began)
        self.last_mode = "incremental"
        snapshot = self._snapshot(got)
        self.store.last_snapshot = snapshot
        return snapshot

    def _take(
        self,
        rows: Iterable[tuple[WindowRow, bool]],
        active: set[Hashable],
        seen: set[Hashable],
        watch: set[Hashable],
    ) -> bool:
        """Apply rows read by id; tell whether an id came twice."""
        repeated = False
        for row, is_active in rows:
            if row.key in active:
                # A finished row read in the same statement as an active
                # one with its id is another row sharing that id.
                repeated = repeated or not is_active
                continue
            repeated = repeated or row.key in seen
            seen.add(row.key)
            if is_active:
                # Active again since the active rows were read: counted
                # with them at the next refresh.
                self._buckets.discard(row.key)
                watch.add(row.key)
            else:
                self._buckets.put(row)
        return repeated

    def _params(self) -> dict[str, Any]:
        ts, config = self.store.time_sql(), self.store.config
        offset = self.store.clock_offset_seconds
        return {
            "now_shift": ts.parameter(offset),
            "window_shift": ts.parameter(offset - config.window_seconds),
            "stuck_shift": ts.parameter(offset - config.stuck_after_seconds),
        }

    def _since(self, mark: _Mark, began: float) -> float | int:
        # at(column, shift) is the database's real clock plus shift. The
        # bound wanted is the last read's clock minus the settle lag; the
        # real clock has moved on by about the host's time between the
        # starts of the two reads (never less: each read's clock is taken
        # after its start on the host).
        elapsed = max(0.0, began - mark.monotonic)
        margin = _MARGIN_SECONDS + _MARGIN_SHARE * elapsed
        shift = mark.offset - elapsed - self.settle_lag_seconds - margin
        return self.store.time_sql().parameter(shift)

    def _held_tally(self, now: float) -> Tally | None:
        if self._mark is None or now < self._mark.now:
            return None
        self._buckets.advance(now)
        return self._held(now)

    def _held(self, now: float) -> Tally:
        return self._buckets.tally(now)

    def _snapshot(self, got: WindowRead) -> StoreSnapshot:
        return _assemble(self.store, self._held(got.now), got)


def _assemble(
    store: BatchStore, tally: Tally, got: WindowRead
) -> StoreSnapshot:
    """The snapshot from the held window and this read's active rows."""
    config, now = store.config, got.now
    lower = now - config.window_seconds
    stuck = future = 0
    active = dict.fromkeys(ACTIVE_OWN, 0)
    oldest: dict[str, float | None] = dict.fromkeys(ACTIVE_OWN)
    for row, is_stuck in got.active:
        if row.in_window(lower, now):
            tally.add(row, now)
        if is_stuck and row.status in config.stuck_statuses:
            stuck += 1
        if row.started and row.start is not None and row.start > now:
            future += 1
        if row.status not in active:
            continue
        active[row.status] += 1
        # A pending row ages from its waiting time once it is due.
        basis = row.start if row.status == "processing" else row.waiting
        if row.status == "pending" and not row.due:
            basis = None
        known = oldest[row.status]
        if basis is not None and basis <= now:
            oldest[row.status] = basis if known is None else min(known, basis)
    invalid = dict(tally.invalid)
    invalid["future_timestamp"] += future
    counts = tally.counts
    decided = counts["completed"] + counts["failed"]
    return StoreSnapshot(
        store=config.name,
        database_time=now,
        window_counts=counts,
        failure_ratio=counts["failed"] / decided if decided else None,
        duration_mean_seconds=tally.duration_mean_seconds,
        stuck_count=stuck,
        active_counts=active,
        processing_oldest_age_seconds=_age(now, oldest["processing"]),
        pending_oldest_age_seconds=_age(now, oldest["pending"]),
        last_success_age_seconds=_age(now, got.last_success),
        invalid_rows=invalid,
        unmapped_statuses=frozenset(tally.unmapped),
    )


def _unsupported(store: BatchStore) -> str | None:
    """Name what the store's mapping needs that is not mirrored here."""
    mapping = store.config.mapping
    conditions = list(mapping.filter)
    for status_rule in mapping.status_rules:
        conditions += status_rule.when
    if any(_on_the_clock(c) for c in conditions):
        # A row's status or presence would change with no write to it.
        return "status rules or filters that compare with the clock"
    if store.role("id") is None or store.role("status") is None:
        return "a mapping without an id or a status"
    return None


def _on_the_clock(condition: Condition) -> bool:
    if condition.op in _CLOCK_OPS:
        return True
    groups = condition.any_of
    return any(_on_the_clock(c) for group in groups for c in group)


def _age(now: float, then: float | None) -> float | None:
    return None if then is None else max(0.0, now - then)


def _keys(rows: Iterable[tuple[WindowRow, bool]]) -> set[Hashable]:
    return {row.key for row, _ in rows if row.key is not None}


def _repeats(rows: Iterable[tuple[WindowRow, bool]]) -> int:
    """How many rows share their id with a row before them."""
    seen: set[Hashable] = set()
    shared = 0
    for row, _ in rows:
        if row.key is None:
            continue
        if row.key in seen:
            shared += 1
        seen.add(row.key)
    return shared


def _chunks(
    keys: Sequence[Hashable], size: int
) -> Iterable[Sequence[Hashable]]:
    for begin in range(0, len(keys), size):
        yield keys[begin : begin + size]


def _differences(before: Tally | None, after: Tally) -> tuple[str, ...]:
    """Name the window totals a reconciliation changed."""
    if before is None:
        return ()
    changed = [
        f"window count {status}"
        for status, count in after.counts.items()
        if before.counts[status] != count
    ]
    changed += [
        f"invalid {reason}"
        for reason, count in after.invalid.items()
        if before.invalid[reason] != count
    ]
    if (before.durations, before.duration_micros) != (
        after.durations,
        after.duration_micros,
    ):
        changed.append("durations")
    return tuple(changed)

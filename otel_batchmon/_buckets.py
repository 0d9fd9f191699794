"""The window of an incremental refresh, held in memory.

Rows that are not active (not pending, processing or a stuck status) are
kept per row, grouped in buckets by the minute of their window time (the
start time, or the queued time of a row that never started, unless the
mapping windows by another time). Each bucket
and the whole window keep running totals, so a refresh sums nothing: it
adds and removes the rows that changed and drops the rows the window's
lower edge has passed. Durations are summed in integer microseconds, so
adding and removing a row many times never drifts.

A row whose window time or finish time lies ahead of the database clock
is "unsettled": its contribution still depends on the clock (it is not in
the window yet, or its finish counts as a future timestamp), so it is
evaluated again at every refresh until the clock passes both times.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field

from otel_batchmon.config import CANONICAL_STATUSES
from otel_batchmon.snapshot import INVALID_REASONS
from otel_batchmon.status import OTHER

__all__ = ["Tally", "WindowBuckets", "WindowRow"]

_FINISHED = ("completed", "failed")
_MICROS = 1_000_000
_MINUTE = 60.0


@dataclass(slots=True)
class WindowRow:
    """One row as the window gauges need it, epochs in seconds.

    ``started`` and ``finished`` say whether the column holds a value;
    ``start`` and ``finish`` are its epoch, None when it holds none or
    (SQLite text) one the database cannot read as a time. ``duration`` is
    finish minus start, the same double subtraction as the full read's.
    ``moment`` is the time that puts the row in the window (see
    ``window_by``).

    What the mapping decides, settled when the row is read:
    ``needs_finish`` (a finished status that must have a finish time) and
    ``needs_start`` (a finished status that must have started). For
    active rows, ``waiting`` is the time a pending row waits from and
    ``due`` whether it is due at the read's clock.
    """

    key: Hashable
    status: str
    unmapped: str | None
    start: float | None
    queued: float | None
    finish: float | None
    duration: float | None
    started: bool
    finished: bool
    moment: float | None = None
    needs_finish: bool = False
    needs_start: bool = False
    waiting: float | None = None
    due: bool = True

    def in_window(self, lower: float, now: float) -> bool:
        """Tell whether the window ``[lower, now]`` holds the row."""
        moment = self.moment
        return moment is not None and lower <= moment <= now

    def settled(self, now: float) -> bool:
        """Tell whether the clock has passed every time of the row."""
        moment = self.moment
        return (
            moment is not None
            and moment <= now
            and (self.finish is None or self.finish <= now)
        )


@dataclass
class Tally:
    """Window totals: counts per status, durations, invalid rows."""

    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys((*CANONICAL_STATUSES, OTHER), 0)
    )
    durations: int = 0
    duration_micros: int = 0
    invalid: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(INVALID_REASONS, 0)
    )
    unmapped: Counter[str] = field(default_factory=Counter)

    def add(self, row: WindowRow, now: float, sign: int = 1) -> None:
        """Count a row in the window as of ``now`` (``sign=-1`` removes)."""
        self.counts[row.status] += sign
        both = row.started and row.finished
        duration = row.duration
        if row.status in _FINISHED:
            finish = row.finish
            valid = (
                both
                and duration is not None
                and duration >= 0
                and finish is not None
                and finish <= now
            )
            if valid:
                assert duration is not None
                self.durations += sign
                self.duration_micros += sign * round(duration * _MICROS)
        if row.needs_finish and not row.finished:
            self.invalid["finished_without_finish_time"] += sign
        if both and duration is not None and duration < 0:
            self.invalid["finish_before_start"] += sign
        if row.needs_start and row.finished and not row.started:
            self.invalid["finish_without_start"] += sign
        if row.finish is not None and row.finish > now:
            self.invalid["future_timestamp"] += sign
        if row.unmapped is not None:
            self.unmapped[row.unmapped] += sign
            if not self.unmapped[row.unmapped]:
                del self.unmapped[row.unmapped]

    def merge(self, other: Tally, sign: int = 1) -> None:
        """Add (or with ``sign=-1`` take away) another tally."""
        for status, count in other.counts.items():
            self.counts[status] += sign * count
        for reason, count in other.invalid.items():
            self.invalid[reason] += sign * count
        self.durations += sign * other.durations
        self.duration_micros += sign * other.duration_micros
        for value, count in other.unmapped.items():
            self.unmapped[value] += sign * count
            if not self.unmapped[value]:
                del self.unmapped[value]

    def copy(self) -> Tally:
        """An independent copy."""
        copied = Tally()
        copied.merge(self)
        return copied

    @property
    def duration_mean_seconds(self) -> float | None:
        """Mean duration of the valid finished rows, None without any."""
        if not self.durations:
            return None
        return self.duration_micros / self.durations / _MICROS


@dataclass
class _Bucket:
    rows: dict[Hashable, WindowRow] = field(default_factory=dict)
    tally: Tally = field(default_factory=Tally)


class WindowBuckets:
    """Settled rows by minute of window time, unsettled rows aside.

    ``put`` and ``discard`` change rows; ``advance(now)`` moves the
    window's lower edge to ``now - window`` and settles rows the clock has
    passed; ``tally(now)`` is the window's totals at ``now``. The clock
    must not go back between calls (a caller starts again with
    ``clear`` when it does).
    """

    def __init__(self, window_seconds: float) -> None:
        self.window_seconds = window_seconds
        self._buckets: dict[int, _Bucket] = {}
        self._minute_of: dict[Hashable, int] = {}
        self._unsettled: dict[Hashable, WindowRow] = {}
        self._total = Tally()
        self._lower = -math.inf

    def __len__(self) -> int:
        return len(self._minute_of) + len(self._unsettled)

    @property
    def bucket_count(self) -> int:
        """How many minutes hold at least one settled row."""
        return len(self._buckets)

    def clear(self) -> None:
        """Forget every row."""
        self._buckets.clear()
        self._minute_of.clear()
        self._unsettled.clear()
        self._total = Tally()
        self._lower = -math.inf

    def discard(self, key: Hashable) -> None:
        """Remove the row with ``key`` wherever it is."""
        if self._unsettled.pop(key, None) is not None:
            return
        minute = self._minute_of.pop(key, None)
        if minute is None:
            return
        bucket = self._buckets[minute]
        row = bucket.rows.pop(key)
        self._count(bucket, row, -1)
        if not bucket.rows:
            del self._buckets[minute]

    def put(self, row: WindowRow) -> None:
        """Hold ``row`` in place of any row with the same key."""
        self.discard(row.key)
        moment = row.moment
        if moment is None or moment < self._lower:
            return
        self._unsettled[row.key] = row

    def advance(self, now: float) -> None:
        """Move the lower edge to ``now - window``; settle what may be."""
        lower = now - self.window_seconds
        if lower > self._lower:
            self._expire(lower)
            self._lower = lower
        for key, row in list(self._unsettled.items()):
            moment = row.moment
            if moment is None or moment < lower:
                del self._unsettled[key]
            elif row.settled(now):
                del self._unsettled[key]
                self._settle(row, moment)

    def tally(self, now: float) -> Tally:
        """The totals of every row in ``[now - window, now]``."""
        lower = now - self.window_seconds
        result = self._total.copy()
        for row in self._unsettled.values():
            if row.in_window(lower, now):
                result.add(row, now)
        return result

    def _settle(self, row: WindowRow, moment: float) -> None:
        minute = math.floor(moment / _MINUTE)
        bucket = self._buckets.get(minute)
        if bucket is None:
            bucket = self._buckets[minute] = _Bucket()
        bucket.rows[row.key] = row
        self._minute_of[row.key] = minute
        self._count(bucket, row, 1)

    def _count(self, bucket: _Bucket, row: WindowRow, sign: int) -> None:
        # A settled row counts the same at any later clock; infinity
        # says so without keeping the clock it was settled at.
        bucket.tally.add(row, math.inf, sign)
        self._total.add(row, math.inf, sign)

    def _expire(self, lower: float) -> None:
        edge = math.floor(lower / _MINUTE)
        for minute in sorted(self._buckets):
            if minute > edge:
                break
            bucket = self._buckets[minute]
            if minute < edge:
                # Every row of this minute is before the edge.
                self._total.merge(bucket.tally, -1)
                for key in bucket.rows:
                    del self._minute_of[key]
                del self._buckets[minute]
                continue
            for key, row in list(bucket.rows.items()):
                moment = row.moment
                if moment is not None and moment < lower:
                    self.discard(key)

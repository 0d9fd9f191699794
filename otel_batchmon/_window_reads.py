"""The statements of an incremental refresh, built from a store's roles.

Every expression comes from the bound store's public members (its table
clause, role expressions, time columns and TimeSql), so the reads follow
the store's own semantics: the same epochs, the same cut-offs, the same
status matching as the full read. The few rules the full read keeps to
itself (which time windows a row, when a pending row waits from and
whether it is due, which rows must have a start or a finish) are written
here again, each beside the part of ``store._RefreshParts`` or
``status._Assembly`` it mirrors.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Double,
    String,
    and_,
    bindparam,
    case,
    cast,
    false,
    literal_column,
    null,
    or_,
    select,
    union_all,
)
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Select
from sqlalchemy.sql.elements import ColumnElement

from otel_batchmon._buckets import WindowRow
from otel_batchmon._dialects import TimeColumn
from otel_batchmon.errors import StoreError
from otel_batchmon.status import OTHER
from otel_batchmon.store import BatchStore, inline_values

__all__ = ["ACTIVE_OWN", "WindowRead", "WindowReads", "bound_of"]

# The statuses the active gauges report; the stuck statuses join them in
# the active read.
ACTIVE_OWN = ("pending", "processing")
_FINISHED = ("completed", "failed")


@dataclass(frozen=True)
class WindowRead:
    """One statement's rows, split by part."""

    now: float
    last_success: float | None
    active: list[tuple[WindowRow, bool]]
    rows: list[tuple[WindowRow, bool]]


class WindowReads:
    """The statements of one binding, built from the store's roles.

    Every per-row part has the same columns: part, id, status, then the
    epochs of start, queued and finish, flags (start present, finish
    present, stuck, active), and for active rows the epoch a pending row
    waits from and whether it is due. The duration is the difference of
    the two epochs, taken here: one expression less per row, which is a
    sixth of a MariaDB reconciliation. The probe part
    carries the database clock in the start slot and the last success in
    the queued slot.
    """

    def __init__(self, store: BatchStore) -> None:
        bound = bound_of(store)
        self.store = store
        self.ts = store.time_sql()
        self.t = store.table_clause()
        self.id = _role(store, "id")
        self.status = _role(store, "status")
        self.start: TimeColumn | None = bound.times.get("started_at")
        self.finish: TimeColumn = bound.times["finished_at"]
        self.queued: TimeColumn | None = bound.times.get("queued_at")
        self.due: TimeColumn | None = bound.times.get("due_at")
        config = store.config
        mapping = config.mapping
        self.window_by = mapping.window_by
        if self.window_by == "queued_at" and self.queued is None:
            self.window_by = "started_at"
        # As status._Assembly.add_window: a status in finish_optional_for
        # may lack a finish; only the statuses only_when keeps a start
        # for must have one.
        self.needs_finish = frozenset(
            s for s in _FINISHED if s not in mapping.finish_optional_for
        )
        starts = mapping.only_when.get("started_at", _FINISHED)
        self.needs_start = frozenset(
            s for s in _FINISHED if s in starts and self.start is not None
        )
        raw = store.statuses.raw_values((*ACTIVE_OWN, *config.stuck_statuses))
        self.is_active = self.status.in_(inline_values("active_statuses", raw))
        ts = self.ts
        recent = ts.value(self.finish) > ts.at(self.finish, "since_shift")
        self.changes = union_all(
            self._rows("a", self.is_active, active=True),
            self._rows("f", and_(self.id.isnot(None), recent)),
            self._probe(),
        )
        self.seed = union_all(
            self._rows("a", self.is_active, active=True),
            self._rows("w", and_(self._not_active(), self._from_lower())),
            self._probe(),
        )
        self._lookup = self._rows(
            "d", self.id.in_(bindparam("keys", expanding=True))
        )

    def run(
        self, connection: Connection, statement: Any, params: dict[str, Any]
    ) -> WindowRead:
        """Execute a union and sort its rows by part."""
        now: float | None = None
        last: float | None = None
        active: list[tuple[WindowRow, bool]] = []
        rows: list[tuple[WindowRow, bool]] = []
        for found in connection.execute(statement, params).all():
            if found[0] == "p":
                now = float(found[3])
                last = None if found[4] is None else float(found[4])
                continue
            row, is_stuck, is_active = self._decode(found)
            if found[0] == "a":
                active.append((row, is_stuck))
            else:
                rows.append((row, is_active))
        if now is None:
            raise StoreError("the refresh returned no clock row")
        return WindowRead(now, last, active, rows)

    def lookup(
        self,
        connection: Connection,
        keys: Sequence[Hashable],
        params: dict[str, Any],
    ) -> list[tuple[WindowRow, bool]]:
        """The current state of the rows with these ids."""
        found = connection.execute(self._lookup, params | {"keys": keys})
        decoded = (self._decode(row) for row in found.all())
        return [(row, is_active) for row, _, is_active in decoded]

    def _decode(self, found: Sequence[Any]) -> tuple[WindowRow, bool, bool]:
        _, key, raw, start, queued, finish = found[:6]
        started, finished, stuck, active = (bool(v) for v in found[6:10])
        waiting, due = found[10:12]
        start, finish = _float(start), _float(finish)
        # The same double subtraction the full read does in SQL; the
        # drivers return doubles that round-trip exactly.
        duration = None if start is None or finish is None else finish - start
        statuses = self.store.statuses
        status = statuses.canonical(raw, self.store.name)
        unmapped = None
        if status == OTHER and not statuses.is_known(raw):
            unmapped = "NULL" if raw is None else repr(raw)
        row = WindowRow(
            key=key,
            status=status,
            unmapped=unmapped,
            start=start,
            queued=_float(queued),
            finish=finish,
            duration=duration,
            started=started,
            finished=finished,
            needs_finish=status in self.needs_finish,
            needs_start=status in self.needs_start,
            waiting=_float(waiting),
            due=due is None or bool(due),
        )
        row.moment = self._moment(row)
        return row, stuck, active

    def _moment(self, row: WindowRow) -> float | None:
        # As _RefreshParts.in_window: the start, else the queued time,
        # unless the mapping windows by the finish or the queued time.
        if self.window_by == "finished_at":
            return row.finish
        if self.window_by == "queued_at" or self.start is None:
            return row.queued
        return row.start if row.started else row.queued

    def _not_active(self) -> ColumnElement[bool]:
        return or_(self.status.is_(None), ~self.is_active)

    def _from_lower(self) -> ColumnElement[bool]:
        # The window's lower edge only: rows whose window time is ahead
        # of the clock are held until it reaches them.
        if self.window_by == "finished_at":
            return self._since(self.finish)
        start, queued = self.start, self.queued
        if self.window_by == "queued_at" or start is None:
            return false() if queued is None else self._since(queued)
        since = self._since(start)
        if queued is None:
            return since
        return or_(since, and_(start.column.is_(None), self._since(queued)))

    def _since(self, col: TimeColumn) -> ColumnElement[bool]:
        return self.ts.value(col) >= self.ts.at(col, "window_shift")

    def _rows(
        self, part: str, where: ColumnElement[bool], active: bool = False
    ) -> Select[Any]:
        ts, start = self.ts, self.start
        finish = ts.epoch(self.finish)
        begun: Any = null() if start is None else ts.epoch(start)
        queued = null() if self.queued is None else ts.epoch(self.queued)
        started: Any = (
            literal_column("0")
            if start is None
            else _flag(start.column.isnot(None))
        )
        # Only the active part needs the stuck test and the pending
        # basis; the clock they use is this read's.
        stuck_flag: Any = null()
        waiting: Any = null()
        due: Any = null()
        if active:
            stuck_flag = _flag(self.store.stuck_condition())
            waiting = self.store.waiting_since()
            due = _flag(self.store.is_due("now_shift"))
        return (
            select(
                literal_column(f"'{part}'").label("part"),
                self.id.label("id"),
                cast(self.status, String(255)).label("status"),
                _number(begun, "start"),
                _number(queued, "queued"),
                _number(finish, "finish"),
                _number(started, "started"),
                _number(_flag(self.finish.column.isnot(None)), "finished"),
                _number(stuck_flag, "stuck"),
                _number(_flag(self.is_active), "active"),
                _number(null() if waiting is None else waiting, "waiting"),
                _number(due, "due"),
            )
            .select_from(self.t)
            .where(where)
        )

    def _probe(self) -> Any:
        ts, finish = self.ts, self.finish
        completed = self.store.statuses.raw_values(("completed",))
        # The newest finish in index order, not max(epoch): a max over an
        # expression reads every completed row, this reads one index
        # entry. They differ only for naive times in a zone with daylight
        # saving, within the hour the clocks repeat.
        latest = (
            select(ts.epoch(finish))
            .select_from(self.t)
            .where(
                self.status.in_(inline_values("done_statuses", completed)),
                ts.value(finish) <= ts.at(finish, "now_shift"),
            )
            .order_by(ts.value(finish).desc())
            .limit(1)
            .scalar_subquery()
        )
        empty = [
            _number(null(), name)
            for name in (
                "started",
                "finished",
                "stuck",
                "active",
                "waiting",
                "due",
            )
        ]
        # Typed loosely: SQLAlchemy infers the NULL columns as Never.
        probe: Any = select(
            literal_column("'p'").label("part"),
            literal_column("NULL").label("id"),
            cast(null(), String(255)).label("status"),
            _number(ts.now_epoch("now_shift"), "start"),
            _number(latest, "queued"),
            _number(null(), "finish"),
            *empty,
        )
        return probe


def bound_of(store: BatchStore) -> Any:
    if store.bound is None:
        raise StoreError(f"store {store.name!r} is not bound to a table")
    return store.bound


def _role(store: BatchStore, name: str) -> ColumnElement[Any]:
    found = store.role(name)
    if found is None:
        raise StoreError(
            f"store {store.name!r}: incremental refresh needs the {name} "
            "role mapped"
        )
    return found


def _flag(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return case((condition, 1), else_=0)


def _number(value: Any, name: str) -> ColumnElement[float]:
    return cast(value, Double).label(name)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)

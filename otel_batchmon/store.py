"""A user's batch table mapped onto SQLAlchemy Core, and its refresh query.

The store knows nothing of metrics: it turns one round trip to the
database into a StoreSnapshot. Identifiers are checked against the
reflected table and are always quoted by SQLAlchemy, never pasted in.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Double,
    String,
    and_,
    bindparam,
    case,
    cast,
    column,
    false,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    true,
    union_all,
)
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Select
from sqlalchemy.sql.elements import ColumnElement

from otel_batchmon._dialects import TimeColumn, TimeSql, time_sql_for
from otel_batchmon._relation import RULE_MARK, BoundTable, bind_relation
from otel_batchmon.config import StoreConfig
from otel_batchmon.errors import ConfigError, StoreError
from otel_batchmon.snapshot import StoreSnapshot
from otel_batchmon.status import StatusMap

__all__ = ["BatchStore", "BoundTable"]

_log = logging.getLogger(__name__)
_ROLE_NAMES = ("started_at", "queued_at", "records_total")
# Metrics that need a role, and what is said when the mapping lacks it.
_NEEDS = {
    "batch.window.duration.mean": ("started_at", "no start time is mapped"),
    "batch.duration": ("started_at", "no start time is mapped"),
    "batch.processing.oldest_age": ("started_at", "no start time is mapped"),
    "batch.queue.duration": ("queued_at", "no queued time is mapped"),
    "batch.records": ("records_total", "no record count is mapped"),
}
_TIME_ROLES = ("queued_at", "started_at", "finished_at")
_LISTED = 30
# Every part of the refresh union has these value columns, v0 to v6.
_SLOTS = 7


class BatchStore:
    """Reads one batch table; ``bind`` it to a connection before ``read``.

    >>> store = BatchStore(config)
    >>> with engine.connect() as connection:
    ...     store.bind(connection)
    ...     snapshot = store.read(connection)
    """

    def __init__(
        self, config: StoreConfig, clock_offset_seconds: float = 0.0
    ) -> None:
        self.config = config
        self.clock_offset_seconds = clock_offset_seconds
        self.bound: BoundTable | None = None
        self.statuses = StatusMap(config.statuses)
        self._time: TimeSql | None = None
        self.last_snapshot: StoreSnapshot | None = None
        self._statement: Select[Any] | None = None

    @property
    def name(self) -> str:
        """The store's logical name, the ``batch.store`` attribute."""
        return self.config.name

    def bind(self, connection: Connection) -> BoundTable:
        """Check the mapping against the real table; raise ConfigError."""
        try:
            return self._bind(connection)
        except BaseException:
            # Half bound (a query here failed or timed out): the next
            # refresh must bind again, not read with what was left.
            self.bound = None
            self._statement = None
            raise

    def _bind(self, connection: Connection) -> BoundTable:
        statuses = StatusMap(self.config.statuses).for_dialect(
            connection.dialect.name
        )
        self.bound = bind_relation(self.config, connection, statuses)
        if statuses.case_insensitive and not self.bound.status_is_integer:
            statuses = statuses.padded(self._pads_spaces(connection))
        # Rule marks only where rules exist: any extra value in the status
        # lists keeps PostgreSQL off the partial index of active rows.
        if self.config.mapping.status_rules:
            statuses = statuses.with_rules(RULE_MARK)
        self.statuses = statuses
        if self.bound.status_is_integer:
            self.statuses = self.statuses.as_integers(self.config.name)
        self._time = time_sql_for(self.bound.dialect, self.config.timezone)
        problem = self._time.zone_problem(connection)
        if problem:
            raise ConfigError([f"stores.{self.name}.timezone: {problem}"])
        self._statement = self._refresh_statement()
        return self.bound

    def read(self, connection: Connection) -> StoreSnapshot:
        """Run the one refresh statement and build a snapshot from it."""
        if self._statement is None or self._time is None:
            raise StoreError(f"store {self.name!r} is not bound to a table")
        offset = self.clock_offset_seconds
        params = {
            "now_shift": self._time.parameter(offset),
            "window_shift": self._time.parameter(
                offset - self.config.window_seconds
            ),
            "stuck_shift": self._time.parameter(
                offset - self.config.stuck_after_seconds
            ),
        }
        rows = connection.execute(self._statement, params).all()
        snapshot = self.statuses.snapshot(self.config, rows)
        self.last_snapshot = snapshot
        return snapshot

    def _pads_spaces(self, connection: Connection) -> bool:
        """Whether the status column's collation ignores trailing spaces
        (MariaDB's defaults do, MySQL 8's do not), asked of one row."""
        status = self.role("status")
        if status is None:
            return False
        same = (
            select(status == func.concat(status, " "))
            .select_from(self.table_clause())
            .where(status.isnot(None))
            .limit(1)
        )
        found = connection.execute(same).scalar()
        # No row to ask: the value cannot matter until one exists, and
        # the next bind (after a failure or a restart) asks again.
        return found is None or bool(found)

    def time_sql(self) -> TimeSql:
        """The dialect's time expressions for this bound store."""
        if self._time is None:
            raise StoreError(f"store {self.name!r} is not bound to a table")
        return self._time

    def table_clause(self) -> Any:
        """The mapped table as a SQLAlchemy table clause (bound stores)."""
        return self._table(self._require_bound())

    def unavailable(self) -> dict[str, str]:
        """Metrics this mapping cannot produce, each with the reason.

        They are left out of the export (never reported as 0): declared
        by the user or preset, or following from a role the relation
        lacks. Before ``bind`` only the configured roles are known.
        """
        found = dict(self.config.mapping.unavailable)
        if self.bound is not None:
            has = set(self.bound.columns)
        else:
            has = {r for r in _ROLE_NAMES if self.config.columns.source(r)}
        for metric, (role, why) in _NEEDS.items():
            if role not in has:
                found.setdefault(metric, why)
        if "started_at" not in has and not (
            "queued_at" in has and "pending" in self.config.stuck_statuses
        ):
            found.setdefault("batch.stuck.count", "no start time is mapped")
        return found

    def role(self, name: str) -> ColumnElement[Any] | None:
        """The SQL expression of a column role over ``table_clause()``, or
        None when the mapping has no such role (bound stores)."""
        bound = self._require_bound()
        found = bound.columns.get(name)
        return None if found is None else column(found)

    def stuck_condition(self) -> ColumnElement[bool]:
        """Rows started (or, never started, queued) before the bound
        ``stuck_shift`` cut-off; the same test as ``batch.stuck.count``."""
        bound = self._require_bound()
        return _RefreshParts(self, bound, self._table(bound)).stuck_since()

    def waiting_since(self) -> ColumnElement[Any] | None:
        """Epoch from which a pending row waits (the same expression as
        ``batch.pending.oldest_age``); None when nothing tells (bound
        stores)."""
        bound = self._require_bound()
        return _RefreshParts(self, bound, self._table(bound)).waiting_since()

    def is_due(self, shift: str) -> ColumnElement[bool]:
        """The row has no due time, or it has passed at the clock moved by
        the bound ``shift`` (bound stores)."""
        bound = self._require_bound()
        return _RefreshParts(self, bound, self._table(bound)).is_due(shift)

    def shift(self, seconds: float) -> float | int:
        """The bound value for the database clock moved by ``seconds``."""
        return self.time_sql().parameter(self.clock_offset_seconds + seconds)

    def status_values(self, connection: Connection) -> dict[str | None, int]:
        """Count the rows of every distinct status value in the table."""
        bound = self._require_bound()
        t = self._table(bound)
        status = t.c[bound.columns["status"]]
        query = select(status, func.count()).group_by(status)
        return {
            None if value is None else str(value): int(count)
            for value, count in connection.execute(query).all()
        }

    def _require_bound(self) -> BoundTable:
        if self.bound is None:
            raise StoreError(f"store {self.name!r} is not bound to a table")
        return self.bound

    @staticmethod
    def _table(bound: BoundTable) -> Any:
        return bound.source

    def _refresh_statement(self) -> Select[Any]:
        bound = self._require_bound()
        t = self._table(bound)
        parts = _RefreshParts(self, bound, t)
        return union_all(  # type: ignore[return-value]
            parts.window(), parts.active(), parts.probe()
        )


class _RefreshParts:
    """The three selects of the refresh, each with the same columns:
    part, status, v0..v6, now. One round trip carries them all.

    A mapping may lack a start time (the dependent values are then NULL
    or 0 and the metrics declared unavailable) and may have a due time,
    before which a pending row is not yet waiting.
    """

    def __init__(self, store: BatchStore, bound: BoundTable, t: Any) -> None:
        assert store._time is not None
        self.ts = store._time
        self.statuses = store.statuses
        self.config = store.config
        self.status = t.c[bound.columns["status"]]
        self.start = bound.times.get("started_at")
        self.finish = bound.times["finished_at"]
        self.queued = bound.times.get("queued_at")
        self.due = bound.times.get("due_at")
        self.t = t

    def _before_now(self, col: TimeColumn) -> ColumnElement[bool]:
        return self.ts.value(col) <= self.ts.at(col, "now_shift")

    def _within(self, col: TimeColumn) -> ColumnElement[bool]:
        return and_(
            self.ts.value(col) >= self.ts.at(col, "window_shift"),
            self._before_now(col),
        )

    def _row(
        self, part: str, status: Any, values: Sequence[Any], now: Any
    ) -> list[Any]:
        padded = list(values) + [None] * (_SLOTS - len(values))
        return [
            literal_column(f"'{part}'").label("part"),
            cast(status, String(255)).label("status"),
            *(
                cast(v if v is not None else null(), Double).label(f"v{i}")
                for i, v in enumerate(padded)
            ),
            cast(now, Double).label("now"),
        ]

    def in_window(self) -> ColumnElement[bool]:
        """The row's window time is within [now - W, now]: its start, else
        its queued time, unless the mapping windows by another role."""
        by = self.config.mapping.window_by
        if by == "finished_at":
            return self._within(self.finish)
        if by == "queued_at" and self.queued is not None:
            return self._within(self.queued)
        start, queued = self.start, self.queued
        if start is None:
            return self._within(queued) if queued is not None else false()
        inside = self._within(start)
        if queued is not None:
            inside = or_(
                inside, and_(start.column.is_(None), self._within(queued))
            )
        return inside

    def window(self) -> Select[Any]:
        finish = self.finish
        finished_late = and_(
            finish.column.isnot(None), ~self._before_now(finish)
        )
        values = [
            func.count(),
            *self._durations(),
            func.sum(case((finish.column.is_(None), 1), else_=0)),
            func.sum(case((finished_late, 1), else_=0)),
        ]
        return (
            select(*self._row("w", self.status, values, None))
            .select_from(self.t)
            .where(self.in_window())
            .group_by(self.status)
        )

    def _durations(self) -> list[Any]:
        """v1..v4: valid durations, their sum, finish before start, and
        finish without start."""
        start, finish, ts = self.start, self.finish, self.ts
        if start is None:
            return [literal(0), null(), literal(0), literal(0)]
        both = and_(start.column.isnot(None), finish.column.isnot(None))
        duration = ts.epoch(finish) - ts.epoch(start)
        valid = and_(both, duration >= 0, self._before_now(finish))
        no_start = and_(finish.column.isnot(None), start.column.is_(None))
        return [
            func.count(case((valid, 1))),
            func.sum(case((valid, duration))),
            func.sum(case((and_(both, duration < 0), 1), else_=0)),
            func.sum(case((no_start, 1), else_=0)),
        ]

    def waiting_since(self) -> ColumnElement[Any] | None:
        """Epoch from which a pending row waits: the later of its queued
        and due times (the start time when the table has neither)."""
        queued, due, ts = self.queued, self.due, self.ts
        if due is None:
            basis = queued if queued is not None else self.start
            return None if basis is None else ts.epoch(basis)
        if queued is None:
            return ts.epoch(due)
        later = and_(
            due.column.isnot(None),
            or_(queued.column.is_(None), ts.epoch(due) > ts.epoch(queued)),
        )
        return case((later, ts.epoch(due)), else_=ts.epoch(queued))

    def is_due(self, shift: str) -> ColumnElement[bool]:
        due = self.due
        if due is None:
            return true()
        return or_(
            due.column.is_(None), self.ts.value(due) <= self.ts.at(due, shift)
        )

    def stuck_since(self) -> ColumnElement[bool]:
        """Started before the stuck cut-off; a pending row that never
        started counts from its queued time (or due time), when there is
        one. (See waiting_since.)"""
        start, ts = self.start, self.ts
        # An unbound column, like the time columns: this condition is also
        # used with other table clauses of the same table (alert reads).
        status: Any = column(self.status.name)
        early = (
            ts.value(start) < ts.at(start, "stuck_shift")
            if start is not None
            else false()
        )
        if self.due is not None:
            # A pending retry that is not due yet waits; it is not stuck.
            pending = status.in_(self.statuses.raw_values(("pending",)))
            early = and_(early, or_(~pending, self.is_due("stuck_shift")))
        queued = self.queued
        if queued is None:
            return early
        waiting = and_(
            start.column.is_(None) if start is not None else true(),
            status.in_(self.statuses.raw_values(("pending",))),
            ts.value(queued) < ts.at(queued, "stuck_shift"),
            self.is_due("stuck_shift"),
        )
        return or_(early, waiting)

    def active(self) -> Select[Any]:
        start, ts = self.start, self.ts
        raw = self.statuses.raw_values(
            ("pending", "processing", *self.config.stuck_statuses)
        )
        values: list[Any] = [
            func.count(),
            func.sum(case((self.stuck_since(), 1), else_=0)),
            func.min(case((self._before_now(start), ts.epoch(start))))
            if start is not None
            else null(),
        ]
        # v3: what the pending age runs from (see waiting_since), over
        # rows that are due and whose basis is not in the future.
        since = self.waiting_since()
        if since is None:
            values.append(null())
        else:
            waiting = and_(
                since <= ts.now_epoch("now_shift"), self.is_due("now_shift")
            )
            values.append(func.min(case((waiting, since))))
        if start is not None:
            started = start.column.isnot(None)
            future = and_(started, ~self._before_now(start))
            values.append(func.sum(case((future, 1), else_=0)))
        else:
            values.append(literal(0))
        return (
            select(*self._row("a", self.status, values, None))
            .select_from(self.t)
            .where(self.status.in_(inline_values("running_statuses", raw)))
            .group_by(self.status)
        )

    def probe(self) -> Select[Any]:
        finish, ts = self.finish, self.ts
        raw = self.statuses.raw_values(("completed",))
        # The newest finish in index order, one row read, rather than the
        # maximum over every completed row. (For naive times in a zone
        # with daylight saving, the repeated hour may order differently.)
        latest = (
            select(ts.epoch(finish).label("finished"))
            .select_from(self.t)
            .where(
                and_(
                    self.status.in_(inline_values("completed_statuses", raw)),
                    self._before_now(finish),
                )
            )
            .order_by(ts.value(finish).desc())
            .limit(1)
            .subquery("latest")
        )
        last = func.max(latest.c.finished)
        return select(
            *self._row("p", null(), [None, last], ts.now_epoch("now_shift"))
        ).select_from(latest)


def inline_values(name: str, values: Sequence[Any]) -> Any:
    """Status values written into the statement, quoted by SQLAlchemy:
    SQLite matches a partial index (``WHERE status IN (...)``) only
    against literal values, never bound parameters."""
    return bindparam(name, list(values), expanding=True, literal_execute=True)

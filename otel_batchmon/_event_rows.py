"""SQL that reads finished rows past a watermark, in pages, and recounts.

Rows are ordered by a key computed the same way in every statement:
(finish time as integer epoch microseconds, id as text in a binary
collation). Any total order works as long as the page read, the
watermark predicate and the recount use the same one; the bare finish
column is also bounded so the recommended ``(finished_at)`` index still
narrows the scan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    String,
    and_,
    bindparam,
    cast,
    func,
    null,
    or_,
    select,
)
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from otel_batchmon._dialects import time_sql_for
from otel_batchmon.state import Claim, Watermark
from otel_batchmon.store import BatchStore, BoundTable

__all__ = ["FinishedRow", "RowQuery"]

# The bare-column bound is only an index hint; it is widened by this much
# so clock conversions can never make it exclude a row the key admits.
_SLACK_SECONDS = 300.0
_ZONE_SLACK_SECONDS = 7200.0
_MICROS = 1_000_000


@dataclass(frozen=True)
class FinishedRow:
    """One claimed row, as far as events need it."""

    key: int
    batch_id: str
    status: Any
    duration: float | None
    queue: float | None
    records_total: Any
    records_failed: Any
    kind: Any


class RowQuery:
    """The statements of one bound store; ``bound`` tells which binding."""

    def __init__(
        self, store: BatchStore, clock_offset: float, settle_lag: float
    ) -> None:
        bound = store.bound
        assert bound is not None
        self.bound: BoundTable = bound
        self.offset = clock_offset
        self.settle_lag = settle_lag
        self.ts = time_sql_for(bound.dialect, store.config.timezone)
        self.slack = _SLACK_SECONDS
        if store.config.timezone != "UTC":
            self.slack += _ZONE_SLACK_SECONDS
        self.t = store.table_clause()
        self.finish = bound.times["finished_at"]
        self.key = _micros(self.ts.epoch(self.finish))
        self.id = _as_text(self._col("id"), bound.dialect)
        self._columns = self._row_columns()

    def now_us(self, connection: Connection) -> int:
        """The database clock (plus the clock offset) in microseconds."""
        query = select(_micros(self.ts.now_epoch("now_shift")))
        shift = self.ts.parameter(self.offset)
        now = connection.execute(query, {"now_shift": shift}).scalar_one()
        return int(now)

    def page(
        self,
        connection: Connection,
        after: Watermark,
        now_us: int,
        limit: int,
    ) -> list[FinishedRow]:
        """The first ``limit`` settled rows past ``after``, in key order."""
        query = (
            select(*self._columns)
            .select_from(self.t)
            .where(
                self._settled(),
                self._near("lo_shift", -1),
                self._after(after, "w"),
            )
            .order_by(self.key, self.id)
            .limit(limit)
        )
        params = self._params(after, "w") | {
            "cut_shift": self.ts.parameter(self.offset - self.settle_lag),
            "lo_shift": self._shift(after.finished_us, now_us, -1),
        }
        return [
            FinishedRow(int(r[0]), str(r[1]), *r[2:])
            for r in connection.execute(query, params).all()
        ]

    def count(self, connection: Connection, claim: Claim, now_us: int) -> int:
        """Rows now in the claimed range (after, upto], committed or late."""
        upto = claim.upto
        assert upto.batch_id is not None
        below = or_(
            self.key < bindparam("u_us", type_=BigInteger),
            and_(
                self.key == bindparam("u_us", type_=BigInteger),
                self.id <= bindparam("u_id", type_=String),
            ),
        )
        query = (
            select(func.count())
            .select_from(self.t)
            .where(
                self._present(),
                self._near("lo_shift", -1),
                self._near("hi_shift", 1),
                self._after(claim.after, "w"),
                below,
            )
        )
        params = self._params(claim.after, "w") | {
            "u_us": upto.finished_us,
            "u_id": upto.batch_id,
            "lo_shift": self._shift(claim.after.finished_us, now_us, -1),
            "hi_shift": self._shift(upto.finished_us, now_us, 1),
        }
        return int(connection.execute(query, params).scalar() or 0)

    def _col(self, role: str) -> Any:
        name = self.bound.columns.get(role)
        return null() if name is None else self.t.c[name]

    def _row_columns(self) -> list[Any]:
        times, ts = self.bound.times, self.ts
        start, queued = times.get("started_at"), times.get("queued_at")
        duration: Any = null()
        queue: Any = null()
        if start is not None:
            duration = ts.epoch(self.finish) - ts.epoch(start)
            if queued is not None:
                queue = ts.epoch(start) - ts.epoch(queued)
        return [
            self.key.label("k"),
            self.id.label("i"),
            self._col("status").label("status"),
            duration.label("duration"),
            queue.label("queue"),
            self._col("records_total").label("records_total"),
            self._col("records_failed").label("records_failed"),
            self._col("kind").label("kind"),
        ]

    def _present(self) -> ColumnElement[bool]:
        return and_(
            self.finish.column.isnot(None), self._col("id").isnot(None)
        )

    def _settled(self) -> ColumnElement[bool]:
        return and_(
            self._present(),
            self.ts.value(self.finish) <= self.ts.at(self.finish, "cut_shift"),
        )

    def _near(self, name: str, side: int) -> ColumnElement[bool]:
        value, bound = (
            self.ts.value(self.finish),
            self.ts.at(self.finish, name),
        )
        return value >= bound if side < 0 else value <= bound

    def _shift(self, us: int, now_us: int, side: int) -> float | int:
        # at(column, shift) is the real database clock plus shift; now_us
        # carries the clock offset, so take it out again.
        real_now = now_us / _MICROS - self.offset
        return self.ts.parameter(us / _MICROS + side * self.slack - real_now)

    def _after(self, mark: Watermark, name: str) -> ColumnElement[bool]:
        us = bindparam(f"{name}_us", type_=BigInteger)
        if mark.batch_id is None:
            return self.key >= us
        # (finish, id) > (x, y), written out so every dialect reads it.
        return or_(
            self.key > us,
            and_(
                self.key == us,
                self.id > bindparam(f"{name}_id", type_=String),
            ),
        )

    @staticmethod
    def _params(mark: Watermark, name: str) -> dict[str, Any]:
        params: dict[str, Any] = {f"{name}_us": mark.finished_us}
        if mark.batch_id is not None:
            params[f"{name}_id"] = mark.batch_id
        return params


def _micros(seconds: ColumnElement[float]) -> ColumnElement[int]:
    return cast(func.round(seconds * _MICROS), BigInteger)


def _as_text(id_column: Any, dialect: str) -> ColumnElement[str]:
    # A binary collation, so ids that differ only in case or accents are
    # distinct and ordered the same by ORDER BY and by the > predicate.
    text = cast(id_column, String(255))
    if dialect in ("mysql", "mariadb"):
        return text.collate("utf8mb4_bin")
    if dialect == "postgresql":
        return text.collate("C")
    return text

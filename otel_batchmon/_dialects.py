"""Per-dialect SQL for time: the database clock, cut-offs and epochs.

Every age and window is computed on the database clock, so a monitor on
a host with a skewed clock or another TZ reports the same numbers. Cut-offs
are compared with the bare column where the dialect allows it, so the
recommended indexes stay usable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Double,
    bindparam,
    case,
    cast,
    func,
    literal,
    select,
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import DateTime, Interval

__all__ = [
    "TimeColumn",
    "TimeSql",
    "is_aware",
    "is_timestamp",
    "time_sql_for",
]

_UNIX_EPOCH_JULIAN_DAY = 2440587.5
_FIXED_OFFSET = re.compile(r"([+-])(\d{2}):(\d{2})")


# Seconds per unit of the epoch encodings.
EPOCH_SCALE = {"epoch_s": 1.0, "epoch_float": 1.0, "epoch_ms": 1000.0}


@dataclass(frozen=True)
class TimeColumn:
    """A time column and how to read it: ``encoding`` is ``timestamp``
    (``aware`` telling whether a value is an absolute instant) or one of
    the epoch encodings, numbers of seconds or milliseconds since 1970."""

    column: ColumnElement[Any]
    aware: bool
    encoding: str = "timestamp"

    @property
    def epoch_scale(self) -> float | None:
        """Units per second for an epoch column, else None."""
        return EPOCH_SCALE.get(self.encoding)


class TimeSql:
    """Builds time expressions for one dialect and one store zone.

    ``at(column, shift)`` is the database clock moved by the bound
    parameter ``shift`` (seconds), in the column's own representation, so
    ``column.value(c) < at(c, "stuck_shift")`` can use an index. A shift
    of None is the clock itself, with no parameter (for conditions inside
    a mapping's derived table, which every read shares).
    """

    def __init__(self, zone: str) -> None:
        self.zone = zone

    # An epoch column is compared as the number it is, against the epoch
    # of the clock in the same unit, so an index on it stays usable.
    def value(self, col: TimeColumn) -> ColumnElement[Any]:
        """The column as compared with ``at``."""
        if col.epoch_scale is not None:
            return col.column
        return self._value(col)

    def at(self, col: TimeColumn, shift: str | None) -> ColumnElement[Any]:
        """The database clock plus ``shift`` seconds, comparable to col."""
        if col.epoch_scale is not None:
            return self.now_epoch(shift) * col.epoch_scale
        return self._at(col, shift)

    def epoch(self, col: TimeColumn) -> ColumnElement[float]:
        """Seconds since 1970-01-01 UTC of the column's value."""
        scale = col.epoch_scale
        if scale is not None:
            seconds: ColumnElement[float] = cast(col.column, Double)
            return seconds / scale if scale != 1.0 else seconds
        return self._epoch(col)

    def _value(self, col: TimeColumn) -> ColumnElement[Any]:
        return col.column

    def _at(self, col: TimeColumn, shift: str | None) -> ColumnElement[Any]:
        raise NotImplementedError

    def _epoch(self, col: TimeColumn) -> ColumnElement[float]:
        raise NotImplementedError

    def now_epoch(self, shift: str | None) -> ColumnElement[float]:
        """Seconds since 1970-01-01 UTC of the database clock + shift."""
        raise NotImplementedError

    def parameter(self, seconds: float) -> float | int:
        """The bound value that stands for a shift of ``seconds``."""
        return seconds

    def zone_problem(self, connection: Connection) -> str | None:
        """Say why the store's zone cannot be used here, if it cannot."""
        return None


class _PostgresTime(TimeSql):
    def _now(self, shift: str | None) -> ColumnElement[Any]:
        if shift is None:
            return func.now()
        return func.now() + func.make_interval(
            0, 0, 0, 0, 0, 0, bindparam(shift, type_=Double)
        )

    def _zone(self) -> ColumnElement[Any]:
        # A bare '+02:00' is read by PostgreSQL with the POSIX sign (UTC-2);
        # as an interval it keeps the ISO meaning people expect.
        if _FIXED_OFFSET.fullmatch(self.zone):
            return cast(literal(self.zone), Interval)
        return literal(self.zone)

    def _at(self, col: TimeColumn, shift: str | None) -> ColumnElement[Any]:
        if col.aware:
            return self._now(shift)
        return func.timezone(self._zone(), self._now(shift))

    def _epoch(self, col: TimeColumn) -> ColumnElement[float]:
        value = col.column
        if not col.aware and self.zone != "UTC":
            value = func.timezone(self._zone(), value)
        # date_part gives a double; extract gives numeric since
        # PostgreSQL 14, and numeric arithmetic made the window aggregate
        # five times slower.
        return func.date_part("epoch", value, type_=Double)

    def now_epoch(self, shift: str | None) -> ColumnElement[float]:
        return func.date_part("epoch", self._now(shift), type_=Double)


class _MysqlTime(TimeSql):
    # The session runs with time_zone = '+00:00', so TIMESTAMP columns and
    # UTC_TIMESTAMP() are both UTC; DATETIME is read in the store's zone.
    def _now(self, shift: str | None) -> ColumnElement[Any]:
        if shift is None:
            return func.utc_timestamp(6)
        return func.timestampadd(
            text("MICROSECOND"), bindparam(shift), func.utc_timestamp(6)
        )

    def _at(self, col: TimeColumn, shift: str | None) -> ColumnElement[Any]:
        if col.aware or self.zone == "UTC":
            return self._now(shift)
        return func.convert_tz(self._now(shift), "+00:00", self.zone)

    def _epoch(self, col: TimeColumn) -> ColumnElement[float]:
        value: ColumnElement[Any] = col.column
        if not col.aware and self.zone != "UTC":
            value = func.convert_tz(value, self.zone, "+00:00")
        return self._seconds(value)

    def now_epoch(self, shift: str | None) -> ColumnElement[float]:
        return self._seconds(self._now(shift))

    def parameter(self, seconds: float) -> int:
        return round(seconds * 1_000_000)

    def zone_problem(self, connection: Connection) -> str | None:
        if self.zone == "UTC" or _FIXED_OFFSET.fullmatch(self.zone):
            return None
        probe = select(func.convert_tz("2000-01-01", self.zone, "+00:00"))
        if connection.execute(probe).scalar() is not None:
            return None
        return (
            f"time zone {self.zone!r} is unknown to this server; load its "
            "time zone tables (mariadb-tzinfo-to-sql) or use a fixed "
            "offset like +02:00"
        )

    @staticmethod
    def _seconds(value: ColumnElement[Any]) -> ColumnElement[float]:
        micros = func.timestampdiff(
            text("MICROSECOND"), literal("1970-01-01 00:00:00"), value
        )
        return cast(micros / 1_000_000.0, Double)


class _SqliteTime(TimeSql):
    # SQLite keeps timestamps as text in several layouts; julianday()
    # reads them all ('T' or space, optional fraction, Z or +hh:mm), so
    # comparisons are made on julian days, never on the raw text.
    def __init__(self, zone: str) -> None:
        super().__init__(zone)
        match = _FIXED_OFFSET.fullmatch(zone)
        hours = 0.0
        if match:
            sign = -1.0 if match.group(1) == "-" else 1.0
            hours = sign * (int(match.group(2)) + int(match.group(3)) / 60)
        self._offset_days = hours / 24.0

    def _value(self, col: TimeColumn) -> ColumnElement[Any]:
        day = func.julianday(col.column)
        if not self._offset_days:
            return day
        has_zone = (
            col.column.like("%Z")
            | col.column.like("%+__:__")
            | col.column.like("%-__:__")
        )
        return case((has_zone, day), else_=day - self._offset_days)

    def _at(self, col: TimeColumn, shift: str | None) -> ColumnElement[Any]:
        return func.julianday("now") + self._days(shift)

    @staticmethod
    def _days(shift: str | None) -> ColumnElement[float]:
        if shift is None:
            return literal(0.0, Double)
        return bindparam(shift, type_=Double)

    def _epoch(self, col: TimeColumn) -> ColumnElement[float]:
        return (self._value(col) - _UNIX_EPOCH_JULIAN_DAY) * 86400.0

    def now_epoch(self, shift: str | None) -> ColumnElement[float]:
        return (
            func.julianday("now") + self._days(shift) - _UNIX_EPOCH_JULIAN_DAY
        ) * 86400.0

    def parameter(self, seconds: float) -> float:
        return seconds / 86400.0

    def zone_problem(self, connection: Connection) -> str | None:
        if self.zone == "UTC" or _FIXED_OFFSET.fullmatch(self.zone):
            return None
        return (
            f"time zone {self.zone!r}: SQLite has no time zone database; "
            "store UTC or use a fixed offset like +02:00"
        )


_BY_DIALECT: dict[str, type[TimeSql]] = {
    "postgresql": _PostgresTime,
    "mysql": _MysqlTime,
    "mariadb": _MysqlTime,
    "sqlite": _SqliteTime,
}


def time_sql_for(dialect: str, zone: str) -> TimeSql:
    """Return the time SQL builder for a SQLAlchemy dialect name."""
    try:
        return _BY_DIALECT[dialect](zone)
    except KeyError:
        supported = ", ".join(sorted(_BY_DIALECT))
        raise ValueError(
            f"database dialect {dialect!r} is not supported; "
            f"otel_batchmon reads {supported}"
        ) from None


def is_aware(dialect: str, column_type: object) -> bool:
    """Tell whether a reflected column type stores an absolute instant."""
    from sqlalchemy.types import TIMESTAMP

    if dialect == "postgresql":
        return bool(getattr(column_type, "timezone", False))
    if dialect in ("mysql", "mariadb"):
        return isinstance(column_type, TIMESTAMP)
    return False


def is_timestamp(dialect: str, column_type: object) -> bool:
    """Tell whether a reflected column can be read as a timestamp."""
    if dialect == "sqlite":
        return True
    return isinstance(column_type, DateTime)

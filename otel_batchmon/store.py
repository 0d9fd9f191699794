"""A user's batch table mapped onto SQLAlchemy Core, and its refresh query.

The store knows nothing of metrics: it turns one round trip to the
database into a StoreSnapshot. Identifiers are checked against the
reflected table and are always quoted by SQLAlchemy, never pasted in.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Double,
    Integer,
    String,
    and_,
    case,
    cast,
    column,
    func,
    inspect,
    literal_column,
    null,
    or_,
    select,
    table,
    union_all,
)
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Select
from sqlalchemy.sql.elements import ColumnElement

from otel_batchmon._dialects import (
    TimeColumn,
    TimeSql,
    is_aware,
    is_timestamp,
    time_sql_for,
)
from otel_batchmon.config import COLUMN_ROLES, REQUIRED_ROLES, StoreConfig
from otel_batchmon.errors import ConfigError, StoreError
from otel_batchmon.snapshot import StoreSnapshot
from otel_batchmon.status import StatusMap

__all__ = ["BatchStore", "BoundTable"]

_log = logging.getLogger(__name__)
_TIME_ROLES = ("queued_at", "started_at", "finished_at")
_LISTED = 30
# Every part of the refresh union has these value columns, v0 to v6.
_SLOTS = 7


@dataclass(frozen=True)
class BoundTable:
    """The mapped table as it exists: real names, types and zone reading."""

    schema: str | None
    name: str
    columns: Mapping[str, str]
    times: Mapping[str, TimeColumn]
    status_is_integer: bool
    dialect: str


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
        self.bound = _reflect(self.config, connection)
        self.statuses = StatusMap(self.config.statuses).for_dialect(
            self.bound.dialect
        )
        if self.bound.status_is_integer:
            self.statuses = self.statuses.as_integers(self.config.name)
        self._time = time_sql_for(self.bound.dialect, self.config.timezone)
        problem = self._time.zone_problem(connection)
        if problem:
            self.bound = None
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

    def time_sql(self) -> TimeSql:
        """The dialect's time expressions for this bound store."""
        if self._time is None:
            raise StoreError(f"store {self.name!r} is not bound to a table")
        return self._time

    def table_clause(self) -> Any:
        """The mapped table as a SQLAlchemy table clause (bound stores)."""
        return self._table(self._require_bound())

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
        names = sorted(set(bound.columns.values()))
        return table(
            bound.name, *(column(n) for n in names), schema=bound.schema
        )

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
    """

    def __init__(self, store: BatchStore, bound: BoundTable, t: Any) -> None:
        assert store._time is not None
        self.ts = store._time
        self.statuses = store.statuses
        self.config = store.config
        self.status = t.c[bound.columns["status"]]
        self.start = bound.times["started_at"]
        self.finish = bound.times["finished_at"]
        self.queued = bound.times.get("queued_at")
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

    def window(self) -> Select[Any]:
        start, finish, ts = self.start, self.finish, self.ts
        in_window = self._within(start)
        if self.queued is not None:
            in_window = or_(
                in_window,
                and_(start.column.is_(None), self._within(self.queued)),
            )
        both = and_(start.column.isnot(None), finish.column.isnot(None))
        duration = ts.epoch(finish) - ts.epoch(start)
        valid = and_(both, duration >= 0, self._before_now(finish))
        finished_late = and_(
            finish.column.isnot(None), ~self._before_now(finish)
        )
        values = [
            func.count(),
            func.count(case((valid, 1))),
            func.sum(case((valid, duration))),
            func.sum(case((and_(both, duration < 0), 1), else_=0)),
            func.sum(
                case(
                    (
                        and_(
                            finish.column.isnot(None), start.column.is_(None)
                        ),
                        1,
                    ),
                    else_=0,
                )
            ),
            func.sum(case((finish.column.is_(None), 1), else_=0)),
            func.sum(case((finished_late, 1), else_=0)),
        ]
        return (
            select(*self._row("w", self.status, values, None))
            .select_from(self.t)
            .where(in_window)
            .group_by(self.status)
        )

    def stuck_since(self) -> ColumnElement[bool]:
        """Started before the stuck cut-off; a pending row that never
        started counts from its queued time, when there is one."""
        start, ts = self.start, self.ts
        early = ts.value(start) < ts.at(start, "stuck_shift")
        if self.queued is None:
            return early
        queued = self.queued
        # An unbound column, like the time columns: this condition is also
        # used with other table clauses of the same table (alert reads).
        status: Any = column(self.status.name)
        waiting = and_(
            start.column.is_(None),
            status.in_(self.statuses.raw_values(("pending",))),
            ts.value(queued) < ts.at(queued, "stuck_shift"),
        )
        return or_(early, waiting)

    def active(self) -> Select[Any]:
        start, ts = self.start, self.ts
        raw = self.statuses.raw_values(
            ("pending", "processing", *self.config.stuck_statuses)
        )
        started = start.column.isnot(None)
        values: list[Any] = [
            func.count(),
            func.sum(case((self.stuck_since(), 1), else_=0)),
            func.min(case((self._before_now(start), ts.epoch(start)))),
        ]
        # v3: what the pending age runs from: the queued time, or the start
        # time when the table has no queued column (never a mix of both).
        basis = self.queued if self.queued is not None else start
        values.append(
            func.min(case((self._before_now(basis), ts.epoch(basis))))
        )
        values.append(
            func.sum(
                case((and_(started, ~self._before_now(start)), 1), else_=0)
            )
        )
        return (
            select(*self._row("a", self.status, values, None))
            .select_from(self.t)
            .where(self.status.in_(raw))
            .group_by(self.status)
        )

    def probe(self) -> Select[Any]:
        finish, ts = self.finish, self.ts
        raw = self.statuses.raw_values(("completed",))
        last = func.max(ts.epoch(finish))
        return (
            select(
                *self._row(
                    "p", null(), [None, last], ts.now_epoch("now_shift")
                )
            )
            .select_from(self.t)
            .where(and_(self.status.in_(raw), self._before_now(finish)))
        )


def _reflect(config: StoreConfig, connection: Connection) -> BoundTable:
    dialect = connection.dialect.name
    inspector = inspect(connection)
    schema, name = config.schema, config.table
    where = f"store {config.name!r}"
    if schema is not None:
        schemas = list(inspector.get_schema_names())
        schema = _resolve(schema, schemas)
        if schema is None:
            listed = ", ".join(sorted(schemas)[:_LISTED]) or "none"
            raise ConfigError(
                [
                    f"{where}: schema {config.schema!r} of table "
                    f"{config.qualified_table!r} does not exist; schemas "
                    f"there: {listed}"
                ]
            )
    tables = list(inspector.get_table_names(schema=schema))
    tables += list(inspector.get_view_names(schema=schema))
    real_name = _resolve(name, tables)
    if real_name is None:
        listed = ", ".join(sorted(tables)[:_LISTED]) or "none"
        in_schema = f" in schema {schema!r}" if schema else ""
        raise ConfigError(
            [
                f"{where}: table {config.qualified_table!r} does not exist"
                f"{in_schema}; tables there: {listed}"
            ]
        )
    reflected = inspector.get_columns(real_name, schema=schema)
    types = {c["name"]: c["type"] for c in reflected}
    columns, problems = _map_columns(config, list(types), dialect, types)
    if problems:
        raise ConfigError(problems)
    times = {
        role: TimeColumn(
            column(columns[role]), is_aware(dialect, types[columns[role]])
        )
        for role in _TIME_ROLES
        if role in columns
    }
    status_type = types[columns["status"]]
    return BoundTable(
        schema=schema,
        name=real_name,
        columns=columns,
        times=times,
        status_is_integer=isinstance(status_type, Integer),
        dialect=dialect,
    )


def _resolve(wanted: str, existing: Sequence[str]) -> str | None:
    """Match a name exactly, else case-insensitively when that is unique."""
    if wanted in existing:
        return wanted
    folded = [n for n in existing if n.casefold() == wanted.casefold()]
    return folded[0] if len(folded) == 1 else None


def _map_columns(
    config: StoreConfig,
    existing: list[str],
    dialect: str,
    types: Mapping[str, Any],
) -> tuple[dict[str, str], list[str]]:
    problems: list[str] = []
    columns: dict[str, str] = {}
    where = f"stores.{config.name}.columns"
    listed = ", ".join(existing[:_LISTED])
    for role in COLUMN_ROLES:
        wanted = config.columns.get(role)
        if wanted is None:
            continue
        real = _resolve(wanted, existing)
        needed = role in REQUIRED_ROLES or role in config.columns.explicit
        if real is None:
            if needed:
                problems.append(
                    f"{where}.{role}: column {wanted!r} is not in table "
                    f"{config.qualified_table!r}; its columns are: {listed}"
                )
            continue
        if role in _TIME_ROLES and not is_timestamp(dialect, types[real]):
            problems.append(
                f"{where}.{role}: column {real!r} has type {types[real]}, "
                "not a timestamp type"
            )
        columns[role] = real
    return columns, problems

"""The four ways of refreshing, and how one refresh is measured.

Every approach runs on the monitor's own engine (``create_monitor_engine``:
read-only, UTC, and on PostgreSQL no parallel workers and no JIT), so the
sessions are alike. The statements a refresh sends are captured with the
``before_cursor_execute`` event; their database time is then taken from
``EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, FORMAT JSON)`` of the same SQL and
parameters on PostgreSQL (planning + execution). SQLite and MariaDB have
no comparable figure (SQLite runs in-process): there each statement is run
again on the driver's cursor and timed to its last row.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.engine import Connection

from otel_batchmon.config import StoreConfig
from otel_batchmon.store import BatchStore

NOT_AVAILABLE = "not available"
_SCANS = (
    "Seq Scan",
    "Index Scan",
    "Index Only Scan",
    "Bitmap Heap Scan",
)


@dataclass
class Executed:
    """One statement a refresh sent, and how long the driver took."""

    statement: str
    parameters: Any
    seconds: float = 0.0


class Capture:
    """Records the statements executed on an engine while ``on``."""

    def __init__(self, engine: Engine) -> None:
        self.on = False
        self.records: list[Executed] = []
        self._began = 0.0
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(
        self, _c: Any, _cur: Any, statement: str, params: Any, *_: Any
    ) -> None:
        if self.on:
            self.records.append(Executed(statement, params))
            self._began = time.perf_counter()

    def _after(self, *_: Any) -> None:
        if self.on and self.records:
            self.records[-1].seconds = time.perf_counter() - self._began

    def take(self) -> list[Executed]:
        taken, self.records = self.records, []
        return taken


@dataclass
class Measured:
    """One measured refresh of one approach."""

    wall_seconds: float
    db_seconds: float
    statements: int
    rows_read: int | None = None
    buffers: int | None = None
    explained: int = 0
    skipped: list[str] = field(default_factory=list)


def database_time(
    connection: Connection, executed: list[Executed]
) -> tuple[float, int | None, int | None, int, list[str]]:
    """Database seconds, rows read, buffers and statements explained."""
    if connection.dialect.name != "postgresql":
        return _rerun_seconds(connection, executed), None, None, 0, []
    seconds, rows, buffers, explained = 0.0, 0, 0, 0
    skipped: list[str] = []
    for item in executed:
        head = item.statement.lstrip().split(None, 1)[0].upper()
        if head not in ("SELECT", "WITH", "("):
            # EXPLAIN ANALYZE would run a write for real: count, skip.
            skipped.append(head)
            continue
        sql = "EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, FORMAT JSON) "
        result = (
            connection.exec_driver_sql(sql + item.statement, item.parameters)
            if item.parameters
            else connection.exec_driver_sql(sql + item.statement)
        )
        document = result.scalar_one()
        if isinstance(document, str):
            document = json.loads(document)
        plan = document[0]
        seconds += (plan["Planning Time"] + plan["Execution Time"]) / 1000.0
        rows += sum(_rows_read(plan["Plan"]))
        top = plan["Plan"]
        buffers += top.get("Shared Hit Blocks", 0)
        buffers += top.get("Shared Read Blocks", 0)
        explained += 1
    return seconds, rows, buffers, explained, skipped


def _rerun_seconds(connection: Connection, executed: list[Executed]) -> float:
    """Run each statement again on the driver's cursor, to the last row.

    The execute time the events see is not enough on SQLite: execute
    stops at the first row, and the later parts of a UNION ALL run while
    rows are fetched.
    """
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    total = 0.0
    try:
        for item in executed:
            began = time.perf_counter()
            cursor.execute(item.statement, item.parameters or ())
            cursor.fetchall()
            total += time.perf_counter() - began
    finally:
        cursor.close()
    return total


def _rows_read(node: dict[str, Any]) -> Iterator[int]:
    if node.get("Node Type") in _SCANS:
        seen = node.get("Actual Rows", 0) + node.get(
            "Rows Removed by Filter", 0
        )
        seen += node.get("Rows Removed by Index Recheck", 0)
        yield int(seen * node.get("Actual Loops", 1))
    for child in node.get("Plans", ()):
        yield from _rows_read(child)


class SqlMonitor:
    """A monitor that sends a fixed set of SQL texts, one per value or
    per metric (the naive monitor and query-exporter's queries)."""

    def __init__(self, name: str, queries: dict[str, str]) -> None:
        self.name = name
        self.queries = queries
        self.values: dict[str, Any] = {}

    def refresh(self, connection: Connection) -> None:
        for key, sql in self.queries.items():
            self.values[key] = connection.exec_driver_sql(sql).all()


class FullRefresh:
    """``BatchStore.read``: the single UNION ALL statement."""

    name = "ours, full"

    def __init__(self, config: StoreConfig) -> None:
        self.store = BatchStore(config)
        self.snapshot: Any = None

    def refresh(self, connection: Connection) -> None:
        if self.store.bound is None:
            self.store.bind(connection)
        self.snapshot = self.store.read(connection)


class IncrementalMonitor:
    """``IncrementalRefresh.read``; ``reconcile`` measured on its own."""

    name = "ours, incremental"

    def __init__(
        self,
        config: StoreConfig,
        reconcile_every: float,
        settle_lag: float = 30.0,
    ) -> None:
        from otel_batchmon.incremental import (  # type: ignore[import-not-found,unused-ignore]
            IncrementalRefresh,
        )

        self.store = BatchStore(config)
        self.reconcile_every = reconcile_every
        self.refresher = IncrementalRefresh(
            self.store,
            reconcile_every_seconds=reconcile_every,
            settle_lag_seconds=settle_lag,
        )
        self.snapshot: Any = None
        self.reconciling = False

    def refresh(self, connection: Connection) -> None:
        if self.store.bound is None:
            self.store.bind(connection)
        if self.reconciling:
            self.snapshot = self.refresher.reconcile(connection)
        else:
            self.snapshot = self.refresher.read(connection)


def incremental_or_reason(
    config: StoreConfig, reconcile_every: float, settle_lag: float = 30.0
) -> IncrementalMonitor | str:
    """The incremental monitor, or why it cannot be measured."""
    try:
        return IncrementalMonitor(config, reconcile_every, settle_lag)
    except ImportError as exc:
        return f"{NOT_AVAILABLE} (ImportError: {exc})"
    except Exception as exc:
        return f"{NOT_AVAILABLE} ({type(exc).__name__}: {exc})"


def measure(engine: Engine, capture: Capture, approach: Any) -> Measured:
    """Run one refresh, then explain what it sent."""
    with engine.connect() as connection, connection.begin():
        capture.on = True
        try:
            began = time.perf_counter()
            approach.refresh(connection)
            wall = time.perf_counter() - began
        finally:
            capture.on = False
        executed = capture.take()
        db, rows, buffers, explained, skipped = database_time(
            connection, executed
        )
    return Measured(wall, db, len(executed), rows, buffers, explained, skipped)

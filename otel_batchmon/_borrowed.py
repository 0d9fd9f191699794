"""Reading through the application's own engine without disturbing it.

When a user hands the monitor their engine, the monitor must not change
their sessions: no connect-event listeners, no session settings that
outlive the refresh. It takes one connection per refresh, applies its
settings for that transaction only (PostgreSQL ``SET LOCAL``) or restores
them afterwards (MySQL/MariaDB), and gives the connection back at once.
A starved pool fails the refresh at once instead of waiting on the
application's checkout timeout.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import QueuePool

from otel_batchmon.errors import StoreError

__all__ = ["PoolStarved", "borrowed_connection"]


class PoolStarved(StoreError):
    """Every connection of the application's pool is in use."""


@contextmanager
def borrowed_connection(
    engine: Engine, timeout: float
) -> Iterator[Connection]:
    """One connection from ``engine`` with the monitor's settings, for one
    read-only transaction; the settings end with it."""
    _refuse_if_starved(engine)
    with engine.connect() as connection, connection.begin():
        restore = _apply(connection, timeout)
        try:
            yield connection
        finally:
            if restore:
                _restore(connection, restore)


def _refuse_if_starved(engine: Engine) -> None:
    pool = engine.pool
    if not isinstance(pool, QueuePool):
        return
    # Checked-in connections or room to open another: a checkout will not
    # wait. (max_overflow -1 means no limit.)
    room = pool._max_overflow < 0 or pool.overflow() < pool._max_overflow
    if pool.checkedin() > 0 or room:
        return
    raise PoolStarved(
        f"the application's pool is exhausted ({pool.checkedout()} "
        "connections in use); refresh skipped rather than wait for one"
    )


def _apply(connection: Connection, timeout: float) -> dict[str, Any]:
    dialect = connection.dialect.name
    millis = max(1, int(timeout * 1000))
    if dialect == "postgresql":
        for statement in (
            "SET TRANSACTION READ ONLY",
            "SET LOCAL TIME ZONE 'UTC'",
            f"SET LOCAL statement_timeout = {millis}",
            f"SET LOCAL lock_timeout = {millis}",
        ):
            connection.exec_driver_sql(statement)
        return {}
    if dialect in ("mysql", "mariadb"):
        # MySQL has no transaction-local settings: remember and restore.
        saved = {"time_zone": _variable(connection, "time_zone")}
        connection.exec_driver_sql("SET SESSION time_zone = '+00:00'")
        for name, value in (
            ("max_statement_time", f"{timeout}"),
            ("max_execution_time", f"{millis}"),
        ):
            current = _variable(connection, name)
            if current is not None:
                saved[name] = current
                connection.exec_driver_sql(f"SET SESSION {name} = {value}")
                break
        return saved
    return {}


def _variable(connection: Connection, name: str) -> Any:
    try:
        row = connection.execute(
            text("SHOW SESSION VARIABLES LIKE :name"), {"name": name}
        ).first()
    except Exception:
        return None
    return None if row is None else row[1]


def _restore(connection: Connection, saved: dict[str, Any]) -> None:
    for name, value in saved.items():
        if name == "time_zone":
            connection.execute(
                text("SET SESSION time_zone = :value"), {"value": value}
            )
        else:
            # Numeric variables refuse a quoted value; these came from the
            # server itself, and the names from the fixed list above.
            connection.exec_driver_sql(
                f"SET SESSION {name} = {float(value):.6f}"
                if name == "max_statement_time"
                else f"SET SESSION {name} = {int(float(value))}"
            )

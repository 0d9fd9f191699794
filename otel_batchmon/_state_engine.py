"""The state tables' own engine: writable, UTC, with timeouts.

Never the monitor's read-only store engine; never the application's pool.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url

from otel_batchmon._engine import run_settings

__all__ = ["create_state_engine", "is_unwritable"]

# Errors that mean "this account or server cannot write here", as opposed
# to a passing failure worth retrying.
_PG_UNWRITABLE = {"25006", "42501"}
_MYSQL_UNWRITABLE = {1036, 1044, 1142, 1290, 1792, 1836}
_SQLITE_UNWRITABLE = ("readonly database", "read-only", "read only")


def is_unwritable(exc: BaseException) -> bool:
    """Tell whether a database error means writes are not allowed."""
    original = getattr(exc, "orig", None)
    code = getattr(original, "sqlstate", None) or getattr(
        original, "pgcode", None
    )
    if code in _PG_UNWRITABLE:
        return True
    args = getattr(original, "args", ())
    if args and isinstance(args[0], int) and args[0] in _MYSQL_UNWRITABLE:
        return True
    text = str(original if original is not None else exc).lower()
    return any(marker in text for marker in _SQLITE_UNWRITABLE)


def create_state_engine(
    url: str, statement_timeout: float, connect_timeout: float
) -> Engine:
    """A small writable engine for the state tables, UTC, with timeouts."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    seconds = max(1, math.ceil(connect_timeout))
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if backend == "sqlite":
        # The busy timeout makes concurrent writers queue, not fail.
        kwargs["connect_args"] = {
            "timeout": statement_timeout,
            "check_same_thread": False,
        }
    else:
        kwargs |= {"pool_size": 1, "max_overflow": 0, "pool_timeout": 5.0}
        key = "connect_timeout"
        kwargs["connect_args"] = {
            key: max(2, seconds) if backend == "postgresql" else seconds
        }
    engine = create_engine(parsed, **kwargs)
    event.listen(
        engine, "connect", _session_settings(backend, statement_timeout)
    )
    return engine


def _session_settings(backend: str, timeout: float) -> Any:
    millis = max(1, int(timeout * 1000))
    lock_seconds = max(1, math.ceil(timeout))
    statements: list[str] = []
    if backend == "postgresql":
        statements = [
            "SET TIME ZONE 'UTC'",
            f"SET statement_timeout = {millis}",
            f"SET lock_timeout = {millis}",
        ]
    elif backend in ("mysql", "mariadb"):
        statements = [
            "SET SESSION time_zone = '+00:00'",
            f"SET SESSION lock_wait_timeout = {lock_seconds}",
            f"SET SESSION innodb_lock_wait_timeout = {lock_seconds}",
        ]
    return run_settings(statements, commit=True)

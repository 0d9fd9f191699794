"""The monitor's own small engine: session settings, timeouts, errors.

The monitor never borrows the application's pool: it keeps one connection
with the session pinned to UTC, read-only, and a statement timeout shorter
than the refresh interval.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    NoSuchModuleError,
    SQLAlchemyError,
)

from otel_batchmon.errors import ConfigError

__all__ = [
    "DatabaseFailure",
    "classify",
    "create_monitor_engine",
    "mask_url",
    "run_settings",
]

_log = logging.getLogger(__name__)
_SECRET_QUERY_KEYS = re.compile(
    r"pass|secret|token|key|credential|auth|sslpassword", re.IGNORECASE
)
_URL_IN_TEXT = re.compile(r"\b([a-z][a-z0-9+.-]*://)([^:/@\s]+):([^@\s]+)@")
_DRIVER_HINT = {
    "postgresql": "pip install 'otel-batchmon[postgresql]' (psycopg)",
    "mysql": "pip install 'otel-batchmon[mysql]' (PyMySQL)",
    "mariadb": "pip install 'otel-batchmon[mysql]' (PyMySQL)",
}


def mask_url(url: str | URL) -> str:
    """Render a database URL with its password and secret options hidden."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except ArgumentError:
        return "<unparseable database URL>"
    query = {
        k: ("***" if _SECRET_QUERY_KEYS.search(k) else v)
        for k, v in parsed.query.items()
    }
    return parsed.set(query=query).render_as_string(hide_password=True)


def mask_text(text: str) -> str:
    """Hide ``user:password@`` credentials inside free text."""
    return _URL_IN_TEXT.sub(r"\1\2:***@", text)


def create_monitor_engine(
    url: str, statement_timeout: float, connect_timeout: float
) -> Engine:
    """Create the dedicated engine with per-dialect session settings."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {
        "pool_pre_ping": True,
        "connect_args": _connect_args(
            parsed, statement_timeout, connect_timeout
        ),
    }
    if not (backend == "sqlite" and parsed.database in (None, "", ":memory:")):
        kwargs |= {"pool_size": 1, "max_overflow": 0, "pool_timeout": 1.0}
    try:
        engine = create_engine(parsed, **kwargs)
    except NoSuchModuleError:
        raise ConfigError(
            [f"database URL {mask_url(parsed)}: unknown dialect or driver"]
        ) from None
    except ModuleNotFoundError as exc:
        hint = _DRIVER_HINT.get(backend, "install the database driver")
        raise ConfigError(
            [
                f"database URL {mask_url(parsed)} needs the Python module "
                f"{exc.name!r}: {hint}"
            ]
        ) from None
    _install_session_settings(engine, backend, statement_timeout)
    return engine


def _connect_args(
    url: URL, statement_timeout: float, connect_timeout: float
) -> dict[str, Any]:
    backend, driver = url.get_backend_name(), url.get_driver_name()
    seconds = max(1, math.ceil(connect_timeout))
    if backend == "postgresql" and driver.startswith("psycopg"):
        # libpq rounds anything under 2 seconds up to 2. The name lets a
        # DBA tell the monitor's session apart (a URL's own wins).
        args: dict[str, Any] = {"connect_timeout": max(2, seconds)}
        if "application_name" not in url.query:
            args["application_name"] = "otel-batchmon"
        return args
    if backend in ("mysql", "mariadb") and driver in ("pymysql", "mysqldb"):
        return {"connect_timeout": seconds}
    if backend == "sqlite":
        return {"timeout": statement_timeout, "check_same_thread": False}
    return {}


def _install_session_settings(
    engine: Engine, backend: str, timeout: float
) -> None:
    millis = max(1, int(timeout * 1000))
    if backend == "postgresql":
        statements = [
            "SET TIME ZONE 'UTC'",
            f"SET statement_timeout = {millis}",
            f"SET lock_timeout = {millis}",
            "SET default_transaction_read_only = on",
            # Bound cut-offs must keep using the indexes: no generic plans.
            "SET plan_cache_mode = force_custom_plan",
            # Parallel workers and JIT made these small aggregates 2-3x
            # more expensive in server CPU when measured.
            "SET max_parallel_workers_per_gather = 0",
            "SET jit = off",
        ]
        event.listen(engine, "connect", run_settings(statements, True))
    elif backend in ("mysql", "mariadb"):
        event.listen(engine, "connect", _mysql_settings(timeout))
    elif backend == "sqlite":
        _install_sqlite_deadline(engine, timeout)


def run_settings(statements: list[str], commit: bool) -> Any:
    """A connect-event listener that runs ``statements`` on a new session."""

    def apply(dbapi_connection: Any, _record: Any) -> None:
        if not statements:
            return
        cursor = dbapi_connection.cursor()
        try:
            for statement in statements:
                cursor.execute(statement)
        finally:
            cursor.close()
        if commit:
            dbapi_connection.commit()

    return apply


def _mysql_settings(timeout: float) -> Any:
    lock_seconds = max(1, math.ceil(timeout))

    def apply(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SET SESSION time_zone = '+00:00'")
            cursor.execute(f"SET SESSION lock_wait_timeout = {lock_seconds}")
            cursor.execute(
                f"SET SESSION innodb_lock_wait_timeout = {lock_seconds}"
            )
            try:
                cursor.execute(f"SET SESSION max_statement_time = {timeout}")
            except Exception:  # MySQL has max_execution_time instead
                millis = max(1, int(timeout * 1000))
                cursor.execute(f"SET SESSION max_execution_time = {millis}")
            cursor.execute("SET SESSION TRANSACTION READ ONLY")
        finally:
            cursor.close()

    return apply


class _Deadline(threading.local):
    at: float = math.inf


def _install_sqlite_deadline(engine: Engine, timeout: float) -> None:
    # SQLite has no statement timeout; a progress handler that asks for an
    # interrupt once the deadline passes gives the same effect.
    deadline = _Deadline()

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA query_only = ON")
        dbapi_connection.set_progress_handler(
            lambda: 1 if time.monotonic() > deadline.at else 0, 1000
        )

    def before(*_args: Any) -> None:
        deadline.at = time.monotonic() + timeout

    def after(*_args: Any) -> None:
        deadline.at = math.inf

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)


@dataclass(frozen=True)
class DatabaseFailure:
    """A refresh failure reduced to a stable type and one clear line."""

    error_type: str
    message: str


_PG_CODES = {
    "57014": "timeout",
    "55P03": "timeout",
    "42P01": "schema",
    "42703": "schema",
    "3F000": "schema",
    "42501": "permission",
    "28000": "permission",
    "28P01": "permission",
}
_MYSQL_CODES = {
    1969: "timeout",
    3024: "timeout",
    1205: "timeout",
    1146: "schema",
    1054: "schema",
    1049: "schema",
    1142: "permission",
    1044: "permission",
    1045: "permission",
    2003: "connection",
    2006: "connection",
    2013: "connection",
}


def classify(exc: BaseException) -> DatabaseFailure:
    """Reduce an exception from a refresh to an error type and a line."""
    if isinstance(exc, ConfigError):
        return DatabaseFailure("schema", "; ".join(exc.problems))
    if not isinstance(exc, SQLAlchemyError):
        return DatabaseFailure("internal", f"{type(exc).__name__}: {exc}")
    original = getattr(exc, "orig", None)
    text = mask_text(_first_line(str(original if original else exc)))
    code = getattr(original, "sqlstate", None) or getattr(
        original, "pgcode", None
    )
    if code in _PG_CODES:
        return DatabaseFailure(_PG_CODES[code], text)
    args = getattr(original, "args", ())
    if args and isinstance(args[0], int) and args[0] in _MYSQL_CODES:
        return DatabaseFailure(_MYSQL_CODES[args[0]], text)
    lowered = text.lower()
    if "interrupted" in lowered or "database is locked" in lowered:
        return DatabaseFailure("timeout", text)
    if "no such table" in lowered or "no such column" in lowered:
        return DatabaseFailure("schema", text)
    if isinstance(exc, DBAPIError) and (
        exc.connection_invalidated or (code and str(code).startswith("08"))
    ):
        return DatabaseFailure("connection", text)
    if not isinstance(exc, DBAPIError):
        return DatabaseFailure("internal", text)
    if any(
        marker in lowered
        for marker in (
            "connect",
            "unable to open",
            "translate host",
            "name or service not known",
            "nodename nor servname",
        )
    ):
        return DatabaseFailure("connection", text)
    return DatabaseFailure("query", text)


def _first_line(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return text.strip() or "unknown error"

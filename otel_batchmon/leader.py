"""Leadership: one instance at a time reports a store's database-wide data.

A lock held on a dedicated connection (PostgreSQL advisory lock, MySQL and
MariaDB ``GET_LOCK``; a file lock for SQLite) decides who may lead. The
lock alone could let two instances report for a moment (the server frees
a dead session's lock before the old leader notices), so it is turned into
a lease: a leader stops reporting ``lease_seconds`` after it last confirmed
the lock, and a new leader starts reporting only ``lease_seconds`` after it
acquired it. Their reporting never overlaps.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import NullPool

from otel_batchmon._engine import classify, mask_url
from otel_batchmon.config import StoreConfig

__all__ = ["Leadership", "lock_for"]

_log = logging.getLogger(__name__)


class Lock(Protocol):
    """A mutual-exclusion lock that can be tried and confirmed."""

    def hold(self) -> bool:
        """Acquire the lock or confirm it is still ours; never blocks."""

    def release(self) -> None:
        """Give the lock up (and its connection)."""

    def forget(self) -> None:
        """Drop what this process inherited across fork, keeping nothing."""


def lock_for(store: StoreConfig, connect_timeout: float) -> Lock:
    """The lock that fits the store's database."""
    url = make_url(store.database_url)
    backend = url.get_backend_name()
    name = f"otel_batchmon:{store.name}:{store.qualified_table}"
    if backend == "sqlite":
        return _FileLock(url.database)
    if backend == "postgresql":
        return _SessionLock(
            store.database_url, name, _POSTGRES, connect_timeout
        )
    if backend in ("mysql", "mariadb"):
        return _SessionLock(store.database_url, name, _MYSQL, connect_timeout)
    raise ValueError(f"no leader lock for database {backend!r}")


class _Dialect:
    def __init__(self, acquire: str, confirm: str, key: Callable[[str], Any]):
        self.acquire = acquire
        self.confirm = confirm
        self.key = key


def _advisory_key(name: str) -> int:
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _lock_name(name: str) -> str:
    # MySQL lock names are limited to 64 characters.
    return "batchmon:" + hashlib.sha1(name.encode()).hexdigest()


_POSTGRES = _Dialect(
    "SELECT pg_try_advisory_lock(:key)",
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
    "AND pid = pg_backend_pid() AND granted",
    _advisory_key,
)
_MYSQL = _Dialect(
    "SELECT GET_LOCK(:key, 0)",
    "SELECT IS_USED_LOCK(:key) = CONNECTION_ID()",
    _lock_name,
)


class _SessionLock:
    """A server-side lock tied to one dedicated, never pooled connection."""

    def __init__(
        self, url: str, name: str, dialect: _Dialect, connect_timeout: float
    ) -> None:
        self._url = url
        self._key = dialect.key(name)
        self._dialect = dialect
        self._connect_timeout = connect_timeout
        self._engine: Engine | None = None
        self._connection: Connection | None = None

    def hold(self) -> bool:
        try:
            if self._connection is None:
                return self._acquire()
            value = self._connection.execute(
                text(self._dialect.confirm), {"key": self._key}
            ).scalar()
            self._connection.commit()
            return bool(value)
        except Exception as exc:
            failure = classify(exc)
            _log.debug(
                "leader lock on %s lost (%s): %s",
                mask_url(self._url),
                failure.error_type,
                failure.message,
            )
            self.release()
            raise

    def _acquire(self) -> bool:
        if self._engine is None:
            self._engine = create_engine(
                self._url,
                poolclass=NullPool,
                connect_args=_connect_args(self._url, self._connect_timeout),
            )
        self._connection = self._engine.connect()
        got = self._connection.execute(
            text(self._dialect.acquire), {"key": self._key}
        ).scalar()
        self._connection.commit()
        if not got:
            self.release()
        return bool(got)

    def release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:
                _log.debug("closing the leader connection failed")

    def forget(self) -> None:
        # The parent's socket must not be touched by the child: drop the
        # references without closing (closing would send a Terminate that
        # ends the parent's session and frees its lock).
        self._connection = None
        if self._engine is not None:
            self._engine.dispose(close=False)


def _connect_args(url: str, seconds: float) -> dict[str, Any]:
    backend = make_url(url).get_backend_name()
    if backend == "postgresql":
        return {"connect_timeout": max(2, int(seconds))}
    if backend in ("mysql", "mariadb"):
        return {"connect_timeout": max(1, int(seconds))}
    return {}


class _FileLock:
    """An exclusive flock beside the SQLite file, for this process."""

    def __init__(self, database: str | None) -> None:
        self._path = (
            None
            if database in (None, "", ":memory:")
            else Path(f"{database}.batchmon-leader")
        )
        self._fd: int | None = None

    def hold(self) -> bool:
        if self._path is None:
            return True
        if self._fd is not None:
            return True
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def forget(self) -> None:
        # Closing the child's copy leaves the parent's lock in place: flock
        # belongs to the open file, which the parent still has open.
        self.release()


class Leadership:
    """Whether this instance may report a store, as a lease over a lock.

    ``renew()`` is called often (every ``lease_seconds / 3``) by its own
    thread; ``valid()`` may be called from any thread, including the SDK's
    collection thread, and never touches the database.
    """

    def __init__(
        self,
        lock: Lock,
        lease_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._lock = lock
        self.lease_seconds = lease_seconds
        self._clock = clock
        self._on_change = on_change
        self._acquired_at: float | None = None
        self._confirmed_at: float | None = None
        self._was_valid = False
        self.unreachable = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        _at_fork(self)

    def renew(self) -> bool:
        """Try or confirm the lock once; return whether we lead now."""
        began = self._clock()
        try:
            held = self._lock.hold()
            self.unreachable = False
        except Exception:
            # Nobody can lead through a database we cannot reach; the
            # refresher still tries its own reads so the failure shows in
            # batchmon.refresh.errors.
            held = False
            self.unreachable = True
        if not held:
            self._acquired_at = self._confirmed_at = None
        else:
            # The lock was confirmed no earlier than `began`: count the
            # lease from there, never from after a slow round trip.
            if self._acquired_at is None:
                self._acquired_at = began
            self._confirmed_at = began
        self._notify()
        return self.valid()

    def valid(self) -> bool:
        """True while this instance's lease is in force."""
        acquired, confirmed = self._acquired_at, self._confirmed_at
        if acquired is None or confirmed is None:
            return False
        now = self._clock()
        waited = now - acquired >= self.lease_seconds
        return waited and now - confirmed < self.lease_seconds

    def start(self) -> None:
        """Renew in a daemon thread until ``stop``."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="otel-batchmon-leader", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop renewing and give the lock up."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._lock.release()
        self._acquired_at = self._confirmed_at = None
        self._notify()

    def _run(self) -> None:
        period = self.lease_seconds / 3
        while not self._stop.is_set():
            self.renew()
            # Wake again right when the grace ends, so a new leader reports
            # as soon as it may.
            self._stop.wait(self._next_wait(period))

    def _next_wait(self, period: float) -> float:
        acquired = self._acquired_at
        if acquired is None or self._was_valid:
            return period
        until_valid = acquired + self.lease_seconds - self._clock()
        return max(0.0, min(period, until_valid + 0.001))

    def _notify(self) -> None:
        now_valid = self.valid()
        if now_valid == self._was_valid:
            return
        self._was_valid = now_valid
        _log.info("%s the leader", "became" if now_valid else "is no longer")
        if self._on_change is not None:
            self._on_change(now_valid)

    def _after_fork(self) -> None:
        self._lock.forget()
        self._acquired_at = self._confirmed_at = None
        self._was_valid = False
        running = self._thread is not None
        self._thread = None
        self._stop = threading.Event()
        if running:
            self.start()


def _at_fork(leadership: Leadership) -> None:
    reference = weakref.ref(leadership)

    def after_in_child() -> None:
        found = reference()
        if found is not None:
            found._after_fork()

    os.register_at_fork(after_in_child=after_in_child)

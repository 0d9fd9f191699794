"""The background thread that reads every store into immutable snapshots.

The SDK calls observable callbacks serially on the reader's thread, so SQL
never runs there: this thread queries on its own schedule and callbacks
only read the latest snapshot.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy.engine import Connection, Engine

from otel_batchmon._borrowed import PoolStarved, borrowed_connection
from otel_batchmon._engine import (
    DatabaseFailure,
    classify,
    create_monitor_engine,
    mask_url,
)
from otel_batchmon._suppress import suppress_instrumentation
from otel_batchmon.config import MonitorConfig
from otel_batchmon.errors import ConfigError
from otel_batchmon.incremental import IncrementalRefresh
from otel_batchmon.leader import Leadership, lock_for
from otel_batchmon.snapshot import StoreSnapshot
from otel_batchmon.store import BatchStore

__all__ = ["RefreshOutcome", "Refresher"]

_log = logging.getLogger(__name__)
# Failed refreshes back off exponentially up to this many intervals.
_MAX_BACKOFF_INTERVALS = 8
_DIGITS = re.compile(r"\d+")


@dataclass(frozen=True)
class RefreshOutcome:
    """What one refresh of one store gave."""

    store: str
    seconds: float
    snapshot: StoreSnapshot | None = None
    failure: DatabaseFailure | None = None

    @property
    def ok(self) -> bool:
        """Tell whether the refresh produced a snapshot."""
        return self.snapshot is not None


class _StoreState:
    def __init__(
        self, store: BatchStore, engine: Engine, borrowed: bool = False
    ) -> None:
        self.store = store
        self.engine = engine
        # The application's own engine: never configured, never disposed.
        self.borrowed = borrowed
        self.snapshot: StoreSnapshot | None = None
        self.good_at: float | None = None
        self.failures = 0
        self.last_failure: DatabaseFailure | None = None
        self.due = 0.0


class Refresher:
    """Refreshes stores on a schedule in one daemon thread.

    ``on_outcome`` is called on the refresher's thread after every
    refresh; it must not raise (errors are logged and ignored).
    ``after_read`` follows each good read of a store, on the same thread
    and under the same lock, with the store and its read-only engine.
    ``incremental`` (default: the config's ``refresh_mode ==
    "incremental"``) reads only what changed, with a full reconciliation
    every ``reconcile_every`` seconds and on each leader change.
    """

    def __init__(
        self,
        config: MonitorConfig,
        on_outcome: Callable[[RefreshOutcome], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        after_read: Callable[[BatchStore, Engine], None] | None = None,
        engines: Mapping[str, Engine] | None = None,
        incremental: bool | None = None,
        reconcile_every: float | None = None,
    ) -> None:
        self.config = config
        self._on_outcome = on_outcome
        self._clock = clock
        self._after_read = after_read
        given = engines or {}
        self._states = {
            s.name: _StoreState(
                BatchStore(s, config.clock_offset_seconds),
                given.get(s.name)
                or create_monitor_engine(
                    s.database_url,
                    config.statement_timeout_seconds,
                    config.connect_timeout_seconds,
                ),
                borrowed=s.name in given,
            )
            for s in config.stores
        }
        self._incremental = _incremental_reads(
            config, self._states, incremental, reconcile_every
        )
        self.started_at = clock()
        self._stop = threading.Event()
        # Set to end a wait early: on stop, and when this instance becomes
        # a store's leader and should refresh it at once.
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._leaders = self._leaderships(config, clock)
        _reset_after_fork(self)

    def _leaderships(
        self, config: MonitorConfig, clock: Callable[[], float]
    ) -> dict[str, Leadership]:
        if not config.leader_election:
            return {}
        # Half an interval keeps a takeover (lock freed, grace waited,
        # first refresh) within two refresh intervals of a leader's death.
        lease = max(0.05, config.refresh_interval_seconds / 2)
        return {
            s.name: Leadership(
                lock_for(s, config.connect_timeout_seconds),
                lease,
                clock,
                on_change=self._leader_changed,
            )
            for s in config.stores
        }

    def leads(self, store: str) -> bool:
        """Tell whether this instance may report the store right now."""
        leadership = self._leaders.get(store)
        return leadership is None or leadership.valid()

    def _lock_unreachable(self, store: str) -> bool:
        leadership = self._leaders.get(store)
        return leadership is not None and leadership.unreachable

    def _leader_changed(self, leading: bool) -> None:
        # The rows held in memory may have been read by another leader's
        # schedule, or not at all: start them again from a full read.
        for reads in self._incremental.values():
            reads.request_reconcile()
        if leading:
            for state in self._states.values():
                state.due = 0.0
            self._wake.set()

    @property
    def stores(self) -> Sequence[BatchStore]:
        """The stores being refreshed, in configuration order."""
        return [state.store for state in self._states.values()]

    def start(self) -> None:
        """Start the background thread (idempotent)."""
        if self._thread and self._thread.is_alive():
            return
        self._stop.clear()
        for leadership in self._leaders.values():
            leadership.start()
        self._thread = threading.Thread(
            target=self._run, name="otel-batchmon-refresher", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread, give up leadership and close the engines."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for leadership in self._leaders.values():
            leadership.stop(timeout)
        for state in self._states.values():
            if not state.borrowed:
                state.engine.dispose()

    def refresh_all(self) -> list[RefreshOutcome]:
        """Refresh every store now, on the calling thread."""
        return [self._refresh(state) for state in self._states.values()]

    def check_mapping(self) -> dict[str, Exception]:
        """Bind every store; return the failures by store name."""
        failures: dict[str, Exception] = {}
        for name, state in self._states.items():
            try:
                with suppress_instrumentation(), state.engine.connect() as c:
                    state.store.bind(c)
            except Exception as exc:
                failures[name] = exc
        return failures

    def latest(self) -> Mapping[str, tuple[StoreSnapshot | None, float]]:
        """Each store's last good snapshot and its age in seconds."""
        now = self._clock()
        return {
            name: (state.snapshot, now - (state.good_at or self.started_at))
            for name, state in self._states.items()
        }

    def _after_fork_in_child(self) -> None:
        # The parent's thread does not exist in the child and its locks
        # may have been held at the fork; its pooled connections belong to
        # the parent, so the pools are replaced without closing them
        # (SQLAlchemy's advice for os.fork), and a monitor that was
        # running starts its own thread here. A fork in the middle of the
        # parent's bind leaves a half-bound store, so each store binds
        # again on the child's own first connection.
        was_running = self._thread is not None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = None
        for state in self._states.values():
            state.engine.dispose(close=False)
            state.store.bound = None
            state.due = 0.0
        if was_running:
            self.start()

    def _run(self) -> None:
        interval = self.config.refresh_interval_seconds
        while not self._stop.is_set():
            now = time.monotonic()
            for name, state in self._states.items():
                if state.due > now or self._stop.is_set():
                    continue
                if self.leads(name) or self._lock_unreachable(name):
                    self._refresh(state)
                else:
                    # A follower reads nothing; it refreshes as soon as it
                    # becomes the leader (see _leader_changed).
                    state.due = now + interval
            due = min(s.due for s in self._states.values())
            self._wake.wait(max(0.0, due - time.monotonic()))
            self._wake.clear()

    def _refresh(self, state: _StoreState) -> RefreshOutcome:
        with self._lock:
            outcome = self._read(state)
            self._schedule(state, outcome)
            if outcome.ok and self._after_read is not None:
                try:
                    with suppress_instrumentation():
                        self._after_read(state.store, state.engine)
                except Exception:
                    _log.exception("after-read step failed")
        if self._on_outcome is not None:
            try:
                self._on_outcome(outcome)
            except Exception:
                _log.exception("refresh observer failed")
        return outcome

    def _read(self, state: _StoreState) -> RefreshOutcome:
        store = state.store
        begun = time.monotonic()
        try:
            with suppress_instrumentation(), self._connection(state) as c:
                if store.bound is None:
                    store.bind(c)
                reads = self._incremental.get(store.name)
                snapshot = store.read(c) if reads is None else reads.read(c)
        except PoolStarved as exc:
            failure = DatabaseFailure("pool", str(exc))
            return RefreshOutcome(
                store.name, time.monotonic() - begun, failure=failure
            )
        except Exception as exc:
            if isinstance(exc, ConfigError):
                # The table may have been dropped or renamed: map it again
                # on the next attempt rather than trusting the old binding.
                store.bound = None
            return RefreshOutcome(
                store.name, time.monotonic() - begun, failure=classify(exc)
            )
        return RefreshOutcome(store.name, time.monotonic() - begun, snapshot)

    @contextmanager
    def _connection(self, state: _StoreState) -> Iterator[Connection]:
        if state.borrowed:
            timeout = self.config.statement_timeout_seconds
            with borrowed_connection(state.engine, timeout) as connection:
                yield connection
            return
        with state.engine.connect() as connection, connection.begin():
            yield connection

    def _schedule(self, state: _StoreState, outcome: RefreshOutcome) -> None:
        interval = self.config.refresh_interval_seconds
        name = state.store.name
        if outcome.snapshot is not None:
            if state.failures:
                _log.info(
                    "store %s: refresh recovered after %d failed attempts",
                    name,
                    state.failures,
                )
            state.snapshot = outcome.snapshot
            state.good_at = self._clock()
            state.failures = 0
            state.last_failure = None
            state.due = time.monotonic() + interval
            return
        failure = outcome.failure
        assert failure is not None
        state.failures += 1
        if not _same_failure(failure, state.last_failure):
            _log.warning(
                "store %s (%s): refresh failed (%s): %s",
                name,
                mask_url(state.store.config.database_url),
                failure.error_type,
                failure.message,
            )
        else:
            _log.debug("store %s: refresh failed again", name)
        state.last_failure = failure
        backoff = min(2 ** (state.failures - 1), _MAX_BACKOFF_INTERVALS)
        state.due = time.monotonic() + interval * backoff


def _incremental_reads(
    config: MonitorConfig,
    states: Mapping[str, _StoreState],
    incremental: bool | None,
    reconcile_every: float | None,
) -> dict[str, IncrementalRefresh]:
    if incremental is None:
        incremental = getattr(config, "refresh_mode", "full") == "incremental"
    if not incremental:
        return {}
    if reconcile_every is None:
        reconcile_every = getattr(config, "reconcile_every_seconds", 600.0)
    return {
        name: IncrementalRefresh(
            state.store,
            reconcile_every_seconds=reconcile_every,
            settle_lag_seconds=config.settle_lag_seconds,
        )
        for name, state in states.items()
    }


def _reset_after_fork(refresher: Refresher) -> None:
    # A weak reference, so that a refresher nobody uses any more is not
    # kept alive by the interpreter's fork hooks.
    reference = weakref.ref(refresher)
    held: list[threading.Lock] = []

    def before() -> None:
        # A fork while this thread is inside SQLite copies SQLite's global
        # mutex locked, and the child hangs at its first SQLite call (seen
        # under gunicorn --preload). So a fork waits for the refresh under
        # way, at most a statement timeout and a second.
        alive = reference()
        if alive is None:
            return
        lock = alive._lock
        wait = alive.config.statement_timeout_seconds + 1.0
        if lock.acquire(timeout=wait):
            held.append(lock)

    def after_in_parent() -> None:
        while held:
            held.pop().release()

    def after_in_child() -> None:
        held.clear()
        alive = reference()
        if alive is None:
            return
        try:
            alive._after_fork_in_child()
        except Exception:
            _log.exception("refresher could not restart after fork")

    if hasattr(os, "register_at_fork"):
        os.register_at_fork(
            before=before,
            after_in_parent=after_in_parent,
            after_in_child=after_in_child,
        )


def _same_failure(
    failure: DatabaseFailure, previous: DatabaseFailure | None
) -> bool:
    # Servers vary details such as "at character 1815" between attempts of
    # one failure; compare without the numbers so it warns once.
    if previous is None or failure.error_type != previous.error_type:
        return False
    return _DIGITS.sub("", failure.message) == _DIGITS.sub(
        "", previous.message
    )

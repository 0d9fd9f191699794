"""The background thread that reads every store into immutable snapshots.

The SDK calls observable callbacks serially on the reader's thread, so SQL
never runs there: this thread queries on its own schedule and callbacks
only read the latest snapshot.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from otel_batchmon._engine import (
    DatabaseFailure,
    classify,
    create_monitor_engine,
    mask_url,
)
from otel_batchmon._suppress import suppress_instrumentation
from otel_batchmon.config import MonitorConfig
from otel_batchmon.errors import ConfigError
from otel_batchmon.snapshot import StoreSnapshot
from otel_batchmon.store import BatchStore

__all__ = ["RefreshOutcome", "Refresher"]

_log = logging.getLogger(__name__)
# Failed refreshes back off exponentially up to this many intervals.
_MAX_BACKOFF_INTERVALS = 8


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
    def __init__(self, store: BatchStore, engine: Engine) -> None:
        self.store = store
        self.engine = engine
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
    """

    def __init__(
        self,
        config: MonitorConfig,
        on_outcome: Callable[[RefreshOutcome], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        after_read: Callable[[BatchStore, Engine], None] | None = None,
    ) -> None:
        self.config = config
        self._on_outcome = on_outcome
        self._clock = clock
        self._after_read = after_read
        self._states = {
            s.name: _StoreState(
                BatchStore(s, config.clock_offset_seconds),
                create_monitor_engine(
                    s.database_url,
                    config.statement_timeout_seconds,
                    config.connect_timeout_seconds,
                ),
            )
            for s in config.stores
        }
        self.started_at = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def stores(self) -> Sequence[BatchStore]:
        """The stores being refreshed, in configuration order."""
        return [state.store for state in self._states.values()]

    def start(self) -> None:
        """Start the background thread (idempotent)."""
        if self._thread and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="otel-batchmon-refresher", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread and close the engines."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for state in self._states.values():
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

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for state in self._states.values():
                if state.due <= now and not self._stop.is_set():
                    self._refresh(state)
            due = min(s.due for s in self._states.values())
            self._stop.wait(max(0.0, due - time.monotonic()))

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
            with (
                suppress_instrumentation(),
                state.engine.connect() as c,
                c.begin(),
            ):
                if store.bound is None:
                    store.bind(c)
                snapshot = store.read(c)
        except Exception as exc:
            if isinstance(exc, ConfigError):
                # The table may have been dropped or renamed: map it again
                # on the next attempt rather than trusting the old binding.
                store.bound = None
            return RefreshOutcome(
                store.name, time.monotonic() - begun, failure=classify(exc)
            )
        return RefreshOutcome(store.name, time.monotonic() - begun, snapshot)

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
        if failure != state.last_failure:
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

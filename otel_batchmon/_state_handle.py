"""Opening the state database once per URL, shared by events and alerts.

When the state cannot be written, the features that need it turn off
with one warning; the gauges never depend on it.
"""

from __future__ import annotations

import logging
import threading

from otel_batchmon._engine import classify, mask_text
from otel_batchmon._state_engine import create_state_engine
from otel_batchmon.config import MonitorConfig
from otel_batchmon.state import StateError, StateStore, StateUnavailable

__all__ = ["StateHandle", "handle_for"]

_log = logging.getLogger(__name__)


class StateHandle:
    """One state database, opened once, or off for good when unwritable."""

    def __init__(self, url: str, config: MonitorConfig) -> None:
        self.url = url
        self.config = config
        self.state: StateStore | None = None
        self.off = False
        self.opened = False
        self._last_problem: str | None = None

    def ready(self) -> StateStore | None:
        if self.off:
            return None
        if self.opened:
            return self.state
        try:
            if self.state is None:
                self.state = StateStore(
                    create_state_engine(
                        self.url,
                        self.config.statement_timeout_seconds,
                        self.config.connect_timeout_seconds,
                    ),
                    self.config.state_table_prefix,
                )
            self.state.open()
        except StateUnavailable as exc:
            self._turn_off(
                "%s; events (batch.finished, batch.duration, ...) and alert "
                "incidents are off, the gauges keep working; grant this "
                "account CREATE, "
                "INSERT, UPDATE and DELETE there or point state_url at a "
                "writable database",
                exc,
            )
            return None
        except StateError as exc:
            self._turn_off("%s; events are off", exc)
            return None
        except Exception as exc:
            problem = classify(exc).message
            if problem != self._last_problem:
                self._last_problem = problem
                where = self.state.where if self.state else self.url
                _log.warning(
                    "events and incidents wait for the state database "
                    "(%s): %s",
                    mask_text(where),
                    problem,
                )
            return None
        self.opened = True
        return self.state

    def _turn_off(self, message: str, exc: Exception) -> None:
        self.off = True
        _log.warning(message, exc)
        self.close()

    def close(self) -> None:
        if self.state is not None:
            self.state.close()


_handles_lock = threading.Lock()


def handle_for(
    handles: dict[str, StateHandle], url: str, config: MonitorConfig
) -> StateHandle:
    """The one handle of ``url`` in ``handles``, created on first use."""
    with _handles_lock:
        handle = handles.get(url)
        if handle is None:
            handle = handles[url] = StateHandle(url, config)
        return handle

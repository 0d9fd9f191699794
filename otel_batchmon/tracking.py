"""``track_batch``: time, count and trace one batch run in worker code.

Records the catalogue's ``batch.finished``, ``batch.duration``,
``batch.queue.duration`` and ``batch.records`` with ``batch.source =
"worker"`` so dashboards can tell them from the store's row events, and
opens one span per run. Telemetry problems are logged, never raised.
"""

from __future__ import annotations

import functools
import inspect
import logging
import operator
import threading
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import (
    MeterProvider,
    get_meter_provider,
)
from opentelemetry.trace import Span, Status, StatusCode, TracerProvider

from otel_batchmon._recording import (
    SOURCE,
    WorkerInstruments,
    instruments_for,
    tracer_for,
)

__all__ = ["BatchRun", "BatchTracker", "current_batch", "track_batch"]

_logger = logging.getLogger(__name__)

_P = ParamSpec("_P")
_R = TypeVar("_R")

# Module-level so tests can freeze time without sleeping.
_now_monotonic = time.monotonic


def _now_utc() -> datetime:
    return datetime.now(UTC)


_current_run: ContextVar[BatchRun | None] = ContextVar(
    "otel_batchmon_current_batch", default=None
)


def track_batch(
    kind: str | None = None,
    *,
    store: str | None = None,
    batch_id: str | int | None = None,
    queued_at: datetime | None = None,
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
) -> BatchTracker:
    """Track a batch run as a context manager or a decorator.

    Example::

        with track_batch("import", store="orders", batch_id="b-42") as run:
            run.add_records(ok=980, failed=20)

        @track_batch("nightly-report")
        async def nightly_report() -> None:
            current_batch().add_records(ok=1)

    Args:
        kind: the job name, ``batch.kind`` on metrics and span.
        store: the logical store, ``batch.store`` on metrics and span.
        batch_id: on the span only, never a metric attribute.
        queued_at: when the batch was queued, for
            ``batch.queue.duration``; a naive datetime is read as UTC.
        meter_provider: default the global one, looked up at each run.
        tracer_provider: default the global one, looked up at each run.
    """
    return BatchTracker(
        kind, store, batch_id, queued_at, meter_provider, tracer_provider
    )


def current_batch() -> BatchRun | None:
    """Return the innermost batch run active in this context, if any."""
    return _current_run.get()


class BatchTracker:
    """What ``track_batch`` returns: a context manager and a decorator.

    It holds no per-run state, so one tracker may be entered from several
    threads or tasks at once; each entry starts a new ``BatchRun``.
    """

    def __init__(
        self,
        kind: str | None,
        store: str | None,
        batch_id: str | int | None,
        queued_at: datetime | None,
        meter_provider: MeterProvider | None,
        tracer_provider: TracerProvider | None,
    ) -> None:
        self._kind = None if kind is None else str(kind)
        self._store = None if store is None else str(store)
        self._batch_id = batch_id
        self._queued_at = queued_at
        self._meter_provider = meter_provider
        self._tracer_provider = tracer_provider

    def __enter__(self) -> BatchRun:
        return self._open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        run = _current_run.get()
        if run is None or run._tracker is not self:
            _logger.warning("track_batch exited without a matching entry")
            return
        run._close(exc)

    async def __aenter__(self) -> BatchRun:
        return self._open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, traceback)

    def __call__(self, func: Callable[_P, _R]) -> Callable[_P, _R]:
        """Decorate ``func`` (sync or async) so each call is one run."""
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(
            func
        ):
            raise TypeError(
                f"track_batch cannot decorate generator {func.__qualname__}:"
                " its body runs after the call returns; use `with "
                "track_batch(...)` inside it instead"
            )
        if inspect.iscoroutinefunction(func):
            return cast(Callable[_P, _R], self._wrap_async(func))

        @functools.wraps(func)
        def run_sync(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            with self:
                return func(*args, **kwargs)

        return run_sync

    def _wrap_async(
        self, func: Callable[_P, Awaitable[Any]]
    ) -> Callable[_P, Awaitable[Any]]:
        @functools.wraps(func)
        async def run_async(*args: _P.args, **kwargs: _P.kwargs) -> Any:
            async with self:
                return await func(*args, **kwargs)

        return run_async

    def _open(self) -> BatchRun:
        run = BatchRun(self, self._kind, self._store, self._batch_id)
        run._open(
            self._queued_at,
            self._meter_provider or get_meter_provider(),
            self._tracer_provider or trace.get_tracer_provider(),
        )
        return run


class BatchRun:
    """One run of a batch: counts records and may be marked failed."""

    def __init__(
        self,
        tracker: BatchTracker,
        kind: str | None,
        store: str | None,
        batch_id: str | int | None,
    ) -> None:
        self._tracker = tracker
        self.kind = kind
        self.store = store
        self.batch_id = batch_id
        self.span: Span = trace.INVALID_SPAN
        self.status = "processing"
        self._failure_reason: str | None = None
        self._marked_failed = False
        self._records_ok = 0
        self._records_failed = 0
        self._records_reported = False
        self._lock = threading.Lock()
        self._started = 0.0
        self._queue_seconds: float | None = None
        self._instruments: WorkerInstruments | None = None
        self._context_token: object | None = None
        self._run_token: Token[BatchRun | None] | None = None

    def add_records(self, ok: int = 0, failed: int = 0) -> None:
        """Add processed records: ``ok`` succeeded, ``failed`` did not."""
        ok_count = self._count("ok", ok)
        failed_count = self._count("failed", failed)
        with self._lock:
            self._records_ok += ok_count or 0
            self._records_failed += failed_count or 0
            self._records_reported = True

    def set_records(self, total: int, failed: int = 0) -> None:
        """Set the run's record counts: ``total`` of which ``failed``."""
        total_count = self._count("total", total)
        failed_count = self._count("failed", failed) or 0
        if total_count is None:
            return
        if failed_count > total_count:
            _logger.warning(
                "batch %s: failed=%d exceeds total=%d; failed clamped to "
                "total",
                self._label(),
                failed_count,
                total_count,
            )
            failed_count = total_count
        with self._lock:
            self._records_ok = total_count - failed_count
            self._records_failed = failed_count
            self._records_reported = True

    def fail(self, reason: str | None = None) -> None:
        """Mark the run failed without raising an exception."""
        self._marked_failed = True
        self._failure_reason = reason

    def _open(
        self,
        queued_at: datetime | None,
        meter_provider: MeterProvider,
        tracer_provider: TracerProvider,
    ) -> None:
        """Start the clock and the span and make this the current run."""
        self._run_token = _current_run.set(self)
        self._started = _now_monotonic()
        try:
            self._queue_seconds = self._queue_wait(queued_at)
            self._instruments = instruments_for(meter_provider)
            self.span = tracer_for(tracer_provider).start_span(
                f"batch {self.kind}" if self.kind else "batch",
                attributes=self._span_attributes(),
            )
            self._context_token = otel_context.attach(
                trace.set_span_in_context(self.span)
            )
        except Exception:
            _logger.exception("batch %s: could not start telemetry", self)

    def _close(self, exc: BaseException | None) -> None:
        """Stop the clock, record metrics, end the span, restore context."""
        duration = _now_monotonic() - self._started
        failed = exc is not None or self._marked_failed
        self.status = "failed" if failed else "completed"
        try:
            self._end_span(exc)
            if self._instruments is not None:
                self._instruments.record(self, duration)
        except Exception:
            _logger.exception("batch %s: could not record telemetry", self)
        finally:
            self._restore_context()

    def records(self) -> tuple[int, int] | None:
        """Return (ok, failed) record counts, or None if none were set."""
        with self._lock:
            if not self._records_reported:
                return None
            return self._records_ok, self._records_failed

    @property
    def queue_seconds(self) -> float | None:
        """Seconds between queued and started, if known and valid."""
        return self._queue_seconds

    def _count(self, name: str, value: object) -> int | None:
        try:
            count = operator.index(cast(Any, value))
        except TypeError:
            count = -1
        if count < 0 or isinstance(value, bool):
            _logger.warning(
                "batch %s: dropped record count %s=%r; counts must be "
                "non-negative integers",
                self._label(),
                name,
                value,
            )
            return None
        return count

    def _queue_wait(self, queued_at: datetime | None) -> float | None:
        if queued_at is None:
            return None
        if not isinstance(queued_at, datetime):
            _logger.warning(
                "batch %s: queued_at=%r is not a datetime; queue duration "
                "dropped",
                self._label(),
                queued_at,
            )
            return None
        if queued_at.tzinfo is None:
            queued_at = queued_at.replace(tzinfo=UTC)
        seconds = (_now_utc() - queued_at).total_seconds()
        if seconds < 0:
            _logger.warning(
                "batch %s: queued_at %s is in the future (clock skew or "
                "local time passed as naive UTC?); queue duration dropped",
                self._label(),
                queued_at.isoformat(),
            )
            return None
        return seconds

    def _span_attributes(self) -> dict[str, str | int]:
        attributes: dict[str, str | int] = {"batch.source": SOURCE}
        if self.kind is not None:
            attributes["batch.kind"] = self.kind
        if self.store is not None:
            attributes["batch.store"] = self.store
        if self.batch_id is not None:
            attributes["batch.id"] = self.batch_id
        return attributes

    def _end_span(self, exc: BaseException | None) -> None:
        span = self.span
        attributes: dict[str, str | int] = {"batch.status": self.status}
        records = self.records()
        if records is not None:
            attributes["batch.records.ok"] = records[0]
            attributes["batch.records.failed"] = records[1]
        if exc is not None:
            attributes["error.type"] = _qualified_name(type(exc))
        span.set_attributes(attributes)
        if exc is not None:
            span.record_exception(exc)
            span.set_status(
                Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
            )
        elif self._marked_failed:
            span.set_status(Status(StatusCode.ERROR, self._failure_reason))
        span.end()

    def _restore_context(self) -> None:
        if self._context_token is not None:
            otel_context.detach(cast(Token[Any], self._context_token))
            self._context_token = None
        if self._run_token is not None:
            token, self._run_token = self._run_token, None
            try:
                _current_run.reset(token)
            except ValueError:  # exited in another context than entered
                _logger.warning(
                    "batch %s: exited in another context than it was "
                    "entered; current_batch() left unchanged",
                    self._label(),
                )

    def _label(self) -> str:
        return f"{self.kind or '-'}/{self.batch_id or '-'}"

    def __repr__(self) -> str:
        return f"<BatchRun {self._label()} {self.status}>"


def _qualified_name(cls: type[BaseException]) -> str:
    module = cls.__module__
    if module == "builtins":
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"

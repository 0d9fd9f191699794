"""The monitor: stores, refresher and instruments wired onto a provider."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from opentelemetry.metrics import (
    CallbackOptions,
    Meter,
    MeterProvider,
    Observation,
    get_meter,
)
from sqlalchemy.engine import Engine

from otel_batchmon._state_handle import StateHandle
from otel_batchmon.alerts import AlertEvaluator
from otel_batchmon.compat import register_compat_gauges
from otel_batchmon.config import MonitorConfig
from otel_batchmon.events import EventRecorder
from otel_batchmon.instruments import CATALOGUE, InstrumentKind, spec
from otel_batchmon.refresher import Refresher, RefreshOutcome
from otel_batchmon.snapshot import StoreSnapshot
from otel_batchmon.store import BatchStore
from otel_batchmon.version import __version__

__all__ = ["BatchMonitor"]

_log = logging.getLogger(__name__)

_Points = Iterable[tuple[float, dict[str, str]]]
_Observe = Callable[[str], Iterator[Observation]]


def _single(value: float | None) -> _Points:
    return [] if value is None else [(value, {})]


def _by(key: str, values: Any) -> _Points:
    return [(float(v), {key: k}) for k, v in values.items()]


# How each snapshot gauge of the catalogue reads a snapshot.
_SNAPSHOT_GAUGES: dict[str, Callable[[StoreSnapshot], _Points]] = {
    "batch.window.count": lambda s: _by("batch.status", s.window_counts),
    "batch.window.failure_ratio": lambda s: _single(s.failure_ratio),
    "batch.window.duration.mean": lambda s: _single(s.duration_mean_seconds),
    "batch.stuck.count": lambda s: _single(float(s.stuck_count)),
    "batch.active.count": lambda s: _by("batch.status", s.active_counts),
    "batch.processing.oldest_age": lambda s: _single(
        s.processing_oldest_age_seconds
    ),
    "batch.pending.oldest_age": lambda s: _single(
        s.pending_oldest_age_seconds
    ),
    "batch.last_success.age": lambda s: _single(s.last_success_age_seconds),
    "batchmon.rows.invalid": lambda s: _by("batchmon.reason", s.invalid_rows),
}


class BatchMonitor:
    """Watches batch tables and reports them as OpenTelemetry metrics.

    >>> monitor = BatchMonitor(load_config("batchmon.toml"))
    >>> monitor.start()      # refreshes in the background
    >>> monitor.stop()

    Without ``meter_provider`` the global provider is used, so a distro or
    ``opentelemetry-instrument`` decides where the metrics go. ``clock``
    (monotonic seconds) measures snapshot age; tests pass a fake one.
    ``engines`` maps store names to the application's own engines: the
    monitor then borrows one connection per refresh from that pool, with
    its settings for that transaction only, and skips a refresh rather
    than wait when the pool is exhausted.
    """

    def __init__(
        self,
        config: MonitorConfig,
        meter_provider: MeterProvider | None = None,
        clock: Callable[[], float] = time.monotonic,
        engines: Mapping[str, Engine] | None = None,
    ) -> None:
        self.config = config
        self._meter = get_meter(
            "otel_batchmon", __version__, meter_provider=meter_provider
        )
        self._handles: dict[str, StateHandle] = {}
        handles = self._handles
        self.events = (
            EventRecorder(config, self._meter, handles)
            if config.events
            else None
        )
        self.alerts = AlertEvaluator(config, self._meter, handles)
        self.refresher = Refresher(
            config,
            self._record,
            clock,
            after_read=self._after_read,
            engines=engines,
        )
        self._active = False
        self._stores = {s.name: s for s in self.refresher.stores}
        self._failed_callbacks: set[str] = set()
        self._register(self._meter)

    def start(self) -> None:
        """Start refreshing in the background; gauges report from now on."""
        self._active = True
        self.refresher.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop refreshing; the gauges report nothing afterwards."""
        self._active = False
        self.refresher.stop(timeout)
        if self.events is not None:
            self.events.close()
        self.alerts.close()
        for handle in self._handles.values():
            handle.close()

    def refresh_now(self) -> list[RefreshOutcome]:
        """Refresh every store on this thread and return the outcomes."""
        self._active = True
        return self.refresher.refresh_all()

    def snapshots(self) -> dict[str, StoreSnapshot]:
        """The current (fresh, not stale) snapshot of each store."""
        return dict(self._fresh())

    def _after_read(self, store: BatchStore, engine: Engine) -> None:
        # Both steps log and swallow their own failures.
        if self.events is not None:
            self.events.after_read(store, engine)
        self.alerts.after_read(store, engine)

    def _register(self, meter: Meter) -> None:
        # Snapshot gauges go quiet when stale or not leading; the monitor's
        # own two always report.
        own: dict[str, _Observe] = {
            "batchmon.snapshot.age": self._age_points,
            "batchmon.leader": self._leader_points,
        }
        for entry in CATALOGUE:
            points: _Observe | None = own.get(entry.name)
            if points is None and entry.name in _SNAPSHOT_GAUGES:
                points = self._snapshot_points
            if points is None:
                continue
            meter.create_observable_gauge(
                entry.name,
                [self._guarded(entry.name, points)],
                entry.unit,
                entry.description,
            )
        duration = spec("batchmon.refresh.duration")
        assert duration.kind is InstrumentKind.HISTOGRAM
        self._refresh_duration = meter.create_histogram(
            duration.name,
            duration.unit,
            duration.description,
            explicit_bucket_boundaries_advisory=duration.buckets,
        )
        errors = spec("batchmon.refresh.errors")
        self._refresh_errors = meter.create_counter(
            errors.name, errors.unit, errors.description
        )
        if self.config.compat_names:
            register_compat_gauges(meter, self._guarded, self._fresh)

    def _guarded(
        self, name: str, points: Callable[[str], Iterator[Observation]]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            if not self._active:
                return []
            try:
                return list(points(name))
            except Exception:
                # A raising callback would cost the whole collection its
                # data; log it once per gauge and report nothing for it.
                if name not in self._failed_callbacks:
                    self._failed_callbacks.add(name)
                    _log.exception("gauge %s could not be observed", name)
                return []

        return callback

    def _fresh(self) -> Iterator[tuple[str, StoreSnapshot]]:
        stale_after = self.config.stale_after_seconds
        for name, (snapshot, age) in self.refresher.latest().items():
            leads = self.refresher.leads(name)
            if snapshot is not None and age <= stale_after and leads:
                yield name, snapshot

    def _snapshot_points(self, name: str) -> Iterator[Observation]:
        read = _SNAPSHOT_GAUGES[name]
        for store, snapshot in self._fresh():
            # A metric the mapping cannot produce is absent, never 0.
            if name in self._stores[store].unavailable():
                continue
            for value, attributes in read(snapshot):
                yield Observation(value, {"batch.store": store, **attributes})

    def _leader_points(self, _name: str) -> Iterator[Observation]:
        for store in self.refresher.latest():
            leads = 1 if self.refresher.leads(store) else 0
            yield Observation(leads, {"batch.store": store})

    def _age_points(self, _name: str) -> Iterator[Observation]:
        for store, (_snapshot, age) in self.refresher.latest().items():
            yield Observation(age, {"batch.store": store})

    def _record(self, outcome: RefreshOutcome) -> None:
        result = "success" if outcome.ok else "error"
        self._refresh_duration.record(
            outcome.seconds,
            {"batch.store": outcome.store, "batchmon.outcome": result},
        )
        if outcome.failure is not None:
            self._refresh_errors.add(
                1,
                {
                    "batch.store": outcome.store,
                    "error.type": outcome.failure.error_type,
                },
            )

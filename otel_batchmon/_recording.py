"""The instruments ``track_batch`` records, created once per provider."""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, cast

from opentelemetry import trace
from opentelemetry.metrics import Counter, Histogram, Meter, MeterProvider
from opentelemetry.trace import TracerProvider

from otel_batchmon._attributes import BatchAttributeCache
from otel_batchmon.instruments import spec
from otel_batchmon.version import __version__

if TYPE_CHECKING:
    from otel_batchmon.tracking import BatchRun

__all__ = [
    "MAX_KIND_SETS",
    "SCOPE_NAME",
    "SOURCE",
    "WorkerInstruments",
    "create_instrument",
    "instruments_for",
    "tracer_for",
]

# The monitor records the store-side batch.* events on the same scope,
# so both share one instrument per metric (told apart by batch.source).
SCOPE_NAME = "otel_batchmon"
SOURCE = "worker"
# (store, kind) pairs kept before new ones fold to _other. Each pair makes
# two points per instrument (status or outcome), so this stays well below
# the SDK's 2000 attribute sets per metric.
MAX_KIND_SETS = 500


class WorkerInstruments:
    """The catalogue instruments ``track_batch`` records on one meter."""

    def __init__(self, meter: Meter) -> None:
        self.finished = cast(
            Counter, create_instrument(meter, "batch.finished")
        )
        self.duration = cast(
            Histogram, create_instrument(meter, "batch.duration")
        )
        self.queue = cast(
            Histogram, create_instrument(meter, "batch.queue.duration")
        )
        self.records = cast(Counter, create_instrument(meter, "batch.records"))
        self._attributes = BatchAttributeCache(SOURCE, MAX_KIND_SETS)

    def record(self, run: BatchRun, duration: float) -> None:
        """Record one finished run."""
        labels = self._attributes.get(run.store, run.kind)
        status = labels.failed if run.status == "failed" else labels.completed
        self.finished.add(1, status)
        self.duration.record(duration, status)
        if run.queue_seconds is not None:
            self.queue.record(run.queue_seconds, labels.queue)
        records = run.records()
        if records is not None:
            self.records.add(records[0], labels.ok)
            self.records.add(records[1], labels.records_failed)


def create_instrument(meter: Meter, name: str) -> Counter | Histogram:
    """The catalogue's counter or histogram ``name`` on ``meter``."""
    entry = spec(name)
    if entry.kind == "counter":
        return meter.create_counter(entry.name, entry.unit, entry.description)
    return meter.create_histogram(
        entry.name,
        entry.unit,
        entry.description,
        explicit_bucket_boundaries_advisory=entry.buckets,
    )


_providers_lock = threading.Lock()
_instruments_by_provider: weakref.WeakKeyDictionary[
    MeterProvider, WorkerInstruments
] = weakref.WeakKeyDictionary()
_tracers_by_provider: weakref.WeakKeyDictionary[
    TracerProvider, trace.Tracer
] = weakref.WeakKeyDictionary()


def instruments_for(provider: MeterProvider) -> WorkerInstruments:
    """The worker instruments of ``provider``, created once."""
    instruments = _instruments_by_provider.get(provider)
    if instruments is None:
        with _providers_lock:
            instruments = _instruments_by_provider.get(provider)
            if instruments is None:
                meter = provider.get_meter(SCOPE_NAME, __version__)
                instruments = WorkerInstruments(meter)
                _instruments_by_provider[provider] = instruments
    return instruments


def tracer_for(provider: TracerProvider) -> trace.Tracer:
    """The package's tracer on ``provider``, created once."""
    tracer = _tracers_by_provider.get(provider)
    if tracer is None:
        tracer = provider.get_tracer(SCOPE_NAME, __version__)
        _tracers_by_provider[provider] = tracer
    return tracer

"""The original monitor's gauge names, for dashboards built on them.

Opt-in (``compat_names = true``). Each is read from the same snapshot as
its catalogue gauge and exported with an empty unit, so no exporter adds a
``_seconds`` or ``_ratio`` suffix and the names arrive exactly as before.
``batch_alerts_total`` is deliberately absent: ``batch.alerts`` already
appears under that name in Prometheus and must not be exported twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from otel_batchmon.snapshot import StoreSnapshot

__all__ = ["COMPAT_GAUGES", "CompatGauge", "register_compat_gauges"]


@dataclass(frozen=True)
class CompatGauge:
    """One original name and how it is read from a snapshot."""

    name: str
    replaced_by: str
    description: str
    read: Callable[[StoreSnapshot], float | None]


def _ratio_percent(snapshot: StoreSnapshot) -> float | None:
    ratio = snapshot.failure_ratio
    return None if ratio is None else ratio * 100.0


def _mean_minutes(snapshot: StoreSnapshot) -> float | None:
    mean = snapshot.duration_mean_seconds
    return None if mean is None else mean / 60.0


def _count(status: str) -> Callable[[StoreSnapshot], float | None]:
    return lambda s: float(s.window_counts.get(status, 0))


COMPAT_GAUGES: tuple[CompatGauge, ...] = (
    CompatGauge(
        "batch_processing_total_24h",
        "batch.window.count (sum over batch.status)",
        "Batches in the window, every status (compat name).",
        lambda s: float(sum(s.window_counts.values())),
    ),
    CompatGauge(
        "batch_processing_successful_24h",
        'batch.window.count{batch.status="completed"}',
        "Completed batches in the window (compat name).",
        _count("completed"),
    ),
    CompatGauge(
        "batch_processing_failed_24h",
        'batch.window.count{batch.status="failed"}',
        "Failed batches in the window (compat name).",
        _count("failed"),
    ),
    CompatGauge(
        "batch_processing_failure_rate",
        "batch.window.failure_ratio * 100",
        "Failed / (completed + failed) batches in the window, in percent "
        "0-100 (compat name).",
        _ratio_percent,
    ),
    CompatGauge(
        "batch_processing_avg_time_minutes",
        "batch.window.duration.mean / 60",
        "Mean duration of finished batches in the window, in minutes "
        "(compat name).",
        _mean_minutes,
    ),
    CompatGauge(
        "batch_processing_stuck_count",
        "batch.stuck.count",
        "Batches stuck past the threshold (compat name).",
        lambda s: float(s.stuck_count),
    ),
)

_Guard = Callable[
    [str, Callable[[str], Iterator[Observation]]],
    Callable[[CallbackOptions], Iterable[Observation]],
]


def register_compat_gauges(
    meter: Meter,
    guarded: _Guard,
    fresh: Callable[[], Iterator[tuple[str, StoreSnapshot]]],
) -> None:
    """Create the compat gauges on ``meter``, read from fresh snapshots."""
    by_name: Mapping[str, CompatGauge] = {g.name: g for g in COMPAT_GAUGES}

    def points(name: str) -> Iterator[Observation]:
        read = by_name[name].read
        for store, snapshot in fresh():
            value = read(snapshot)
            if value is not None:
                yield Observation(value, {"batch.store": store})

    for gauge in COMPAT_GAUGES:
        # An empty unit: "min" or "%" would make exporters rename them.
        meter.create_observable_gauge(
            gauge.name, [guarded(gauge.name, points)], "", gauge.description
        )

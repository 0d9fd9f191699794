"""A console exporter for people: one line per point, for the demo."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TextIO

from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)

__all__ = ["SummaryExporter"]


class SummaryExporter(MetricExporter):
    """Prints each point as one line: ``name{attributes} value``."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream

    def export(
        self,
        metrics_data: MetricsData,
        timeout_millis: float = 10_000,
        **kwargs: Any,
    ) -> MetricExportResult:
        """Write the points of one collection."""
        lines = []
        for resource in metrics_data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    lines.extend(
                        _point_lines(
                            metric.name,
                            metric.unit or "",
                            metric.data.data_points,
                        )
                    )
        self.stream.write("\n".join(sorted(lines)) + "\n")
        self.stream.flush()
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Nothing is buffered."""
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Nothing to release."""


def _point_lines(name: str, unit: str, points: Sequence[Any]) -> list[str]:
    lines = []
    for point in points:
        labels = ",".join(
            f"{k}={v}" for k, v in sorted(point.attributes.items())
        )
        shown = f"{name}{{{labels}}}"
        if isinstance(point, HistogramDataPoint):
            value = f"count={point.count} sum={point.sum:g}"
        else:
            value = f"{point.value:g}"
        lines.append(f"{shown} {value} {unit}".rstrip())
    return lines

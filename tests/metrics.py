"""Read what an SDK reader collected as {name: {attributes: value}}."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
)

Points = dict[str, dict[frozenset[tuple[str, Any]], Any]]


def collect(reader: InMemoryMetricReader) -> Points:
    """Collect once; histogram points become (count, sum)."""
    data = reader.get_metrics_data()
    result: Points = {}
    if data is None:
        return result
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                series = result.setdefault(metric.name, {})
                for point in metric.data.data_points:
                    key = frozenset(point.attributes.items())
                    if isinstance(point, HistogramDataPoint):
                        series[key] = (point.count, point.sum)
                    else:
                        series[key] = point.value
    return result


def value(points: Points, name: str, **attributes: str) -> Any:
    """The value of one series; KeyError names what exists instead."""
    wanted = {k.replace("__", "."): v for k, v in attributes.items()}
    for key, found in points.get(name, {}).items():
        if dict(key) == wanted:
            return found
    raise KeyError(
        f"{name}{wanted} not collected; have {points.get(name, {})}"
    )

"""``MetricsCollector``: the helper API the original monitor called.

The hand-rolled monitor crashed because ``increment_counter`` and
``set_gauge`` did not exist. This module provides them on top of an
OpenTelemetry ``Meter``, registering each instrument on first use, and
never lets a bad measurement reach the caller as an exception.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry.metrics import MeterProvider, get_meter_provider
from opentelemetry.util.types import Attributes, AttributeValue

from otel_batchmon._attributes import AttributeSetCap, WarnOnce
from otel_batchmon.instruments import InstrumentKind
from otel_batchmon.version import __version__

__all__ = ["MetricsCollector"]

_logger = logging.getLogger(__name__)

# The instrument name syntax of the OTel API specification.
_NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_./-]{0,254}")
_INF = math.inf
# Gauges accept any finite value; -max rejects -inf while one comparison
# still rejects NaN.
_NO_MINIMUM = -sys.float_info.max

Labels = Mapping[str, Any]


class _Metric:
    """One registered instrument and its attribute-set bookkeeping."""

    __slots__ = (
        "buckets",
        "cache",
        "cap",
        "kind",
        "minimum",
        "name",
        "record",
        "unit",
    )

    def __init__(
        self,
        name: str,
        kind: InstrumentKind,
        unit: str,
        buckets: tuple[float, ...] | None,
        record: Callable[[float, Attributes], None],
        max_attribute_sets: int,
    ) -> None:
        self.name = name
        self.kind = kind
        self.unit = unit
        self.buckets = buckets
        self.record = record
        self.minimum = _NO_MINIMUM if kind is InstrumentKind.GAUGE else 0.0
        # Maps the caller's label items, when all are strings, to the
        # attributes already admitted under the cap.
        self.cache: dict[tuple[tuple[str, str], ...], Attributes] = {}
        self.cap = AttributeSetCap(f"metric {name}", max_attribute_sets)


class MetricsCollector:
    """Counters, gauges and histograms by name, registered on first use.

    Example::

        collector = MetricsCollector(namespace="shop")
        collector.increment_counter("orders.imported", 3, {"region": "eu"})
        collector.set_gauge("queue.depth", 17)
        collector.record_histogram("import.duration", 2.5)  # seconds

    Histograms default to seconds (``"s"``); the original monitor used
    milliseconds, so pass ``histogram_unit="ms"`` (per collector) or
    ``unit="ms"`` (per histogram, on first use) to keep that.

    An invalid name, or a name reused with another kind or unit, raises
    ``ValueError``. A bad value or label never raises: it is dropped or
    converted with one warning per metric and problem.
    """

    def __init__(
        self,
        meter_provider: MeterProvider | None = None,
        *,
        namespace: str = "",
        histogram_unit: str = "s",
        histogram_buckets: Sequence[float] | None = None,
        max_attribute_sets: int = 1000,
    ) -> None:
        """Create a collector on ``meter_provider`` (default: the global).

        Args:
            namespace: prefix joined to every name with a dot.
            histogram_unit: unit of histograms created without ``unit=``.
            histogram_buckets: advisory bucket boundaries for histograms
                created without ``buckets=``; None keeps the SDK's.
            max_attribute_sets: distinct label sets kept per metric
                before new ones fold to ``_other``.
        """
        if namespace and not _NAME_PATTERN.fullmatch(namespace):
            raise ValueError(_invalid_name_message(namespace, "namespace"))
        if max_attribute_sets < 1:
            raise ValueError(
                "max_attribute_sets must be at least 1, "
                f"got {max_attribute_sets}"
            )
        provider = meter_provider or get_meter_provider()
        self._meter = provider.get_meter(__name__, __version__)
        self._namespace = namespace
        self._histogram_unit = histogram_unit
        self._histogram_buckets = _buckets(histogram_buckets)
        self._max_attribute_sets = max_attribute_sets
        self._metrics: dict[str, _Metric] = {}
        self._lock = threading.Lock()
        self._warn_once = WarnOnce()

    def increment_counter(
        self, name: str, value: float = 1.0, labels: Labels | None = None
    ) -> None:
        """Add ``value`` (default 1, never negative) to counter ``name``."""
        metric = self._metrics.get(name)
        if metric is None or metric.kind is not InstrumentKind.COUNTER:
            metric = self._register(name, InstrumentKind.COUNTER)
        self._record(metric, value, labels)

    def record_gauge(
        self, name: str, value: float, labels: Labels | None = None
    ) -> None:
        """Set gauge ``name`` to ``value`` for these labels."""
        metric = self._metrics.get(name)
        if metric is None or metric.kind is not InstrumentKind.GAUGE:
            metric = self._register(name, InstrumentKind.GAUGE)
        self._record(metric, value, labels)

    set_gauge = record_gauge

    def record_histogram(
        self,
        name: str,
        value: float,
        labels: Labels | None = None,
        *,
        unit: str | None = None,
        buckets: Sequence[float] | None = None,
    ) -> None:
        """Record ``value`` (never negative) in histogram ``name``.

        ``unit`` and ``buckets`` apply when the histogram is created;
        later calls may repeat them but not change them.
        """
        metric = self._metrics.get(name)
        if (
            metric is None
            or metric.kind is not InstrumentKind.HISTOGRAM
            or (unit is not None and unit != metric.unit)
            or (buckets is not None and _buckets(buckets) != metric.buckets)
        ):
            metric = self._register(
                name, InstrumentKind.HISTOGRAM, unit, buckets
            )
        self._record(metric, value, labels)

    def _record(self, metric: _Metric, value: Any, labels: Any) -> None:
        cls = type(value)
        if not (
            (cls is int or cls is float) and metric.minimum <= value < _INF
        ):
            value = self._repair_value(metric, value)
            if value is None:
                return
        attributes: Attributes = None
        if labels is not None:
            try:
                attributes = metric.cache.get(tuple(labels.items()))
            except (AttributeError, TypeError):
                attributes = None
            if attributes is None:
                attributes = self._admit_labels(metric, labels)
                if attributes is None:
                    return
        try:
            metric.record(value, attributes)
        except Exception:  # the SDK is not ours; the caller must go on
            if self._warn_once.first(metric.name, "sdk error"):
                _logger.exception(
                    "metric %s: the SDK failed to record a value",
                    metric.name,
                )

    def _register(
        self,
        name: str,
        kind: InstrumentKind,
        unit: str | None = None,
        buckets: Sequence[float] | None = None,
    ) -> _Metric:
        with self._lock:
            metric = self._metrics.get(name)
            if metric is None:
                metric = self._create(name, kind, unit, _buckets(buckets))
                self._metrics[name] = metric
        _check_same(metric, kind, unit, _buckets(buckets))
        return metric

    def _create(
        self,
        name: str,
        kind: InstrumentKind,
        unit: str | None,
        buckets: tuple[float, ...] | None,
    ) -> _Metric:
        full_name = f"{self._namespace}.{name}" if self._namespace else name
        # The bare name must be valid too: "" under a namespace would
        # otherwise become "shop.".
        valid = isinstance(name, str) and _NAME_PATTERN.fullmatch(name)
        if not valid or not _NAME_PATTERN.fullmatch(full_name):
            raise ValueError(_invalid_name_message(full_name, "metric name"))
        record: Callable[[float, Attributes], None]
        if kind is InstrumentKind.COUNTER:
            unit = ""
            record = self._meter.create_counter(full_name).add
        elif kind is InstrumentKind.GAUGE:
            unit = ""
            record = self._meter.create_gauge(full_name).set
        else:
            unit = self._histogram_unit if unit is None else unit
            buckets = self._histogram_buckets if buckets is None else buckets
            record = self._meter.create_histogram(
                full_name,
                unit=unit,
                explicit_bucket_boundaries_advisory=buckets,
            ).record
        return _Metric(
            full_name, kind, unit, buckets, record, self._max_attribute_sets
        )

    def _repair_value(self, metric: _Metric, value: Any) -> float | None:
        problem = _value_problem(metric, value)
        if problem is None:
            return float(value)
        if self._warn_once.first(metric.name, problem):
            _logger.warning(
                "metric %s: dropped value %r (%s); further values with "
                "this problem are dropped silently",
                metric.name,
                value,
                problem,
            )
        return None

    def _admit_labels(self, metric: _Metric, labels: Any) -> Attributes:
        if not isinstance(labels, Mapping):
            self._warn(metric, "labels not a mapping", labels, "value dropped")
            return None
        clean: dict[str, AttributeValue] = {}
        all_strings = True
        for key, value in labels.items():
            if not isinstance(key, str):
                self._warn(
                    metric, "label key not a string", key, "converted to str"
                )
                key, all_strings = str(key), False
            if not isinstance(value, str):
                self._warn(
                    metric,
                    "label value not a string",
                    value,
                    "converted to str",
                )
                value, all_strings = str(value), False
            clean[key] = value
        attributes, admitted = metric.cap.admit(clean)
        # Caching only all-string labels keeps the key faithful: 1, 1.0
        # and True hash alike but convert to different strings.
        if (
            admitted
            and all_strings
            and len(metric.cache) < 4 * (metric.cap.limit)
        ):
            metric.cache[tuple(labels.items())] = attributes
        return attributes

    def _warn(
        self, metric: _Metric, problem: str, value: object, action: str
    ) -> None:
        if self._warn_once.first(metric.name, problem):
            _logger.warning(
                "metric %s: %s (%r), %s; further cases are handled "
                "the same way silently",
                metric.name,
                problem,
                value,
                action,
            )


def _value_problem(metric: _Metric, value: Any) -> str | None:
    if isinstance(value, str | bytes | bool):
        return "not a number"
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return "not a number"
    if not math.isfinite(number):
        return "not finite"
    if number < metric.minimum:
        return f"negative value for a {metric.kind}"
    return None


def _check_same(
    metric: _Metric,
    kind: InstrumentKind,
    unit: str | None,
    buckets: tuple[float, ...] | None,
) -> None:
    if metric.kind is not kind:
        raise ValueError(
            f"metric {metric.name!r} is already registered as a "
            f"{metric.kind}; it cannot also be used as a {kind}"
        )
    if unit is not None and unit != metric.unit:
        raise ValueError(
            f"histogram {metric.name!r} is already registered with unit "
            f"{metric.unit!r}; it cannot also use unit {unit!r}"
        )
    if buckets is not None and buckets != metric.buckets:
        raise ValueError(
            f"histogram {metric.name!r} is already registered with "
            f"buckets {metric.buckets}; it cannot also use {buckets}"
        )


def _buckets(buckets: Sequence[float] | None) -> tuple[float, ...] | None:
    return None if buckets is None else tuple(float(b) for b in buckets)


def _invalid_name_message(name: object, what: str) -> str:
    return (
        f"invalid {what} {name!r}: it must start with a letter, contain "
        "only letters, digits, '_', '.', '/' or '-', and be at most 255 "
        "characters long"
    )

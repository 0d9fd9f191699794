"""MetricsCollector: the original monitor's helper API on the real SDK."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    NumberDataPoint,
)

from otel_batchmon.collector import MetricsCollector
from otel_batchmon.instruments import BATCH_DURATION_BUCKETS

Key = frozenset[tuple[str, Any]]
NO_LABELS: Key = frozenset()


def key(**attributes: Any) -> Key:
    return frozenset(attributes.items())


def points(reader: InMemoryMetricReader) -> dict[str, dict[Key, Any]]:
    """Flatten every point to {metric: {attributes: value or histogram}}."""
    flat: dict[str, dict[Key, Any]] = {}
    data = reader.get_metrics_data()
    for resource_metrics in data.resource_metrics if data else ():
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                series = flat.setdefault(metric.name, {})
                for point in metric.data.data_points:
                    value = (
                        point.value
                        if isinstance(point, NumberDataPoint)
                        else point
                    )
                    attributes = point.attributes or {}
                    series[frozenset(attributes.items())] = value
    return flat


def units(reader: InMemoryMetricReader) -> dict[str, str]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        metric.name: metric.unit or ""
        for resource_metrics in data.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
    }


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.WARNING
    ]


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def meter_provider(reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    provider = MeterProvider(metric_readers=[reader])
    yield provider
    provider.shutdown()


@pytest.fixture
def collector(meter_provider: MeterProvider) -> MetricsCollector:
    return MetricsCollector(meter_provider)


def test_increment_counter_adds_one_by_default_and_per_label_set(
    collector: MetricsCollector, reader: InMemoryMetricReader
) -> None:
    collector.increment_counter("batches.seen")
    collector.increment_counter("batches.seen", 2, {"store": "orders"})
    collector.increment_counter("batches.seen", 0.5, {"store": "orders"})

    assert points(reader)["batches.seen"] == {
        NO_LABELS: 1,
        key(store="orders"): 2.5,
    }


def test_label_order_does_not_split_a_series(
    collector: MetricsCollector, reader: InMemoryMetricReader
) -> None:
    collector.increment_counter("hits", labels={"a": "1", "b": "2"})
    collector.increment_counter("hits", labels={"b": "2", "a": "1"})

    assert points(reader)["hits"] == {key(a="1", b="2"): 2}


def test_set_gauge_is_record_gauge_and_keeps_the_last_value(
    collector: MetricsCollector, reader: InMemoryMetricReader
) -> None:
    collector.record_gauge("queue.depth", 5, {"queue": "q1"})
    collector.set_gauge("queue.depth", -3, {"queue": "q1"})
    collector.set_gauge("queue.depth", 7, {"queue": "q2"})

    assert points(reader)["queue.depth"] == {
        key(queue="q1"): -3,
        key(queue="q2"): 7,
    }


def test_histogram_defaults_to_seconds(
    collector: MetricsCollector, reader: InMemoryMetricReader
) -> None:
    collector.record_histogram("import.duration", 2.5)
    collector.record_histogram("import.duration", 0.5)

    point = points(reader)["import.duration"][NO_LABELS]
    assert (point.count, point.sum) == (2, 3.0)
    assert units(reader)["import.duration"] == "s"


def test_histogram_unit_and_buckets_per_collector_and_per_metric(
    meter_provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    collector = MetricsCollector(
        meter_provider,
        histogram_unit="ms",
        histogram_buckets=[10, 100, 1000],
    )
    collector.record_histogram("legacy.duration", 250)
    collector.record_histogram(
        "batch.time", 90, unit="s", buckets=BATCH_DURATION_BUCKETS
    )

    got = points(reader)
    assert units(reader) == {"legacy.duration": "ms", "batch.time": "s"}
    legacy = got["legacy.duration"][NO_LABELS]
    assert tuple(legacy.explicit_bounds) == (10, 100, 1000)
    batch = got["batch.time"][NO_LABELS]
    assert tuple(batch.explicit_bounds) == BATCH_DURATION_BUCKETS


def test_namespace_is_joined_with_a_dot(
    meter_provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    collector = MetricsCollector(meter_provider, namespace="shop")
    collector.increment_counter("orders")

    assert points(reader) == {"shop.orders": {NO_LABELS: 1}}


def test_name_reused_with_another_kind_names_both_kinds(
    collector: MetricsCollector,
) -> None:
    collector.increment_counter("batch_processing_total")

    with pytest.raises(ValueError, match="batch_processing_total") as error:
        collector.set_gauge("batch_processing_total", 3)
    assert "already registered as a counter" in str(error.value)
    assert "cannot also be used as a gauge" in str(error.value)


def test_histogram_unit_cannot_change_after_creation(
    collector: MetricsCollector,
) -> None:
    collector.record_histogram("duration", 1.0)

    with pytest.raises(ValueError, match=r"unit 's'.*unit 'ms'"):
        collector.record_histogram("duration", 1.0, unit="ms")
    collector.record_histogram("duration", 1.0, unit="s")


@pytest.mark.parametrize(
    "name",
    ["", "1batches", "batch total", "batch:total", "é", "a" * 256],
    ids=["empty", "digit-first", "space", "colon", "non-ascii", "too-long"],
)
def test_invalid_names_raise_value_error_naming_the_name(
    collector: MetricsCollector, name: str
) -> None:
    with pytest.raises(ValueError, match="invalid metric name") as error:
        collector.increment_counter(name)
    assert repr(name) in str(error.value)


def test_longest_valid_name_is_accepted(
    collector: MetricsCollector, reader: InMemoryMetricReader
) -> None:
    name = "a" + "b_./-" * 50 + "cccc"
    assert len(name) == 255

    collector.increment_counter(name)

    assert points(reader)[name] == {NO_LABELS: 1}


def test_invalid_namespace_is_rejected_at_construction(
    meter_provider: MeterProvider,
) -> None:
    with pytest.raises(ValueError, match="invalid namespace 'my app'"):
        MetricsCollector(meter_provider, namespace="my app")


def test_nan_is_dropped_with_one_warning_per_metric(
    collector: MetricsCollector,
    reader: InMemoryMetricReader,
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector.set_gauge("ratio", 0.25)
    collector.set_gauge("ratio", math.nan)
    collector.set_gauge("ratio", math.nan)
    collector.record_histogram("duration", math.nan)

    assert points(reader)["ratio"] == {NO_LABELS: 0.25}
    assert "duration" not in points(reader)
    assert warnings(caplog) == [
        "metric ratio: dropped value nan (not finite); further values with "
        "this problem are dropped silently",
        "metric duration: dropped value nan (not finite); further values "
        "with this problem are dropped silently",
    ]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (-1, "negative value for a counter"),
        (math.inf, "not finite"),
        ("3", "not a number"),
        (None, "not a number"),
        (True, "not a number"),
    ],
)
def test_bad_counter_values_are_dropped_with_a_warning(
    collector: MetricsCollector,
    reader: InMemoryMetricReader,
    caplog: pytest.LogCaptureFixture,
    value: Any,
    problem: str,
) -> None:
    collector.increment_counter("rows", 1)
    collector.increment_counter("rows", value)
    collector.increment_counter("rows", value)

    assert points(reader)["rows"] == {NO_LABELS: 1}
    (message,) = warnings(caplog)
    assert f"({problem})" in message


def test_negative_histogram_value_is_dropped(
    collector: MetricsCollector,
    reader: InMemoryMetricReader,
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector.record_histogram("duration", -0.1)

    assert "duration" not in points(reader)
    assert "negative value for a histogram" in caplog.text


def test_numeric_types_other_than_int_and_float_are_converted(
    collector: MetricsCollector, reader: InMemoryMetricReader
) -> None:
    collector.increment_counter("rows", Decimal("1.5"))  # type: ignore[arg-type]

    assert points(reader)["rows"] == {NO_LABELS: 1.5}


def test_non_string_label_values_become_strings_with_one_warning(
    collector: MetricsCollector,
    reader: InMemoryMetricReader,
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector.increment_counter("rows", labels={"shard": 1})
    collector.increment_counter("rows", labels={"shard": 1})
    collector.increment_counter("rows", labels={"shard": True})
    collector.increment_counter("rows", labels={"shard": ["x"]})

    assert points(reader)["rows"] == {
        key(shard="1"): 2,
        key(shard="True"): 1,
        key(shard="['x']"): 1,
    }
    (message,) = warnings(caplog)
    assert "label value not a string" in message


def test_labels_that_are_not_a_mapping_drop_the_value(
    collector: MetricsCollector,
    reader: InMemoryMetricReader,
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector.increment_counter("rows", labels=[("a", "b")])  # type: ignore[arg-type]

    assert "rows" not in points(reader)
    assert "labels not a mapping" in caplog.text


def test_label_sets_beyond_the_cap_fold_to_other_with_one_warning(
    meter_provider: MeterProvider,
    reader: InMemoryMetricReader,
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector = MetricsCollector(meter_provider, max_attribute_sets=3)
    for user in ["u1", "u2", "u3", "u4", "u5", "u1", "u4"]:
        collector.increment_counter("logins", labels={"user": user, "x": "y"})
    collector.increment_counter("other.metric", labels={"user": "u9"})

    assert points(reader)["logins"] == {
        key(user="u1", x="y"): 2,
        key(user="u2", x="y"): 1,
        key(user="u3", x="y"): 1,
        key(user="_other", x="_other"): 3,
    }
    assert points(reader)["other.metric"] == {key(user="u9"): 1}
    (message,) = warnings(caplog)
    assert message.startswith("metric logins reached its cap of 3")


def test_default_cap_is_well_below_the_sdk_limit(
    collector: MetricsCollector, reader: InMemoryMetricReader
) -> None:
    for index in range(1005):
        collector.increment_counter("ids", labels={"id": str(index)})

    series = points(reader)["ids"]
    assert len(series) == 1001
    assert series[key(id="_other")] == 5


def test_threads_incrementing_together_lose_no_increment(
    collector: MetricsCollector, reader: InMemoryMetricReader
) -> None:
    threads_count, per_thread = 8, 2000
    barrier = threading.Barrier(threads_count)

    def work(index: int) -> None:
        barrier.wait(timeout=10)
        for step in range(per_thread):
            collector.increment_counter("work", labels={"t": str(step % 4)})
            collector.increment_counter(f"own.{index}")

    threads = [
        threading.Thread(target=work, args=(i,)) for i in range(threads_count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    got = points(reader)
    assert sum(got["work"].values()) == threads_count * per_thread
    assert set(got["work"]) == {key(t=str(i)) for i in range(4)}
    for index in range(threads_count):
        assert got[f"own.{index}"] == {NO_LABELS: per_thread}


def test_a_failing_sdk_call_never_reaches_the_caller(
    collector: MetricsCollector, caplog: pytest.LogCaptureFixture
) -> None:
    collector.increment_counter("huge", 10**400)
    collector.increment_counter("huge", 10**400)

    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "the SDK failed to record" in errors[0].getMessage()


def test_non_string_label_keys_become_strings(
    collector: MetricsCollector,
    reader: InMemoryMetricReader,
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector.increment_counter("rows", labels={7: "x"})  # type: ignore[dict-item]

    assert points(reader)["rows"] == {key(**{"7": "x"}): 1}
    assert "label key not a string" in caplog.text


def test_cap_below_one_is_rejected(meter_provider: MeterProvider) -> None:
    with pytest.raises(ValueError, match="at least 1, got 0"):
        MetricsCollector(meter_provider, max_attribute_sets=0)

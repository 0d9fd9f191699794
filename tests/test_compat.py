"""The original monitor's gauge names, opt-in, as Prometheus renders them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert

from otel_batchmon import BatchMonitor, parse_config, track_batch
from otel_batchmon.compat import COMPAT_GAUGES
from otel_batchmon.demo import demo_rows
from otel_batchmon.instruments import InstrumentKind
from otel_batchmon.snapshot import StoreSnapshot
from otel_batchmon.tables import default_batch_table
from tests._prometheus_names import exported_metric_names, metric_name
from tests.conftest import Database

ORIGINAL_NAMES = {
    "batch_processing_total_24h",
    "batch_processing_successful_24h",
    "batch_processing_failed_24h",
    "batch_processing_failure_rate",
    "batch_processing_avg_time_minutes",
    "batch_processing_stuck_count",
}


def _demo(sqlite: Database) -> str:
    name = sqlite.table_name()
    table = default_batch_table(name)
    table.create(sqlite.engine)
    with sqlite.engine.begin() as connection:
        connection.execute(insert(table), demo_rows(datetime.now(UTC)))
    return name


def _monitor(
    sqlite: Database, name: str, provider: MeterProvider, **settings: Any
) -> BatchMonitor:
    config = parse_config(
        {
            "database_url": sqlite.url,
            "table": name,
            "name": "demo",
            "refresh_interval": "5s",
            "backfill": "48h",
            "settle_lag": "0s",
        }
        | settings
    )
    return BatchMonitor(config, provider)


def _expected(snapshot: StoreSnapshot) -> dict[str, float]:
    ratio, mean = snapshot.failure_ratio, snapshot.duration_mean_seconds
    assert ratio is not None
    assert mean is not None
    counts = snapshot.window_counts
    return {
        "batch_processing_total_24h": float(sum(counts.values())),
        "batch_processing_successful_24h": float(counts["completed"]),
        "batch_processing_failed_24h": float(counts["failed"]),
        "batch_processing_failure_rate": ratio * 100.0,
        "batch_processing_avg_time_minutes": mean / 60.0,
        "batch_processing_stuck_count": float(snapshot.stuck_count),
    }


def test_prometheus_text_has_the_original_names_once_with_their_values(
    sqlite: Database,
) -> None:
    name = _demo(sqlite)
    registry = CollectorRegistry()
    provider = MeterProvider(
        metric_readers=[PrometheusMetricReader(registry=registry)]
    )
    monitor = _monitor(sqlite, name, provider, compat_names=True)
    try:
        (outcome,) = monitor.refresh_now()
        assert outcome.snapshot is not None
        # Worker-side events on the same provider share the batch.*
        # families; they must not create a second one either.
        with track_batch("import", store="demo", meter_provider=provider):
            pass
        text = generate_latest(registry).decode()
    finally:
        monitor.stop()
        provider.shutdown()
    families = list(text_string_to_metric_families(text))
    names = [family.name for family in families]
    assert len(names) == len(set(names)), sorted(names)
    type_lines = [line for line in text.splitlines() if "# TYPE" in line]
    assert len(type_lines) == len(set(type_lines))
    # batch.alerts (the stuck incident this table opens) is the one
    # batch_alerts family; compat adds no second one under that name.
    assert names.count("batch_alerts") <= 1
    assert text.count("# TYPE batch_alerts") <= 1
    got = {
        family.name: {
            sample.labels["batch_store"]: sample.value
            for sample in family.samples
        }
        for family in families
        if family.name in ORIGINAL_NAMES
    }
    want = _expected(outcome.snapshot)
    assert set(got) == ORIGINAL_NAMES
    for metric, value in want.items():
        assert got[metric] == {"demo": pytest.approx(value)}, metric
    finished = {f.name for f in families if f.name.startswith("batch_finis")}
    assert finished == {"batch_finished"}


def test_compat_names_are_off_unless_asked_for(sqlite: Database) -> None:
    name = _demo(sqlite)
    reader = InMemoryMetricReader()
    monitor = _monitor(sqlite, name, MeterProvider(metric_readers=[reader]))
    try:
        monitor.refresh_now()
        data = reader.get_metrics_data()
    finally:
        monitor.stop()
    assert data is not None
    exported = {
        metric.name
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert "batch.window.count" in exported
    assert not exported & ORIGINAL_NAMES


def test_compat_gauges_have_an_empty_unit_over_otlp(sqlite: Database) -> None:
    name = _demo(sqlite)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    monitor = _monitor(sqlite, name, provider, compat_names=True)
    try:
        monitor.refresh_now()
        data = reader.get_metrics_data()
    finally:
        monitor.stop()
    assert data is not None
    units = {
        metric.name: metric.unit
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name in ORIGINAL_NAMES
    }
    assert units == dict.fromkeys(ORIGINAL_NAMES, "")


def test_collector_keeps_compat_names_and_none_collides_with_ours() -> None:
    assert {g.name for g in COMPAT_GAUGES} == ORIGINAL_NAMES
    # batch.alerts (once-per-incident) already arrives under the original
    # batch_alerts_total name, so compat must never export that name.
    alerts = metric_name("batch.alerts", "{alert}", InstrumentKind.COUNTER)
    assert alerts == "batch_alerts_total"
    assert alerts not in ORIGINAL_NAMES
    ours = exported_metric_names()
    for gauge in COMPAT_GAUGES:
        rendered = metric_name(gauge.name, "", InstrumentKind.GAUGE)
        assert rendered == gauge.name
        assert rendered not in ours

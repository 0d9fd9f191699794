"""Prometheus pulls from ``otel-batchmon run`` directly, no Collector.

A real Prometheus server (Debian's binary) scrapes the daemon's own
endpoint (``OTEL_METRICS_EXPORTER=prometheus``) every second; the test
reads what Prometheus stored through its query API and compares it with
the rows it wrote, the names with those the Collector path gives, and
the alerts the shipped rules raise on them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, insert

from otel_batchmon.instruments import spec
from otel_batchmon.tables import default_batch_table
from tests._processes import (
    Child,
    clean_env,
    free_port,
    get_json,
    http_ok,
    poll,
    port_open,
    running,
)
from tests._prometheus_names import (
    exported_metric_names,
    require_tool,
    spec_metric_name,
)

JOB = "batchmon-pull"
SERVICE = "batchmon-scrape-test"
SHUTDOWN_SECONDS = 5.0
RULES = (
    Path(__file__).resolve().parents[1]
    / "collector-config"
    / "prometheus"
    / "batchmon-rules.yml"
)
Series = dict[frozenset[tuple[str, str]], float]

# Metrics every refresh reports, whatever the rows: the snapshot gauges,
# the refresh histogram and (for the broken store) the error counter.
ALWAYS_REPORTED = (
    "batch.window.count",
    "batch.window.failure_ratio",
    "batch.window.duration.mean",
    "batch.stuck.count",
    "batch.active.count",
    "batch.processing.oldest_age",
    "batch.pending.oldest_age",
    "batch.last_success.age",
    "batchmon.rows.invalid",
    "batchmon.snapshot.age",
)


def known_batches(now: datetime) -> list[dict[str, Any]]:
    """Ten batches whose every gauge value can be worked out by hand."""

    def batch(
        batch_id: str,
        status: str,
        started_ago: timedelta | None,
        ran: timedelta | None = None,
        queued_ago: timedelta | None = None,
    ) -> dict[str, Any]:
        started = None if started_ago is None else now - started_ago
        finished = None if started is None or ran is None else started + ran
        queued = now - (queued_ago or started_ago or timedelta())
        return {
            "id": batch_id,
            "kind": "import",
            "status": status,
            "created_at": queued - timedelta(seconds=30),
            "started_at": started,
            "finished_at": finished,
            "records_total": 100,
            "records_failed": 5 if status == "failed" else 0,
            "error": None,
        }

    hour, minute = timedelta(hours=1), timedelta(minutes=1)
    return [
        batch("stuck", "processing", 5 * hour),
        batch("running", "processing", 10 * minute),
        batch("queued-1", "pending", None, queued_ago=3 * minute),
        batch("queued-2", "pending", None, queued_ago=20 * minute),
        batch("ok-1", "completed", hour, timedelta(seconds=60)),
        batch("ok-2", "completed", 2 * hour, timedelta(seconds=120)),
        batch("ok-3", "completed", 3 * hour, timedelta(seconds=300)),
        batch("bad-1", "failed", 90 * minute, timedelta(seconds=30)),
        batch("old-ok", "completed", 30 * hour, timedelta(seconds=600)),
        batch("old-bad", "failed", 40 * hour, timedelta(seconds=9)),
    ]


def test_prometheus_scrapes_the_daemon_and_stores_the_tables_values(
    tmp_path: Path,
) -> None:
    prometheus = require_tool("prometheus")
    now = datetime.now(UTC)
    url = _sqlite_with(tmp_path / "batches.db", known_batches(now))
    metrics_port = free_port()
    env = clean_env(
        OTEL_SERVICE_NAME=SERVICE,
        OTEL_METRICS_EXPORTER="prometheus",
        OTEL_EXPORTER_PROMETHEUS_HOST="127.0.0.1",
        OTEL_EXPORTER_PROMETHEUS_PORT=str(metrics_port),
        OTEL_BATCHMON_STORES__IMPORTS__DATABASE_URL=url,
        OTEL_BATCHMON_STORES__IMPORTS__TABLE="batches",
        # A file in a folder that does not exist: every refresh fails.
        OTEL_BATCHMON_STORES__BROKEN__DATABASE_URL=(
            f"sqlite:///{tmp_path / 'missing' / 'x.db'}"
        ),
        OTEL_BATCHMON_STORES__BROKEN__TABLE="batches",
        OTEL_BATCHMON_REFRESH_INTERVAL="1s",
        OTEL_BATCHMON_SHUTDOWN_TIMEOUT=f"{SHUTDOWN_SECONDS:g}s",
    )
    command = [sys.executable, "-m", "otel_batchmon", "run"]
    with running("otel-batchmon", command, env, tmp_path) as monitor:
        poll(
            lambda: True if port_open(metrics_port) else None,
            "the monitor's scrape endpoint",
            alive=monitor.exited,
        )
        with _prometheus(prometheus, metrics_port, tmp_path) as base:
            _wait_for_first_scrape(base, monitor)
            _assert_values(base, metrics_port)
            _assert_names_match_the_collector_path(base)
            _assert_shipped_rules_fire_on_the_pulled_series(base, monitor)
            code, seconds = monitor.terminate(SHUTDOWN_SECONDS + 5)
            log = monitor.log()
            _assert_series_go_stale_at_once(base)
    assert code == 0, log
    assert seconds <= SHUTDOWN_SECONDS, log
    assert "Traceback" not in log
    assert "refresh failed (connection)" in log


def _sqlite_with(path: Path, rows: list[dict[str, Any]]) -> str:
    url = f"sqlite:///{path}"
    engine = create_engine(url)
    table = default_batch_table("batches")
    table.create(engine)
    with engine.begin() as connection:
        connection.execute(insert(table), rows)
    engine.dispose()
    return url


@contextmanager
def _prometheus(binary: str, target_port: int, workdir: Path) -> Iterator[str]:
    """Run Prometheus scraping 127.0.0.1:target_port; yield its URL."""
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "  evaluation_interval: 1s\n"
        f"rule_files: ['{RULES}']\n"
        "scrape_configs:\n"
        f"  - job_name: {JOB}\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{target_port}']\n"
    )
    argv = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with running("prometheus", argv, clean_env(), workdir) as child:
        base = f"http://127.0.0.1:{port}"
        # The port opens before the storage is ready; queries answer 503
        # until /-/ready says 200.
        poll(
            lambda: http_ok(f"{base}/-/ready"),
            "Prometheus to be ready",
            alive=child.exited,
        )
        yield base


def _wait_for_first_scrape(base: str, monitor: Child) -> None:
    def scraped() -> bool | None:
        stuck = query(base, f'batch_stuck_count{{job="{JOB}"}}')
        errors = query(base, "batchmon_refresh_errors_total")
        return True if stuck and errors else None

    poll(scraped, "Prometheus to store the first scrape", 30, monitor.exited)


def query(base: str, expr: str) -> Series:
    """Run an instant PromQL query: {labels: value}."""
    reply = get_json(f"{base}/api/v1/query", {"query": expr})
    assert reply["status"] == "success", reply
    return {
        frozenset(item["metric"].items()): float(item["value"][1])
        for item in reply["data"]["result"]
    }


def by_label(series: Series, label: str) -> dict[str, float]:
    """Key each series of a result by one label's value."""
    return {dict(labels)[label]: value for labels, value in series.items()}


def one_value(base: str, expr: str) -> float:
    """The single value of a query that must return exactly one series."""
    series = query(base, expr)
    assert len(series) == 1, f"{expr}: {series}"
    return next(iter(series.values()))


def _assert_values(base: str, metrics_port: int) -> None:
    store = '{batch_store="imports"}'
    window = query(base, f"batch_window_count{store}")
    assert by_label(window, "batch_status") == {
        "pending": 2,
        "processing": 2,
        "completed": 3,
        "failed": 1,
        "other": 0,
    }
    active = query(base, f"batch_active_count{store}")
    assert by_label(active, "batch_status") == {"pending": 2, "processing": 2}
    assert one_value(base, f"batch_stuck_count{store}") == 1
    ratio = one_value(base, f"batch_window_failure_ratio{store}")
    assert ratio == pytest.approx(0.25)
    mean = one_value(base, f"batch_window_duration_mean_seconds{store}")
    assert mean == pytest.approx((60 + 120 + 300 + 30) / 4)
    # Ages grow while the test runs: a minute of slack, never less.
    ages = {
        "batch_processing_oldest_age_seconds": 5 * 3600,
        "batch_pending_oldest_age_seconds": 20 * 60 + 30,
        "batch_last_success_age_seconds": 3600 - 60,
    }
    for name, seconds in ages.items():
        assert seconds <= one_value(base, name + store) < seconds + 60, name
    invalid = query(base, f"batchmon_rows_invalid{store}")
    assert set(invalid.values()) == {0}
    errors = query(base, 'batchmon_refresh_errors_total{batch_store="broken"}')
    assert by_label(errors, "error_type").keys() == {"connection"}
    assert next(iter(errors.values())) >= 1
    # The pull path: job is the scrape job, instance the scraped address;
    # service.name reaches Prometheus only as a target_info label.
    labels = dict(next(iter(query(base, f"batch_stuck_count{store}"))))
    assert labels["job"] == JOB
    assert labels["instance"] == f"127.0.0.1:{metrics_port}"
    assert labels["otel_scope_name"] == "otel_batchmon"
    assert labels["otel_scope_version"]
    # The reader sends otel_scope_schema_url="" and Prometheus stores an
    # empty label as no label.
    assert "otel_scope_schema_url" not in labels
    assert query(base, f'process_start_time_seconds{{job="{JOB}"}}')
    target = dict(next(iter(query(base, "target_info"))))
    assert target["service_name"] == SERVICE
    assert target["job"] == JOB
    assert one_value(base, f'up{{job="{JOB}"}}') == 1


def _assert_names_match_the_collector_path(base: str) -> None:
    names = by_label(
        query(
            base,
            # Scraped series only: the rules' ALERTS series carry the
            # same labels.
            "count by (__name__) ({"
            f'job="{JOB}", batch_store!="", __name__!~"ALERTS.*"'
            "})",
        ),
        "__name__",
    ).keys()
    collector_names = exported_metric_names()
    assert names <= collector_names.keys(), names - collector_names.keys()
    wanted = {spec_metric_name(spec(name)) for name in ALWAYS_REPORTED}
    wanted |= {
        "batchmon_refresh_duration_seconds_bucket",
        "batchmon_refresh_duration_seconds_count",
        "batchmon_refresh_duration_seconds_sum",
        "batchmon_refresh_errors_total",
    }
    assert wanted <= names, wanted - names
    # Unit "1" adds no _ratio here; the name already ends in ratio, which
    # is also all the Collector's translator leaves, so both agree.
    assert "batch_window_failure_ratio" in names


def _assert_series_go_stale_at_once(base: str) -> None:
    # A failed scrape makes Prometheus mark the target's series stale:
    # unlike the Collector's metric_expiration, nothing lingers.
    poll(
        lambda: None if query(base, "batch_stuck_count") else True,
        "the stopped monitor's series to go stale",
        timeout=15,
    )
    assert one_value(base, f'up{{job="{JOB}"}}') == 0


def _assert_shipped_rules_fire_on_the_pulled_series(
    base: str, monitor: Child
) -> None:
    # One stuck batch, a failure ratio of 0.25 (> 0.2) and a store whose
    # every refresh fails: exactly these three alerts, pending (their
    # `for` is minutes), labelled with the store they are about. On a
    # fresh Prometheus BatchmonAbsent (no `for`) is active until the
    # first scrape lands, so the wait is for the exact set.
    wanted = {
        ("BatchmonBatchesStuck", "imports"),
        ("BatchmonFailureRatioHigh", "imports"),
        ("BatchmonRefreshFailing", "broken"),
    }

    def settled() -> list[dict[str, Any]] | None:
        reply = get_json(f"{base}/api/v1/alerts", {})
        alerts: list[dict[str, Any]] = reply["data"]["alerts"]
        return alerts if _alert_keys(alerts) == wanted else None

    alerts = poll(settled, "the shipped rules to fire", 30, monitor.exited)
    assert {a["state"] for a in alerts} == {"pending"}
    assert {a["labels"]["job"] for a in alerts} == {JOB}
    failing = next(
        a for a in alerts if a["labels"]["alertname"].endswith("Failing")
    )
    assert failing["labels"]["error_type"] == "connection"


def _alert_keys(alerts: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {
        (a["labels"]["alertname"], a["labels"].get("batch_store", ""))
        for a in alerts
    }

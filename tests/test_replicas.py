"""Several monitor processes on one table: one reports at a time.

Three `otel-batchmon run` processes watch a table with four stuck
batches and export to one real OTLP receiver. The stuck count received,
summed over instances, must be 4 at every moment, never 8 or 12; after
the leader is killed with SIGKILL another instance continues within two
refresh intervals.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert

from otel_batchmon.tables import default_batch_table
from tests.conftest import Database
from tests.otlp_receiver import Received, grpc_receiver

INTERVAL = 0.5


def _stuck_table(db: Database) -> str:
    name = db.table_name()
    table = default_batch_table(name)
    table.create(db.engine)
    now = datetime.now(UTC)
    rows = [
        {
            "id": f"stuck-{i}",
            "status": "processing",
            "created_at": now - timedelta(hours=6),
            "started_at": now - timedelta(hours=5, minutes=i),
        }
        for i in range(4)
    ]
    with db.engine.begin() as connection:
        connection.execute(insert(table), rows)
    return name


def _start(
    db: Database, name: str, endpoint: str, replica: int
) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env |= {
        "OTEL_SERVICE_NAME": "batchmon-replicas",
        "OTEL_RESOURCE_ATTRIBUTES": f"batchmon.replica={replica}",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_METRIC_EXPORT_INTERVAL": str(int(INTERVAL * 1000)),
        "OTEL_BATCHMON_DATABASE_URL": db.url,
        "OTEL_BATCHMON_TABLE": name,
        "OTEL_BATCHMON_REFRESH_INTERVAL": f"{INTERVAL}s",
        "OTEL_BATCHMON_SHUTDOWN_TIMEOUT": "3s",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "otel_batchmon", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stuck_reports(received: Received) -> list[tuple[int, str, float]]:
    """(arrival order, replica, stuck count) of every report of it."""
    reports = []
    for order, request in enumerate(list(received.requests)):
        for resource in request.resource_metrics:
            instance = next(
                a.value.string_value
                for a in resource.resource.attributes
                if a.key == "batchmon.replica"
            )
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name != "batch.stuck.count":
                        continue
                    for point in metric.gauge.data_points:
                        value = point.as_double or point.as_int
                        reports.append((order, instance, value))
    return reports


def _wait_for(condition: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def _runs(instances: list[str]) -> list[str]:
    runs: list[str] = []
    for instance in instances:
        if not runs or runs[-1] != instance:
            runs.append(instance)
    return runs


def test_three_monitors_report_four_stuck_once_and_survive_sigkill(
    db: Database,
) -> None:
    name = _stuck_table(db)
    with grpc_receiver() as (endpoint, received):
        processes = [_start(db, name, endpoint, i) for i in range(3)]
        try:
            assert _wait_for(lambda: len(_stuck_reports(received)) >= 6, 30)
            before = _stuck_reports(received)
            leader = before[-1][1]
            processes[int(leader)].send_signal(signal.SIGKILL)
            killed_at = len(received.requests)
            assert _wait_for(
                lambda: any(
                    order >= killed_at and instance != leader
                    for order, instance, _ in _stuck_reports(received)
                ),
                4 * INTERVAL + 10,
            ), "no other instance took over"
            after = _stuck_reports(received)
        finally:
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in processes:
                process.wait(15)
    assert {value for _, _, value in after} == {4}
    # One instance at a time: the reporting instance changes only when the
    # leader goes, never back and forth.
    runs = _runs([instance for _, instance, _ in after])
    assert len(runs) == len(set(runs)), runs
    assert runs[0] == leader or leader in runs

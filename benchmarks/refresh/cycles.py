"""The monitor over many refreshes: resident memory, and the cost of one
collection of every observable gauge.

``python -m refresh.cycles URL TABLE CYCLES APPROACH`` runs in a fresh
process: it refreshes ``CYCLES`` times and prints JSON with the resident
set size read from /proc/self/statm after a warm-up and at the end.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_batchmon._engine import create_monitor_engine
from otel_batchmon.config import MonitorConfig, StoreConfig
from otel_batchmon.monitor import BatchMonitor

WARMUP_CYCLES = 20
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Cycles:
    """Resident memory across many refreshes of one approach."""

    approach: str
    cycles: int
    rss_start_kb: float
    rss_end_kb: float
    seconds: float
    error: str | None = None

    @property
    def growth_kb(self) -> float:
        return self.rss_end_kb - self.rss_start_kb


def rss_kb() -> float:
    """This process's resident set, from /proc/self/statm."""
    fields = Path("/proc/self/statm").read_text().split()
    return int(fields[1]) * _PAGE / 1024.0


def run_cycles(
    url: str, table: str, cycles: int, approach: str, reconcile_every: float
) -> Cycles:
    """Run the child process and read its report."""
    here = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(here))
    command = [
        sys.executable,
        "-m",
        "refresh.cycles",
        url,
        table,
        str(cycles),
        approach,
        str(reconcile_every),
    ]
    out = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
        check=False,
    )
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return Cycles(approach, cycles, 0.0, 0.0, 0.0, error=tail)
    return Cycles(**json.loads(out.stdout))


def _child(argv: list[str]) -> None:
    url, table, cycles, approach, reconcile_every = argv
    # Imported here: the parent need not import the package's engine.
    from refresh.approaches import FullRefresh, IncrementalMonitor
    from refresh.dataset import store_config

    config = store_config(url, table)
    engine = create_monitor_engine(url, 60.0, 10.0)
    monitor: Any = (
        FullRefresh(config)
        if approach == "full"
        else IncrementalMonitor(config, float(reconcile_every))
    )
    total = int(cycles)
    start_kb = 0.0
    began = time.monotonic()
    for cycle in range(total + WARMUP_CYCLES):
        if cycle == WARMUP_CYCLES:
            start_kb = rss_kb()
            began = time.monotonic()
        with engine.connect() as connection, connection.begin():
            monitor.refresh(connection)
    report = Cycles(
        approach, total, start_kb, rss_kb(), time.monotonic() - began
    )
    engine.dispose()
    print(json.dumps(report.__dict__))


@dataclass(frozen=True)
class CallbackTiming:
    """One ``collect()`` of every gauge over a fresh snapshot."""

    median_ms: float
    p95_ms: float
    points: int
    collections: int


def time_callbacks(config: StoreConfig, collections: int) -> CallbackTiming:
    """Refresh once into a BatchMonitor, then time ``collect()``."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    with tempfile.TemporaryDirectory() as folder:
        monitor_config = MonitorConfig(
            stores=(config,),
            events=False,
            leader_election=False,
            stale_after_seconds=3600.0,
            state_url=f"sqlite:///{folder}/state.db",
        )
        monitor = BatchMonitor(monitor_config, meter_provider=provider)
        try:
            outcomes = monitor.refresh_now()
            if not all(o.ok for o in outcomes):
                raise RuntimeError(f"refresh failed: {outcomes}")
            timings, points = [], 0
            for _ in range(collections):
                began = time.perf_counter()
                data = reader.get_metrics_data()
                timings.append(time.perf_counter() - began)
                points = _count_points(data)
        finally:
            monitor.stop()
            provider.shutdown()
    timings.sort()
    return CallbackTiming(
        statistics.median(timings) * 1000.0,
        timings[int(len(timings) * 0.95) - 1] * 1000.0,
        points,
        collections,
    )


def _count_points(data: Any) -> int:
    if data is None:
        return 0
    return sum(
        len(metric.data.data_points)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    )


if __name__ == "__main__":
    _child(sys.argv[1:])

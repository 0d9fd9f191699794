"""BatchmonInstrumentor: direct use, settings, and opentelemetry-instrument."""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy import insert

import otel_batchmon
from otel_batchmon import BatchMonitor, parse_config
from otel_batchmon.demo import demo_rows
from otel_batchmon.tables import default_batch_table
from tests._processes import clean_env, missing_tool, poll
from tests.conftest import Database
from tests.metrics import collect
from tests.otlp_receiver import grpc_receiver

pytest.importorskip("opentelemetry.instrumentation")

from otel_batchmon.instrumentor import BatchmonInstrumentor

REFRESHER = "otel-batchmon-refresher"


def _refreshers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == REFRESHER]


def _table(db: Database) -> str:
    name = db.table_name()
    table = default_batch_table(name)
    table.create(db.engine)
    with db.engine.begin() as connection:
        connection.execute(insert(table), demo_rows())
    return name


@pytest.fixture
def instrumentor(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[BatchmonInstrumentor]:
    for name in list(os.environ):
        if name.startswith("OTEL_BATCHMON_") or name == "OTEL_SDK_DISABLED":
            monkeypatch.delenv(name)
    instrumentor = BatchmonInstrumentor()
    yield instrumentor
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


def test_instrument_reports_the_table_and_uninstrument_stops_everything(
    sqlite: Database, instrumentor: BatchmonInstrumentor
) -> None:
    before = _refreshers()
    reader = InMemoryMetricReader()
    config = parse_config(
        {
            "database_url": sqlite.url,
            "table": _table(sqlite),
            "name": "imports",
            "refresh_interval": "100ms",
        }
    )
    instrumentor.instrument(
        meter_provider=MeterProvider([reader]), config=config
    )
    monitor = instrumentor.monitor
    assert isinstance(monitor, BatchMonitor)
    assert monitor.config.leader_election is True
    stuck = poll(
        lambda: collect(reader).get("batch.stuck.count") or None,
        "the stuck gauge",
    )
    assert stuck == {frozenset({("batch.store", "imports")}): 1}
    assert len(_refreshers()) == len(before) + 1
    engines = [s.engine for s in monitor.refresher._states.values()]

    instrumentor.uninstrument()
    assert instrumentor.monitor is None
    assert _refreshers() == before
    assert all(e.pool.checkedin() == 0 for e in engines)
    assert "batch.stuck.count" not in collect(reader)


def test_instrument_and_uninstrument_twice_keep_one_monitor(
    sqlite: Database, instrumentor: BatchmonInstrumentor
) -> None:
    before = _refreshers()
    config = parse_config(
        {"database_url": sqlite.url, "table": _table(sqlite)}
    )
    provider = MeterProvider([InMemoryMetricReader()])
    instrumentor.instrument(meter_provider=provider, config=config)
    first = instrumentor.monitor
    instrumentor.instrument(meter_provider=provider, config=config)
    assert BatchmonInstrumentor().monitor is first
    assert len(_refreshers()) == len(before) + 1
    instrumentor.uninstrument()
    instrumentor.uninstrument()
    assert _refreshers() == before
    instrumentor.instrument(meter_provider=provider, config=config)
    assert instrumentor.monitor is not None
    assert instrumentor.monitor is not first
    assert len(_refreshers()) == len(before) + 1


def test_without_any_setting_nothing_starts_and_one_debug_line_says_so(
    instrumentor: BatchmonInstrumentor, caplog: pytest.LogCaptureFixture
) -> None:
    before = _refreshers()
    with caplog.at_level(logging.DEBUG, logger="otel_batchmon"):
        instrumentor.instrument()
    assert instrumentor.monitor is None
    assert _refreshers() == before
    records = [r for r in caplog.records if r.name.startswith("otel_batchmon")]
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (
            logging.DEBUG,
            "otel_batchmon: no OTEL_BATCHMON_* or OTEL_BATCHMON_CONFIG "
            "setting; not monitoring",
        )
    ]


def test_bad_settings_log_one_error_listing_every_problem(
    instrumentor: BatchmonInstrumentor,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("OTEL_BATCHMON_TABLE", "batches")
    monkeypatch.setenv("OTEL_BATCHMON_REFRESH_INTERVAL", "soon")
    monkeypatch.setenv("OTEL_BATCHMON_HEALTH_ADDRESS", "8081")
    before = _refreshers()
    with caplog.at_level(logging.DEBUG, logger="otel_batchmon"):
        instrumentor.instrument()
    assert instrumentor.monitor is None
    assert _refreshers() == before
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert message.startswith(
        "otel_batchmon not started: configuration has 3 problems:"
    )
    for part in (
        "refresh_interval (from OTEL_BATCHMON_REFRESH_INTERVAL)",
        "health_address (from OTEL_BATCHMON_HEALTH_ADDRESS)",
        "database_url: missing",
    ):
        assert part in message


def test_sdk_disabled_starts_nothing_even_with_settings(
    sqlite: Database,
    instrumentor: BatchmonInstrumentor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "TRUE")
    monkeypatch.setenv("OTEL_BATCHMON_DATABASE_URL", sqlite.url)
    monkeypatch.setenv("OTEL_BATCHMON_TABLE", _table(sqlite))
    before = _refreshers()
    instrumentor.instrument()
    assert instrumentor.monitor is None
    assert _refreshers() == before


def test_importing_every_module_has_no_side_effect() -> None:
    script = """
import importlib, logging, os, pkgutil, threading
from opentelemetry import metrics, trace
import otel_batchmon
# __main__ is the command itself: running on import is its job.
names = sorted(
    m.name for m in pkgutil.walk_packages(
        otel_batchmon.__path__, "otel_batchmon."
    )
    if m.name != "otel_batchmon.__main__"
)
def sockets():
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the descriptor listdir itself used
            continue
        if link.startswith("socket:"):
            found.append(link)
    return sorted(found)
threads = set(threading.enumerate())
open_sockets = sockets()
for name in names:
    importlib.import_module(name)
assert set(threading.enumerate()) == threads, threading.enumerate()
assert sockets() == open_sockets, sockets()
assert type(metrics.get_meter_provider()).__name__ == "_ProxyMeterProvider"
assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"
assert logging.getLogger().handlers == []
assert all(
    not getattr(logger, "handlers", None)
    for logger in logging.root.manager.loggerDict.values()
)
print(len(names))
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=clean_env(OTEL_METRICS_EXPORTER="none"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    expected = sum(
        1
        for m in pkgutil.walk_packages(
            otel_batchmon.__path__, "otel_batchmon."
        )
        if m.name != "otel_batchmon.__main__"
    )
    assert int(result.stdout) == expected


def _opentelemetry_instrument() -> str:
    found = [
        e
        for e in entry_points(group="opentelemetry_instrumentor")
        if e.name == "otel_batchmon"
    ]
    if not found:
        missing_tool(
            "the otel_batchmon opentelemetry_instrumentor entry point is not "
            "installed: pip install -e . (after pyproject declares it)"
        )
    if importlib.util.find_spec("opentelemetry.distro") is None:
        missing_tool("opentelemetry-distro is not installed")
    command = Path(sys.executable).with_name("opentelemetry-instrument")
    if not command.exists():
        found_on_path = shutil.which("opentelemetry-instrument")
        if found_on_path is None:
            missing_tool("opentelemetry-instrument is not installed")
        return found_on_path
    return str(command)


_APP = """
import os, sys, threading, time
names = sorted(t.name for t in threading.enumerate())
print("threads:", ",".join(names), flush=True)
stop = sys.argv[1]
deadline = time.monotonic() + 30
while not os.path.exists(stop) and time.monotonic() < deadline:
    time.sleep(0.05)
"""


def _instrumented(
    tmp_path: Path, endpoint: str, **settings: str
) -> subprocess.Popen[str]:
    (tmp_path / "app.py").write_text(_APP)
    env = clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        OTEL_METRIC_EXPORT_INTERVAL="200",
        OTEL_TRACES_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_SERVICE_NAME="instrumented-app",
        **settings,
    )
    argv = [_opentelemetry_instrument(), sys.executable, "app.py", "stop"]
    return subprocess.Popen(
        argv,
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen[str], tmp_path: Path) -> str:
    (tmp_path / "stop").touch()
    try:
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 0, output
    return output


def test_opentelemetry_instrument_exports_the_batch_gauges(
    db: Database, tmp_path: Path
) -> None:
    table = _table(db)
    with grpc_receiver() as (endpoint, received):
        process = _instrumented(
            tmp_path,
            endpoint,
            OTEL_BATCHMON_DATABASE_URL=db.url,
            OTEL_BATCHMON_TABLE=table,
            OTEL_BATCHMON_NAME="imports",
            OTEL_BATCHMON_REFRESH_INTERVAL="200ms",
        )
        try:
            stuck = poll(
                lambda: received.points().get("batch.stuck.count"),
                "batch.stuck.count at the receiver",
                alive=lambda: None if process.poll() is None else "exited",
            )
        finally:
            output = _finish(process, tmp_path)
    assert stuck == {frozenset({("batch.store", "imports")}): 1}
    assert REFRESHER in output.splitlines()[0]
    assert received.resource_attributes()["service.name"] == "instrumented-app"
    counts = received.points()["batch.window.count"]
    failed = frozenset(
        {("batch.store", "imports"), ("batch.status", "failed")}
    )
    assert counts[failed] >= 1


def test_opentelemetry_instrument_without_settings_starts_nothing(
    tmp_path: Path,
) -> None:
    with grpc_receiver() as (endpoint, received):
        process = _instrumented(tmp_path, endpoint)
        output = _finish(process, tmp_path)
    assert output.startswith("threads:")
    assert REFRESHER not in output
    assert not [name for name in received.points() if name.startswith("batch")]

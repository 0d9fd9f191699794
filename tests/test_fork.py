"""Fork safety: a monitor made before ``fork`` works in every child.

The children are real: ``os.fork`` from this process, and gunicorn
``--preload -w 4`` in a subprocess exporting to a real OTLP receiver.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy import create_engine, insert, text
from sqlalchemy.pool import NullPool

from otel_batchmon import BatchMonitor, parse_config
from otel_batchmon.tables import default_batch_table
from tests._processes import clean_env, free_port, missing_tool, poll, running
from tests.conftest import Database
from tests.metrics import collect
from tests.otlp_receiver import Received, grpc_receiver

_CHILD_SECONDS = 20.0


def _table(db: Database) -> str:
    name = db.table_name()
    table = default_batch_table(name)
    table.create(db.engine)
    now = datetime.now(UTC)
    rows = [
        {
            "id": f"b{i}",
            "status": "completed",
            "created_at": now - timedelta(minutes=10),
            "started_at": now - timedelta(minutes=9),
            "finished_at": now - timedelta(minutes=8),
        }
        for i in range(3)
    ]
    with db.engine.begin() as connection:
        connection.execute(insert(table), rows)
    return name


def _monitor(
    url: str, table: str
) -> tuple[BatchMonitor, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    config = parse_config(
        {
            "database_url": url,
            "table": table,
            "name": "forked",
            "refresh_interval": "200ms",
        }
    )
    return BatchMonitor(config, MeterProvider([reader])), reader


def _completed(monitor: BatchMonitor) -> int | None:
    snapshot = monitor.snapshots().get("forked")
    return None if snapshot is None else snapshot.window_counts["completed"]


def _refreshes(reader: InMemoryMetricReader) -> int:
    series = collect(reader).get("batchmon.refresh.duration", {})
    return sum(count for count, _sum in series.values())


def _in_child(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``work`` in a forked child; return its result or fail."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns to pytest
        os.close(read_end)
        try:
            result = work()
        except BaseException as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write_end, json.dumps(result).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        _wait_for_child(pid)
        result: dict[str, Any] = json.loads(pipe.read() or b"{}")
    assert "error" not in result, result["error"]
    return result


def _wait_for_child(pid: int) -> None:
    deadline = time.monotonic() + _CHILD_SECONDS
    for _ in range(int(_CHILD_SECONDS / 0.05) + 1):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"child hung for {_CHILD_SECONDS:g}s after fork")


def test_child_refreshes_on_its_own_thread_and_connection(
    db: Database,
) -> None:
    table = _table(db)
    monitor, reader = _monitor(db.url, table)
    monitor.start()
    try:
        poll(lambda: _completed(monitor), "the parent's first refresh")
        parent_thread = monitor.refresher._thread
        assert parent_thread is not None
        parent_pools = {
            name: state.engine.pool
            for name, state in monitor.refresher._states.items()
        }

        def child() -> dict[str, Any]:
            thread = monitor.refresher._thread
            writer = create_engine(db.url, poolclass=NullPool)
            now = datetime.now(UTC)
            with writer.begin() as connection:
                connection.execute(
                    insert(default_batch_table(table)),
                    {
                        "id": "from-child",
                        "status": "completed",
                        "started_at": now - timedelta(seconds=30),
                        "finished_at": now - timedelta(seconds=20),
                    },
                )
            writer.dispose()
            seen = poll(
                lambda: (
                    _completed(monitor) if _completed(monitor) == 4 else None
                ),
                "the child's refresher to see the child's row",
                timeout=10,
            )
            return {
                "thread_alive": bool(thread and thread.is_alive()),
                "same_thread": thread is parent_thread,
                "native_id": thread.native_id if thread else None,
                "pools_replaced": all(
                    state.engine.pool is not parent_pools[name]
                    for name, state in monitor.refresher._states.items()
                ),
                "completed": seen,
                # The outcome is recorded just after the snapshot is
                # published, so wait for it rather than read it at once.
                "refreshes": poll(
                    lambda: _refreshes(reader) - before or None,
                    "the child's refresh to be recorded",
                    timeout=10,
                ),
            }

        before = _refreshes(reader)
        result = _in_child(child)
        assert result["thread_alive"] is True
        assert result["same_thread"] is False
        assert result["native_id"] != parent_thread.native_id
        assert result["pools_replaced"] is True
        assert result["completed"] == 4
        assert result["refreshes"] > 0
        # The parent was not disturbed: its own thread still refreshes.
        assert monitor.refresher._thread is parent_thread
        poll(
            lambda: True if _completed(monitor) == 4 else None,
            "the parent to see the child's row too",
        )
    finally:
        monitor.stop()


def test_parent_postgres_session_survives_the_child(
    postgres: Database,
) -> None:
    table = _table(postgres)
    app = f"batchmon_fork_{table[-10:]}"
    monitor, reader = _monitor(f"{postgres.url}?application_name={app}", table)

    def sessions() -> set[int]:
        with postgres.engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT pid FROM pg_stat_activity "
                    "WHERE application_name = :app"
                ),
                {"app": app},
            )
            return {int(row[0]) for row in rows}

    monitor.start()
    try:
        # Wait for two whole refreshes: the state database (events and
        # alert incidents) is first opened after the first read, so the
        # parent's set of sessions is complete only then.
        poll(
            lambda: True if _refreshes(reader) >= 2 else None,
            "the parent's first two refreshes",
        )
        # The parent's sessions: the refresher's and the state store's.
        parent_sessions = sessions()
        assert parent_sessions

        def child() -> dict[str, Any]:
            poll(
                lambda: True if sessions() > parent_sessions else None,
                "the child's own session",
                timeout=10,
            )
            return {"sessions": sorted(sessions())}

        result = _in_child(child)
        assert parent_sessions < set(result["sessions"])
        # The child's session ends with it; the parent's is the same one.
        poll(
            lambda: True if sessions() == parent_sessions else None,
            "the child's session to end",
        )
        after = _refreshes(reader)
        poll(
            lambda: True if _refreshes(reader) > after + 1 else None,
            "two more refreshes in the parent",
        )
        assert sessions() == parent_sessions
        assert "batchmon.refresh.errors" not in collect(reader)
    finally:
        monitor.stop()


def test_stopped_monitor_stays_stopped_in_the_child(sqlite: Database) -> None:
    monitor, _reader = _monitor(sqlite.url, _table(sqlite))
    monitor.refresh_now()

    def child() -> dict[str, Any]:
        return {"thread": monitor.refresher._thread is not None}

    assert _in_child(child) == {"thread": False}
    monitor.stop()


_APP = '''
"""Preloaded by gunicorn: the monitor is made in the master."""

import json
import os

from otel_batchmon import BatchMonitor, MetricsCollector, load_config
from otel_batchmon import track_batch

monitor = BatchMonitor(load_config())
monitor.start()
collector = MetricsCollector()


def _threads():
    thread = monitor.refresher._thread
    return {
        "pid": os.getpid(),
        "refresher": None if thread is None else thread.native_id,
        "alive": bool(thread and thread.is_alive()),
    }


with open("master.json", "w") as handle:
    json.dump(_threads(), handle)


def app(environ, start_response):
    if environ["REQUEST_METHOD"] == "POST":
        with track_batch("request", store="web"):
            collector.increment_counter("requests.handled")
    body = json.dumps(_threads()).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
'''

_GUNICORN_CONF = """
def post_fork(server, worker):
    from opentelemetry import metrics
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
        OTLPMetricExporter,
    )
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        PeriodicExportingMetricReader,
    )

    reader = PeriodicExportingMetricReader(OTLPMetricExporter(), 200)
    metrics.set_meter_provider(MeterProvider([reader]))
"""


def _per_instance(received: Received, name: str) -> dict[str, float]:
    """A cumulative sum's latest total, per service.instance.id."""
    latest: dict[tuple[str, frozenset[Any]], float] = {}
    for request in list(received.requests):
        for resource in request.resource_metrics:
            instance = next(
                a.value.string_value
                for a in resource.resource.attributes
                if a.key == "service.instance.id"
            )
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name != name:
                        continue
                    for point in metric.sum.data_points:
                        key = (instance, frozenset(map(str, point.attributes)))
                        number = point.WhichOneof("value")
                        value = float(getattr(point, number))
                        latest[key] = max(latest.get(key, 0.0), value)
    totals: dict[str, float] = {}
    for (instance, _attributes), value in latest.items():
        totals[instance] = totals.get(instance, 0.0) + value
    return totals


def _post(port: int) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/work", data=b"", method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        body: dict[str, Any] = json.load(response)
    return body


def _gunicorn_argv(port: int, workdir: Path) -> list[str]:
    try:
        from gunicorn.config import KNOWN_SETTINGS
    except ModuleNotFoundError:
        missing_tool("gunicorn is not installed: pip install gunicorn")
    argv = [sys.executable, "-m", "gunicorn", "--preload", "-w", "4"]
    argv += ["-b", f"127.0.0.1:{port}", "-c", "gunicorn_conf.py"]
    argv += ["--chdir", str(workdir)]
    if any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS):
        argv.append("--no-control-socket")
    return [*argv, "fork_app:app"]


def test_gunicorn_preload_workers_add_up_exactly(
    sqlite: Database, tmp_path: Path
) -> None:
    table = _table(sqlite)
    (tmp_path / "fork_app.py").write_text(_APP)
    (tmp_path / "gunicorn_conf.py").write_text(_GUNICORN_CONF)
    port = free_port()
    with grpc_receiver() as (endpoint, received):
        env = clean_env(
            OTEL_BATCHMON_DATABASE_URL=sqlite.url,
            OTEL_BATCHMON_TABLE=table,
            OTEL_BATCHMON_REFRESH_INTERVAL="1s",
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            OTEL_TRACES_EXPORTER="none",
            OTEL_LOGS_EXPORTER="none",
        )
        argv = _gunicorn_argv(port, tmp_path)
        with running("gunicorn", argv, env, tmp_path) as server:
            poll(
                lambda: _get_ok(port),
                "gunicorn to answer",
                alive=server.exited,
            )
            answers = _until_four_workers_answered(port)
            requests = len(answers)
            master = json.loads((tmp_path / "master.json").read_text())
            total = poll(
                lambda: _total_if(received, requests),
                f"{requests} requests counted at the receiver",
                alive=server.exited,
            )
            assert "Traceback" not in server.log()
    assert total == {
        "requests.handled": float(requests),
        "batch.finished": float(requests),
    }
    by_pid = {a["pid"]: a["refresher"] for a in answers}
    assert len(by_pid) == 4
    assert master["pid"] not in by_pid
    assert all(a["alive"] for a in answers)
    assert master["refresher"] not in by_pid.values()
    assert len(set(by_pid.values())) == len(by_pid)
    counted = _per_instance(received, "requests.handled")
    assert len(counted) == len(by_pid)


def _until_four_workers_answered(port: int) -> list[dict[str, Any]]:
    """POST until every worker answered (a hung worker never does)."""
    answers: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    for _ in range(400):
        answers.append(_post(port))
        if len({a["pid"] for a in answers}) == 4:
            return answers
        if time.monotonic() > deadline:
            break
    pids = sorted({a["pid"] for a in answers})
    pytest.fail(f"only workers {pids} answered {len(answers)} requests")


def _get_ok(port: int) -> bool | None:
    try:
        url = f"http://127.0.0.1:{port}/"
        with urllib.request.urlopen(url, timeout=2) as response:
            return True if response.status == 200 else None
    except OSError:
        return None


def _total_if(received: Received, wanted: int) -> dict[str, float] | None:
    totals = {
        name: sum(_per_instance(received, name).values())
        for name in ("requests.handled", "batch.finished")
    }
    return totals if all(v >= wanted for v in totals.values()) else None

"""The health endpoint: /livez, /readyz and their transitions, for real."""

from __future__ import annotations

import json
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy import insert, text

from otel_batchmon import BatchMonitor, ConfigError, parse_config
from otel_batchmon.health import HealthServer, Readiness
from otel_batchmon.tables import default_batch_table
from tests._processes import clean_env, free_port, poll, port_open, running
from tests.conftest import Database


def _table(db: Database) -> str:
    name = db.table_name()
    table = default_batch_table(name)
    table.create(db.engine)
    now = datetime.now(UTC)
    with db.engine.begin() as connection:
        connection.execute(
            insert(table),
            {
                "id": "b1",
                "status": "completed",
                "started_at": now - timedelta(minutes=2),
                "finished_at": now - timedelta(minutes=1),
            },
        )
    return name


def _get(port: int, path: str) -> tuple[int, dict[str, object]]:
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.load(error)


@pytest.fixture
def monitor(db: Database) -> Iterator[BatchMonitor]:
    config = parse_config(
        {
            "database_url": db.url,
            "table": _table(db),
            "name": "imports",
            "refresh_interval": "100ms",
            "stale_after": "300ms",
        }
    )
    reader = InMemoryMetricReader()
    monitor = BatchMonitor(config, MeterProvider([reader]))
    yield monitor
    monitor.stop()


def test_readyz_flips_to_503_naming_the_store_when_its_table_is_dropped(
    db: Database, monitor: BatchMonitor
) -> None:
    server = HealthServer(monitor, ("127.0.0.1", 0))
    server.start()
    port = server.address[1]
    try:
        assert _get(port, "/livez") == (200, {"status": "alive"})
        status, body = _get(port, "/readyz")
        assert status == 503
        assert body["status"] == "stale"
        assert body["stale_stores"] == ["imports"]

        monitor.start()
        poll(
            lambda: True if _get(port, "/readyz")[0] == 200 else None,
            "ready after the first refresh",
        )
        assert _get(port, "/readyz") == (200, {"status": "ready"})

        table = monitor.config.stores[0].table
        with db.engine.begin() as connection:
            connection.execute(text(f"DROP TABLE {table}"))
        status, body = poll(
            lambda: (
                _get(port, "/readyz")
                if _get(port, "/readyz")[0] == 503
                else None
            ),
            "readyz to report the dropped table as stale",
        )
        assert body["stale_stores"] == ["imports"]
        ages = body["seconds_since_good_refresh"]
        assert isinstance(ages, dict)
        assert ages["imports"] > 0.3
        assert _get(port, "/livez")[0] == 200
        assert _get(port, "/metrics") == (404, {"status": "not found"})
        assert _get(port, "/readyz?verbose=1")[0] == 503
    finally:
        server.stop()
    assert not port_open(port)


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_start_and_stop_are_idempotent_and_a_taken_port_is_a_config_error(
    monitor: BatchMonitor,
) -> None:
    server = HealthServer(monitor, ("127.0.0.1", 0))
    server.start()
    server.start()
    host, port = server.address
    other = HealthServer(monitor, (host, port))
    with pytest.raises(ConfigError) as caught:
        other.start()
    assert str(caught.value).startswith(
        f"configuration problem: health_address 127.0.0.1:{port}: "
        "cannot listen there ("
    )
    server.stop()
    server.stop()
    assert not port_open(port)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8081", ("127.0.0.1", 8081)),
        ("[::1]:9000", ("::1", 9000)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
        ("", None),
    ],
)
def test_health_address_setting_is_host_and_port(
    value: str, expected: tuple[str, int] | None
) -> None:
    config = parse_config(
        {"database_url": "sqlite://", "table": "b", "health_address": value}
    )
    assert config.health_address == expected


@pytest.mark.parametrize("value", ["8081", "host:0", "host:65536", ":80", 7])
def test_bad_health_address_names_the_setting_and_the_form(
    value: object,
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {
                "database_url": "sqlite://",
                "table": "b",
                "health_address": value,
            }
        )
    assert caught.value.problems == (
        f"health_address: {value!r} is not an address to listen on; write "
        "HOST:PORT with a port from 1 to 65535, like 127.0.0.1:8081",
    )


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_run_serves_health_until_sigterm(db: Database, tmp_path: Path) -> None:
    table = _table(db)
    port = free_port()
    env = clean_env(
        OTEL_BATCHMON_DATABASE_URL=db.url,
        OTEL_BATCHMON_TABLE=table,
        OTEL_BATCHMON_REFRESH_INTERVAL="200ms",
        OTEL_BATCHMON_HEALTH_ADDRESS=f"127.0.0.1:{port}",
        OTEL_METRICS_EXPORTER="none",
        OTEL_TRACES_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
    )
    argv = [sys.executable, "-m", "otel_batchmon", "run"]
    with running("run", argv, env, tmp_path) as child:
        poll(
            lambda: True if port_open(port) else None,
            "the health port",
            alive=child.exited,
        )
        poll(
            lambda: True if _get(port, "/readyz")[0] == 200 else None,
            "ready",
            alive=child.exited,
        )
        code, _seconds = child.terminate(15)
    assert code == 0, child.log()
    assert not port_open(port)


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_run_refuses_a_taken_health_port_with_exit_2(
    db: Database, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = clean_env(
            OTEL_BATCHMON_DATABASE_URL=db.url,
            OTEL_BATCHMON_TABLE=_table(db),
            OTEL_BATCHMON_HEALTH_ADDRESS=f"127.0.0.1:{port}",
            OTEL_METRICS_EXPORTER="none",
        )
        argv = [sys.executable, "-m", "otel_batchmon", "run"]
        with running("run", argv, env, tmp_path) as child:
            code = child.process.wait(30)
    assert code == 2
    errors = [
        line
        for line in child.log().splitlines()
        if line.startswith("otel-batchmon: error:")
    ]
    assert errors == [
        "otel-batchmon: error: configuration problem: health_address "
        f"127.0.0.1:{port}: cannot listen there (Address already in use); "
        "choose a free port or another address"
    ]


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_a_follower_is_ready_and_names_the_store_it_follows(
    db: Database,
) -> None:
    from otel_batchmon.health import readiness

    config = parse_config(
        {
            "database_url": db.url,
            "table": _table(db),
            "name": "imports",
            "refresh_interval": "100ms",
            "stale_after": "300ms",
            "leader_election": True,
        }
    )
    first = BatchMonitor(config, MeterProvider([InMemoryMetricReader()]))
    second = BatchMonitor(config, MeterProvider([InMemoryMetricReader()]))
    first.start()
    second.start()
    try:
        states = poll(
            lambda: _one_ready_leader(readiness(first), readiness(second)),
            "one leader with a fresh refresh",
        )
        assert sorted(s.following for s in states) == [(), ("imports",)]
        assert all(s.ready and s.stale == {} for s in states)
    finally:
        first.stop()
        second.stop()


def _one_ready_leader(*states: Readiness) -> tuple[Readiness, ...] | None:
    leaders = [s for s in states if not s.following]
    return (
        states if len(leaders) == 1 and all(s.ready for s in states) else None
    )

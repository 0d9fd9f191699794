"""An OTLP peer that is not ours: rotel receives and forwards the export.

``otel-batchmon run --once`` exports to a real rotel agent (the Rust
OpenTelemetry collector shipped in the ``rotel`` wheel) listening on
loopback; rotel forwards over OTLP to the test's own receiver, where
every point is compared with an independent reading of the table. This
proves the package's OTLP output survives a third-party pipeline
unchanged: values, units and resource.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, insert

from otel_batchmon.instruments import spec
from otel_batchmon.tables import default_batch_table
from tests._processes import (
    clean_env,
    free_port,
    missing_tool,
    poll,
    port_open,
    running,
)
from tests.otlp_receiver import Received, grpc_receiver, http_receiver
from tests.reference import Expected, expected, generate_rows

ROTEL_PIN = "rotel==0.0.1a15"
SERVICE = "batchmon-via-rotel"
STORE = ("batch.store", "imports")
CANONICAL = {s: s for s in ("pending", "processing", "completed", "failed")}
Receiver = Callable[[], AbstractContextManager[tuple[str, Received]]]
# (the package's OTLP protocol, rotel's exporter protocol, our receiver)
ROUTES: dict[str, tuple[str, str, Receiver]] = {
    "grpc": ("grpc", "grpc", grpc_receiver),
    "http": ("http/protobuf", "http", http_receiver),
}


def rotel_agent() -> Path:
    """The agent binary inside the installed rotel wheel."""
    found = importlib.util.find_spec("rotel")
    locations = found.submodule_search_locations if found else None
    if not locations:
        missing_tool(f"rotel is not installed (pip install '{ROTEL_PIN}')")
    agent = Path(next(iter(locations))) / "rotel-agent"
    if not agent.is_file():
        missing_tool(f"{agent} is missing; reinstall '{ROTEL_PIN}'")
    return agent


@contextmanager
def rotel(
    forward_to: str, protocol: str, workdir: Path
) -> Iterator[tuple[str, str]]:
    """Run rotel on loopback forwarding to ``forward_to``.

    Yields its (gRPC, HTTP) receiver endpoints. Traces and logs
    receivers are off, internal telemetry stays off (its default) and
    the one exporter is OTLP to the given loopback endpoint.
    """
    assert forward_to.startswith("http://127.0.0.1:"), forward_to
    grpc_port, http_port = free_port(), free_port()
    argv = [
        str(rotel_agent()),
        "start",
        f"--otlp-grpc-endpoint=127.0.0.1:{grpc_port}",
        f"--otlp-http-endpoint=127.0.0.1:{http_port}",
        "--otlp-receiver-traces-disabled",
        "--otlp-receiver-logs-disabled",
        f"--pid-file={workdir / 'rotel.pid'}",
        f"--log-file={workdir / 'rotel-daemon.log'}",
        "--exporter=otlp",
        f"--otlp-exporter-endpoint={forward_to}",
        f"--otlp-exporter-protocol={protocol}",
        "--otlp-exporter-retry-max-elapsed-time=10s",
    ]
    with running("rotel", argv, clean_env(), workdir) as child:
        poll(
            lambda: (
                True if port_open(grpc_port) and port_open(http_port) else None
            ),
            "rotel to listen",
            alive=child.exited,
        )
        yield f"http://127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}"
        assert child.exited() is None, "rotel died while forwarding"


def _sqlite_with(path: Path, rows: list[dict[str, Any]]) -> str:
    url = f"sqlite:///{path}"
    engine = create_engine(url)
    table = default_batch_table("batches")
    table.create(engine)
    with engine.begin() as connection:
        connection.execute(insert(table), rows)
    engine.dispose()
    return url


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_run_once_through_rotel_reaches_our_receiver_unchanged(
    tmp_path: Path, route: str
) -> None:
    sdk_protocol, rotel_protocol, receiver = ROUTES[route]
    rows = generate_rows(datetime.now(UTC), count=300, seed=11)
    url = _sqlite_with(tmp_path / "batches.db", rows)
    with (
        receiver() as (receiver_endpoint, received),
        rotel(receiver_endpoint, rotel_protocol, tmp_path) as endpoints,
    ):
        grpc_endpoint, http_endpoint = endpoints
        endpoint = grpc_endpoint if sdk_protocol == "grpc" else http_endpoint
        before = datetime.now(UTC)
        result = subprocess.run(
            [sys.executable, "-m", "otel_batchmon", "run", "--once"],
            env=clean_env(
                OTEL_SERVICE_NAME=SERVICE,
                OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
                OTEL_EXPORTER_OTLP_PROTOCOL=sdk_protocol,
                OTEL_BATCHMON_DATABASE_URL=url,
                OTEL_BATCHMON_TABLE="batches",
                OTEL_BATCHMON_NAME="imports",
            ),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        after = datetime.now(UTC)
        assert result.returncode == 0, result.stderr
        poll(
            lambda: True if "batch.stuck.count" in received.points() else None,
            "rotel to forward the export",
            timeout=20,
        )
    early, late = (expected(rows, t, CANONICAL) for t in (before, after))
    assert early.window_counts == late.window_counts, "rows near an edge"
    assert f"stuck: {late.stuck}" in result.stdout
    _assert_points(received.points(), early, late)
    _assert_units(received.units())
    resource = received.resource_attributes()
    assert resource["service.name"] == SERVICE
    assert resource["telemetry.sdk.language"] == "python"
    assert resource.get("service.instance.id")


def _assert_points(
    points: dict[str, dict[frozenset[tuple[str, Any]], Any]],
    early: Expected,
    late: Expected,
) -> None:
    def one(name: str, **labels: str) -> Any:
        key = frozenset({STORE, *labels.items()})
        return points[name][key]

    for status, count in late.window_counts.items():
        assert one("batch.window.count", **{"batch.status": status}) == count
    for status, count in late.active.items():
        assert one("batch.active.count", **{"batch.status": status}) == count
    for reason, count in late.invalid.items():
        got = one("batchmon.rows.invalid", **{"batchmon.reason": reason})
        assert got == count, reason
    assert sum(late.invalid.values()) > 0, "the rows must include flaws"
    assert one("batch.stuck.count") == late.stuck > 0
    assert one("batch.window.failure_ratio") == pytest.approx(
        late.failure_ratio
    )
    assert one("batch.window.duration.mean") == pytest.approx(
        late.duration_mean
    )
    ages = {
        "batch.processing.oldest_age": "processing_oldest_age",
        "batch.pending.oldest_age": "pending_oldest_age",
        "batch.last_success.age": "last_success_age",
    }
    for name, field in ages.items():
        low, high = getattr(early, field), getattr(late, field)
        assert low - 1 <= one(name) <= high + 1, name
    count, total, bounds = one(
        "batchmon.refresh.duration", **{"batchmon.outcome": "success"}
    )
    assert count == 1
    assert 0 < total < 10
    assert bounds == spec("batchmon.refresh.duration").buckets


def _assert_units(units: dict[str, str]) -> None:
    assert len(units) >= 10, units
    for name, unit in units.items():
        assert unit == spec(name).unit, name
    assert units["batch.window.failure_ratio"] == "1"
    assert units["batch.stuck.count"] == "{batch}"
    assert units["batch.last_success.age"] == "s"

"""The example service, run as its README says, against a real receiver."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests._processes import clean_env, free_port, poll, running
from tests.otlp_receiver import grpc_receiver

pytest.importorskip("opentelemetry.instrumentation")

from tests.test_instrumentor import _opentelemetry_instrument

Points = dict[str, dict[frozenset[tuple[str, Any]], Any]]
EXAMPLE = Path(__file__).parent.parent / "examples" / "import_service.py"
COMPLETED = frozenset(
    {("batch.store", "imports"), ("batch.status", "completed")}
)
FINISHED = frozenset(
    {
        ("batch.store", "imports"),
        ("batch.kind", "import"),
        ("batch.status", "completed"),
        ("batch.source", "worker"),
    }
)


def _post(port: int, records: int) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/imports",
        data=json.dumps({"records": records}).encode(),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 202
        batch_id: str = json.load(response)["id"]
    return batch_id


def _ready(port: int) -> bool | None:
    try:
        url = f"http://127.0.0.1:{port}/readyz"
        with urllib.request.urlopen(url, timeout=2) as response:
            return True if response.status == 200 else None
    except OSError:
        return None


def test_example_service_under_opentelemetry_instrument(
    tmp_path: Path,
) -> None:
    command = _opentelemetry_instrument()
    port = free_port()
    url = f"sqlite:///{tmp_path / 'imports.db'}"
    with grpc_receiver() as (endpoint, received):
        env = clean_env(
            IMPORTS_DATABASE_URL=url,
            OTEL_BATCHMON_DATABASE_URL=url,
            OTEL_BATCHMON_TABLE="batches",
            OTEL_BATCHMON_NAME="imports",
            OTEL_BATCHMON_REFRESH_INTERVAL="200ms",
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            OTEL_METRIC_EXPORT_INTERVAL="200",
            OTEL_SERVICE_NAME="import-service",
            OTEL_TRACES_EXPORTER="none",
            OTEL_LOGS_EXPORTER="none",
        )
        argv = [command, sys.executable, str(EXAMPLE), "--port", str(port)]
        with running("example", argv, env, tmp_path) as service:
            poll(
                lambda: _ready(port),
                "the example to be ready",
                alive=service.exited,
            )
            ids = [_post(port, 100) for _ in range(5)]
            points = poll(
                lambda: _when_done(received.points(), len(ids)),
                "five finished batches at the receiver",
                alive=service.exited,
            )
    assert len(set(ids)) == 5
    assert points["batch.finished"][FINISHED] == 5
    assert points["batch.window.count"][COMPLETED] == 5
    ok = FINISHED - {("batch.status", "completed")} | {
        ("batch.record.outcome", "ok")
    }
    assert points["batch.records"][ok] == 5 * 98


def _when_done(points: Points, wanted: int) -> Points | None:
    done = points.get("batch.finished", {}).get(FINISHED)
    window = points.get("batch.window.count", {}).get(COMPLETED)
    return points if done == wanted and window == wanted else None

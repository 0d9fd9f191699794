"""A small import service: a WSGI app that queues batches, a worker thread
that runs them with ``track_batch``, and otel_batchmon watching the table.

``POST /imports`` (optional JSON body ``{"records": 100}``) queues a batch
and answers 202 with its id; ``GET /readyz`` tells whether the monitor's
last refreshes are fresh. Rows go to the ``batches`` table of
``IMPORTS_DATABASE_URL`` (default ``sqlite:///imports.db``). See
examples/README.md for the commands.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import threading
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from sqlalchemy import create_engine, insert, select, update
from sqlalchemy.engine import Engine

from otel_batchmon import track_batch
from otel_batchmon.health import readiness
from otel_batchmon.instrumentor import BatchmonInstrumentor
from otel_batchmon.tables import default_batch_table

DATABASE_URL = os.environ.get("IMPORTS_DATABASE_URL", "sqlite:///imports.db")
BATCHES = default_batch_table("batches")
StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def _engine() -> Engine:
    engine = create_engine(DATABASE_URL)
    BATCHES.create(engine, checkfirst=True)
    return engine


class Worker:
    """Runs queued batches on one thread per process, started on demand.

    The thread starts at the first request, so each gunicorn worker (a
    forked child) gets its own thread and its own engine.
    """

    def __init__(self) -> None:
        self.queue: queue.Queue[tuple[str, int]] = queue.Queue()
        self._pid = 0
        self._lock = threading.Lock()
        self._engine: Engine | None = None

    def submit(self, records: int) -> str:
        """Insert a pending batch and queue it; return its id."""
        engine = self._ensure_started()
        batch_id = uuid.uuid4().hex
        with engine.begin() as connection:
            connection.execute(
                insert(BATCHES),
                {
                    "id": batch_id,
                    "kind": "import",
                    "status": "pending",
                    "created_at": datetime.now(UTC),
                },
            )
        self.queue.put((batch_id, records))
        return batch_id

    def _ensure_started(self) -> Engine:
        with self._lock:
            if self._pid != os.getpid() or self._engine is None:
                self._pid = os.getpid()
                self._engine = _engine()
                threading.Thread(
                    target=self._run, name="import-worker", daemon=True
                ).start()
            return self._engine

    def _run(self) -> None:
        while True:
            batch_id, records = self.queue.get()
            self._process(batch_id, records)

    def _process(self, batch_id: str, records: int) -> None:
        assert self._engine is not None
        with self._engine.begin() as connection:
            queued = connection.execute(
                select(BATCHES.c.created_at).where(BATCHES.c.id == batch_id)
            ).scalar_one()
            connection.execute(
                update(BATCHES)
                .where(BATCHES.c.id == batch_id)
                .values(status="processing", started_at=datetime.now(UTC))
            )
        failed = records // 50  # a few bad records, for the dashboards
        with track_batch(
            "import", store="imports", batch_id=batch_id, queued_at=queued
        ) as run:
            run.add_records(ok=records - failed, failed=failed)
        with self._engine.begin() as connection:
            connection.execute(
                update(BATCHES)
                .where(BATCHES.c.id == batch_id)
                .values(
                    status="completed",
                    finished_at=datetime.now(UTC),
                    records_total=records,
                    records_failed=failed,
                )
            )


WORKER = Worker()


def app(
    environ: dict[str, Any], start_response: StartResponse
) -> Iterable[bytes]:
    """The WSGI application."""
    method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
    if method == "POST" and path == "/imports":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = json.loads(environ["wsgi.input"].read(length) or b"{}")
        batch_id = WORKER.submit(int(body.get("records", 100)))
        return _json(start_response, "202 Accepted", {"id": batch_id})
    if method == "GET" and path == "/readyz":
        monitor = BatchmonInstrumentor().monitor
        if monitor is None:
            return _json(start_response, "503 Service Unavailable", {})
        state = readiness(monitor)
        status = "200 OK" if state.ready else "503 Service Unavailable"
        return [_respond(start_response, status, state.body())]
    return _json(start_response, "404 Not Found", {"error": "not found"})


def _json(
    start_response: StartResponse, status: str, document: dict[str, str]
) -> list[bytes]:
    return [_respond(start_response, status, json.dumps(document).encode())]


def _respond(start_response: StartResponse, status: str, body: bytes) -> bytes:
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
        ],
    )
    return body


def start_monitoring() -> None:
    """Start otel_batchmon unless opentelemetry-instrument already did."""
    _engine().dispose()  # the table must exist before the first refresh
    instrumentor = BatchmonInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    """Serve the app with the standard library's WSGI server."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    start_monitoring()
    with make_server(
        args.host, args.port, app, handler_class=_QuietHandler
    ) as server:
        print(f"serving on http://{args.host}:{args.port}", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()

"""The whole path on one machine: table -> otel-batchmon -> OTLP -> you.

Creates a SQLite batch table with realistic demo rows, starts a small
OTLP/HTTP receiver on 127.0.0.1 (standing in for a Collector), runs
``otel-batchmon run --once`` exporting to it, and prints what arrived.
Needs only the package itself (``pip install .``):

    python examples/local_end_to_end.py [--keep PATH]

Nothing leaves this machine: the receiver binds 127.0.0.1 on a free port
and the command is pointed at it explicitly.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2

from otel_batchmon.tables import create_demo_database


class _Receiver(BaseHTTPRequestHandler):
    """Accepts OTLP/HTTP protobuf metric exports and keeps them."""

    received: list[Any] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = metrics_service_pb2.ExportMetricsServiceRequest()
        request.ParseFromString(body)
        self.received.append(request)
        reply = metrics_service_pb2.ExportMetricsServiceResponse()
        payload = reply.SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        """Keep the terminal for the results."""


def _points(requests: list[Any]) -> list[str]:
    lines = []
    for request in requests:
        for resource in request.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    kind = metric.WhichOneof("data")
                    for point in getattr(metric, kind).data_points:
                        labels = ",".join(
                            f"{a.key}={a.value.string_value}"
                            for a in point.attributes
                        )
                        if kind == "histogram":
                            value = f"count={point.count} sum={point.sum:g}"
                        else:
                            number = point.WhichOneof("value")
                            value = f"{getattr(point, number):g}"
                        lines.append(f"{metric.name}{{{labels}}} {value}")
    return sorted(lines)


def main() -> int:
    """Run the end-to-end demo; return the command's exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", metavar="PATH", help="SQLite file to keep")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="batchmon-e2e-"))
    database = Path(args.keep) if args.keep else folder / "batches.db"
    url = create_demo_database(database)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("OTEL_")
    } | {
        "OTEL_SERVICE_NAME": "batchmon-local-e2e",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_BATCHMON_DATABASE_URL": url,
        "OTEL_BATCHMON_TABLE": "batches",
        "OTEL_BATCHMON_NAME": "demo",
        "OTEL_BATCHMON_STATE_URL": f"sqlite:///{folder / 'state.db'}",
    }
    print(f"table: {database}; collector stand-in: {endpoint}/v1/metrics")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "otel_batchmon", "run", "--once"],
            env=env,
            timeout=120,
            check=False,
        )
    finally:
        server.shutdown()
        server.server_close()
    print(f"\nreceived over OTLP/HTTP ({len(_Receiver.received)} export):")
    for line in _points(_Receiver.received):
        print(f"  {line}")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())

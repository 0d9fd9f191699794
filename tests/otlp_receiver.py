"""Real OTLP metrics receivers for the tests: gRPC and HTTP/protobuf.

Both bind 127.0.0.1 on a free port, keep every request they decode and
stop when the test ends.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)

Request = metrics_service_pb2.ExportMetricsServiceRequest


class Received:
    """The requests a receiver decoded, and helpers to read them."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.arrived = threading.Event()
        self._lock = threading.Lock()

    def add(self, request: Any) -> None:
        with self._lock:
            self.requests.append(request)
        self.arrived.set()

    def points(self) -> dict[str, dict[frozenset[tuple[str, Any]], Any]]:
        """{metric name: {attributes: value}} over every request."""
        result: dict[str, dict[frozenset[tuple[str, Any]], Any]] = {}
        for request in list(self.requests):
            for resource in request.resource_metrics:
                for scope in resource.scope_metrics:
                    for metric in scope.metrics:
                        series = result.setdefault(metric.name, {})
                        for key, value in _metric_points(metric):
                            series[key] = value
        return result

    def units(self) -> dict[str, str]:
        """{metric name: unit} as received."""
        return {
            metric.name: metric.unit
            for request in self.requests
            for resource in request.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }

    def resource_attributes(self) -> dict[str, Any]:
        """Attributes of the first resource received."""
        resource = self.requests[0].resource_metrics[0].resource
        return {a.key: _any_value(a.value) for a in resource.attributes}


def _metric_points(metric: Any) -> Iterator[tuple[frozenset[Any], Any]]:
    kind = metric.WhichOneof("data")
    container = getattr(metric, kind)
    for point in container.data_points:
        key = frozenset((a.key, _any_value(a.value)) for a in point.attributes)
        if kind == "histogram":
            yield key, (point.count, point.sum, tuple(point.explicit_bounds))
        else:
            number = point.WhichOneof("value")
            yield key, getattr(point, number)


def _any_value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value"))


class _Servicer(metrics_service_pb2_grpc.MetricsServiceServicer):  # type: ignore[misc]
    def __init__(self, received: Received) -> None:
        self.received = received

    def Export(self, request: Any, context: Any) -> Any:
        self.received.add(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


@contextmanager
def grpc_receiver() -> Iterator[tuple[str, Received]]:
    """Yield ("http://127.0.0.1:PORT", received) for an OTLP/gRPC server."""
    received = Received()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
        _Servicer(received), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        server.stop(grace=None)


@contextmanager
def http_receiver() -> Iterator[tuple[str, Received]]:
    """Yield ("http://127.0.0.1:PORT", received) for OTLP/HTTP protobuf."""
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/metrics":
                self.send_response(404)
                self.end_headers()
                return
            request = Request()
            request.ParseFromString(body)
            received.add(request)
            response = metrics_service_pb2.ExportMetricsServiceResponse()
            reply = response.SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()

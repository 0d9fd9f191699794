"""Liveness and readiness over HTTP, for container probes.

``GET /livez`` answers 200 while the process serves at all; ``GET
/readyz`` answers 200 when every store had a good refresh within
``stale_after`` and 503 with a short JSON body naming the stale stores
otherwise. Anything else is 404. The server binds only the address it is
given and runs in its own daemon threads.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import weakref
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

from otel_batchmon.errors import ConfigError

if TYPE_CHECKING:
    from otel_batchmon.monitor import BatchMonitor

__all__ = ["HealthServer", "Readiness", "readiness"]

_log = logging.getLogger(__name__)
# A probe that stops sending must not hold a server thread for long.
_REQUEST_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Readiness:
    """Whether every store is fresh; ``stale`` maps the others to ages.

    ``following`` names the stores another replica leads: this process
    does not read them, so they do not make it unready.
    """

    ready: bool
    stale: dict[str, float] = field(default_factory=dict)
    following: tuple[str, ...] = ()

    def body(self) -> bytes:
        """The JSON document ``/readyz`` answers with."""
        document: dict[str, object] = {
            "status": "ready" if self.ready else "stale"
        }
        if self.stale:
            document["stale_stores"] = sorted(self.stale)
            document["seconds_since_good_refresh"] = self.stale
        if self.following:
            document["following"] = list(self.following)
        return json.dumps(document, sort_keys=True).encode() + b"\n"


def readiness(monitor: BatchMonitor) -> Readiness:
    """Tell whether every store this process leads was read recently."""
    stale_after = monitor.config.stale_after_seconds
    refresher = monitor.refresher
    latest = refresher.latest()
    following = tuple(sorted(n for n in latest if not refresher.leads(n)))
    stale = {
        name: round(age, 3)
        for name, (snapshot, age) in latest.items()
        if name not in following and (snapshot is None or age > stale_after)
    }
    return Readiness(not stale, stale, following)


class HealthServer:
    """Serves ``/livez`` and ``/readyz`` for one monitor.

    >>> server = HealthServer(monitor, ("127.0.0.1", 8081))
    >>> server.start()
    >>> server.stop()

    Port 0 picks a free port; ``address`` then tells which. After
    ``fork`` a child closes its inherited copy of the listening socket:
    only the process that started the server answers probes.
    """

    def __init__(
        self, monitor: BatchMonitor, address: tuple[str, int]
    ) -> None:
        self.monitor = monitor
        self._requested = address
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        _forget_after_fork(self)

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port), or the requested one before start."""
        if self._server is None:
            return self._requested
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Bind and serve in a daemon thread (idempotent)."""
        with self._lock:
            if self._server is not None:
                return
            self._server = self._bind()
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.2},
                name="otel-batchmon-health",
                daemon=True,
            )
            self._thread.start()
        host, port = self.address
        _log.info("health endpoint on http://%s:%d/readyz", host, port)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and close the socket (idempotent)."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server, self._thread = None, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout)

    def _bind(self) -> _Server:
        host, port = self._requested
        try:
            return _Server((host, port), self.monitor)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConfigError(
                [
                    f"health_address {host}:{port}: cannot listen there "
                    f"({reason}); choose a free port or another address"
                ]
            ) from None

    def _after_fork_in_child(self) -> None:
        # The parent keeps serving on this socket; the child must neither
        # answer on it nor keep the parent's serving thread object.
        self._lock = threading.Lock()
        server, self._server, self._thread = self._server, None, None
        if server is not None:
            server.socket.close()


def _forget_after_fork(server: HealthServer) -> None:
    reference = weakref.ref(server)

    def after_in_child() -> None:
        alive = reference()
        if alive is not None:
            alive._after_fork_in_child()

    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=after_in_child)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], monitor: BatchMonitor
    ) -> None:
        self.monitor = monitor
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    timeout = _REQUEST_TIMEOUT_SECONDS
    server_version = "otel-batchmon-health"

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        path = urlsplit(self.path).path
        if path == "/livez":
            self._send(200, b'{"status": "alive"}\n', send_body)
        elif path == "/readyz":
            state = readiness(cast(_Server, self.server).monitor)
            self._send(200 if state.ready else 503, state.body(), send_body)
        else:
            self._send(404, b'{"status": "not found"}\n', send_body)

    def _send(self, status: int, body: bytes, send_body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        _log.debug("health request: " + format, *args)

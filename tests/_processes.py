"""Third-party servers for the end-to-end tests, on loopback only.

Each server runs as a child process bound to 127.0.0.1 on a port picked
free just before, writes its output to a file in the test's temporary
folder and is stopped (SIGTERM, then SIGKILL) when the test ends,
whether it passed or not. Waiting is always polling with a deadline and
a bounded number of tries, never a fixed sleep.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest

_T = TypeVar("_T")
_POLL_SECONDS = 0.1
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing_tool(message: str) -> NoReturn:
    """Fail in CI, skip elsewhere: a green CI run used every tool."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any OTEL_*, ROTEL_* or PG* variable.

    A test must never inherit an exporter endpoint, so everything it
    needs it sets explicitly, always on 127.0.0.1.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "ROTEL_", "PG"))
    }
    env.update(extra)
    return env


def poll(
    probe: Callable[[], _T | None],
    what: str,
    timeout: float = 20.0,
    alive: Callable[[], str | None] | None = None,
) -> _T:
    """Call ``probe`` until it returns something other than None.

    Stops after ``timeout`` seconds (at most ``timeout / 0.1`` tries),
    or as soon as ``alive`` reports a reason the wait is hopeless.
    """
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / _POLL_SECONDS) + 1):
        found = probe()
        if found is not None:
            return found
        reason = alive() if alive is not None else None
        if reason is not None:
            raise AssertionError(f"gave up waiting for {what}: {reason}")
        if time.monotonic() >= deadline:
            break
        time.sleep(_POLL_SECONDS)
    raise AssertionError(f"gave up waiting for {what} after {timeout:g}s")


@dataclass
class Child:
    """A started process and the file its output goes to."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace")

    def exited(self) -> str | None:
        """Why the process is gone, or None while it runs."""
        code = self.process.poll()
        if code is None:
            return None
        return f"{self.name} exited with {code}:\n{self.log()[-3000:]}"

    def terminate(self, timeout: float) -> tuple[int, float]:
        """SIGTERM, wait up to ``timeout``; return (exit code, seconds)."""
        begun = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        return code, time.monotonic() - begun


@contextmanager
def running(
    name: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    workdir: Path,
) -> Iterator[Child]:
    """Run ``argv`` for the duration of the block, then stop it."""
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    child = Child(name, process, log_path)
    try:
        yield child
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def http_ok(url: str) -> bool | None:
    """True when a loopback URL answers 200, None otherwise (still down)."""
    assert url.startswith("http://127.0.0.1:"), url
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return True if response.status == 200 else None
    except OSError:
        return None


def get_json(url: str, params: Mapping[str, str]) -> Any:
    """GET a loopback URL with query parameters and decode its JSON."""
    assert url.startswith("http://127.0.0.1:"), url
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}?{query}", timeout=5) as response:
        return json.load(response)

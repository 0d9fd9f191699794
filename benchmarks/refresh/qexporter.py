"""query-exporter, run for real from its own venv.

Its configuration holds one query per metric (``sql.query_exporter_
queries``) without an interval, so every scrape runs them all. The
exporter binds 127.0.0.1 on a free port; /metrics is scraped a bounded
number of times until every metric shows up, then the process is
stopped. Its database time is measured elsewhere, by EXPLAIN of the same
SQL texts.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from refresh.sql import QE_METRICS, query_exporter_queries

# Its own venv, so its dependencies never meet ours.
QE_VENV = Path(os.environ.get("BATCHMON_BENCH_QE_VENV", "/tmp/qe-venv"))
INSTALL = (
    f"python3 -m venv {QE_VENV} && {QE_VENV}/bin/pip install "
    "query-exporter 'psycopg[binary]' pymysql"
)
_MAX_SCRAPES = 20
_SCRAPE_PAUSE = 0.5


@dataclass(frozen=True)
class ExporterRun:
    """What one real run of query-exporter showed."""

    ok: bool
    detail: str
    version: str = ""
    scrapes: int = 0
    samples: int = 0


def executable() -> Path | None:
    """The query-exporter command of its venv, when installed."""
    command = QE_VENV / "bin" / "query-exporter"
    return command if command.exists() else None


def version() -> str:
    command = executable()
    if command is None:
        return ""
    out = subprocess.run(
        [str(command), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return out.stdout.strip().split()[-1] if out.stdout.strip() else ""


def write_config(path: Path, dsn: str, table: str, dialect: str) -> Path:
    """Write the YAML configuration for one table; return its path."""
    queries = query_exporter_queries(table, dialect)
    config = {
        "databases": {"batches": {"dsn": dsn}},
        "metrics": {
            name: {
                "type": "gauge",
                "description": description,
                **({"labels": labels} if labels else {}),
            }
            for name, (description, labels) in QE_METRICS.items()
        },
        "queries": {
            name: {"databases": ["batches"], "metrics": [name], "sql": sql}
            for name, sql in queries.items()
        },
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False, width=1000))
    return path


def run_once(config: Path, log: Path) -> ExporterRun:
    """Start the exporter, scrape until every metric is there, stop it."""
    command = executable()
    if command is None:
        return ExporterRun(False, f"not installed ({INSTALL})")
    port = _free_port()
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                str(command),
                "--config",
                str(config),
                "-H",
                "127.0.0.1",
                "-p",
                str(port),
                "-L",
                "warning",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            return _scrape(port, process)
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def _scrape(port: int, process: subprocess.Popen[bytes]) -> ExporterRun:
    """Scrape until each query has run successfully (its builtin
    ``queries_total{status="success"}``), or until one failed."""
    url = f"http://127.0.0.1:{port}/metrics"
    wanted = set(QE_METRICS)
    done: set[str] = set()
    for attempt in range(1, _MAX_SCRAPES + 1):
        time.sleep(_SCRAPE_PAUSE)
        if process.poll() is not None:
            return ExporterRun(False, f"exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = response.read().decode()
        except OSError:
            continue
        runs = [ln for ln in body.splitlines() if ln.startswith("queries")]
        failed = {q for q in wanted if _ran(runs, q, "error")}
        if failed:
            return ExporterRun(
                False,
                f"queries failed: {', '.join(sorted(failed))}",
                scrapes=attempt,
            )
        done = {q for q in wanted if _ran(runs, q, "success")}
        if done == wanted:
            samples = sum(
                1
                for line in body.splitlines()
                if line.split("{")[0].split(" ")[0] in wanted
            )
            return ExporterRun(
                True,
                f"all {len(wanted)} queries ran",
                scrapes=attempt,
                samples=samples,
            )
    missing = ", ".join(sorted(wanted - done))
    return ExporterRun(
        False,
        f"not run after {_MAX_SCRAPES} scrapes: {missing}",
        scrapes=_MAX_SCRAPES,
    )


def _ran(lines: list[str], query: str, status: str) -> bool:
    return any(
        f'query="{query}"' in line
        and f'status="{status}"' in line
        and not line.rstrip().endswith(" 0.0")
        for line in lines
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])

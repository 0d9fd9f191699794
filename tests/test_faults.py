"""Faults a running monitor must survive, on the real databases.

Killed sessions, statements slower than the timeout, a table dropped or
renamed under the monitor, missing privileges, a database that appears
only after the daemon started, and a collector that is absent, speaks
another protocol, expects TLS or never answers. Every server, role,
table and process here is the test's own and is removed afterwards.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy import create_engine, event, insert, text
from sqlalchemy.engine import Engine, make_url

from otel_batchmon import BatchMonitor, parse_config
from otel_batchmon.refresher import RefreshOutcome
from otel_batchmon.tables import create_demo_database, default_batch_table
from tests._processes import clean_env, free_port, poll, running
from tests.conftest import Database, open_database
from tests.metrics import Points, collect, value
from tests.otlp_receiver import grpc_receiver, http_receiver

SERVERS = ("postgresql", "mariadb")


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=SERVERS)
def server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Database]:
    """PostgreSQL, then MariaDB (the backends with sessions and users)."""
    database = open_database(request.param, tmp_path)
    yield database
    database.drop_all()


def _rows(count: int = 3) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    rows = []
    for i in range(count):
        started = now - timedelta(hours=1 + i)
        rows.append(
            {
                "id": f"b{i}",
                "status": "processing" if i == 0 else "completed",
                "created_at": started - timedelta(seconds=10),
                "started_at": started,
                "finished_at": (
                    None if i == 0 else started + timedelta(minutes=5)
                ),
            }
        )
    return rows


def _table(db: Database, stem: str = "batches") -> str:
    name = db.table_name(stem)
    table = default_batch_table(name)
    table.create(db.engine)
    with db.engine.begin() as connection:
        connection.execute(insert(table), _rows())
    return name


@dataclass
class Watched:
    """A monitor on an in-memory reader, with every outcome it produced."""

    monitor: BatchMonitor
    reader: InMemoryMetricReader
    outcomes: list[RefreshOutcome] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)
    sessions: dict[str, list[int]] = field(default_factory=dict)
    on_failure: Callable[[RefreshOutcome], None] | None = None

    def of(self, store: str) -> list[RefreshOutcome]:
        with self.arrived:
            return [o for o in self.outcomes if o.store == store]

    def wait_for(
        self,
        what: str,
        ready: Callable[[list[RefreshOutcome]], bool],
        timeout: float = 15.0,
    ) -> list[RefreshOutcome]:
        """Wait (with a deadline) until the outcomes satisfy ``ready``."""
        with self.arrived:
            if not self.arrived.wait_for(
                lambda: ready(self.outcomes), timeout
            ):
                raise AssertionError(
                    f"gave up waiting for {what} after {timeout:g}s: "
                    f"{self.outcomes}"
                )
            return list(self.outcomes)

    def engine(self, store: str) -> Engine:
        return self.monitor.refresher._states[store].engine


def _watch(
    stores: dict[str, dict[str, Any]],
    clock: FakeClock | None = None,
    **settings: Any,
) -> Watched:
    reader = InMemoryMetricReader()
    config = parse_config(
        {"stores": stores, "events": False, "leader_election": False}
        | settings
    )
    monitor = BatchMonitor(
        config, MeterProvider(metric_readers=[reader]), clock or time.monotonic
    )
    watched = Watched(monitor, reader)
    original = monitor._record

    def observe(outcome: RefreshOutcome) -> None:
        original(outcome)
        if outcome.failure is not None and watched.on_failure is not None:
            watched.on_failure(outcome)
        with watched.arrived:
            watched.outcomes.append(outcome)
            watched.arrived.notify_all()

    monitor.refresher._on_outcome = observe
    for name in stores:
        _record_sessions(watched, name)
    return watched


def _record_sessions(watched: Watched, store: str) -> None:
    # The server's id of every session the store's own engine opens,
    # read from the driver (no query, so no transaction is left open).
    ids = watched.sessions.setdefault(store, [])

    @event.listens_for(watched.engine(store), "connect")
    def remember(dbapi_connection: Any, _record: Any) -> None:
        info: Any = getattr(dbapi_connection, "info", None)
        if hasattr(info, "backend_pid"):  # psycopg 3
            ids.append(int(info.backend_pid))
        elif hasattr(dbapi_connection, "thread_id"):  # PyMySQL
            ids.append(int(dbapi_connection.thread_id()))


@contextmanager
def _running(watched: Watched) -> Iterator[Watched]:
    watched.monitor.start()
    try:
        yield watched
    finally:
        watched.monitor.stop(10)


def _errors(points: Points, store: str) -> dict[str, int]:
    """batchmon.refresh.errors of one store, by error.type."""
    result = {}
    for key, count in points.get("batchmon.refresh.errors", {}).items():
        attributes = dict(key)
        if attributes["batch.store"] == store:
            result[str(attributes["error.type"])] = int(count)
    return result


def _window_counts(points: Points, store: str) -> dict[str, int]:
    result = {}
    for key, count in points.get("batch.window.count", {}).items():
        attributes = dict(key)
        if attributes["batch.store"] == store:
            result[str(attributes["batch.status"])] = int(count)
    return result


EXPECTED_COUNTS = {
    "pending": 0,
    "processing": 1,
    "completed": 2,
    "failed": 0,
    "other": 0,
}


# 1. A session killed between refreshes --------------------------------


def _kill_session(db: Database, session: int) -> None:
    with db.engine.begin() as connection:
        if db.backend == "postgresql":
            connection.execute(
                text("SELECT pg_terminate_backend(:pid)"), {"pid": session}
            )
        else:
            connection.execute(text(f"KILL CONNECTION {int(session)}"))


def _session_exists(db: Database, session: int) -> bool:
    if db.backend == "postgresql":
        query = "SELECT 1 FROM pg_stat_activity WHERE pid = :id"
    else:
        query = "SELECT 1 FROM information_schema.PROCESSLIST WHERE ID = :id"
    with db.engine.connect() as connection:
        return (
            connection.execute(text(query), {"id": session}).first()
            is not None
        )


def test_session_killed_between_refreshes_reconnects_without_restart(
    server: Database,
) -> None:
    name = _table(server)
    watched = _watch(
        {name: {"database_url": server.url, "table": name}},
        refresh_interval="1s",
    )
    with _running(watched):
        watched.wait_for("a first good refresh", lambda o: len(o) >= 1)
        assert watched.outcomes[0].ok, watched.outcomes
        [first_session] = watched.sessions[name]
        # The refresher now idles for a second: the kill lands between
        # refreshes, on the idle pooled connection.
        _kill_session(server, first_session)
        poll(
            lambda: None if _session_exists(server, first_session) else True,
            "the killed session to disappear",
            timeout=10,
        )
        outcomes = watched.wait_for(
            "a good refresh after the kill",
            lambda o: any(x.ok for x in o[1:]) or len(o) >= 3,
        )
        points = collect(watched.reader)
    after_kill = outcomes[1:]
    failures = [o for o in after_kill if not o.ok]
    assert len(failures) <= 1, failures
    assert after_kill[len(failures)].ok, after_kill
    sessions = watched.sessions[name]
    assert sessions[0] == first_session
    assert len(sessions) == 2, sessions  # exactly one new session
    assert sum(_errors(points, name).values()) == len(failures)
    assert _window_counts(points, name) == EXPECTED_COUNTS


# 2. A statement slower than the statement timeout ---------------------

_SLOW_VIEW = {
    # One sleep far longer than the timeout, at the database.
    "postgresql": "CREATE VIEW {view} AS SELECT b.* FROM {base} b "
    "CROSS JOIN (SELECT pg_sleep(30)) AS s",
    "mariadb": "CREATE VIEW {view} AS SELECT b.* FROM {base} b "
    "WHERE SLEEP(30) = 0",
    # Counting a billion rows of a recursive CTE takes minutes.
    "sqlite": "CREATE VIEW {view} AS SELECT b.* FROM {base} b WHERE ("
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
    "WHERE x < 1000000000) SELECT count(*) FROM c) > 0",
}


@contextmanager
def _view(db: Database, base: str, sql: str) -> Iterator[str]:
    """A view over ``base``, dropped before the fixture drops the table."""
    view = f"slow_{uuid.uuid4().hex[:10]}"
    with db.engine.begin() as connection:
        connection.execute(text(sql.format(view=view, base=base)))
    try:
        yield view
    finally:
        with db.engine.begin() as connection:
            connection.execute(text(f"DROP VIEW IF EXISTS {view}"))


def _replace_view(db: Database, view: str, base: str) -> None:
    plain = f"CREATE VIEW {view} AS SELECT b.* FROM {base} b"
    with db.engine.begin() as connection:
        if db.backend == "sqlite":
            connection.execute(text(f"DROP VIEW {view}"))
            connection.execute(text(plain))
        else:
            connection.execute(
                text(plain.replace("CREATE", "CREATE OR REPLACE", 1))
            )


def _session_busy(db: Database, session: int) -> str | None:
    """What the server still runs for a session, None when it idles."""
    with db.engine.connect() as connection:
        if db.backend == "postgresql":
            row = connection.execute(
                text(
                    "SELECT state, query FROM pg_stat_activity WHERE pid = :id"
                ),
                {"id": session},
            ).one()
            return None if row.state == "idle" else f"{row.state}: {row.query}"
        row = connection.execute(
            text(
                "SELECT COMMAND, INFO FROM information_schema.PROCESSLIST "
                "WHERE ID = :id"
            ),
            {"id": session},
        ).one()
        return None if row.INFO is None else f"{row.COMMAND}: {row.INFO}"


def test_statement_slower_than_timeout_is_cancelled_and_others_go_on(
    db: Database,
) -> None:
    base = _table(db)
    fast = _table(db, "fast")
    timeout = 0.2
    with _view(db, base, _SLOW_VIEW[db.backend]) as view:
        watched = _watch(
            {
                "slow": {"database_url": db.url, "table": view},
                "fast": {"database_url": db.url, "table": fast},
            },
            refresh_interval="400ms",
            statement_timeout=f"{int(timeout * 1000)}ms",
        )
        busy: list[str | None] = []
        if db.backend != "sqlite":
            # Right after each failed refresh, ask the server whether the
            # monitor's session still runs the statement.
            watched.on_failure = lambda outcome: busy.append(
                _session_busy(db, watched.sessions["slow"][-1])
            )
        with _running(watched):
            watched.wait_for(
                "two timed-out refreshes of the slow store",
                lambda o: sum(x.store == "slow" for x in o) >= 2,
            )
            # Two failures: the next attempt is two intervals away.
            _replace_view(db, view, base)
            watched.wait_for(
                "the slow store's recovery",
                lambda o: any(x.store == "slow" and x.ok for x in o),
            )
            points = collect(watched.reader)
    slow = watched.of("slow")
    failed = [o for o in slow if not o.ok]
    assert len(failed) == 2, slow
    assert slow[2].ok, slow
    for outcome in failed:
        assert outcome.failure is not None
        assert outcome.failure.error_type == "timeout", outcome.failure
        # Cancelled by the database (or SQLite's interrupt), not waited out.
        assert outcome.seconds < timeout + 1.0, outcome
    assert busy == ([] if db.backend == "sqlite" else [None, None])
    # The fast store refreshed every interval while the slow one failed.
    fast_outcomes = watched.of("fast")
    assert all(o.ok for o in fast_outcomes), fast_outcomes
    assert len(fast_outcomes) >= 3, fast_outcomes
    assert _errors(points, "slow") == {"timeout": 2}
    assert _errors(points, "fast") == {}
    assert _window_counts(points, "slow") == EXPECTED_COUNTS
    assert _window_counts(points, "fast") == EXPECTED_COUNTS


# 3. The table dropped or renamed under a running monitor ----------------


def _take_away(db: Database, name: str, how: str) -> Callable[[], None]:
    """Drop or rename the table; return what puts it back."""
    aside = f"{name}_aside"
    db.created.append(aside)  # dropped at teardown should the test fail
    with db.engine.begin() as connection:
        if how == "renamed":
            connection.execute(text(f"ALTER TABLE {name} RENAME TO {aside}"))
        else:
            connection.execute(text(f"DROP TABLE {name}"))

    def restore() -> None:
        if how == "renamed":
            with db.engine.begin() as connection:
                connection.execute(
                    text(f"ALTER TABLE {aside} RENAME TO {name}")
                )
            return
        table = default_batch_table(name)
        table.create(db.engine)
        with db.engine.begin() as connection:
            connection.execute(insert(table), _rows())

    return restore


@pytest.mark.parametrize("how", ["dropped", "renamed"])
def test_table_gone_counts_schema_errors_goes_stale_and_recovers(
    db: Database, how: str
) -> None:
    name = _table(db)
    clock = FakeClock()
    interval = 0.3
    watched = _watch(
        {name: {"database_url": db.url, "table": name}},
        clock,
        refresh_interval=f"{int(interval * 1000)}ms",
        stale_after="3s",
    )
    with _running(watched):
        watched.wait_for("a first good refresh", lambda o: len(o) >= 1)
        restore = _take_away(db, name, how)
        watched.wait_for("two failed refreshes", lambda o: len(o) >= 3)
        # After two failures the next attempt is two intervals away.
        restored_at = time.monotonic()
        restore()
        fresh = collect(watched.reader)
        clock.now += 3.5  # past stale_after since the last good refresh
        stale = collect(watched.reader)
        watched.wait_for("a good refresh", lambda o: len(o) >= 4)
        recovered_after = time.monotonic() - restored_at
        recovered = collect(watched.reader)
    first, *failed, last = watched.of(name)
    assert first.ok
    assert [o.failure.error_type for o in failed if o.failure] == [
        "schema",
        "schema",
    ]
    assert last.ok, last
    assert recovered_after < 2 * interval + 0.5
    assert _window_counts(fresh, name) == EXPECTED_COUNTS
    assert "batch.window.count" not in stale
    assert "batch.stuck.count" not in stale
    assert value(stale, "batchmon.snapshot.age", batch__store=name) == 3.5
    assert _errors(stale, name) == {"schema": 2}
    assert _window_counts(recovered, name) == EXPECTED_COUNTS
    assert value(recovered, "batchmon.snapshot.age", batch__store=name) == 0
    assert _errors(recovered, name) == {"schema": 2}


# 4. An account without the privileges it needs --------------------------


@dataclass
class Account:
    """A login of the test's own on the shared server, without grants."""

    name: str
    url: str
    grant_select: Callable[[str], None]


@pytest.fixture
def bare_account(server: Database) -> Iterator[Account]:
    """A PostgreSQL role or MariaDB user that may log in and do no more."""
    role = f"brk_{uuid.uuid4().hex[:10]}"
    url = make_url(server.url).set(username=role, password=None)
    database = url.database
    if server.backend == "postgresql":
        create = f"CREATE ROLE {role} LOGIN"
        grant = "GRANT SELECT ON {table} TO " + role
        drops = [
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE usename = '{role}'",
            f"DROP OWNED BY {role}",
            f"DROP ROLE IF EXISTS {role}",
        ]
    else:
        create = f"CREATE USER '{role}'@'%'"
        grant = f"GRANT SELECT ON {database}.{{table}} TO '{role}'@'%'"
        drops = [f"DROP USER IF EXISTS '{role}'@'%'"]
    with server.engine.begin() as connection:
        connection.execute(text(create))

    def grant_select(table: str) -> None:
        with server.engine.begin() as connection:
            connection.execute(text(grant.format(table=table)))

    try:
        yield Account(
            role, url.render_as_string(hide_password=False), grant_select
        )
    finally:
        with server.engine.begin() as connection:
            for statement in drops:
                connection.execute(text(statement))


def test_account_without_select_is_one_permission_error_then_reads(
    server: Database,
    bare_account: Account,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = _table(server)
    watched = _watch(
        {name: {"database_url": bare_account.url, "table": name}},
        refresh_interval="300ms",
        events=True,
        state_table_prefix=f"brk_{uuid.uuid4().hex[:8]}_",
    )
    with (
        caplog.at_level(logging.INFO, logger="otel_batchmon"),
        _running(watched),
    ):
        watched.wait_for("two failed refreshes", lambda o: len(o) >= 2)
        thread = watched.monitor.refresher._thread
        assert thread is not None
        assert thread.is_alive()
        # SELECT but no write: the gauges work, the state path turns off.
        bare_account.grant_select(name)
        watched.wait_for(
            "two good refreshes",
            lambda o: sum(x.ok for x in o) >= 2,
        )
        points = collect(watched.reader)
    outcomes = watched.of(name)
    failed = [o.failure for o in outcomes if o.failure is not None]
    assert len(failed) >= 2
    assert {f.error_type for f in failed} == {"permission"}
    assert all(outcome.ok for outcome in outcomes[len(failed) :]), outcomes
    if server.backend == "postgresql":
        clear = f"permission denied for table {name}"
    else:
        clear = f"Access denied for user '{bare_account.name}'"
    assert clear in failed[0].message, failed[0]
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
    ]
    refresh_warnings = [w for w in warnings if "refresh failed" in w]
    assert len(refresh_warnings) == 1, warnings
    assert "(permission)" in refresh_warnings[0]
    state_warnings = [w for w in warnings if "are off" in w]
    assert len(state_warnings) == 1, warnings
    assert len(warnings) == 2, warnings
    recovered = [
        r.getMessage() for r in caplog.records if "recovered" in r.getMessage()
    ]
    assert len(recovered) == 1, recovered
    assert _errors(points, name) == {"permission": len(failed)}
    assert _window_counts(points, name) == EXPECTED_COUNTS
    assert value(points, "batch.stuck.count", batch__store=name) == 0
    assert "batch.finished" not in points


# 5. A database that appears only after the daemon started ---------------


def _count_lines(log: str, needle: str) -> int:
    return sum(needle in line for line in log.splitlines())


def test_daemon_started_before_its_database_exists_recovers_in_place(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "not-yet"
    database = folder / "batches.db"
    config = tmp_path / "batchmon.toml"
    config.write_text(
        f'refresh_interval = "200ms"\nshutdown_timeout = "2s"\n'
        f"[stores.late]\n"
        f'database_url = "sqlite:///{database}"\ntable = "batches"\n'
    )
    with grpc_receiver() as (endpoint, received):
        env = clean_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            OTEL_METRIC_EXPORT_INTERVAL="300",
        )
        argv = [sys.executable, "-m", "otel_batchmon", "run", "--config"]
        with running("batchmon", [*argv, str(config)], env, tmp_path) as child:
            poll(
                lambda: _count_lines(child.log(), "refresh failed") or None,
                "the first refresh failure",
                alive=child.exited,
            )
            poll(
                lambda: (
                    _errors(received.points(), "late").get("connection", 0)
                    >= 2
                    or None
                ),
                "two connection errors counted at the collector",
                alive=child.exited,
            )
            # The folder appears at once, with the table already in it: a
            # half-made database would be a second, different failure.
            staging = tmp_path / "staging"
            staging.mkdir()
            engine = create_engine(f"sqlite:///{staging / database.name}")
            table = default_batch_table("batches")
            table.create(engine)
            with engine.begin() as connection:
                connection.execute(insert(table), _rows())
            engine.dispose()
            staging.rename(folder)
            poll(
                lambda: _window_counts(received.points(), "late") or None,
                "gauges at the collector after the database appeared",
                alive=child.exited,
            )
            code, _took = child.terminate(10)
            log = child.log()
    assert code == 0, log
    assert "Traceback" not in log
    assert _count_lines(log, "refresh failed") == 1, log
    assert _count_lines(log, "(connection)") == 1, log
    assert _count_lines(log, "refresh recovered after") == 1, log
    assert _window_counts(received.points(), "late") == EXPECTED_COUNTS


# 6. Collector faults for `run --once` ------------------------------------

EXPORT_TIMEOUT = 1.0
_CLI = (sys.executable, "-m", "otel_batchmon")


@contextmanager
def _silent_server() -> Iterator[tuple[int, list[socket.socket]]]:
    """A TCP server on 127.0.0.1 that accepts and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], accepted
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for connection in accepted:
            connection.close()


def _run_once(
    config: Path, workdir: Path, **env: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    begun = time.monotonic()
    result = subprocess.run(
        [*_CLI, "run", "--once", "--config", str(config)],
        env=clean_env(**env),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result, time.monotonic() - begun


@pytest.fixture(scope="module")
def demo_config(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, float]:
    """A SQLite demo store, and how long `run --once` takes without export."""
    folder = tmp_path_factory.mktemp("collector-faults")
    url = create_demo_database(folder / "demo.db")
    config = folder / "batchmon.toml"
    config.write_text(f'database_url = "{url}"\ntable = "batches"\n')
    result, took = _run_once(config, folder, OTEL_METRICS_EXPORTER="none")
    assert result.returncode == 0, result.stderr
    return config, took


@contextmanager
def _collector(kind: str) -> Iterator[tuple[str, str, str]]:
    """(endpoint, protocol, what the error line must name) for a fault."""
    if kind == "nothing listening grpc":
        port = free_port()
        yield f"http://127.0.0.1:{port}", "grpc", f"127.0.0.1:{port}"
    elif kind == "nothing listening http":
        port = free_port()
        yield (
            f"http://127.0.0.1:{port}",
            "http/protobuf",
            f"127.0.0.1:{port}/v1/metrics",
        )
    elif kind == "grpc exporter to http receiver":
        with http_receiver() as (endpoint, _received):
            yield endpoint, "grpc", endpoint
    elif kind == "http exporter to grpc receiver":
        with grpc_receiver() as (endpoint, _received):
            yield endpoint, "http/protobuf", f"{endpoint}/v1/metrics"
    elif kind == "tls against plaintext grpc":
        with grpc_receiver() as (endpoint, _received):
            bare = endpoint.removeprefix("http://")
            yield bare, "grpc", f"{bare} (no http:// scheme, so TLS)"
    elif kind in ("silent server grpc", "silent server http"):
        protocol = "grpc" if kind.endswith("grpc") else "http/protobuf"
        with _silent_server() as (port, _accepted):
            endpoint = f"http://127.0.0.1:{port}"
            yield endpoint, protocol, f"127.0.0.1:{port}"
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "nothing listening grpc",
        "nothing listening http",
        "grpc exporter to http receiver",
        "http exporter to grpc receiver",
        "tls against plaintext grpc",
        "silent server grpc",
        "silent server http",
    ],
)
def test_run_once_collector_fault_is_one_line_within_the_timeout(
    demo_config: tuple[Path, float], kind: str
) -> None:
    config, baseline = demo_config
    with _collector(kind) as (endpoint, protocol, named):
        result, took = _run_once(
            config,
            config.parent,
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
            OTEL_EXPORTER_OTLP_TIMEOUT=f"{EXPORT_TIMEOUT:g}",
        )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("otel-batchmon: error: could not export")
    assert f"OTLP {protocol} endpoint" in lines[0]
    assert named in lines[0]
    assert took < baseline + EXPORT_TIMEOUT + 1.5


# 7. SIGTERM / SIGINT while the collector never answers -------------------


@pytest.mark.parametrize(
    ("signum", "protocol"),
    [
        (signal.SIGTERM, "grpc"),
        (signal.SIGINT, "grpc"),
        (signal.SIGTERM, "http/protobuf"),
    ],
    ids=["SIGTERM-grpc", "SIGINT-grpc", "SIGTERM-http"],
)
def test_signal_stops_daemon_within_shutdown_timeout_despite_silent_collector(
    demo_config: tuple[Path, float], signum: int, protocol: str
) -> None:
    config, _baseline = demo_config
    shutdown_timeout = 1.0
    with _silent_server() as (port, accepted):
        env = clean_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
            OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
            # Each export would hang far longer than the shutdown budget.
            OTEL_EXPORTER_OTLP_TIMEOUT="30",
            OTEL_METRIC_EXPORT_INTERVAL="200",
            OTEL_BATCHMON_REFRESH_INTERVAL="200ms",
            OTEL_BATCHMON_SHUTDOWN_TIMEOUT=f"{shutdown_timeout:g}s",
        )
        argv = [sys.executable, "-m", "otel_batchmon", "run", "--config"]
        with running(
            "batchmon", [*argv, str(config)], env, config.parent
        ) as child:
            poll(
                lambda: _count_lines(child.log(), "monitoring") or None,
                "the daemon to start",
                alive=child.exited,
            )
            poll(
                lambda: len(accepted) or None,
                "an export hanging on the silent collector",
                alive=child.exited,
            )
            begun = time.monotonic()
            child.process.send_signal(signum)
            code = child.process.wait(shutdown_timeout + 10)
            took = time.monotonic() - begun
            log = child.log()
    assert code == 0, log
    assert took < shutdown_timeout + 1.0, log
    assert "Traceback" not in log

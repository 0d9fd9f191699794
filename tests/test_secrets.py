"""Secrets never reach the output: every command, every failure we reach.

A database password (in a URL from the environment, in a TOML file and
as a URL query option), an OTLP header token and credentials in an
endpoint URL are set; every command runs against a database that is
down, refuses the login, lacks privileges or works, and a collector that
is down; everything the process printed is scanned for the secrets.
The roles, users and tables are the test's own and dropped afterwards.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import insert, text
from sqlalchemy.engine import make_url

from otel_batchmon.tables import default_batch_table
from tests._processes import clean_env, free_port, poll, running
from tests.conftest import open_database


def _secret(stem: str) -> str:
    return f"{stem}{uuid.uuid4().hex[:12]}"


DB_PASSWORD = _secret("dbpw")
TOML_PASSWORD = _secret("tomlpw")
QUERY_PASSWORD = _secret("querypw")
STATE_PASSWORD = _secret("statepw")
RIGHT_MARIADB_PASSWORD = _secret("mariapw")
TOKEN = _secret("token")
ENDPOINT_PASSWORD = _secret("endpointpw")
SECRETS = (
    DB_PASSWORD,
    TOML_PASSWORD,
    QUERY_PASSWORD,
    STATE_PASSWORD,
    RIGHT_MARIADB_PASSWORD,
    TOKEN,
    ENDPOINT_PASSWORD,
)
_CLI = (sys.executable, "-m", "otel_batchmon")


def leaked(output: str) -> list[str]:
    """The secrets (raw or URL-encoded) that appear in ``output``."""
    return [
        s
        for s in SECRETS
        if s in output or quote(s, safe="") in output or s.upper() in output
    ]


@dataclass(frozen=True)
class Setup:
    """Accounts, tables and URLs the cases run against."""

    folder: Path
    closed_port: int
    pg_down: str
    pg_no_grants: str
    pg_granted: str
    mariadb_wrong_password: str
    mariadb_granted: str
    table: str
    toml_down: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """A PG role and a MariaDB user with a password, and a table each."""
    folder = tmp_path_factory.mktemp("secrets")
    postgres = open_database("postgresql", folder)
    mariadb = open_database("mariadb", folder)
    role = f"brk_{uuid.uuid4().hex[:10]}"
    bare = f"brk_{uuid.uuid4().hex[:10]}"
    table = postgres.table_name()
    mariadb.created.append(table)
    for database in (postgres, mariadb):
        default_batch_table(table).create(database.engine)
        with database.engine.begin() as connection:
            connection.execute(
                insert(default_batch_table(table)),
                [{"id": "b1", "status": "processing"}],
            )
    with postgres.engine.begin() as connection:
        # Trust authentication ignores the password, so the URL carrying
        # it still logs in: the success paths see the secret too.
        connection.execute(text(f"CREATE ROLE {role} LOGIN"))
        connection.execute(text(f"CREATE ROLE {bare} LOGIN"))
        connection.execute(text(f"GRANT SELECT ON {table} TO {role}"))
    maria_db = make_url(mariadb.url).database
    with mariadb.engine.begin() as connection:
        connection.execute(
            text(f"CREATE USER '{role}'@'%' IDENTIFIED BY :pw"),
            {"pw": RIGHT_MARIADB_PASSWORD},
        )
        connection.execute(
            text(f"GRANT SELECT ON {maria_db}.{table} TO '{role}'@'%'")
        )
    closed = free_port()
    pg = make_url(postgres.url)
    maria = make_url(mariadb.url)

    def render(url: object) -> str:
        return url.render_as_string(hide_password=False)  # type: ignore[attr-defined]

    toml_down = folder / "down.toml"
    toml_down.write_text(
        f'state_url = "postgresql+psycopg://{role}:{STATE_PASSWORD}'
        f'@127.0.0.1:{closed}/test"\n'
        "[stores.main]\n"
        f'database_url = "postgresql+psycopg://{role}:{TOML_PASSWORD}'
        f'@127.0.0.1:{closed}/test"\n'
        f'table = "{table}"\n'
    )
    try:
        yield Setup(
            folder=folder,
            closed_port=closed,
            pg_down=render(
                pg.set(username=role, password=DB_PASSWORD, port=closed)
            ),
            pg_no_grants=render(pg.set(username=bare, password=DB_PASSWORD)),
            pg_granted=render(pg.set(username=role, password=DB_PASSWORD)),
            mariadb_wrong_password=render(
                maria.set(username=role, password=DB_PASSWORD)
            ),
            mariadb_granted=render(
                maria.set(username=role, password=RIGHT_MARIADB_PASSWORD)
            ),
            table=table,
            toml_down=toml_down,
        )
    finally:
        with postgres.engine.begin() as connection:
            for name in (role, bare):
                connection.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM "
                        "pg_stat_activity WHERE usename = :name"
                    ),
                    {"name": name},
                )
                connection.execute(text(f"DROP OWNED BY {name}"))
                connection.execute(text(f"DROP ROLE IF EXISTS {name}"))
        with mariadb.engine.begin() as connection:
            connection.execute(text(f"DROP USER IF EXISTS '{role}'@'%'"))
        postgres.drop_all()
        mariadb.drop_all()


@dataclass(frozen=True)
class Case:
    """One command on one failure path, and the exit code it must give."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    code: int


def _env(setup: Setup, url: str | None = None, **extra: str) -> dict[str, str]:
    """The token is always set; the collector is always down."""
    env = clean_env(
        OTEL_EXPORTER_OTLP_HEADERS=f"authorization=Bearer {TOKEN}",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{setup.closed_port}",
        OTEL_EXPORTER_OTLP_TIMEOUT="1",
        OTEL_BATCHMON_CONNECT_TIMEOUT="2s",
    )
    if url is not None:
        env["OTEL_BATCHMON_DATABASE_URL"] = url
        env["OTEL_BATCHMON_TABLE"] = setup.table
    env.update(extra)
    return env


def _cases(s: Setup) -> dict[str, Case]:
    toml = ("--config", str(s.toml_down))
    endpoint = f"http://monitor:{ENDPOINT_PASSWORD}@127.0.0.1:{s.closed_port}"
    # run --once reports a failed export before a failed refresh, so the
    # database paths export nothing to reach their own error line.
    quiet = {"OTEL_METRICS_EXPORTER": "none"}
    cases = {
        "run-once db down": Case(
            ("run", "--once"), _env(s, s.pg_down, **quiet), 3
        ),
        "run-once db down and collector down": Case(
            ("run", "--once"), _env(s, s.pg_down), 3
        ),
        "run-once db down from toml": Case(
            ("run", "--once", *toml), _env(s, **quiet), 3
        ),
        "run-once password as query option": Case(
            ("run", "--once"),
            _env(
                s,
                f"postgresql+psycopg://monitor@127.0.0.1:{s.closed_port}"
                f"/test?password={QUERY_PASSWORD}",
                **quiet,
            ),
            3,
        ),
        "run-once login refused": Case(
            ("run", "--once"), _env(s, s.mariadb_wrong_password, **quiet), 3
        ),
        "run-once no select grant": Case(
            ("run", "--once"), _env(s, s.pg_no_grants, **quiet), 3
        ),
        "run-once collector down": Case(
            ("run", "--once"), _env(s, s.pg_granted), 1
        ),
        "run-once collector down mariadb": Case(
            ("run", "--once"), _env(s, s.mariadb_granted), 1
        ),
        "run-once credentials in endpoint": Case(
            ("run", "--once"),
            _env(s, s.pg_granted, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint),
            2,
        ),
        "run-once malformed header": Case(
            ("run", "--once"),
            _env(
                s,
                s.pg_granted,
                OTEL_EXPORTER_OTLP_HEADERS=f"Authorization: Bearer {TOKEN}",
            ),
            2,
        ),
        "run-once unknown dialect": Case(
            ("run", "--once"),
            _env(s, f"postgres://monitor:{DB_PASSWORD}@127.0.0.1/test"),
            2,
        ),
        "run-once bad port": Case(
            ("run", "--once"),
            _env(s, f"postgresql+psycopg://m:{DB_PASSWORD}@127.0.0.1:x/t"),
            2,
        ),
        "check db down": Case(("check",), _env(s, s.pg_down), 3),
        "check db down from toml": Case(("check", *toml), _env(s), 3),
        "check login refused": Case(
            ("check",), _env(s, s.mariadb_wrong_password), 3
        ),
        "check no select grant": Case(("check",), _env(s, s.pg_no_grants), 3),
        "check works": Case(("check",), _env(s, s.pg_granted), 0),
        "init-db db down": Case(("init-db",), _env(s, s.pg_down), 3),
        "init-db from toml": Case(("init-db", *toml), _env(s), 3),
        "init-db no create grant": Case(
            ("init-db",),
            _env(
                s,
                s.pg_no_grants,
                OTEL_BATCHMON_TABLE=f"brk_never_{uuid.uuid4().hex[:8]}",
            ),
            3,
        ),
        "stuck list db down": Case(("stuck", "list"), _env(s, s.pg_down), 3),
        "stuck list login refused": Case(
            ("stuck", "list"), _env(s, s.mariadb_wrong_password), 3
        ),
        "stuck list no select grant": Case(
            ("stuck", "list"), _env(s, s.pg_no_grants), 3
        ),
        "stuck list works": Case(("stuck", "list"), _env(s, s.pg_granted), 0),
        "stuck resolve db down": Case(
            ("stuck", "resolve", "b1", "--dry-run"), _env(s, s.pg_down), 3
        ),
    }
    # With --debug too (tracebacks, debug logs), one path per command.
    for name in DEBUG_TOO:
        case = cases[name]
        cases[f"{name} --debug"] = Case(
            (*case.argv, "--debug"), case.env, case.code
        )
    return cases


DEBUG_TOO = (
    "run-once db down",
    "run-once db down from toml",
    "run-once login refused",
    "run-once collector down",
    "run-once malformed header",
    "run-once unknown dialect",
    "check no select grant",
    "check login refused",
    "init-db db down",
    "stuck list login refused",
)


@dataclass(frozen=True)
class Ran:
    code: int
    output: str


@pytest.fixture(scope="module")
def ran(setup: Setup) -> dict[str, Ran]:
    """Every case, four at a time (nothing here depends on timing)."""
    cases = _cases(setup)

    def run(case: Case) -> Ran:
        result = subprocess.run(
            [*_CLI, *case.argv],
            env=dict(case.env),
            cwd=setup.folder,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return Ran(result.returncode, result.stdout + result.stderr)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(run, cases.values())
        return dict(zip(cases, results, strict=True))


CASE_NAMES = sorted(
    _cases(Setup(Path("."), 1, "", "", "", "", "", "t", Path("x")))
)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_command_output_holds_no_secret(
    setup: Setup, ran: dict[str, Ran], name: str
) -> None:
    expected = _cases(setup)[name].code
    result = ran[name]
    assert leaked(result.output) == [], result.output
    assert result.code == expected, result.output
    if expected != 0 and "--debug" not in name:
        assert "Traceback" not in result.output
        errors = [
            line
            for line in result.output.splitlines()
            if line.startswith("otel-batchmon: error:")
        ]
        if "check" not in name:  # check reports its problems on stdout
            assert len(errors) == 1, result.output


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_daemon_output_holds_no_secret(setup: Setup, debug: bool) -> None:
    """`run` for a few seconds: the database refuses, then one that works
    under the state database that is down, and the collector is down."""
    config = setup.folder / f"daemon-{debug}.toml"
    config.write_text(
        'refresh_interval = "200ms"\nshutdown_timeout = "1s"\n'
        f'state_url = "postgresql+psycopg://brk:{STATE_PASSWORD}'
        f'@127.0.0.1:{setup.closed_port}/test"\n'
        f'[stores.down]\ndatabase_url = "{setup.pg_down}"\n'
        f'table = "{setup.table}"\n'
        f'[stores.refused]\ndatabase_url = "{setup.mariadb_wrong_password}"\n'
        f'table = "{setup.table}"\n'
        f'[stores.works]\ndatabase_url = "{setup.pg_granted}"\n'
        f'table = "{setup.table}"\n'
    )
    argv = [*_CLI, "run", "--config", str(config)]
    if debug:
        argv.append("--debug")
    env = _env(setup, OTEL_METRIC_EXPORT_INTERVAL="200")
    with running(f"daemon-{debug}", argv, env, setup.folder) as child:
        for needle in (
            "store down",
            "store refused",
            "metrics export to",
            "batchmon_* tables",  # the state database is down too
        ):
            poll(
                lambda needle=needle: needle in child.log() or None,
                f"{needle!r} in the daemon's log",
                alive=child.exited,
            )
        child.process.send_signal(signal.SIGTERM)
        code = child.process.wait(15)
        output = child.log()
    assert leaked(output) == [], output
    assert code == 0, output
    assert "Traceback" not in output
    # The store with the password in its URL did read, and --debug did log.
    assert "store works" not in output, output
    assert (" DEBUG " in output) is debug


def test_scanner_sees_each_secret_raw_and_url_encoded() -> None:
    for secret in SECRETS:
        assert leaked(f"url://u:{secret}@h") == [secret]
        assert leaked(quote(f"={secret}", safe="")) == [secret]
    assert leaked("postgresql+psycopg://u:***@127.0.0.1/test") == []

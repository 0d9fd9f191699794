"""The otel-batchmon command, run as a user runs it: a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert, text

from otel_batchmon.demo import INCIDENT_BATCH_ID, demo_rows
from otel_batchmon.tables import default_batch_table
from tests.conftest import Database
from tests.otlp_receiver import grpc_receiver, http_receiver
from tests.reference import expected

CANONICAL = {s: s for s in ("pending", "processing", "completed", "failed")}


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "PG"))
    }
    env["OTEL_SERVICE_NAME"] = "batchmon-test"
    env.update(extra)
    return env


def run_cli(
    *args: str,
    env: dict[str, str],
    cwd: Path | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otel_batchmon", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _demo_table(db: Database) -> tuple[str, list[dict[str, object]]]:
    name = db.table_name()
    table = default_batch_table(name)
    table.create(db.engine)
    rows = demo_rows(datetime.now(UTC))
    with db.engine.begin() as connection:
        connection.execute(insert(table), rows)
    return name, rows


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "batchmon.toml"
    path.write_text(body)
    return path


def assert_one_clear_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr
    errors = [
        line
        for line in result.stderr.splitlines()
        if line.startswith("otel-batchmon: error:")
    ]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_run_once_delivers_the_table_to_a_real_otlp_receiver(
    db: Database, tmp_path: Path, protocol: str
) -> None:
    name, rows = _demo_table(db)
    config = _config(
        tmp_path,
        f'database_url = "{db.url}"\ntable = "{name}"\nname = "imports"\n',
    )
    receiver = grpc_receiver if protocol == "grpc" else http_receiver
    with receiver() as (endpoint, received):
        result = run_cli(
            "run",
            "--once",
            "--config",
            str(config),
            env=_clean_env(
                OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
                OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
            ),
        )
    assert result.returncode == 0, result.stderr
    assert "stuck: 1" in result.stdout
    points = received.points()
    store = ("batch.store", "imports")
    assert points["batch.stuck.count"] == {frozenset({store}): 1}
    now = datetime.fromtimestamp(time.time(), UTC)
    want = expected(rows, now, CANONICAL)  # type: ignore[arg-type]
    for status, count in want.window_counts.items():
        key = frozenset({store, ("batch.status", status)})
        assert points["batch.window.count"][key] == count
    ratio = points["batch.window.failure_ratio"][frozenset({store})]
    assert ratio == pytest.approx(want.failure_ratio)
    units = received.units()
    assert units["batch.window.duration.mean"] == "s"
    assert units["batch.stuck.count"] == "{batch}"
    resource = received.resource_attributes()
    assert resource["service.name"] == "batchmon-test"
    assert resource.get("service.instance.id")


def test_run_once_against_a_silent_collector_fails_with_one_line(
    sqlite: Database, tmp_path: Path
) -> None:
    name, _ = _demo_table(sqlite)
    config = _config(
        tmp_path, f'database_url = "{sqlite.url}"\ntable = "{name}"\n'
    )
    port = _closed_port()
    begun = time.monotonic()
    result = run_cli(
        "run",
        "--once",
        "--config",
        str(config),
        env=_clean_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
            OTEL_EXPORTER_OTLP_TIMEOUT="2",
        ),
    )
    assert result.returncode == 1
    line = assert_one_clear_line(result)
    assert f"127.0.0.1:{port}" in line
    assert "grpc" in line
    assert time.monotonic() - begun < 20


def test_run_once_with_unreachable_database_fails_without_leaking_password(
    tmp_path: Path,
) -> None:
    port = _closed_port()
    url = f"postgresql+psycopg://monitor:s3cret@127.0.0.1:{port}/test"
    result = run_cli(
        "run",
        "--once",
        env=_clean_env(
            OTEL_BATCHMON_DATABASE_URL=url,
            OTEL_BATCHMON_TABLE="batches",
            OTEL_METRICS_EXPORTER="none",
        ),
    )
    assert result.returncode == 3
    line = assert_one_clear_line(result)
    assert "connection" in line
    assert "s3cret" not in result.stderr + result.stdout


def test_run_once_with_missing_table_names_the_tables_that_exist(
    db: Database, tmp_path: Path
) -> None:
    existing = db.table_name("present")
    default_batch_table(existing).create(db.engine)
    result = run_cli(
        "run",
        "--once",
        env=_clean_env(
            OTEL_BATCHMON_DATABASE_URL=db.url,
            OTEL_BATCHMON_TABLE="no_such_batches",
            OTEL_METRICS_EXPORTER="none",
        ),
    )
    assert result.returncode == 3
    line = assert_one_clear_line(result)
    assert "'no_such_batches' does not exist" in line
    assert existing in line


def test_several_config_problems_are_reported_together(
    tmp_path: Path,
) -> None:
    config = _config(
        tmp_path,
        'database_url = "sqlite:///x.db"\n'
        'table = "batches; DROP TABLE users"\n'
        'window = "24 hours"\n'
        'refresh_intervall = "30s"\n'
        '[columns]\nfinished_at = "done-at"\n',
    )
    result = run_cli(
        "run", "--once", "--config", str(config), env=_clean_env()
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "4 problems" in result.stderr
    assert "did you mean 'refresh_interval'" in result.stderr
    assert "window: '24 hours' is not a duration" in result.stderr
    assert "not a plain SQL identifier" in result.stderr
    assert "columns.finished_at" in result.stderr


def test_malformed_toml_is_one_clear_error(tmp_path: Path) -> None:
    config = _config(tmp_path, 'table = "batches\n')
    result = run_cli("check", "--config", str(config), env=_clean_env())
    assert result.returncode == 2
    assert "is not valid TOML" in assert_one_clear_line(result)


def test_init_db_creates_the_table_once_and_check_reports_on_it(
    db: Database, tmp_path: Path
) -> None:
    name = db.table_name()
    env = _clean_env(
        OTEL_BATCHMON_DATABASE_URL=db.url, OTEL_BATCHMON_TABLE=name
    )
    first = run_cli("init-db", env=env)
    again = run_cli("init-db", env=env)
    assert first.returncode == 0, first.stderr
    assert "created table" in first.stdout
    assert "exists; left as it is" in again.stdout
    with db.engine.begin() as connection:
        connection.execute(
            text(f"INSERT INTO {name} (id, status) VALUES ('x1', 'archived')")
        )

    result = run_cli("check", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "'archived' (1 rows)" in result.stdout
    assert "all recommended indexes exist" in result.stdout
    assert "refresh: ok" in result.stdout


def _bare_table(db: Database, key: str) -> str:
    """A batch table with no index but ``key`` (a constraint or "")."""
    name = db.table_name()
    with db.engine.begin() as connection:
        connection.execute(
            text(
                f"CREATE TABLE {name} (id VARCHAR(40) {key}, "
                "status VARCHAR(20), started_at TIMESTAMP NULL, "
                "finished_at TIMESTAMP NULL)"
            )
        )
    return name


def test_check_prints_create_index_for_missing_indexes(
    db: Database,
) -> None:
    name = _bare_table(db, "PRIMARY KEY")
    result = run_cli(
        "check",
        env=_clean_env(
            OTEL_BATCHMON_DATABASE_URL=db.url, OTEL_BATCHMON_TABLE=name
        ),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "missing recommended indexes" in result.stdout
    assert result.stdout.count("CREATE INDEX") >= 3


@pytest.mark.parametrize("key", ["PRIMARY KEY", ""])
def test_check_warns_when_incremental_reads_have_no_unique_id(
    db: Database, key: str
) -> None:
    name = _bare_table(db, key)
    env = _clean_env(
        OTEL_BATCHMON_DATABASE_URL=db.url,
        OTEL_BATCHMON_TABLE=name,
        OTEL_BATCHMON_REFRESH_MODE="incremental",
    )
    result = run_cli("check", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    warned = "no primary key or unique index keeps id unique" in result.stdout
    assert warned == (not key), result.stdout
    result = run_cli("check", env={**env, "OTEL_BATCHMON_REFRESH_MODE": ""})
    assert "keeps id unique" not in result.stdout


def test_demo_runs_on_a_fresh_sqlite_file_and_shows_the_stuck_batch(
    tmp_path: Path,
) -> None:
    result = run_cli("demo", env=_clean_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "batch.stuck.count{batch.store=demo} 1" in result.stdout
    engine = create_engine(f"sqlite:///{tmp_path / 'batchmon-demo.db'}")
    with engine.connect() as connection:
        status, started = connection.execute(
            text("SELECT status, started_at FROM batches WHERE id = :id"),
            {"id": INCIDENT_BATCH_ID},
        ).one()
    engine.dispose()
    assert status == "processing"
    age = datetime.now(UTC) - datetime.fromisoformat(started).replace(
        tzinfo=UTC
    )
    assert age.total_seconds() > 4 * 3600


def test_demo_refuses_to_overwrite_a_database_that_is_not_a_demo(
    tmp_path: Path,
) -> None:
    precious = tmp_path / "app.db"
    engine = create_engine(f"sqlite:///{precious}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE users (id INTEGER)"))
    engine.dispose()

    result = run_cli(
        "demo", "--database", str(precious), env=_clean_env(), cwd=tmp_path
    )

    assert result.returncode == 2
    assert "holds other tables (users)" in assert_one_clear_line(result)
    engine = create_engine(f"sqlite:///{precious}")
    with engine.connect() as connection:
        tables = connection.execute(
            text("SELECT name FROM sqlite_master WHERE type = 'table'")
        ).all()
    engine.dispose()
    assert tables == [("users",)]


@pytest.mark.parametrize(
    ("args", "extra", "needle"),
    [
        (
            (),
            {"OTEL_EXPORTER_OTLP_TIMEOUT": "abc"},
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ),
        (
            (),
            {"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"},
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ),
        (
            (),
            {
                "OTEL_METRICS_EXPORTER": "prometheus",
                "OTEL_EXPORTER_PROMETHEUS_PORT": "99999",
            },
            "is not a port",
        ),
        (
            (),
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://u:s3cret@127.0.0.1:1"},
            "carries credentials",
        ),
        (("--database", "/nonexistent-dir/x.db"), {}, "is missing"),
    ],
)
def test_bad_standard_variables_and_paths_are_one_line_exit_2(
    tmp_path: Path, args: tuple[str, ...], extra: dict[str, str], needle: str
) -> None:
    result = run_cli("demo", *args, env=_clean_env(**extra), cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    assert needle in assert_one_clear_line(result)
    assert "s3cret" not in result.stderr + result.stdout


def test_daemon_says_once_that_the_collector_is_unreachable(
    sqlite: Database, tmp_path: Path
) -> None:
    name, _ = _demo_table(sqlite)
    port = _closed_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "otel_batchmon", "run"],
        env=_clean_env(
            OTEL_BATCHMON_DATABASE_URL=sqlite.url,
            OTEL_BATCHMON_TABLE=name,
            OTEL_BATCHMON_REFRESH_INTERVAL="200ms",
            OTEL_BATCHMON_SHUTDOWN_TIMEOUT="2s",
            OTEL_METRIC_EXPORT_INTERVAL="200",
            OTEL_EXPORTER_OTLP_TIMEOUT="1",
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = process.stderr.readline()  # type: ignore[union-attr]
            lines.append(line)
            if "metrics export to" in line:
                break
        time.sleep(2)  # several more failed exports must stay quiet
    finally:
        process.terminate()
        _, rest = process.communicate(timeout=20)
    output = "".join(lines) + rest
    assert output.count("metrics export to") == 1, output
    assert f"127.0.0.1:{port}" in output
    assert process.returncode == 0
    assert "Traceback" not in output


def test_check_reports_a_missing_table_with_the_database_exit_code(
    sqlite: Database,
) -> None:
    result = run_cli(
        "check",
        env=_clean_env(
            OTEL_BATCHMON_DATABASE_URL=sqlite.url, OTEL_BATCHMON_TABLE="nope"
        ),
    )
    assert result.returncode == 3
    assert "'nope' does not exist" in result.stdout


def test_run_once_names_both_a_database_and_a_collector_failure(
    tmp_path: Path,
) -> None:
    port = _closed_port()
    result = run_cli(
        "run",
        "--once",
        env=_clean_env(
            OTEL_BATCHMON_DATABASE_URL=f"sqlite:///{tmp_path}/nope/x.db",
            OTEL_BATCHMON_TABLE="batches",
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
            OTEL_EXPORTER_OTLP_TIMEOUT="1",
        ),
    )
    assert result.returncode == 3
    line = assert_one_clear_line(result)
    assert "refresh failed (connection)" in line
    assert f"127.0.0.1:{port}" in line

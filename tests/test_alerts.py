"""Alert incidents on SQLite, PostgreSQL and MariaDB with an offset
database clock: hours of refreshes simulated without sleeping."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy import insert, text

from otel_batchmon import BatchMonitor, parse_config
from otel_batchmon.remedy import find_batch, finish_stuck
from otel_batchmon.tables import default_batch_table
from tests.conftest import Database
from tests.metrics import collect

STATE_TABLES = ("incident", "claim", "watermark", "schema_version")


def _table(db: Database, rows: list[dict[str, Any]]) -> tuple[str, str]:
    """A batch table and a fresh state prefix, both dropped at teardown."""
    prefix = f"s{uuid.uuid4().hex[:8]}_"
    db.created.extend(prefix + t for t in reversed(STATE_TABLES))
    name = db.table_name()
    table = default_batch_table(name)
    table.create(db.engine)
    with db.engine.begin() as connection:
        connection.execute(insert(table), rows)
    return name, prefix


def _batch(batch_id: str, hours_ago: float, **extra: Any) -> dict[str, Any]:
    started = datetime.now(UTC) - timedelta(hours=hours_ago)
    return {
        "id": batch_id,
        "kind": "import",
        "status": "processing",
        "created_at": started,
        "started_at": started,
        # Every row names every column: an executemany takes its column
        # list from the first row.
        "finished_at": None,
    } | extra


def _monitor(
    db: Database, name: str, prefix: str, **settings: Any
) -> tuple[BatchMonitor, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    config = parse_config(
        {
            "database_url": db.url,
            "table": name,
            "state_table_prefix": prefix,
            "events": False,
        }
        | settings
    )
    return BatchMonitor(config, MeterProvider(metric_readers=[reader])), reader


def _refresh_at(monitor: BatchMonitor, offset_seconds: float) -> None:
    monitor.refresher.stores[0].clock_offset_seconds = offset_seconds
    (outcome,) = monitor.refresh_now()
    assert outcome.ok, outcome.failure


def _alerts(reader: InMemoryMetricReader) -> dict[tuple[str, str], int]:
    series = collect(reader).get("batch.alerts", {})
    return {
        (dict(k)["alert.type"], dict(k)["alert.state"]): int(v)
        for k, v in series.items()
    }


def test_stuck_batch_opens_once_over_an_hour_restart_and_resolves_once(
    db: Database,
) -> None:
    name, prefix = _table(db, [_batch("b-1", 3.5)])
    monitor, reader = _monitor(db, name, prefix)

    for step in range(12):  # 12 refreshes, 5 minutes apart
        _refresh_at(monitor, step * 300)

    assert _alerts(reader) == {("stuck", "open"): 1}
    restarted, restarted_reader = _monitor(db, name, prefix)
    _refresh_at(restarted, 12 * 300)
    assert _alerts(restarted_reader) == {}
    with db.engine.begin() as connection:
        connection.execute(
            text(f"UPDATE {name} SET status = 'completed' WHERE id = 'b-1'")
        )
    _refresh_at(restarted, 13 * 300)
    assert _alerts(restarted_reader) == {("stuck", "resolved"): 1}


def test_flapping_around_the_threshold_with_failed_refreshes_opens_once(
    db: Database,
) -> None:
    name, prefix = _table(db, [_batch("b-2", 3.9)])
    monitor, reader = _monitor(db, name, prefix)
    store = monitor.refresher.stores[0]
    offsets = [0, 900, -900, 900, -900, 900]  # 3.9h +- 15 min

    for index, offset in enumerate(offsets):
        _refresh_at(monitor, offset)
        if index == 2:
            # A refresh that fails in between must change nothing.
            with db.engine.begin() as connection:
                connection.execute(
                    text(f"ALTER TABLE {name} RENAME TO x_{name}")
                )
            store.bound = None
            (failed,) = monitor.refresh_now()
            assert not failed.ok
            with db.engine.begin() as connection:
                connection.execute(
                    text(f"ALTER TABLE x_{name} RENAME TO {name}")
                )
            store.bound = None

    assert _alerts(reader) == {("stuck", "open"): 1, ("stuck", "resolved"): 1}


def test_per_kind_threshold_and_failure_streak_and_no_success(
    sqlite: Database,
) -> None:
    now = datetime.now(UTC)

    def finished(
        batch_id: str, status: str, hours_ago: float
    ) -> dict[str, Any]:
        end = now - timedelta(hours=hours_ago)
        return {
            "id": batch_id,
            "kind": "report",
            "status": status,
            "created_at": end - timedelta(minutes=5),
            "started_at": end - timedelta(minutes=5),
            "finished_at": end,
        }

    rows = [
        _batch("slow-import", 5.0),  # stuck for imports (4h)
        _batch("nightly", 5.0, kind="nightly"),  # allowed 8h
        finished("r1", "completed", 9.0),
        finished("r2", "failed", 3.0),
        finished("r3", "failed", 2.0),
        finished("r4", "failed", 1.0),
    ]
    name, prefix = _table(sqlite, rows)
    monitor, reader = _monitor(
        sqlite,
        name,
        prefix,
        stuck_after_by_kind={"nightly": "8h"},
        failure_streak=3,
        no_success_within="6h",
    )

    _refresh_at(monitor, 0)

    assert _alerts(reader) == {
        ("stuck", "open"): 1,
        ("failure_streak", "open"): 1,
        ("no_success", "open"): 1,
    }
    with sqlite.engine.begin() as connection:
        connection.execute(
            insert(default_batch_table(name)),
            [finished("r5", "completed", 0.5)],
        )
    _refresh_at(monitor, 0)
    alerts = _alerts(reader)
    assert alerts[("failure_streak", "resolved")] == 1
    assert alerts[("no_success", "resolved")] == 1


def test_resolve_spares_a_batch_that_finished_meanwhile(db: Database) -> None:
    name, prefix = _table(db, [_batch("b-3", 6.0)])
    monitor, _ = _monitor(db, name, prefix)
    store = monitor.refresher.stores[0]
    engine = monitor.refresher._states[store.name].engine
    with engine.connect() as connection, connection.begin():
        store.bind(connection)
        raw_id, _status, raw_started = find_batch(store, connection, "b-3")  # type: ignore[misc]
    # The worker finishes the batch between our read and our update.
    with db.engine.begin() as connection:
        connection.execute(
            text(f"UPDATE {name} SET status = 'completed' WHERE id = 'b-3'")
        )

    change = finish_stuck(
        store, db.engine, raw_id, raw_started, "failed", "hung", False
    )

    assert not change.changed
    with db.engine.connect() as connection:
        status = connection.execute(
            text(f"SELECT status FROM {name} WHERE id = 'b-3'")
        ).scalar()
    assert status == "completed"


def _cli(*args: str, db: Database, name: str, prefix: str) -> Any:
    env = {
        "PATH": "/usr/bin:/bin",
        "OTEL_BATCHMON_DATABASE_URL": db.url,
        "OTEL_BATCHMON_TABLE": name,
        "OTEL_BATCHMON_STATE_TABLE_PREFIX": prefix,
    }
    return subprocess.run(
        [sys.executable, "-m", "otel_batchmon", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_stuck_list_and_resolve_commands_fail_the_batch_once(
    db: Database,
) -> None:
    name, prefix = _table(db, [_batch("b-4", 5.0)])
    monitor, reader = _monitor(db, name, prefix)
    _refresh_at(monitor, 0)

    listed = _cli("stuck", "list", "--json", db=db, name=name, prefix=prefix)
    dry = _cli(
        "stuck", "resolve", "b-4", "--dry-run", db=db, name=name, prefix=prefix
    )
    done = _cli(
        "stuck", "resolve", "b-4", "--reason", "upstream hung",
        db=db, name=name, prefix=prefix,
    )  # fmt: skip
    again = _cli("stuck", "resolve", "b-4", db=db, name=name, prefix=prefix)
    _refresh_at(monitor, 0)

    report = json.loads(listed.stdout)
    assert [b["batch_id"] for b in report[0]["stuck"]] == ["b-4"]
    assert report[0]["incidents"][0]["alert_type"] == "stuck"
    assert dry.returncode == 0
    assert "UPDATE" in dry.stdout
    assert done.returncode == 0, done.stderr
    assert "marked failed" in done.stdout
    assert again.returncode == 4
    assert "not in a stuck status" in again.stdout
    with db.engine.connect() as connection:
        status, finished = connection.execute(
            text(f"SELECT status, finished_at FROM {name} WHERE id = 'b-4'")
        ).one()
    assert status == "failed"
    assert finished is not None
    assert _alerts(reader) == {("stuck", "open"): 1, ("stuck", "resolved"): 1}


@pytest.mark.parametrize("dry_run", [True, False])
def test_configured_fail_action_is_dry_by_default_and_conditional(
    sqlite: Database, dry_run: bool
) -> None:
    name, prefix = _table(sqlite, [_batch("b-5", 13.0), _batch("b-6", 5.0)])
    monitor, reader = _monitor(
        sqlite,
        name,
        prefix,
        stuck={"action": "fail", "after": "12h", "dry_run": dry_run},
    )

    _refresh_at(monitor, 0)
    _refresh_at(monitor, 0)

    with sqlite.engine.connect() as connection:
        statuses = dict(
            connection.execute(text(f"SELECT id, status FROM {name}")).all()
        )
    assert statuses["b-6"] == "processing"
    assert statuses["b-5"] == ("processing" if dry_run else "failed")
    actions = collect(reader)["batchmon.stuck.actions"]
    assert list(actions.values()) == [1]
    (key,) = actions
    assert dict(key)["batchmon.dry_run"] == str(dry_run).lower()


def test_write_paths_are_refused_on_a_job_frameworks_table(
    sqlite: Database, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = f"s{uuid.uuid4().hex[:8]}_"
    table = default_batch_table("dag_run")
    table.create(sqlite.engine)
    sqlite.created.append("dag_run")
    with sqlite.engine.begin() as connection:
        connection.execute(insert(table), [_batch("run-1", 13.0)])
    monitor, reader = _monitor(
        sqlite,
        "dag_run",
        prefix,
        stuck={"action": "fail", "after": "12h", "dry_run": False},
    )

    _refresh_at(monitor, 0)
    _refresh_at(monitor, 0)
    refused = _cli(
        "stuck", "resolve", "run-1", db=sqlite, name="dag_run", prefix=prefix
    )

    assert refused.returncode == 2
    assert "Apache Airflow" in refused.stderr
    with sqlite.engine.connect() as connection:
        status = connection.execute(
            text("SELECT status FROM dag_run WHERE id = 'run-1'")
        ).scalar()
    assert status == "processing"
    warnings = [r for r in caplog.records if "is refused" in r.getMessage()]
    assert len(warnings) == 1
    assert "batchmon.stuck.actions" not in collect(reader)

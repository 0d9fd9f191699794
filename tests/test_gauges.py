"""Every snapshot gauge against an independent Python computation, on
SQLite, PostgreSQL and MariaDB, through the SDK as exported."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy import (
    Column,
    DateTime,
    MetaData,
    String,
    Table,
    insert,
    text,
)
from sqlalchemy.dialects import mysql

from otel_batchmon import BatchMonitor, parse_config
from otel_batchmon.tables import default_batch_table
from tests.conftest import Database
from tests.metrics import Points, collect, value
from tests.reference import Expected, expected, generate_rows

CANONICAL = {s: s for s in ("pending", "processing", "completed", "failed")}


def _monitor(
    settings: dict[str, Any],
) -> tuple[BatchMonitor, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    monitor = BatchMonitor(
        parse_config({"refresh_interval": "1s", **settings}), provider
    )
    return monitor, reader


def _refresh(settings: dict[str, Any]) -> tuple[Points, float]:
    monitor, reader = _monitor(settings)
    outcomes = monitor.refresh_now()
    assert [o.failure for o in outcomes] == [None]
    snapshot = outcomes[0].snapshot
    assert snapshot is not None
    return collect(reader), snapshot.database_time


def assert_gauges(points: Points, store: str, want: Expected) -> None:
    for status, count in want.window_counts.items():
        got = value(
            points,
            "batch.window.count",
            batch__store=store,
            batch__status=status,
        )
        assert got == count, status
    for status, count in want.active.items():
        got = value(
            points,
            "batch.active.count",
            batch__store=store,
            batch__status=status,
        )
        assert got == count, status
    assert value(points, "batch.stuck.count", batch__store=store) == want.stuck
    for reason, count in want.invalid.items():
        got = value(
            points,
            "batchmon.rows.invalid",
            batch__store=store,
            batchmon__reason=reason,
        )
        assert got == count, reason
    optional = {
        "batch.window.failure_ratio": want.failure_ratio,
        "batch.window.duration.mean": want.duration_mean,
        "batch.processing.oldest_age": want.processing_oldest_age,
        "batch.pending.oldest_age": want.pending_oldest_age,
        "batch.last_success.age": want.last_success_age,
    }
    for name, expected_value in optional.items():
        series = points.get(name, {})
        if expected_value is None:
            assert not series, f"{name} must be absent, got {series}"
        else:
            got = value(points, name, batch__store=store)
            assert got == pytest.approx(expected_value, abs=0.05), name


def _utc(moment: float) -> datetime:
    return datetime.fromtimestamp(moment, UTC)


def test_every_gauge_matches_reference_on_default_table(db: Database) -> None:
    name = db.table_name()
    table = default_batch_table(name)
    table.create(db.engine)
    rows = generate_rows(datetime.now(UTC), count=400, seed=3)
    with db.engine.begin() as connection:
        connection.execute(insert(table), rows)

    points, now = _refresh({"database_url": db.url, "table": name})

    want = expected(rows, _utc(now), CANONICAL)
    assert sum(want.invalid.values()) > 0, "generator must produce flaws"
    assert want.stuck > 0
    assert_gauges(points, name, want)


# Whole-second DATETIME would drop the fractions the reference keeps.
NAIVE = DateTime(timezone=False).with_variant(
    mysql.DATETIME(fsp=6), "mysql", "mariadb"
)


def _naive_table(name: str, schema: str | None = None) -> Table:
    return Table(
        name,
        MetaData(),
        Column("id", String(16), primary_key=True),
        Column("state", String(16)),
        Column("queued", NAIVE),
        Column("begun", NAIVE),
        Column("completed_at", NAIVE),
        schema=schema,
    )


def _naive(
    rows: list[dict[str, Any]], zone: timedelta
) -> list[dict[str, Any]]:
    def local(moment: datetime | None) -> datetime | None:
        return None if moment is None else (moment + zone).replace(tzinfo=None)

    return [
        {
            "id": r["id"],
            "state": r["status"],
            "queued": local(r["created_at"]),
            "begun": local(r["started_at"]),
            "completed_at": local(r["finished_at"]),
        }
        for r in rows
    ]


MAPPED = {
    "columns": {
        "status": "state",
        "queued_at": "queued",
        "started_at": "begun",
        "finished_at": "completed_at",
        "records_total": "",
        "records_failed": "",
    },
    "statuses": {
        "pending": ["queued"],
        "processing": ["running"],
        "completed": ["success"],
        "failed": ["error"],
    },
}
WORDS = {
    "pending": "queued",
    "processing": "running",
    "completed": "success",
    "failed": "error",
}


@pytest.mark.parametrize(
    ("zone", "offset"),
    [("UTC", timedelta(0)), ("+05:30", timedelta(hours=5, minutes=30))],
)
def test_naive_timestamps_in_declared_zone_match_reference(
    db: Database, zone: str, offset: timedelta
) -> None:
    name = db.table_name()
    table = _naive_table(name)
    table.create(db.engine)
    rows = generate_rows(datetime.now(UTC), count=300, seed=5, raw=WORDS)
    with db.engine.begin() as connection:
        connection.execute(insert(table), _naive(rows, offset))

    points, now = _refresh(
        {"database_url": db.url, "table": name, "timezone": zone, **MAPPED}
    )

    mapping = {v: k for k, v in WORDS.items()}
    assert_gauges(points, name, expected(rows, _utc(now), mapping))


def test_schema_qualified_mapped_table_on_postgres_in_tokyo_session(
    postgres: Database,
) -> None:
    schema = postgres.schema_name()
    table = _naive_table("import_batches", schema)
    table.create(postgres.engine)
    rows = generate_rows(datetime.now(UTC), count=200, seed=8, raw=WORDS)
    with postgres.engine.begin() as connection:
        connection.execute(insert(table), _naive(rows, timedelta(0)))
    # The server's default zone for this client is Tokyo; the monitor must
    # pin its own session to UTC and report the same numbers.
    url = f"{postgres.url}?options=-c%20TimeZone%3DAsia/Tokyo"

    points, now = _refresh(
        {
            "database_url": url,
            "table": f"{schema}.import_batches",
            "name": "imports",
            **MAPPED,
        }
    )

    mapping = {v: k for k, v in WORDS.items()}
    assert_gauges(points, "imports", expected(rows, _utc(now), mapping))


def test_sqlite_text_timestamps_in_mixed_layouts_are_normalised(
    sqlite: Database,
) -> None:
    name = sqlite.table_name()
    now = datetime.now(UTC)
    rows = generate_rows(now, count=120, seed=11)
    layouts = (
        lambda d: d.strftime("%Y-%m-%d %H:%M:%S.%f"),
        lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ"),
        lambda d: d.isoformat(),
        lambda d: d.astimezone(
            __import__("datetime").timezone(timedelta(hours=-7))
        ).isoformat(),
    )
    with sqlite.engine.begin() as connection:
        connection.execute(
            text(
                f"CREATE TABLE {name} (id TEXT PRIMARY KEY, status TEXT, "
                "created_at TEXT, started_at TEXT, finished_at TEXT)"
            )
        )
        for i, row in enumerate(rows):
            # Second-resolution layouts lose the fraction: keep the
            # reference in step with what is stored.
            layout = layouts[i % len(layouts)]
            for role in ("created_at", "started_at", "finished_at"):
                if row[role] is not None and i % len(layouts) == 1:
                    row[role] = row[role].replace(microsecond=0)
            connection.execute(
                text(
                    f"INSERT INTO {name} VALUES "
                    "(:id, :status, :created_at, :started_at, :finished_at)"
                ),
                {
                    "id": row["id"],
                    "status": row["status"],
                    **{
                        role: None if row[role] is None else layout(row[role])
                        for role in ("created_at", "started_at", "finished_at")
                    },
                },
            )

    points, db_now = _refresh({"database_url": sqlite.url, "table": name})

    assert_gauges(points, name, expected(rows, _utc(db_now), CANONICAL))


def test_empty_table_reports_zero_counts_and_no_ratio_or_ages(
    db: Database,
) -> None:
    name = db.table_name()
    default_batch_table(name).create(db.engine)

    points, _ = _refresh({"database_url": db.url, "table": name})

    for status in ("pending", "processing", "completed", "failed", "other"):
        assert (
            value(
                points,
                "batch.window.count",
                batch__store=name,
                batch__status=status,
            )
            == 0
        )
    assert value(points, "batch.stuck.count", batch__store=name) == 0
    for absent in (
        "batch.window.failure_ratio",
        "batch.window.duration.mean",
        "batch.processing.oldest_age",
        "batch.pending.oldest_age",
        "batch.last_success.age",
    ):
        assert absent not in points


def test_status_case_is_matched_the_same_way_by_every_query(
    db: Database,
) -> None:
    now = datetime.now(UTC)
    name = db.table_name()
    table = default_batch_table(name)
    table.create(db.engine)
    row = {
        "id": "r1",
        "status": "RUNNING",
        "created_at": now - timedelta(hours=7),
        "started_at": now - timedelta(hours=6),
        "finished_at": None,
    }
    with db.engine.begin() as connection:
        connection.execute(insert(table), [row])

    points, _ = _refresh(
        {
            "database_url": db.url,
            "table": name,
            "statuses": {"processing": ["running"]},
        }
    )

    # MariaDB's collation folds case in SQL, so the row is processing
    # there; PostgreSQL and SQLite compare exactly, so it is 'other'. Every
    # gauge must agree with the others either way.
    counted = value(
        points,
        "batch.window.count",
        batch__store=name,
        batch__status="processing",
    )
    active = value(
        points,
        "batch.active.count",
        batch__store=name,
        batch__status="processing",
    )
    stuck = value(points, "batch.stuck.count", batch__store=name)
    expected = 1 if db.backend == "mariadb" else 0
    assert (counted, active, stuck) == (expected, expected, expected)
    other = value(
        points, "batch.window.count", batch__store=name, batch__status="other"
    )
    assert other == 1 - expected

"""The mapping language on every database: queries, fallback chains, JSON
paths, status rules, epoch timestamps, due times, window_by, only_when,
finish_optional_for and unavailable metrics, each against values worked
out by hand from the rows the test inserts."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy import text

from otel_batchmon import BatchMonitor, parse_config
from otel_batchmon._alert_rows import stuck_batches
from otel_batchmon.errors import ConfigError
from tests.conftest import Database
from tests.metrics import Points, collect, value

NOW = datetime.now(UTC).replace(tzinfo=None, microsecond=0)


@pytest.fixture(autouse=True)
def _now() -> None:
    """Rows are placed relative to the moment each test starts."""
    global NOW
    NOW = datetime.now(UTC).replace(tzinfo=None, microsecond=0)


def _ago(**delta: float) -> datetime:
    return NOW - timedelta(**delta)


def _epoch(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    return int(moment.replace(tzinfo=UTC).timestamp())


def _create(db: Database, name: str, columns: str) -> None:
    if db.backend == "mariadb":
        columns = columns.replace("TIMESTAMP", "DATETIME(6)")
        columns = columns.replace("JSONTEXT", "LONGTEXT")
    elif db.backend == "postgresql":
        columns = columns.replace("JSONTEXT", "JSONB")
    else:
        columns = columns.replace("JSONTEXT", "TEXT")
    with db.engine.begin() as connection:
        connection.execute(text(f"CREATE TABLE {name} ({columns})"))


def _insert(db: Database, name: str, rows: list[dict[str, Any]]) -> None:
    keys = list(rows[0])
    statement = text(
        f"INSERT INTO {name} ({', '.join(keys)}) "
        f"VALUES ({', '.join(':' + k for k in keys)})"
    )
    with db.engine.begin() as connection:
        connection.execute(statement, rows)


def _refresh(
    db: Database, store: dict[str, Any], **settings: Any
) -> tuple[Points, BatchMonitor]:
    reader = InMemoryMetricReader()
    config = parse_config(
        {
            "refresh_interval": "1s",
            # A loaded machine may take seconds from refresh to export;
            # staleness is tested elsewhere.
            "stale_after": "10m",
            "backfill": "3d",
            "settle_lag": "0s",
            # A state database of its own, so no earlier run's watermark
            # hides the backfilled rows.
            "state_url": f"sqlite:///{tempfile.mkdtemp()}/state.db",
            **settings,
            "stores": {"jobs": {"database_url": db.url, **store}},
        }
    )
    monitor = BatchMonitor(config, MeterProvider(metric_readers=[reader]))
    outcomes = monitor.refresh_now()
    assert [o.failure for o in outcomes] == [None]
    points = collect(reader)
    monitor.stop()
    return points, monitor


def _window(points: Points) -> dict[str, float | None]:
    return {
        status: value(
            points,
            "batch.window.count",
            batch__store="jobs",
            batch__status=status,
        )
        for status in ("pending", "processing", "completed", "failed", "other")
    }


def _gauge(points: Points, name: str) -> float | None:
    """The store's single value of a gauge; None when it is absent."""
    try:
        found: float = value(points, name, batch__store="jobs")
    except KeyError:
        return None
    return found


def _oban_like_rows() -> list[dict[str, Any]]:
    def row(i: int, state: str, **times: datetime | None) -> dict[str, Any]:
        base: dict[str, Any] = {
            "id": i,
            "state": state,
            "worker": "w",
            "args": json.dumps({"job": {"class": f"Job{i % 2}"}}),
        }
        for column in (
            "inserted_at",
            "scheduled_at",
            "attempted_at",
            "completed_at",
            "discarded_at",
            "cancelled_at",
        ):
            base[column] = times.get(column)
        return base

    return [
        # Completed 2 h ago after 10 minutes.
        row(
            1,
            "completed",
            inserted_at=_ago(hours=3),
            attempted_at=_ago(hours=2, minutes=10),
            completed_at=_ago(hours=2),
        ),
        # Discarded (failed) after 30 minutes: finish from the 2nd column.
        row(
            2,
            "discarded",
            inserted_at=_ago(hours=5),
            attempted_at=_ago(hours=4, minutes=30),
            discarded_at=_ago(hours=4),
        ),
        # Cancelled before it ran: finish from the 3rd column, no start,
        # not an invalid row.
        row(
            3,
            "cancelled",
            inserted_at=_ago(hours=1),
            cancelled_at=_ago(minutes=50),
        ),
        # Due 20 minutes ago, queued 3 hours ago: waits for 20 minutes.
        row(
            4,
            "available",
            inserted_at=_ago(hours=3),
            scheduled_at=_ago(minutes=20),
        ),
        # Scheduled for tomorrow: pending, not waiting, not invalid.
        row(
            5,
            "scheduled",
            inserted_at=_ago(hours=2),
            scheduled_at=NOW + timedelta(days=1),
        ),
        # Executing for 6 hours: stuck.
        row(
            6,
            "executing",
            inserted_at=_ago(hours=7),
            attempted_at=_ago(hours=6),
        ),
        # Completed an hour ago after 30 minutes; its JSON is malformed
        # (where the database lets it be stored), so it has no kind, and
        # the store is still read.
        row(
            8,
            "completed",
            inserted_at=_ago(hours=2),
            attempted_at=_ago(hours=1, minutes=30),
            completed_at=_ago(hours=1),
        ),
        # Completed 3 days ago: outside the window.
        row(
            7,
            "completed",
            inserted_at=_ago(days=3, hours=1),
            attempted_at=_ago(days=3),
            completed_at=_ago(days=3) + timedelta(minutes=5),
        ),
    ]


_OBAN_COLUMNS = (
    "id INTEGER PRIMARY KEY, state VARCHAR(20) NOT NULL, worker VARCHAR(40),"
    " args JSONTEXT, inserted_at TIMESTAMP, scheduled_at TIMESTAMP,"
    " attempted_at TIMESTAMP, completed_at TIMESTAMP,"
    " discarded_at TIMESTAMP, cancelled_at TIMESTAMP"
)
_OBAN_STORE: dict[str, Any] = {
    "columns": {
        "status": "state",
        "queued_at": "inserted_at",
        "due_at": "scheduled_at",
        "started_at": "attempted_at",
        "finished_at": ["completed_at", "discarded_at", "cancelled_at"],
        "kind": {"json": "args", "path": ["job", "class"]},
    },
    "statuses": {
        "pending": ["available", "scheduled"],
        "processing": ["executing"],
        "completed": ["completed"],
        "failed": ["discarded"],
        "other": ["cancelled"],
    },
}


def test_chains_json_paths_and_due_times_read_like_the_rows_say(
    db: Database,
) -> None:
    name = db.table_name("oban")
    _create(db, name, _OBAN_COLUMNS)
    rows = _oban_like_rows()
    rows[-2]["args"] = '"no object"' if db.backend == "postgresql" else "{bad"
    _insert(db, name, rows)

    points, _ = _refresh(db, {"table": name, **_OBAN_STORE})

    assert _window(points) == {
        "pending": 2,
        "processing": 1,
        "completed": 2,
        "failed": 1,
        "other": 1,
    }
    assert _gauge(points, "batch.window.failure_ratio") == pytest.approx(1 / 3)
    assert _gauge(points, "batch.window.duration.mean") == pytest.approx(
        (600 + 1800 + 1800) / 3, abs=1
    )
    assert _gauge(points, "batch.stuck.count") == 1
    pending_age = _gauge(points, "batch.pending.oldest_age")
    assert pending_age == pytest.approx(20 * 60, abs=30)
    assert _gauge(points, "batch.last_success.age") == pytest.approx(
        3600, abs=30
    )
    invalid = {
        reason: value(
            points,
            "batchmon.rows.invalid",
            batch__store="jobs",
            batchmon__reason=reason,
        )
        for reason in ("finish_without_start", "future_timestamp")
    }
    assert invalid == {"finish_without_start": 0, "future_timestamp": 0}
    # The JSON path gives each finished batch its kind.
    # The JSON path gives each finished batch its kind (the backfill of 3
    # days takes in row 7 too).
    finished = {
        (dict(key).get("batch.kind"), dict(key)["batch.status"]): count
        for key, count in points["batch.finished"].items()
    }
    assert finished == {
        ("Job1", "completed"): 2,
        (None, "completed"): 1,
        ("Job0", "failed"): 1,
        ("Job1", "other"): 1,
    }


def test_a_query_with_a_join_casts_and_percent_signs_is_read_as_written(
    db: Database,
) -> None:
    jobs, kinds = db.table_name("qjobs"), db.table_name("qkinds")
    _create(db, jobs, _OBAN_COLUMNS + ", kind_id INTEGER")
    _create(db, kinds, "id INTEGER PRIMARY KEY, label VARCHAR(40)")
    _insert(
        db,
        kinds,
        [{"id": 1, "label": "import"}, {"id": 2, "label": "internal-x"}],
    )
    rows = _oban_like_rows()
    for row in rows:
        row["kind_id"] = 2 if row["id"] == 6 else 1
    _insert(db, jobs, rows)
    select = (
        f"SELECT j.*, k.label FROM {jobs} j JOIN {kinds} k ON k.id = j.kind_id"
        " WHERE k.label NOT LIKE 'internal%'"
    )
    store = {
        "query": {
            "default": select,
            # PostgreSQL's own cast syntax must survive as text.
            "postgresql": select.replace(
                "k.label FROM", "k.label::text AS label FROM"
            ),
        },
        "columns": {**_OBAN_STORE["columns"], "kind": "label"},
        "statuses": _OBAN_STORE["statuses"],
        "filter": [{"column": "worker", "op": "eq", "value": "w"}],
    }

    points, _ = _refresh(db, store)

    # Row 6 (the stuck one) is excluded by the join's label.
    assert _window(points)["processing"] == 0
    assert _gauge(points, "batch.stuck.count") == 0
    assert _window(points)["completed"] == 2


def _laravel_rows() -> list[dict[str, Any]]:
    def batch(
        i: int,
        total: int,
        pending: int,
        failed: int,
        created: datetime,
        finished: datetime | None = None,
        cancelled: datetime | None = None,
    ) -> dict[str, Any]:
        return {
            "id": f"b{i}",
            "name": "nightly",
            "total_jobs": total,
            "pending_jobs": pending,
            "failed_jobs": failed,
            "created_at": _epoch(created),
            "finished_at": _epoch(finished),
            "cancelled_at": _epoch(cancelled),
        }

    return [
        batch(1, 10, 0, 0, _ago(hours=3), finished=_ago(hours=2)),
        batch(2, 10, 4, 1, _ago(hours=2), cancelled=_ago(hours=1)),
        batch(3, 10, 0, 0, _ago(hours=1), cancelled=_ago(minutes=30)),
        # Ran with failures: never gets a finish time, not invalid.
        batch(4, 10, 2, 2, _ago(hours=5)),
        # Still running for 5 hours: stuck.
        batch(5, 10, 6, 1, _ago(hours=5)),
    ]


_LARAVEL_RULES = [
    {
        "name": "cancelled_after_failure",
        "status": "failed",
        "when": [
            {"column": "cancelled_at", "op": "not_null"},
            {"column": "failed_jobs", "op": "gt", "value": 0},
        ],
    },
    {
        "name": "cancelled",
        "status": "other",
        "when": [{"column": "cancelled_at", "op": "not_null"}],
    },
    {
        "name": "finished",
        "status": "completed",
        "when": [{"column": "finished_at", "op": "not_null"}],
    },
    {
        "name": "ran_with_failures",
        "status": "failed",
        "when": [
            {"column": "failed_jobs", "op": "gt", "value": 0},
            {"column": "pending_jobs", "op": "le", "other": "failed_jobs"},
        ],
    },
]


def test_status_rules_and_epoch_seconds_without_a_status_column(
    db: Database,
) -> None:
    name = db.table_name("lbatches")
    _create(
        db,
        name,
        "id VARCHAR(20) PRIMARY KEY, name VARCHAR(40), total_jobs INTEGER,"
        " pending_jobs INTEGER, failed_jobs INTEGER, created_at INTEGER,"
        " finished_at INTEGER, cancelled_at INTEGER",
    )
    _insert(db, name, _laravel_rows())
    store = {
        "table": name,
        "columns": {
            "status": "",
            "queued_at": "created_at",
            "started_at": "created_at",
            "finished_at": ["finished_at", "cancelled_at"],
            "kind": "name",
            "records_total": "total_jobs",
            "records_failed": "failed_jobs",
        },
        "status_rules": _LARAVEL_RULES,
        "default_status": "processing",
        "finish_optional_for": ["failed"],
        "timestamps": {"default": "epoch_s"},
        "unavailable": {"batch.pending.oldest_age": "no queued state"},
    }

    points, monitor = _refresh(db, store)

    assert _window(points) == {
        "pending": 0,
        "processing": 1,
        "completed": 1,
        "failed": 2,
        "other": 1,
    }
    assert _gauge(points, "batch.stuck.count") == 1
    # What stuck list shows is the canonical word a rule gave.
    with db.engine.connect() as connection:
        stuck = stuck_batches(
            monitor.refresher.stores[0], connection, 4 * 3600
        )
    assert [(b.batch_id, b.status) for b in stuck] == [("b5", "processing")]
    assert _gauge(points, "batch.window.duration.mean") == pytest.approx(
        (3600 + 3600) / 2, abs=2
    )
    assert _gauge(points, "batch.pending.oldest_age") is None
    finished_without = value(
        points,
        "batchmon.rows.invalid",
        batch__store="jobs",
        batchmon__reason="finished_without_finish_time",
    )
    assert finished_without == 0


@pytest.mark.parametrize(
    ("encoding", "scale"), [("epoch_ms", 1000.0), ("epoch_float", 1.0)]
)
def test_epoch_milliseconds_and_fractions_give_the_same_ages(
    sqlite: Database, encoding: str, scale: float
) -> None:
    name = sqlite.table_name("epochs")
    kind = "REAL" if encoding == "epoch_float" else "INTEGER"
    _create(
        sqlite,
        name,
        f"id INTEGER PRIMARY KEY, status VARCHAR(20), started_at {kind},"
        f" finished_at {kind}",
    )
    start, finish = _ago(hours=2), _ago(hours=1, minutes=30)
    _insert(
        sqlite,
        name,
        [
            {
                "id": 1,
                "status": "completed",
                "started_at": (_epoch(start) or 0) * scale,
                "finished_at": (_epoch(finish) or 0) * scale,
            }
        ],
    )
    store = {"table": name, "timestamps": {"default": encoding}}

    points, _ = _refresh(sqlite, store)

    assert _gauge(points, "batch.window.duration.mean") == pytest.approx(1800)
    assert _gauge(points, "batch.last_success.age") == pytest.approx(
        5400, abs=30
    )


def test_no_start_time_windows_by_finish_and_hides_what_it_cannot_know(
    db: Database,
) -> None:
    name = db.table_name("taskmeta")
    _create(
        db,
        name,
        "id INTEGER PRIMARY KEY, task_id VARCHAR(40), status VARCHAR(20),"
        " date_done TIMESTAMP",
    )
    rows = [
        ("SUCCESS", _ago(hours=1)),
        ("FAILURE", _ago(hours=2)),
        ("SUCCESS", _ago(days=2)),
        # A moving date on a started task must not window it.
        ("STARTED", _ago(minutes=5)),
        ("REVOKED", _ago(hours=3)),
        # A state the mapping does not know is 'other', in the window too.
        ("PROGRESS", _ago(minutes=10)),
    ]
    _insert(
        db,
        name,
        [
            {"id": i, "task_id": f"t{i}", "status": s, "date_done": d}
            for i, (s, d) in enumerate(rows)
        ],
    )
    store = {
        "table": name,
        "columns": {
            "id": "task_id",
            "queued_at": "",
            "started_at": "",
            "finished_at": "date_done",
        },
        "statuses": {
            "pending": ["PENDING"],
            "processing": ["STARTED"],
            "completed": ["SUCCESS"],
            "failed": ["FAILURE"],
            "other": ["REVOKED"],
        },
        "window_by": "finished_at",
        "only_when": {"finished_at": ["completed", "failed", "other"]},
    }

    points, monitor = _refresh(db, store)

    assert _window(points) == {
        "pending": 0,
        "processing": 0,
        "completed": 1,
        "failed": 1,
        "other": 2,
    }
    assert _gauge(points, "batch.window.failure_ratio") == 0.5
    for absent in (
        "batch.window.duration.mean",
        "batch.stuck.count",
        "batch.processing.oldest_age",
    ):
        assert _gauge(points, absent) is None, absent
    store_obj = monitor.refresher.stores[0]
    assert "batch.duration" in store_obj.unavailable()
    # Finished rows are still counted once as events, without durations.
    assert (
        value(
            points,
            "batch.finished",
            batch__store="jobs",
            batch__status="completed",
            batch__source="store",
        )
        == 2
    )


def test_boolean_and_null_statuses_with_a_rule_on_the_clock(
    db: Database,
) -> None:
    name = db.table_name("flags")
    _create(
        db,
        name,
        "id INTEGER PRIMARY KEY, done BOOLEAN, started_at TIMESTAMP,"
        " finished_at TIMESTAMP, run_at TIMESTAMP",
    )
    later = NOW + timedelta(hours=1)
    _insert(
        db,
        name,
        [
            {
                "id": 1,
                "done": True,
                "started_at": _ago(hours=2),
                "finished_at": _ago(hours=1),
                "run_at": _ago(hours=2),
            },
            {
                "id": 2,
                "done": False,
                "started_at": _ago(hours=3),
                "finished_at": _ago(hours=2),
                "run_at": _ago(hours=3),
            },
            {
                "id": 3,
                "done": None,
                "started_at": _ago(minutes=30),
                "finished_at": None,
                "run_at": _ago(minutes=30),
            },
            {
                "id": 4,
                "done": None,
                "started_at": None,
                "finished_at": None,
                "run_at": later,
            },
        ],
    )
    store = {
        "table": name,
        "columns": {"status": "done"},
        "statuses": {"completed": [True], "failed": [False]},
        "null_status": "processing",
        "status_rules": [
            {
                "name": "not yet due",
                "status": "pending",
                "when": [{"column": "run_at", "op": "future"}],
            }
        ],
    }

    points, _ = _refresh(db, store)

    assert _window(points) == {
        "pending": 0,
        "processing": 1,
        "completed": 1,
        "failed": 1,
        "other": 0,
    }
    active = {
        status: value(
            points,
            "batch.active.count",
            batch__store="jobs",
            batch__status=status,
        )
        for status in ("pending", "processing")
    }
    assert active == {"pending": 1, "processing": 1}


def test_a_pending_row_not_yet_due_is_never_stuck(db: Database) -> None:
    name = db.table_name("retries")
    _create(
        db,
        name,
        "id INTEGER PRIMARY KEY, status VARCHAR(20), created_at TIMESTAMP,"
        " started_at TIMESTAMP, finished_at TIMESTAMP,"
        " scheduled_at TIMESTAMP",
    )

    def row(i: int, started: datetime | None, due: datetime) -> dict[str, Any]:
        return {
            "id": i,
            "status": "pending",
            "created_at": _ago(hours=7),
            "started_at": started,
            "finished_at": None,
            "scheduled_at": due,
        }

    _insert(
        db,
        name,
        [
            # A retry: its last attempt started 6 h ago, due in an hour.
            row(1, _ago(hours=6), NOW + timedelta(hours=1)),
            # Never started, due 5 h ago: stuck.
            row(2, None, _ago(hours=5)),
            # Never started, due in an hour: waiting.
            row(3, None, NOW + timedelta(hours=1)),
        ],
    )
    store = {
        "table": name,
        "columns": {"due_at": "scheduled_at"},
        "stuck_statuses": ["pending", "processing"],
    }

    points, _ = _refresh(db, store)

    assert _gauge(points, "batch.stuck.count") == 1
    assert _gauge(points, "batch.pending.oldest_age") == pytest.approx(
        5 * 3600, abs=30
    )


def test_every_mapping_mistake_is_reported_at_once() -> None:
    settings = {
        "stores": {
            "d": {
                "database_url": "sqlite:///x.db",
                "preset": "pgboss",
                "stuck": {"action": "fail", "after": "8h"},
            },
            "e": {
                "database_url": "sqlite:///x.db",
                # A semicolon inside a string is not a second statement.
                "query": "SELECT * FROM t WHERE s <> ';'",
                "filter": [{"any": [[{"column": "s", "op": "is_null"}], []]}],
                "unavailable": {"batch.records": 3},
            },
            "a": {
                "database_url": "sqlite:///x.db",
                "preset": "obann",
            },
            "b": {
                "database_url": "sqlite:///x.db",
                "preset": "oban",
                "preset_parameters": {"prefix": "bad;name", "nope": "x"},
                "preset_rules": {"missing_rule": True},
            },
            "c": {
                "database_url": "sqlite:///x.db",
                "query": "SELECT 1; DROP TABLE x",
                "columns": {"kind": {"json": "args", "path": ["a b"]}},
                "status_rules": [
                    {
                        "name": "r",
                        "status": "done",
                        "when": [{"column": "x", "op": "like"}],
                    }
                ],
                "timestamps": {"default": "epoch_minutes"},
                "window_by": "heartbeat_at",
                "unavailable": {"batch.nope": "x"},
            },
        }
    }

    with pytest.raises(ConfigError) as raised:
        parse_config(settings)

    text_ = "\n".join(raised.value.problems)
    for expected in (
        "stores.a.preset: unknown preset; did you mean 'oban'?",
        "stores.b.preset_parameters.prefix",
        "stores.b.preset_parameters.nope: the preset has no such parameter",
        "stores.b.preset_rules.missing_rule: the preset has no such rule",
        "stores.c.query: must be one statement",
        "stores.c.columns.kind.path",
        "stores.c.status_rules[0].status",
        "stores.c.status_rules[0].when[0].op",
        "stores.c.timestamps.default",
        "stores.c.window_by",
        "stores.c.unavailable.batch.nope",
        "stores.d.preset: pg-boss",
        "keeps its tables on postgresql, not sqlite",
        "stores.d.stuck.action: otel-batchmon never writes",
        "stores.e.filter[0].any: must be a list of non-empty lists",
        "stores.e.unavailable.batch.records: say why in words",
    ):
        assert expected in text_, expected
    # Only what is wrong is reported: no follow-on problems.
    assert "stores.a.table" not in text_
    assert "stores.e.query" not in text_
    assert "stores.b.query" not in text_


def test_a_number_column_must_be_declared_as_epoch(db: Database) -> None:
    name = db.table_name("numbers")
    _create(
        db,
        name,
        "id INTEGER PRIMARY KEY, status VARCHAR(20), started_at BIGINT,"
        " finished_at BIGINT",
    )
    config = parse_config(
        {"stores": {"jobs": {"database_url": db.url, "table": name}}}
    )
    monitor = BatchMonitor(config, MeterProvider())

    outcome = monitor.refresh_now()[0]

    assert outcome.failure is not None
    assert "timestamps.per_column.started_at = epoch_s" in str(
        outcome.failure.message
    )


def test_presets_refuse_writes_and_init_db(tmp_path: Any) -> None:
    from otel_batchmon.remedy import refuse_foreign
    from otel_batchmon.tables import create_tables

    config = parse_config(
        {
            "stores": {
                "jobs": {
                    "database_url": f"sqlite:///{tmp_path / 'j.db'}",
                    "preset": "oban",
                }
            }
        }
    )

    with pytest.raises(ConfigError, match="never writes"):
        refuse_foreign(config.stores[0])
    assert "left alone" in create_tables(config)[0]
    assert not (tmp_path / "j.db").exists()

"""Every preset on every database it supports: the framework's own tables,
300 generated rows in its layout, one refresh (with a backfill of every
finished row as events) exported over OTLP/gRPC to a real receiver, and
every gauge and event count compared with an independent Python
computation over the same rows (tests/preset_oracle.py).

Variants: spring_batch with its opt-in status rules; dagster_runs and
spring_batch with naive times written at UTC+05:30 and the store's
timezone set to match; airflow_dag_run and celery_sqlalchemy on tables
without the columns of their optional roles.
"""

from __future__ import annotations

import datetime as dt
import io
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

from otel_batchmon import BatchMonitor, parse_config
from otel_batchmon.presets import _selfcheck
from tests import preset_oracle as oracle
from tests.conftest import Database, open_database
from tests.otlp_receiver import grpc_receiver
from tests.preset_rows import (
    Placement,
    backends_of,
    framework_tables,
    generate,
    insert_rows,
    load_preset,
    optional_columns,
    preset_names,
    sample_rows,
)

PRESETS = preset_names()
ROWS = 300
SEED = 8
# Seconds the database clock may move between the refresh and our reading
# of the wall clock around it.
AGE_TOLERANCE = 2.0
# spring_batch's opt-in refinements, turned on in an extra run.
SPRING_RULES = ("exit_code_failed", "exit_code_noop")
# Presets whose naive times are the writer's local time: also run with
# them written at UTC+05:30 and the store's timezone set to match.
ZONE = "+05:30"
ZONE_OFFSET = dt.timedelta(hours=5, minutes=30)
WRITER_LOCAL = ("dagster_runs", "spring_batch")
# Tables of a release without the columns of the optional roles
# (Airflow 2.x has no run_after; celery without result_extended no name).
LEAN = "lean"
CASES = (
    [
        pytest.param(name, backend, (), "", id=f"{name}-{backend}")
        for name in PRESETS
        for backend in backends_of(load_preset(name))
    ]
    + [
        pytest.param(
            "spring_batch",
            backend,
            SPRING_RULES,
            "",
            id=f"spring_batch-{backend}-rules",
        )
        for backend in backends_of(load_preset("spring_batch"))
    ]
    + [
        pytest.param(name, backend, (), ZONE, id=f"{name}-{backend}-zone")
        for name in WRITER_LOCAL
        for backend in backends_of(load_preset(name))
    ]
    + [
        pytest.param(name, backend, (), LEAN, id=f"{name}-{backend}-lean")
        for name in PRESETS
        if optional_columns(load_preset(name))
        for backend in backends_of(load_preset(name))
    ]
)
AGES = {
    "batch.window.duration.mean": "duration_mean",
    "batch.processing.oldest_age": "processing_oldest_age",
    "batch.pending.oldest_age": "pending_oldest_age",
    "batch.last_success.age": "last_success_age",
}


@pytest.fixture
def database(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Database]:
    """The backend named by the test's ``backend`` parameter."""
    found = open_database(request.node.callspec.params["backend"], tmp_path)
    yield found
    found.engine.dispose()


# ------------------------------------------------------- oracle's statuses


def _as_selfcheck_row(
    row: dict[str, Any], preset: dict[str, Any]
) -> dict[str, Any]:
    """Times back to naive UTC datetimes, as _selfcheck reads them."""
    roles = preset["columns"]
    time_names: set[str] = set()
    for role in oracle.TIME_ROLES:
        spec = roles.get(role, "")
        for name in spec if isinstance(spec, list) else [spec]:
            if isinstance(name, str) and name:
                time_names.add(name.lower())
    return {
        k: dt.datetime.fromtimestamp(v, dt.UTC).replace(tzinfo=None)
        if k in time_names and isinstance(v, float)
        else v
        for k, v in row.items()
    }


@pytest.mark.parametrize("name", PRESETS)
def test_oracle_statuses_match_expect_and_selfcheck_on_sample_rows(
    name: str,
) -> None:
    preset = load_preset(name)
    data = sample_rows(preset)
    relation = oracle.relation_rows(preset, data.rows_of)
    id_spec = preset["columns"]["id"]

    got = {
        str(oracle.value(r, id_spec)): oracle.canonical(preset, r)
        for r in relation
    }
    reference = {
        str(oracle.value(r, id_spec)): _selfcheck.canonical(
            preset, _as_selfcheck_row(r, preset), opt_in=False
        )
        for r in relation
    }

    assert {
        k: got.get(k) for k in data.expected_status
    } == data.expected_status
    assert got == reference


@pytest.mark.parametrize("name", PRESETS)
def test_oracle_statuses_match_selfcheck_on_generated_rows(name: str) -> None:
    preset = load_preset(name)
    data = generate(preset, ROWS, SEED)
    relation = oracle.relation_rows(preset, data.rows_of)
    id_spec = preset["columns"]["id"]
    opt_in = bool(preset.get("status_rules"))

    for rules in (
        (),
        tuple(r["name"] for r in preset.get("status_rules", [])),
    ):
        mine = {
            str(oracle.value(r, id_spec)): oracle.canonical(preset, r, rules)
            for r in relation
        }
        theirs = {
            str(oracle.value(r, id_spec)): _selfcheck.canonical(
                preset, _as_selfcheck_row(r, preset), opt_in=bool(rules)
            )
            for r in relation
        }
        assert mine == theirs
        if not rules:
            unflawed = {k: mine.get(k) for k in data.expected_status}
            assert unflawed == data.expected_status
        if not opt_in:
            break
    want = oracle.expected(preset, relation, data.now.timestamp())
    # The rows reach both sides of the window and of the stuck threshold.
    assert sum(want.window_counts.values()) < len(relation)
    assert sum(want.window_counts.values()) > len(relation) / 4
    if "batch.stuck.count" not in want.unavailable:
        assert want.stuck > 0
    if data.flaws and not preset["columns"].get("window_by"):
        # Windowed by finish time, a flawed finish leaves the window.
        assert sum(want.invalid.values()) > 0


# --------------------------------------------------------------- end to end


@pytest.mark.parametrize(("name", "backend", "rules", "zone"), CASES)
def test_preset_gauges_and_events_exported_over_otlp_match_the_oracle(
    name: str,
    backend: str,
    rules: tuple[str, ...],
    zone: str,
    database: Database,
    tmp_path: Path,
) -> None:
    preset = load_preset(name)
    data = generate(preset, ROWS, SEED)
    without = optional_columns(preset) if zone == LEAN else frozenset()
    data.without(without)
    with framework_tables(
        preset, backend, database.url, database.engine, without
    ) as placement:
        offset = ZONE_OFFSET if zone == ZONE else dt.timedelta(0)
        insert_rows(placement, data, offset)
        relation = oracle.relation_rows(preset, data.rows_of)
        _assert_relation_has_the_rows(placement, relation)
        with grpc_receiver() as (endpoint, received):
            before = time.time()
            now = _refresh_and_export(
                placement,
                rules,
                endpoint,
                tmp_path,
                zone=ZONE if zone == ZONE else "UTC",
                # Every finished row is recorded once in this refresh.
                events=True,
                backfill="3d",
                settle_lag="0s",
            )
            after = time.time()
        points = received.points()

    assert before - AGE_TOLERANCE <= now <= after + AGE_TOLERANCE, (
        f"database clock {now} outside the wall clock [{before}, {after}]"
    )
    want = oracle.expected(preset, relation, now, opt_in=rules)
    events = oracle.expected_events(preset, relation, now, opt_in=rules)
    assert sum(events.finished.values()) > 0
    problems = compare(points, name, want)
    problems += compare_events(points, name, events, want.unavailable)
    assert not problems, f"{name} on {backend}:\n" + "\n".join(problems)


def _assert_relation_has_the_rows(
    placement: Placement, relation: list[dict[str, Any]]
) -> None:
    """The preset's SELECT on the database returns the ids and status
    values the oracle's emulation of it returns."""
    preset = placement.preset
    body = preset["relation"]
    params = placement.parameters
    if body["kind"] == "table":
        table = _selfcheck.substitute(body["table"], _NO_RENAME, params)
        sql = f"SELECT * FROM {table}"
    else:
        text = body.get("dialect_sql", {}).get(placement.dialect, body["sql"])
        inner = _selfcheck.substitute(text, _NO_RENAME, params)
        sql = f"SELECT * FROM ({inner}) AS r"
    id_spec = preset["columns"]["id"]
    status_spec = preset["columns"].get("status", "")
    with placement.engine.connect() as connection:
        found = [
            {k.lower(): v for k, v in r._mapping.items()}
            for r in connection.execute(sa.text(sql))
        ]

    def keyed(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            str(oracle.value(r, id_spec)): str(oracle.value(r, status_spec))
            for r in rows
        }

    assert keyed(found) == keyed(relation)


_NO_RENAME: dict[str, Any] = {"test": {"tables": [], "objects": []}}


def _refresh_and_export(
    placement: Placement,
    rules: tuple[str, ...],
    endpoint: str,
    tmp_path: Path,
    zone: str = "UTC",
    **settings: Any,
) -> float:
    """One refresh of a store reading the preset, exported once over
    OTLP/gRPC; returns the database time of the refresh."""
    name = placement.preset["name"]
    store: dict[str, Any] = {
        "preset": name,
        "database_url": placement.url,
        "preset_parameters": dict(placement.parameters),
        "window": "24h",
        "stuck_after": "4h",
        "timezone": zone,
    }
    if rules:
        store["preset_rules"] = dict.fromkeys(rules, True)
    config = parse_config(
        {
            "refresh_interval": "1s",
            # A loaded machine may take seconds from refresh to export;
            # staleness is tested elsewhere.
            "stale_after": "10m",
            "events": False,
            "state_url": f"sqlite:///{tmp_path / 'state.db'}",
            "stores": {name: store},
        }
        | settings
    )
    exporter = OTLPMetricExporter(endpoint=endpoint, insecure=True, timeout=10)
    reader = PeriodicExportingMetricReader(
        exporter, export_interval_millis=3_600_000
    )
    provider = MeterProvider(metric_readers=[reader])
    monitor = BatchMonitor(config, provider)
    try:
        outcomes = monitor.refresh_now()
        assert [o.failure for o in outcomes] == [None]
        snapshot = outcomes[0].snapshot
        assert snapshot is not None
        assert provider.force_flush(10_000)
    finally:
        provider.shutdown()
        monitor.stop(5)
    return float(snapshot.database_time)


EVENT_METRICS = ("batch.finished", "batch.duration", "batch.records")


def compare_events(
    points: dict[str, dict[frozenset[tuple[str, Any]], Any]],
    store: str,
    want: oracle.ExpectedEvents,
    unavailable: frozenset[str],
) -> list[str]:
    """Differences in the events of the backfill, summed over kinds:
    batch.finished and batch.duration (count) per status, batch.records
    per outcome; unavailable ones must be absent though rows finished."""
    got: dict[str, dict[str, float]] = {m: {} for m in EVENT_METRICS}
    for metric in EVENT_METRICS:
        for key, found in points.get(metric, {}).items():
            if ("batch.store", store) not in key:
                continue
            attrs = dict(key)
            label = attrs.get(
                "batch.status", attrs.get("batch.record.outcome")
            )
            amount = found[0] if isinstance(found, tuple) else found
            got[metric][label] = got[metric].get(label, 0) + amount
    problems = []
    for metric, expected in (
        ("batch.finished", want.finished),
        ("batch.duration", want.durations),
        ("batch.records", want.records),
    ):
        if metric in unavailable:
            if got[metric]:
                problems.append(f"{metric}: unavailable, got {got[metric]}")
        elif {k: v for k, v in expected.items() if v} != got[metric]:
            problems.append(
                f"{metric}: expected {expected}, got {got[metric]}"
            )
    return problems


# ------------------------------------------------------------- comparison


def compare(
    points: dict[str, dict[frozenset[tuple[str, Any]], Any]],
    store: str,
    want: oracle.Expected,
) -> list[str]:
    """Every difference between the exported gauges and the oracle, one
    line each: metric{attributes}: expected X, got Y."""
    problems: list[str] = []

    def series(metric: str) -> dict[frozenset[tuple[str, Any]], Any]:
        return {
            k: v
            for k, v in points.get(metric, {}).items()
            if ("batch.store", store) in k
        }

    def check(metric: str, expected: Any, **attributes: str) -> None:
        key = frozenset(
            {
                ("batch.store", store),
                *((k.replace("__", "."), v) for k, v in attributes.items()),
            }
        )
        found = series(metric)
        label = metric + (str(dict(attributes)) if attributes else "")
        if metric in want.unavailable:
            if found:
                problems.append(
                    f"{label}: unavailable, must be absent; got {found}"
                )
            return
        got = found.get(key)
        if expected is None:
            if key in found:
                problems.append(f"{label}: expected absent, got {got}")
            return
        if got is None:
            problems.append(f"{label}: expected {expected}, got nothing")
        elif not _close(metric, expected, got):
            problems.append(f"{label}: expected {expected}, got {got}")

    for status, count in want.window_counts.items():
        check("batch.window.count", count, batch__status=status)
    for status, count in want.active.items():
        check("batch.active.count", count, batch__status=status)
    check("batch.stuck.count", want.stuck)
    check("batch.window.failure_ratio", want.failure_ratio)
    for metric, field in AGES.items():
        check(metric, getattr(want, field))
    for reason, count in want.invalid.items():
        check("batchmon.rows.invalid", count, batchmon__reason=reason)
    for metric in sorted(want.unavailable):
        if series(metric):
            problems.append(f"{metric}: unavailable, must be absent")
    return sorted(set(problems))


def _close(metric: str, expected: float, got: float) -> bool:
    if metric in ("batch.window.failure_ratio",):
        return math.isclose(got, expected, abs_tol=1e-9)
    if metric == "batch.window.duration.mean":
        return math.isclose(got, expected, rel_tol=1e-9, abs_tol=0.01)
    if metric in AGES:
        return abs(got - expected) <= AGE_TOLERANCE
    return got == expected


# ------------------------------------------------------------------ check

# What `otel-batchmon check` is expected to print for a preset store: one
# line per unavailable metric naming the metric and the preset's reason,
# e.g.
#     unavailable: batch.records (no record counts)
# The test asserts only that some line holds both the metric name and the
# reason text; the lead may settle the exact wording.


@pytest.mark.parametrize("name", PRESETS)
def test_check_prints_each_unavailable_metric_with_its_reason(
    name: str, tmp_path: Path
) -> None:
    from otel_batchmon.config import load_config
    from otel_batchmon.inspection import check_stores

    preset = load_preset(name)
    unavailable = preset["metrics"].get("unavailable", {})
    backend = "sqlite" if "sqlite" in preset["dialects"] else "postgresql"
    database = open_database(backend, tmp_path)
    try:
        data = generate(preset, 20, SEED)
        with framework_tables(
            preset, backend, database.url, database.engine
        ) as placement:
            insert_rows(placement, data)
            path = _config_file(tmp_path, placement)
            out = io.StringIO()
            usable = check_stores(load_config(str(path)), out)
    finally:
        database.engine.dispose()
    text = out.getvalue()
    assert usable, text
    lines = text.splitlines()
    for metric, reason in unavailable.items():
        assert any(metric in line and reason in line for line in lines), (
            f"check does not print {metric!r} with reason {reason!r}:\n{text}"
        )


def _config_file(tmp_path: Path, placement: Placement) -> Path:
    name = placement.preset["name"]
    parameters = ", ".join(
        f'{k} = "{v}"' for k, v in placement.parameters.items()
    )
    body = (
        f'state_url = "sqlite:///{tmp_path / "state.db"}"\n'
        "events = false\n"
        f"[stores.{name}]\n"
        f'preset = "{name}"\n'
        f'database_url = "{placement.url}"\n'
        f"preset_parameters = {{ {parameters} }}\n"
    )
    path = tmp_path / "batchmon.toml"
    path.write_text(body)
    return path

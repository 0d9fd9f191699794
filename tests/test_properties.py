"""Property-based: for any table hypothesis can think of, the refresh
agrees with the pure-Python reading of the gauge definitions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert

from otel_batchmon import parse_config
from otel_batchmon.store import BatchStore
from otel_batchmon.tables import default_batch_table
from tests.conftest import Database
from tests.reference import expected

CANONICAL = {s: s for s in ("pending", "processing", "completed", "failed")}
# Whole minutes plus 30 s: no time lands within 30 s of a window or stuck
# boundary (both whole hours from now), so the moments between building
# the rows and the database reading its clock cannot change the answer.
_minutes = st.integers(min_value=-60 * 60, max_value=60)
_row = st.fixed_dictionaries(
    {
        "status": st.sampled_from(
            ["pending", "processing", "completed", "failed", "archived"]
        ),
        "queued": st.one_of(st.none(), _minutes),
        "started": st.one_of(st.none(), _minutes),
        "ran": st.one_of(st.none(), st.integers(-120, 24 * 60)),
    }
)


def _rows(drawn: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    def at(minutes: int | None) -> datetime | None:
        if minutes is None:
            return None
        return now + timedelta(minutes=minutes, seconds=30)

    rows = []
    for index, draw in enumerate(drawn):
        started = at(draw["started"])
        finished = None
        if draw["ran"] is not None and started is not None:
            finished = started + timedelta(minutes=draw["ran"])
        rows.append(
            {
                "id": f"p{index}",
                "status": draw["status"],
                "created_at": at(draw["queued"]),
                "started_at": started,
                "finished_at": finished,
            }
        )
    return rows


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_refresh_matches_the_definitions_for_any_table(
    backend: str, request: pytest.FixtureRequest
) -> None:
    db: Database = request.getfixturevalue(
        "postgres" if backend == "postgresql" else backend
    )
    name = db.table_name()
    table = default_batch_table(name)
    table.create(db.engine)
    config = parse_config({"database_url": db.url, "table": name})
    store = BatchStore(config.stores[0])

    @settings(
        max_examples=30 if backend == "sqlite" else 15,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(st.lists(_row, max_size=25))
    def check(drawn: list[dict[str, Any]]) -> None:
        rows = _rows(drawn, datetime.now(UTC))
        with db.engine.begin() as connection:
            connection.execute(delete(table))
            if rows:
                connection.execute(insert(table), rows)
        with db.engine.connect() as connection, connection.begin():
            if store.bound is None:
                store.bind(connection)
            snapshot = store.read(connection)
        now = datetime.fromtimestamp(snapshot.database_time, UTC)
        want = expected(rows, now, CANONICAL)
        assert dict(snapshot.window_counts) == want.window_counts
        assert dict(snapshot.active_counts) == want.active
        assert snapshot.stuck_count == want.stuck
        assert dict(snapshot.invalid_rows) == want.invalid
        for got, ref in (
            (snapshot.failure_ratio, want.failure_ratio),
            (snapshot.duration_mean_seconds, want.duration_mean),
            (
                snapshot.processing_oldest_age_seconds,
                want.processing_oldest_age,
            ),
            (snapshot.pending_oldest_age_seconds, want.pending_oldest_age),
            (snapshot.last_success_age_seconds, want.last_success_age),
        ):
            assert (got is None) == (ref is None), (got, ref)
            if got is not None:
                assert got == pytest.approx(ref, abs=0.05)

    check()

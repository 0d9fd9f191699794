"""Hand-written SQL of the two baselines: a naive monitor and the
query-exporter configuration, both on the default ``init-db`` table.

Both follow the gauge definitions of the README (window by start time or,
not started, by queued time; stuck = processing and started before now
minus 4 h; ...). Every comparison is written against the same expression
the recommended indexes cover, so the baselines can use them: the bare
column on PostgreSQL and MariaDB, ``julianday(column)`` on SQLite.
"""

from __future__ import annotations

from dataclasses import dataclass

WINDOW_SECONDS = 24 * 3600
STUCK_SECONDS = 4 * 3600
CANONICAL = ("pending", "processing", "completed", "failed")


@dataclass(frozen=True)
class Clock:
    """Time expressions of one dialect, as SQL text."""

    dialect: str

    @property
    def now(self) -> str:
        return {
            "postgresql": "now()",
            "sqlite": "julianday('now')",
        }.get(self.dialect, "UTC_TIMESTAMP(6)")

    def col(self, name: str) -> str:
        """The column as compared (what the indexes cover)."""
        return f"julianday({name})" if self.dialect == "sqlite" else name

    def ago(self, seconds: int) -> str:
        if self.dialect == "postgresql":
            return f"now() - interval '{seconds} seconds'"
        if self.dialect == "sqlite":
            return f"julianday('now') - {seconds / 86400.0!r}"
        return f"UTC_TIMESTAMP(6) - INTERVAL {seconds} SECOND"

    def seconds(self, start: str, end: str) -> str:
        """``end - start`` in seconds; both already in ``col`` form."""
        if self.dialect == "postgresql":
            return f"EXTRACT(EPOCH FROM ({end}) - ({start}))"
        if self.dialect == "sqlite":
            return f"(({end}) - ({start})) * 86400.0"
        return f"TIMESTAMPDIFF(MICROSECOND, {start}, {end}) / 1000000.0"

    def within(self, name: str, seconds: int) -> str:
        c = self.col(name)
        return f"{c} >= {self.ago(seconds)} AND {c} <= {self.now}"


def in_window(clock: Clock) -> str:
    """A batch is in the window by its start, or (never started) queued."""
    return (
        f"(({clock.within('started_at', WINDOW_SECONDS)}) OR "
        f"(started_at IS NULL AND "
        f"{clock.within('created_at', WINDOW_SECONDS)}))"
    )


def _valid_duration(clock: Clock) -> str:
    start, finish = clock.col("started_at"), clock.col("finished_at")
    return (
        "started_at IS NOT NULL AND finished_at IS NOT NULL AND "
        f"{finish} >= {start} AND {finish} <= {clock.now}"
    )


def _duration(clock: Clock) -> str:
    return clock.seconds(clock.col("started_at"), clock.col("finished_at"))


def _age_of(clock: Clock, expression: str) -> str:
    return clock.seconds(expression, clock.now)


def naive_queries(table: str, dialect: str) -> dict[str, str]:
    """One query per exported value, as a hand-rolled monitor does it."""
    clock = Clock(dialect)
    window = in_window(clock)
    start, finish = clock.col("started_at"), clock.col("finished_at")
    known = ", ".join(f"'{s}'" for s in CANONICAL)
    queries = {
        f"window_count_{s}": (
            f"SELECT COUNT(*) FROM {table} WHERE status = '{s}' AND {window}"
        )
        for s in CANONICAL
    }
    queries["window_count_other"] = (
        f"SELECT COUNT(*) FROM {table} "
        f"WHERE (status IS NULL OR status NOT IN ({known})) AND {window}"
    )
    queries["failure_ratio"] = (
        "SELECT SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) * 1.0 / "
        "NULLIF(SUM(CASE WHEN status IN ('completed', 'failed') "
        f"THEN 1 ELSE 0 END), 0) FROM {table} WHERE {window}"
    )
    queries["duration_mean"] = (
        f"SELECT AVG({_duration(clock)}) FROM {table} "
        "WHERE status IN ('completed', 'failed') AND "
        f"{_valid_duration(clock)} AND {window}"
    )
    queries["stuck"] = (
        f"SELECT COUNT(*) FROM {table} WHERE status = 'processing' "
        f"AND {start} < {clock.ago(STUCK_SECONDS)}"
    )
    for status in ("pending", "processing"):
        queries[f"active_{status}"] = (
            f"SELECT COUNT(*) FROM {table} WHERE status = '{status}'"
        )
    queries["processing_oldest_age"] = (
        f"SELECT {_age_of(clock, f'MIN({start})')} FROM {table} "
        f"WHERE status = 'processing' AND {start} <= {clock.now}"
    )
    queued = clock.col("created_at")
    queries["pending_oldest_age"] = (
        f"SELECT {_age_of(clock, f'MIN({queued})')} FROM {table} "
        f"WHERE status = 'pending' AND {queued} <= {clock.now}"
    )
    queries["last_success_age"] = (
        f"SELECT {_age_of(clock, f'MAX({finish})')} FROM {table} "
        f"WHERE status = 'completed' AND {finish} <= {clock.now}"
    )
    queries |= _naive_invalid(table, clock, window)
    return queries


def _naive_invalid(table: str, clock: Clock, window: str) -> dict[str, str]:
    start, finish = clock.col("started_at"), clock.col("finished_at")
    reasons = {
        "finish_before_start": (
            f"started_at IS NOT NULL AND finished_at IS NOT NULL "
            f"AND {finish} < {start}"
        ),
        "finish_without_start": (
            "finished_at IS NOT NULL AND started_at IS NULL"
        ),
        "finished_without_finish_time": (
            "status IN ('completed', 'failed') AND finished_at IS NULL"
        ),
        "future_timestamp": f"{finish} > {clock.now}",
    }
    return {
        f"invalid_{reason}": (
            f"SELECT COUNT(*) FROM {table} WHERE {condition} AND {window}"
        )
        for reason, condition in reasons.items()
    }


# query-exporter: one query per metric, labels as columns, NULL avoided
# with COALESCE as its users do (a NULL value is an error there).
QE_METRICS: dict[str, tuple[str, list[str]]] = {
    "batch_window_count": ("Batches in the last 24 h by status", ["status"]),
    "batch_window_failure_ratio": ("Failed / finished in 24 h", []),
    "batch_window_duration_mean_seconds": ("Mean duration in 24 h", []),
    "batch_stuck_count": ("Processing batches started over 4 h ago", []),
    "batch_active_count": ("Pending and processing batches", ["status"]),
    "batch_processing_oldest_age_seconds": ("Oldest processing", []),
    "batch_pending_oldest_age_seconds": ("Oldest pending", []),
    "batch_last_success_age_seconds": ("Since the last success", []),
    "batchmon_rows_invalid": ("Invalid rows in 24 h", ["reason"]),
}


def query_exporter_queries(table: str, dialect: str) -> dict[str, str]:
    """The SQL of each query-exporter query, keyed by its metric name."""
    clock = Clock(dialect)
    window = in_window(clock)
    start, finish = clock.col("started_at"), clock.col("finished_at")
    queued = clock.col("created_at")
    known = ", ".join(f"'{s}'" for s in CANONICAL)
    status_or_other = (
        f"CASE WHEN status IN ({known}) THEN status ELSE 'other' END"
    )
    zero_if_none = "COALESCE({}, 0)".format
    queries = {
        "batch_window_count": (
            f"SELECT {status_or_other} AS status, COUNT(*) AS "
            f"batch_window_count FROM {table} WHERE {window} "
            f"GROUP BY {status_or_other}"
        ),
        "batch_window_failure_ratio": (
            "SELECT "
            + zero_if_none(
                "SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) * 1.0 "
                "/ NULLIF(SUM(CASE WHEN status IN ('completed', 'failed') "
                "THEN 1 ELSE 0 END), 0)"
            )
            + f" AS batch_window_failure_ratio FROM {table} WHERE {window}"
        ),
        "batch_window_duration_mean_seconds": (
            f"SELECT {zero_if_none(f'AVG({_duration(clock)})')} AS "
            f"batch_window_duration_mean_seconds FROM {table} "
            "WHERE status IN ('completed', 'failed') AND "
            f"{_valid_duration(clock)} AND {window}"
        ),
        "batch_stuck_count": (
            f"SELECT COUNT(*) AS batch_stuck_count FROM {table} "
            f"WHERE status = 'processing' "
            f"AND {start} < {clock.ago(STUCK_SECONDS)}"
        ),
        "batch_active_count": (
            f"SELECT status, COUNT(*) AS batch_active_count FROM {table} "
            "WHERE status IN ('pending', 'processing') GROUP BY status"
        ),
        "batch_processing_oldest_age_seconds": (
            f"SELECT {zero_if_none(_age_of(clock, f'MIN({start})'))} AS "
            f"batch_processing_oldest_age_seconds FROM {table} "
            f"WHERE status = 'processing' AND {start} <= {clock.now}"
        ),
        "batch_pending_oldest_age_seconds": (
            f"SELECT {zero_if_none(_age_of(clock, f'MIN({queued})'))} AS "
            f"batch_pending_oldest_age_seconds FROM {table} "
            f"WHERE status = 'pending' AND {queued} <= {clock.now}"
        ),
        "batch_last_success_age_seconds": (
            f"SELECT {zero_if_none(_age_of(clock, f'MAX({finish})'))} AS "
            f"batch_last_success_age_seconds FROM {table} "
            f"WHERE status = 'completed' AND {finish} <= {clock.now}"
        ),
        "batchmon_rows_invalid": _qe_invalid(table, clock, window),
    }
    return queries


def _qe_invalid(table: str, clock: Clock, window: str) -> str:
    start, finish = clock.col("started_at"), clock.col("finished_at")
    reason = (
        "CASE "
        f"WHEN {finish} > {clock.now} THEN 'future_timestamp' "
        "WHEN started_at IS NOT NULL AND finished_at IS NOT NULL AND "
        f"{finish} < {start} THEN 'finish_before_start' "
        "WHEN finished_at IS NOT NULL AND started_at IS NULL "
        "THEN 'finish_without_start' "
        "WHEN status IN ('completed', 'failed') AND finished_at IS NULL "
        "THEN 'finished_without_finish_time' END"
    )
    return (
        f"SELECT reason, COUNT(*) AS batchmon_rows_invalid FROM "
        f"(SELECT {reason} AS reason FROM {table} WHERE {window}) AS rows_in "
        "WHERE reason IS NOT NULL GROUP BY reason"
    )

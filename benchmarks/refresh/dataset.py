"""Generated batch tables: the ``init-db`` layout, filled in SQL.

Two growth models:

* ``history``: the same daily traffic (10k batches a day), more days of
  history as the table grows, so the 24 h window holds ~10k rows at every
  size;
* ``traffic``: 100 days of history whatever the size, so 1% of the table
  lies in the last 24 h and the window grows with the table.

Row ``g`` (0 is the newest) was queued ``g * span / n`` seconds ago. Its
wait, duration, outcome and record counts come from integer hashes of
``g``, so a table is the same on every database and every run. Rows
still inside their wait are pending, rows inside their duration are
processing, one in 5003 rows started 4-22 h ago never finished (stuck),
about 5% of the finished rows failed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.schema import CreateIndex

from otel_batchmon.config import StoreConfig, parse_config
from otel_batchmon.inspection import recommended_indexes
from otel_batchmon.tables import default_batch_table

HISTORY_ROWS_PER_DAY = 10_000
TRAFFIC_DAYS = 100
DAY = 86400.0
_ROLES = {
    "status": "status",
    "started_at": "started_at",
    "finished_at": "finished_at",
    "queued_at": "created_at",
}


@dataclass(frozen=True)
class Target:
    """One database server (or SQLite folder) the benchmark writes to."""

    dialect: str
    url_base: str  # a URL, or for SQLite the folder of the files

    def url(self, table: str) -> str:
        if self.dialect == "sqlite":
            return f"sqlite:///{self.url_base}/{table}.db"
        return self.url_base


@dataclass(frozen=True)
class Dataset:
    """A generated table: its size, growth model and where it lives."""

    target: Target
    model: str
    rows: int

    @property
    def table(self) -> str:
        return f"bench_{self.model}_{size_label(self.rows).lower()}"

    @property
    def url(self) -> str:
        return self.target.url(self.table)

    @property
    def span_seconds(self) -> float:
        if self.model == "history":
            return self.rows / HISTORY_ROWS_PER_DAY * DAY
        return TRAFFIC_DAYS * DAY

    @property
    def batches_per_second(self) -> float:
        """The model's daily traffic, per second of real time."""
        return self.rows / (self.span_seconds / DAY) / DAY

    def store_config(self) -> StoreConfig:
        """The store as ``load_config`` builds it (default column roles,
        ``created_at`` as the queued time)."""
        return store_config(self.url, self.table)


def store_config(url: str, table: str) -> StoreConfig:
    """A store with every default setting, for ``table`` at ``url``."""
    stores = {"bench": {"database_url": url, "table": table}}
    return parse_config({"stores": stores}).stores[0]


def size_label(rows: int) -> str:
    """10000 -> 10k, 1000000 -> 1M."""
    if rows >= 1_000_000 and rows % 1_000_000 == 0:
        return f"{rows // 1_000_000}M"
    if rows >= 1000 and rows % 1000 == 0:
        return f"{rows // 1000}k"
    return str(rows)


def generate(dataset: Dataset) -> float:
    """(Re)create and fill the table with its indexes; return seconds."""
    started = time.monotonic()
    drop(dataset)
    engine = _engine(dataset)
    try:
        table = default_batch_table(dataset.table)
        with engine.begin() as connection:
            table.create(connection)
            if dataset.target.dialect == "postgresql":
                # Loading first and indexing after is several times faster.
                connection.execute(
                    text(
                        f"ALTER TABLE {dataset.table} "
                        f"DROP CONSTRAINT {dataset.table}_pkey"
                    )
                )
        with engine.begin() as connection:
            connection.execute(text(fill_sql(dataset)))
        with engine.begin() as connection:
            if dataset.target.dialect == "postgresql":
                connection.execute(
                    text(f"ALTER TABLE {dataset.table} ADD PRIMARY KEY (id)")
                )
            for advice in recommended_indexes(
                dataset.store_config(), _ROLES, dataset.target.dialect
            ):
                connection.execute(CreateIndex(advice.index))
        _analyze(engine, dataset)
    finally:
        engine.dispose()
    return time.monotonic() - started


def drop(dataset: Dataset) -> None:
    """Remove the table (the file, on SQLite)."""
    if dataset.target.dialect == "sqlite":
        base = Path(dataset.target.url_base) / f"{dataset.table}.db"
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{base}{suffix}").unlink(missing_ok=True)
        return
    engine = create_engine(dataset.url)
    try:
        with engine.begin() as connection:
            connection.execute(text(f"DROP TABLE IF EXISTS {dataset.table}"))
    finally:
        engine.dispose()


def _engine(dataset: Dataset) -> Engine:
    if dataset.target.dialect != "sqlite":
        return create_engine(dataset.url)
    Path(dataset.target.url_base).mkdir(parents=True, exist_ok=True)
    engine = create_engine(dataset.url)
    with engine.connect() as connection:
        # WAL lets the monitor read while the writer commits, as a
        # production SQLite with concurrent access would be set up.
        connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    return engine


def _analyze(engine: Engine, dataset: Dataset) -> None:
    dialect = dataset.target.dialect
    if dialect == "postgresql":
        with engine.connect().execution_options(
            isolation_level="AUTOCOMMIT"
        ) as connection:
            connection.execute(text(f"VACUUM ANALYZE {dataset.table}"))
        return
    with engine.begin() as connection:
        if dialect == "sqlite":
            connection.exec_driver_sql("ANALYZE")
        else:
            connection.execute(text(f"ANALYZE TABLE {dataset.table}"))


def fill_sql(dataset: Dataset) -> str:
    """One INSERT ... SELECT that writes every row of the dataset."""
    d = dataset.target.dialect
    n = dataset.rows
    per_row = dataset.span_seconds / n
    source, flt = _SOURCE[d].format(last=n - 1), _FLOAT[d]
    shape = (
        f"SELECT g, {flt.format(f'g * {per_row!r}')} + (g % 31) AS age, "
        f"5 + 55 * {flt.format('(g * 7919) % 997')} / 997 AS wait, "
        f"10 + 1790 * {flt.format('(g * 104729) % 1009')} / 1009 AS dur, "
        "(g * 15485863) % 1013 AS fate FROM " + source
    )
    state = (
        "SELECT g, age, wait, dur, fate, CASE "
        "WHEN age < wait THEN 0 "
        "WHEN (g % 5003 = 17 AND age > 14400 + wait AND age < 80000) "
        "OR age - wait < dur THEN 1 "
        "WHEN fate < 51 THEN 2 ELSE 3 END AS state "
        f"FROM ({shape}) AS shaped"
    )
    ago = _AGO[d]
    record_count = "100 + (g * 37) % 9900"
    kind = _CONCAT[d].format(a="'job-'", b="g % 7")
    return (
        f"INSERT INTO {dataset.table} (id, kind, status, created_at, "
        "started_at, finished_at, records_total, records_failed, error) "
        f"SELECT {_ID[d]}, {kind}, "
        "CASE state WHEN 0 THEN 'pending' WHEN 1 THEN 'processing' "
        "WHEN 2 THEN 'failed' ELSE 'completed' END, "
        f"{ago.format(x='age')}, "
        f"CASE WHEN state = 0 THEN NULL ELSE {ago.format(x='age - wait')} "
        "END, "
        "CASE WHEN state < 2 THEN NULL ELSE "
        f"{ago.format(x='age - wait - dur')} END, "
        f"{record_count}, "
        f"CASE WHEN state = 2 THEN ({record_count}) / 10 ELSE 0 END, "
        "CASE WHEN state = 2 THEN 'generated failure' END "
        f"FROM ({state}) AS states"
    )


_SOURCE = {
    "postgresql": "generate_series(0::bigint, {last}) AS q(g)",
    "mysql": "(SELECT seq AS g FROM seq_0_to_{last}) AS q",
    "sqlite": (
        "(WITH RECURSIVE q(g) AS (SELECT 0 UNION ALL SELECT g + 1 FROM q "
        "WHERE g < {last}) SELECT g FROM q) AS q"
    ),
}
_FLOAT = {
    "postgresql": "CAST({} AS double precision)",
    "mysql": "CAST({} AS DOUBLE)",
    "sqlite": "CAST({} AS REAL)",
}
_AGO = {
    "postgresql": "now() - ({x}) * interval '1 second'",
    "mysql": (
        "TIMESTAMPADD(MICROSECOND, -CAST(({x}) * 1000000 AS SIGNED), "
        "UTC_TIMESTAMP(6))"
    ),
    "sqlite": (
        "strftime('%Y-%m-%d %H:%M:%f', julianday('now') - ({x}) / 86400.0)"
    ),
}
_ID = {
    "postgresql": "'b' || lpad(g::text, 9, '0')",
    "mysql": "CONCAT('b', LPAD(g, 9, '0'))",
    "sqlite": "printf('b%09d', g)",
}
_CONCAT = {
    "postgresql": "{a} || ({b})",
    "mysql": "CONCAT({a}, {b})",
    "sqlite": "{a} || ({b})",
}

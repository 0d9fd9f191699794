"""The default batch table that ``otel-batchmon init-db`` creates."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    insert,
    inspect,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.schema import CreateIndex

from otel_batchmon._engine import classify, mask_url
from otel_batchmon.config import DEFAULT_COLUMNS, MonitorConfig, StoreConfig
from otel_batchmon.demo import demo_rows
from otel_batchmon.errors import ConfigError, StoreError
from otel_batchmon.inspection import recommended_indexes

__all__ = ["create_demo_database", "create_tables", "default_batch_table"]

# MariaDB/MySQL DATETIME defaults to whole seconds, which would make batches
# finished within one second unordered; keep microseconds everywhere.
_TIMESTAMP = DateTime(timezone=True).with_variant(
    mysql.DATETIME(fsp=6), "mysql", "mariadb"
)


def default_batch_table(
    name: str = "batches",
    schema: str | None = None,
    metadata: MetaData | None = None,
    store: StoreConfig | None = None,
) -> Table:
    """Return the default table (its indexes: see recommended_indexes).

    With ``store``, columns carry the names that store maps its roles to.
    """
    names = dict(DEFAULT_COLUMNS)
    if store is not None:
        names |= {
            role: store.columns.get(role) or names[role] for role in names
        }
    table = Table(
        name,
        metadata or MetaData(),
        Column(names["id"], String(64), primary_key=True),
        Column(names["kind"], String(128)),
        Column(names["status"], String(32), nullable=False),
        Column(names["queued_at"], _TIMESTAMP),
        Column(names["started_at"], _TIMESTAMP),
        Column(names["finished_at"], _TIMESTAMP),
        Column(names["records_total"], BigInteger),
        Column(names["records_failed"], BigInteger),
        Column(names["error"], Text),
        schema=schema,
    )
    return table


def create_tables(config: MonitorConfig) -> list[str]:
    """Create each store's table where it does not exist yet.

    Returns one line per store saying what was done.
    """
    lines = []
    for store in config.stores:
        if store.mapping.read_only or store.columns.sources:
            lines.append(
                f"store {store.name}: left alone; it reads an existing "
                "relation (a preset, a query or derived roles), which "
                "init-db does not create"
            )
            continue
        engine = create_engine(store.database_url)
        where = f"{store.qualified_table} in {mask_url(store.database_url)}"
        try:
            with engine.begin() as connection:
                inspector = inspect(connection)
                if inspector.has_table(store.table, schema=store.schema):
                    lines.append(f"table {where} exists; left as it is")
                    continue
                table = default_batch_table(
                    store.table, store.schema, store=store
                )
                table.create(connection)
                _create_indexes(connection, store)
                lines.append(f"created table {where} with its indexes")
        except SQLAlchemyError as exc:
            failure = classify(exc)
            raise StoreError(
                f"cannot create {where} ({failure.error_type}): "
                f"{failure.message}"
            ) from None
        finally:
            engine.dispose()
    return lines


def _create_indexes(connection: Connection, store: StoreConfig) -> None:
    roles = {
        role: store.columns.get(role) or DEFAULT_COLUMNS[role]
        for role in ("status", "started_at", "finished_at", "queued_at")
    }
    for advice in recommended_indexes(store, roles, connection.dialect.name):
        connection.execute(CreateIndex(advice.index))


def create_demo_database(path: Path) -> str:
    """Create (or recreate) a SQLite file with demo batches; return its URL.

    An existing file is replaced only when it is an earlier demo database;
    anything else is refused, so a mistyped path never destroys data.
    """
    _check_demo_path(path)
    path.unlink(missing_ok=True)
    url = f"sqlite:///{path}"
    engine = create_engine(url)
    try:
        table = default_batch_table()
        with engine.begin() as connection:
            table.create(connection)
            demo = StoreConfig(name="demo", database_url=url, table="batches")
            _create_indexes(connection, demo)
            connection.execute(insert(table), demo_rows())
    except SQLAlchemyError as exc:
        raise StoreError(
            f"cannot create the demo database {str(path)!r}: "
            f"{classify(exc).message}"
        ) from None
    finally:
        engine.dispose()
    return url


def _check_demo_path(path: Path) -> None:
    where = f"--database {str(path)!r}"
    if path.is_dir():
        raise ConfigError([f"{where} is a folder; name a file in it"])
    if not path.parent.is_dir():
        raise ConfigError([f"{where}: folder {str(path.parent)!r} is missing"])
    if not path.exists():
        return
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
            rows = connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            ).fetchall()
    except sqlite3.DatabaseError:
        raise ConfigError(
            [f"{where} exists and is not a SQLite database; pick a new path"]
        ) from None
    foreign = sorted(
        name
        for (name,) in rows
        if name != "batches" and not name.startswith("batchmon_")
    )
    if foreign:
        raise ConfigError(
            [
                f"{where} exists and holds other tables "
                f"({', '.join(foreign[:5])}); the demo only replaces its "
                "own database, so pick a new path"
            ]
        )

"""Shared fixtures: the real databases of this machine and metric readers.

PostgreSQL and MariaDB are expected on 127.0.0.1 (override with
BATCHMON_TEST_POSTGRES_URL / BATCHMON_TEST_MARIADB_URL). Outside CI a
missing server skips its tests; with CI=true it fails them, so a green CI
run always means all three databases were exercised.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

POSTGRES_URL = os.environ.get(
    "BATCHMON_TEST_POSTGRES_URL",
    "postgresql+psycopg://postgres@127.0.0.1:5432/test",
)
MARIADB_URL = os.environ.get(
    "BATCHMON_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BACKENDS = ("sqlite", "postgresql", "mariadb")


@dataclass
class Database:
    """A reachable database for one test, with names it may create."""

    backend: str
    url: str
    engine: Engine
    created: list[str] = field(default_factory=list)

    def table_name(self, stem: str = "batches") -> str:
        """A fresh table name, dropped at teardown."""
        name = f"{stem}_{uuid.uuid4().hex[:10]}"
        self.created.append(name)
        return name

    def schema_name(self) -> str:
        """A fresh schema (PostgreSQL only), dropped at teardown."""
        name = f"it_{uuid.uuid4().hex[:10]}"
        with self.engine.begin() as connection:
            connection.execute(text(f"CREATE SCHEMA {name}"))
        self.created.append(f"schema:{name}")
        return name

    def drop_all(self) -> None:
        """Drop what the test created."""
        with self.engine.begin() as connection:
            for name in reversed(self.created):
                if name.startswith("schema:"):
                    schema = name.split(":", 1)[1]
                    connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
                else:
                    connection.execute(text(f"DROP TABLE IF EXISTS {name}"))
        self.engine.dispose()


def _reachable(url: str) -> Engine | None:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError:
        engine.dispose()
        return None
    return engine


def open_database(backend: str, tmp_path: Path) -> Database:
    """Connect to a backend or skip (fail in CI) when it is not there."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'batches.db'}"
        return Database(backend, url, create_engine(url))
    url = POSTGRES_URL if backend == "postgresql" else MARIADB_URL
    engine = _reachable(url)
    if engine is None:
        message = f"{backend} is not reachable at {url}"
        if IN_CI:
            pytest.fail(f"{message}; CI must run the {backend} tests")
        pytest.skip(message)
    return Database(backend, url, engine)


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """Each real database of the machine in turn."""
    database = open_database(request.param, tmp_path)
    yield database
    database.drop_all()


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[Database]:
    """The PostgreSQL server alone."""
    database = open_database("postgresql", tmp_path)
    yield database
    database.drop_all()


@pytest.fixture
def mariadb(tmp_path: Path) -> Iterator[Database]:
    """The MariaDB server alone."""
    database = open_database("mariadb", tmp_path)
    yield database
    database.drop_all()


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[Database]:
    """A SQLite file in the test's temporary folder."""
    database = open_database("sqlite", tmp_path)
    yield database
    database.drop_all()

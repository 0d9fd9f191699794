"""The monitor's own tables: schema version, watermarks and claims.

Written in short transactions on a small writable engine of its own
(never the read-only store engine). Migrations are idempotent and run at
start; a schema newer than this code knows is refused with a clear error.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from otel_batchmon._engine import classify, mask_url
from otel_batchmon._state_engine import create_state_engine, is_unwritable
from otel_batchmon._suppress import suppress_instrumentation
from otel_batchmon.errors import BatchmonError

__all__ = [
    "SCHEMA_VERSION",
    "Claim",
    "StateError",
    "StateStore",
    "StateUnavailable",
    "Watermark",
    "create_state_engine",
]

_log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
# Concurrent first starts may race on CREATE TABLE; each retry sees more.
_ATTEMPTS = 5
_ID_LENGTH = 255
_LOCK_WAIT_SECONDS = 10


class StateError(BatchmonError):
    """The state tables cannot be used as they are."""


class StateUnavailable(StateError):
    """The state database cannot be written with these credentials."""


@dataclass(frozen=True)
class Watermark:
    """The last claimed (finished time, id); id None is before all ids."""

    finished_us: int
    batch_id: str | None


@dataclass(frozen=True)
class Claim:
    """One claimed page: rows in (after, upto] counted ``rows``."""

    after: Watermark
    upto: Watermark
    rows: int
    claimed_us: int


class _Tables:
    def __init__(self, prefix: str) -> None:
        metadata = MetaData()
        self.version = Table(
            f"{prefix}schema_version",
            metadata,
            Column("id", Integer, primary_key=True, autoincrement=False),
            Column("version", Integer, nullable=False),
        )
        self.watermark = Table(
            f"{prefix}watermark",
            metadata,
            Column("store", String(64), primary_key=True),
            Column("finished_us", BigInteger, nullable=False),
            Column("batch_id", String(_ID_LENGTH)),
            Column("updated_us", BigInteger, nullable=False),
        )
        self.claim = Table(
            f"{prefix}claim",
            metadata,
            Column("store", String(64), primary_key=True),
            Column("upto_us", BigInteger, primary_key=True),
            Column("upto_id", String(_ID_LENGTH), primary_key=True),
            Column("after_us", BigInteger, nullable=False),
            Column("after_id", String(_ID_LENGTH)),
            Column("row_count", Integer, nullable=False),
            Column("claimed_us", BigInteger, nullable=False),
        )
        # One row per alert incident, kept after it resolves so a stuck
        # batch (keyed by id and start) never opens a second incident.
        self.incident = Table(
            f"{prefix}incident",
            metadata,
            Column("store", String(64), primary_key=True),
            Column("alert_type", String(32), primary_key=True),
            Column("incident_key", String(_ID_LENGTH), primary_key=True),
            Column("opened_us", BigInteger, primary_key=True),
            Column("notified_us", BigInteger, nullable=False),
            Column("resolved_us", BigInteger),
            Column("resolution", String(32)),
            Column("reason", Text),
            Column("details", Text),
        )


def _migrate_to_1(connection: Connection, tables: _Tables) -> None:
    tables.watermark.create(connection, checkfirst=True)
    tables.claim.create(connection, checkfirst=True)


def _migrate_to_2(connection: Connection, tables: _Tables) -> None:
    tables.incident.create(connection, checkfirst=True)


# Migration n brings the schema from version n - 1 to n.
_MIGRATIONS: tuple[Callable[[Connection, _Tables], None], ...] = (
    _migrate_to_1,
    _migrate_to_2,
)
assert len(_MIGRATIONS) == SCHEMA_VERSION


class StateStore:
    """The state tables on one database, shared by the stores using it.

    >>> state = StateStore(create_state_engine(url, 5, 5), "batchmon_")
    >>> state.open()                       # migrate, check writability
    >>> state.advance("orders", old, new, rows=10, now_us=now)
    True
    """

    def __init__(self, engine: Engine, prefix: str = "batchmon_") -> None:
        self.engine = engine
        self.prefix = prefix
        self.tables = _Tables(prefix)

    @property
    def where(self) -> str:
        """Where the state lives, for messages (no credentials)."""
        return f"{self.prefix}* tables in {mask_url(self.engine.url)}"

    def open(self) -> None:
        """Create or migrate the tables; raise StateUnavailable if read-only.

        Runs in one transaction per attempt; concurrent starts converge.
        """
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                with (
                    self._begin() as connection,
                    _serialised(connection, self.prefix),
                ):
                    self._migrate(connection)
                return
            except StateError:
                raise
            except SQLAlchemyError as exc:
                self._raise_if_unwritable(exc)
                if classify(exc).error_type in ("connection", "timeout"):
                    # Not a race: the state database is away. Let the
                    # caller try again at its next refresh, rather than
                    # turn events off for good or retry here, blocking.
                    raise
                if attempt == _ATTEMPTS:
                    failure = classify(exc)
                    raise StateError(
                        f"cannot prepare {self.where} "
                        f"({failure.error_type}): {failure.message}"
                    ) from None
                _log.debug("state migration attempt %d raced", attempt)

    def watermark(self, store: str) -> Watermark | None:
        """Return the store's watermark, or None before its first start."""
        wm = self.tables.watermark
        with self._begin() as connection:
            row = connection.execute(
                select(wm.c.finished_us, wm.c.batch_id).where(
                    wm.c.store == store
                )
            ).first()
        return None if row is None else Watermark(int(row[0]), row[1])

    def start(self, store: str, first: Watermark, now_us: int) -> Watermark:
        """Set the first watermark unless one exists; return the one kept."""
        try:
            with self._begin() as connection:
                connection.execute(
                    insert(self.tables.watermark).values(
                        store=store,
                        finished_us=first.finished_us,
                        batch_id=first.batch_id,
                        updated_us=now_us,
                    )
                )
        except IntegrityError:
            _log.debug("store %s: another monitor set the watermark", store)
        except SQLAlchemyError as exc:
            self._raise_if_unwritable(exc)
            raise
        kept = self.watermark(store)
        assert kept is not None
        return kept

    def advance(
        self,
        store: str,
        old: Watermark,
        new: Watermark,
        rows: int,
        now_us: int,
    ) -> bool:
        """Move the watermark from ``old`` to ``new`` if still at ``old``.

        The compare-and-set and the claim record commit together; False
        means another monitor moved it first and nothing was claimed.
        """
        wm = self.tables.watermark
        with self._begin() as connection:
            moved = connection.execute(
                update(wm)
                .where(wm.c.store == store, _at(wm, old))
                .values(
                    finished_us=new.finished_us,
                    batch_id=new.batch_id,
                    updated_us=now_us,
                )
            )
            if moved.rowcount != 1:
                return False
            connection.execute(
                insert(self.tables.claim).values(
                    store=store,
                    upto_us=new.finished_us,
                    upto_id=new.batch_id or "",
                    after_us=old.finished_us,
                    after_id=old.batch_id,
                    row_count=rows,
                    claimed_us=now_us,
                )
            )
        return True

    def due_claims(
        self, store: str, claimed_before_us: int, limit: int
    ) -> list[Claim]:
        """The oldest claims made before ``claimed_before_us``."""
        c = self.tables.claim.c
        query = (
            select(
                c.after_us,
                c.after_id,
                c.upto_us,
                c.upto_id,
                c.row_count,
                c.claimed_us,
            )
            .where(c.store == store, c.claimed_us <= claimed_before_us)
            .order_by(c.upto_us, c.upto_id)
            .limit(limit)
        )
        with self._begin() as connection:
            rows = connection.execute(query).all()
        return [
            Claim(
                Watermark(int(r[0]), r[1]),
                Watermark(int(r[2]), r[3] or None),
                int(r[4]),
                int(r[5]),
            )
            for r in rows
        ]

    def settle(self, store: str, claim: Claim) -> bool:
        """Remove a recounted claim; True only for the one who removed it."""
        c = self.tables.claim.c
        with self._begin() as connection:
            gone = connection.execute(
                delete(self.tables.claim).where(
                    c.store == store,
                    c.upto_us == claim.upto.finished_us,
                    c.upto_id == (claim.upto.batch_id or ""),
                )
            )
        return gone.rowcount == 1

    def drop(self) -> None:
        """Drop every state table of this prefix (tests, uninstall)."""
        with self._begin() as connection:
            for table in (
                self.tables.incident,
                self.tables.claim,
                self.tables.watermark,
                self.tables.version,
            ):
                table.drop(connection, checkfirst=True)

    def close(self) -> None:
        """Release the engine's connections."""
        self.engine.dispose()

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        with suppress_instrumentation(), self.engine.begin() as connection:
            yield connection

    def _migrate(self, connection: Connection) -> None:
        version = self.tables.version
        version.create(connection, checkfirst=True)
        found = connection.execute(
            select(version.c.version).where(version.c.id == 1)
        ).scalar()
        if found is None:
            connection.execute(insert(version).values(id=1, version=0))
            found = 0
        if found > SCHEMA_VERSION:
            raise StateError(
                f"{self.where} are at schema version {found}, but this "
                f"otel_batchmon knows versions up to {SCHEMA_VERSION}; "
                "upgrade otel_batchmon or set another state_table_prefix"
            )
        for target in range(found + 1, SCHEMA_VERSION + 1):
            _MIGRATIONS[target - 1](connection, self.tables)
            _log.info("%s: migrated to schema version %d", self.where, target)
        # Also proves the account may write here, even when nothing moved.
        connection.execute(
            update(version)
            .where(version.c.id == 1)
            .values(version=max(found, SCHEMA_VERSION))
        )

    def _raise_if_unwritable(self, exc: SQLAlchemyError) -> None:
        if is_unwritable(exc):
            failure = classify(exc)
            raise StateUnavailable(
                f"cannot write {self.where}: {failure.message}"
            ) from None


def _at(wm: Table, mark: Watermark) -> ColumnElement[bool]:
    if mark.batch_id is None:
        return and_(
            wm.c.finished_us == mark.finished_us, wm.c.batch_id.is_(None)
        )
    return and_(
        wm.c.finished_us == mark.finished_us, wm.c.batch_id == mark.batch_id
    )


@contextmanager
def _serialised(connection: Connection, prefix: str) -> Iterator[None]:
    # One migrator at a time per prefix: the others wait, then find the
    # work done. MariaDB even refuses DDL on a table another session is
    # creating (error 1684), so retrying alone is not enough there.
    name = f"otel_batchmon:{prefix}"
    dialect = connection.dialect.name
    if dialect == "postgresql":
        key = zlib.crc32(name.encode())
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({key})")
    elif dialect in ("mysql", "mariadb"):
        connection.execute(
            select(func.get_lock(name, _LOCK_WAIT_SECONDS))
        ).scalar()
        try:
            yield
        finally:
            connection.execute(select(func.release_lock(name))).scalar()
        return
    yield

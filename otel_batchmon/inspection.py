"""What ``otel-batchmon check`` reports: mapping, status values, indexes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from sqlalchemy import (
    Column,
    Index,
    MetaData,
    Table,
    column,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.schema import CreateIndex

from otel_batchmon import presets
from otel_batchmon._engine import classify, create_monitor_engine, mask_url
from otel_batchmon._relation import BoundTable
from otel_batchmon.config import COLUMN_ROLES, MonitorConfig, StoreConfig
from otel_batchmon.errors import ConfigError
from otel_batchmon.mapping import JsonPath
from otel_batchmon.status import StatusMap
from otel_batchmon.store import BatchStore

__all__ = ["IndexAdvice", "check_stores", "recommended_indexes"]

_MAX_NAME = 60


@dataclass(frozen=True)
class IndexAdvice:
    """One recommended index: why, and the statement that creates it."""

    name: str
    purpose: str
    index: Index
    # The plain columns, in order; empty for an index on expressions,
    # which only an index of the same name is taken to cover.
    columns: tuple[str, ...]

    def statement(self, dialect: Dialect) -> str:
        """The CREATE INDEX statement for ``dialect``."""
        ddl = CreateIndex(self.index).compile(
            dialect=dialect, compile_kwargs={"literal_binds": True}
        )
        return f"{str(ddl).strip()};"


def recommended_indexes(
    store: StoreConfig, columns: Mapping[str, str], dialect: str
) -> list[IndexAdvice]:
    """The indexes that keep a refresh cheap for this store and dialect.

    ``columns`` maps roles to the table's real column names.
    """
    names = sorted(set(columns.values()))
    table = Table(
        store.table,
        MetaData(),
        *(Column(n) for n in names),
        schema=store.schema,
    )
    status = table.c[columns["status"]]
    started = table.c[columns["started_at"]]
    finished = table.c[columns["finished_at"]]
    # SQLite compares julian days, so only an index on the same expression
    # is usable there.
    day = (
        (lambda c: func.julianday(c)) if dialect == "sqlite" else (lambda c: c)
    )
    running = StatusMap(store.statuses).raw_values(
        ("pending", "processing", *store.stuck_statuses)
    )
    partial = status.in_(running)
    advice = [
        _advice(store, "window by start time", (day(started),), (started,)),
        _advice(store, "finished rows", (day(finished),), (finished,)),
    ]
    queued_name = columns.get("queued_at")
    if dialect == "sqlite" and queued_name:
        # A batch not started yet is in the window by its queued time.
        # Without this index the OR of the two window tests makes SQLite
        # scan the table; PostgreSQL serves it from the start-time index.
        queued = table.c[queued_name]
        advice.append(
            _advice(store, "window by queued time", (day(queued),), (queued,))
        )
    running_index = (status, day(started))
    if dialect in ("postgresql", "sqlite"):
        advice.append(
            _advice(
                store,
                "running and stuck batches",
                running_index,
                (status, started),
                where=partial,
            )
        )
        return advice
    advice.append(
        _advice(
            store,
            "running and stuck batches",
            running_index,
            (status, started),
        )
    )
    advice.append(
        _advice(store, "last success", (status, finished), (status, finished))
    )
    return advice


def _advice(
    store: StoreConfig,
    purpose: str,
    expressions: tuple[Any, ...],
    columns: tuple[Column[Any], ...],
    where: Any = None,
) -> IndexAdvice:
    names = tuple(c.name for c in columns)
    suffix = "_running" if where is not None else ""
    name = f"ix_{store.table}_{'_'.join(names)}{suffix}"[:_MAX_NAME]
    options = {}
    if where is not None:
        options = {"postgresql_where": where, "sqlite_where": where}
    index = Index(name, *expressions, **options)
    plain = all(isinstance(e, Column) for e in expressions)
    return IndexAdvice(name, purpose, index, names if plain else ())


def check_stores(config: MonitorConfig, out: TextIO) -> bool:
    """Check every store and print what was found; True when usable."""
    print(f"configuration: ok, {len(config.stores)} store(s)", file=out)
    usable = True
    for store_config in config.stores:
        usable &= _check_store(config, store_config, out)
    return usable


def _check_store(
    config: MonitorConfig, store_config: StoreConfig, out: TextIO
) -> bool:
    where = f"{store_config.qualified_table} in " + mask_url(
        store_config.database_url
    )
    print(f"store {store_config.name}: {where}", file=out)
    engine = create_monitor_engine(
        store_config.database_url,
        config.statement_timeout_seconds,
        config.connect_timeout_seconds,
    )
    store = BatchStore(store_config, config.clock_offset_seconds)
    try:
        with engine.connect() as connection, connection.begin():
            _report_preset(store_config, out)
            bound = store.bind(connection)
            print(f"  columns: {_roles(store_config, bound)}", file=out)
            _report_statuses(store, connection, out)
            _report_indexes(store, connection, out)
            if config.refresh_mode == "incremental":
                _report_identity(store, connection, out)
            _report_metrics(store, out)
            snapshot = store.read(connection)
            print("  refresh: ok", file=out)
            for line in snapshot.summary_lines()[1:]:
                print(f"  {line}", file=out)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"  problem: {problem}", file=out)
        return False
    except Exception as exc:
        failure = classify(exc)
        print(
            f"  problem: cannot read the table ({failure.error_type}): "
            f"{failure.message}",
            file=out,
        )
        return False
    finally:
        engine.dispose()
    return True


def _roles(config: StoreConfig, bound: BoundTable) -> str:
    # Rules produce the status column of a derived table; only a real
    # column of the table is shown as the status role.
    found = set(bound.columns)
    if config.mapping.status_rules and "status" not in bound.real_columns:
        found.discard("status")
    shown = []
    for role in COLUMN_ROLES:
        source = config.columns.source(role) if role in found else None
        if isinstance(source, tuple):
            shown.append(f"{role}=first of {'|'.join(source)}")
        elif isinstance(source, JsonPath):
            path = ".".join(source.path)
            shown.append(f"{role}={source.column}->{path}")
        elif source is not None:
            shown.append(f"{role}={source}")
    if config.mapping.status_rules:
        shown.append(f"status rules={len(config.mapping.status_rules)}")
    return ", ".join(shown)


def _report_preset(config: StoreConfig, out: TextIO) -> None:
    mapping = config.mapping
    if mapping.preset is None:
        return
    values = ", ".join(
        f"{name}={value if value is not None else '(connection default)'}"
        for name, (_, value) in sorted(mapping.parameters.items())
    )
    title = presets.load(mapping.preset).get("title", mapping.preset)
    print(f"  preset: {mapping.preset} ({title})", file=out)
    if values:
        print(f"  preset parameters: {values}", file=out)
    if mapping.zone_hint == "writer_local" and config.timezone == "UTC":
        print(
            "  warning: this framework writes naive local times of the "
            "program that runs the jobs; set timezone to that zone (it "
            "is UTC now, so ages are off by the zone's offset otherwise)",
            file=out,
        )


def _report_metrics(store: BatchStore, out: TextIO) -> None:
    unavailable = store.unavailable()
    if not unavailable:
        print("  metrics: every batch metric is available", file=out)
        return
    print("  metrics not available (absent, never 0):", file=out)
    for metric, why in sorted(unavailable.items()):
        print(f"    {metric}: {why}", file=out)


def _report_statuses(
    store: BatchStore, connection: Connection, out: TextIO
) -> None:
    values = store.status_values(connection)
    unknown = {
        v: n for v, n in values.items() if not store.statuses.is_known(v)
    }
    if not unknown:
        print("  status values: all mapped", file=out)
        return
    listed = ", ".join(
        f"{'NULL' if v is None else repr(v)} ({n} rows)"
        for v, n in sorted(unknown.items(), key=lambda item: str(item[0]))
    )
    hint = "map them under [statuses]"
    if None in unknown:
        hint += " (NULL: set null_status)"
    print(
        f"  status values not mapped (reported as 'other'): {listed}; {hint}",
        file=out,
    )


def _report_indexes(
    store: BatchStore, connection: Connection, out: TextIO
) -> None:
    bound = store.bound
    assert bound is not None
    if bound.mapped:
        hint = _preset_index_advice(store.config)
        print(
            "  indexes: not checked for a query or a mapped relation"
            + (f"; the preset advises: {hint}" if hint else ""),
            file=out,
        )
        return
    existing = _existing_indexes(connection, bound.name, bound.schema)
    missing = [
        advice
        for advice in recommended_indexes(
            store.config, bound.columns, bound.dialect
        )
        if not _covered(advice, existing)
    ]
    if not missing:
        print("  indexes: all recommended indexes exist", file=out)
        return
    print("  missing recommended indexes:", file=out)
    for advice in missing:
        print(f"    -- {advice.purpose}", file=out)
        print(f"    {advice.statement(connection.dialect)}", file=out)


def _report_identity(
    store: BatchStore, connection: Connection, out: TextIO
) -> None:
    """Incremental reads hold rows by id: say when nothing keeps it
    unique (a plain table only; a relation's ids are the framework's)."""
    bound = store.bound
    assert bound is not None
    key = bound.columns.get("id")
    if bound.mapped or key is None:
        return
    found = inspect(connection)
    name, schema = bound.name, bound.schema
    primary = found.get_pk_constraint(name, schema=schema)
    keys: list[list[str]] = [list(primary.get("constrained_columns") or ())]
    keys += [
        list(unique["column_names"])
        for unique in found.get_unique_constraints(name, schema=schema)
    ]
    keys += [
        [str(c) for c in index["column_names"]]
        for index in found.get_indexes(name, schema=schema)
        if index.get("unique")
    ]
    if [key] in keys:
        return
    print(
        f"  warning: refresh_mode = incremental holds rows by id, but no "
        f"primary key or unique index keeps {key} unique; rows sharing an "
        "id are read in full once a reconciliation finds them, and until "
        "then a new row taking a finished row's id replaces it in the "
        "counts (add a unique index, or map id to a unique column)",
        file=out,
    )


def _preset_index_advice(config: StoreConfig) -> str | None:
    if config.mapping.preset is None:
        return None
    relation = presets.load(config.mapping.preset).get("relation", {})
    advice = relation.get("window_index")
    return str(advice) if advice else None


def _existing_indexes(
    connection: Connection, table: str, schema: str | None
) -> list[Any]:
    if connection.dialect.name != "sqlite":
        return list(inspect(connection).get_indexes(table, schema=schema))
    # SQLAlchemy skips SQLite indexes on expressions, which are exactly the
    # ones recommended there; their names are enough to match.
    rows: Any = connection.execute(
        select(column("name"))
        .select_from(text("sqlite_master"))
        .where(column("type") == "index", column("tbl_name") == table)
    )
    return [{"name": name, "column_names": []} for (name,) in rows]


def _covered(advice: IndexAdvice, existing: Sequence[Any]) -> bool:
    for index in existing:
        if index.get("name") == advice.name:
            return True
        names = tuple(index.get("column_names") or ())
        if advice.columns and names[: len(advice.columns)] == advice.columns:
            return True
    return False

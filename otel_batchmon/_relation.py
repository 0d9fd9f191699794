"""A store's relation bound to a database: the table or query it reads,
each role as an SQL expression over it, and how its times are encoded.

A plain table whose roles are all single columns is read as it is, so
its indexes serve the refresh. Anything more (a query, fallback chains,
JSON paths, status rules, a filter, roles meaningful only for some
statuses) is read through one derived table, ``batches``, whose columns
are named after the roles; the rest of the package then reads either
shape the same way. Identifiers are checked against what the database
reports and quoted by SQLAlchemy; only a user's or preset's ``query`` is
SQL text, and it runs in the monitor's read-only transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    JSON,
    Enum,
    Float,
    Integer,
    Numeric,
    String,
    and_,
    case,
    cast,
    column,
    false,
    func,
    inspect,
    literal,
    literal_column,
    not_,
    null,
    or_,
    select,
    table,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from otel_batchmon._dialects import (
    TimeColumn,
    is_aware,
    is_timestamp,
    time_sql_for,
)
from otel_batchmon.config import (
    CANONICAL_STATUSES,
    COLUMN_ROLES,
    REQUIRED_ROLES,
    TIME_ROLES,
    StoreConfig,
)
from otel_batchmon.errors import ConfigError
from otel_batchmon.mapping import Condition, JsonPath, RoleSource
from otel_batchmon.status import StatusMap

__all__ = ["RULE_MARK", "BoundTable", "bind_relation"]

# What a status rule writes into the status column of the derived table:
# the mark and the canonical word, which no table's own value looks like.
RULE_MARK = "~batchmon:"
_LISTED = 30
_DERIVED = "batches"
# Kinds of column a database reports: timestamps with and without zone,
# numbers (epoch encodings), and anything else.
_AWARE, _NAIVE, _NUMBER, _TEXT, _JSON, _OTHER, _UNKNOWN = (
    "aware",
    "naive",
    "number",
    "text",
    "json",
    "other",
    "unknown",
)
_PG_TYPES = {
    1184: _AWARE,
    1114: _NAIVE,
    1082: _NAIVE,
    25: _TEXT,
    1043: _TEXT,
    1042: _TEXT,
    19: _TEXT,
    114: _JSON,
    3802: _JSON,
}
_PG_NUMBERS = {20, 21, 23, 700, 701, 1700}
_MYSQL_TYPES = {7: _AWARE, 12: _NAIVE, 10: _NAIVE, 245: _JSON}
_MYSQL_NUMBERS = {0, 1, 2, 3, 4, 5, 8, 9, 246}


@dataclass(frozen=True)
class BoundTable:
    """The mapped relation as it exists: what to select from, each role's
    column name there, and the time roles' encodings.

    ``mapped`` is True when ``source`` is the derived table of roles, not
    the user's table itself; such a store is never written to.
    """

    schema: str | None
    name: str
    columns: Mapping[str, str]
    times: Mapping[str, TimeColumn]
    status_is_integer: bool
    dialect: str
    source: Any = None
    mapped: bool = False
    real_columns: Mapping[str, str] = field(default_factory=dict)


def bind_relation(
    config: StoreConfig, connection: Connection, statuses: StatusMap
) -> BoundTable:
    """Check the mapping against the database; raise one ConfigError."""
    base = _Base.of(config, connection)
    binder = _Binder(config, base, statuses)
    bound = binder.bind()
    if binder.problems:
        raise ConfigError(binder.problems)
    return bound


class _Base:
    """The table or query under the mapping, with its columns' kinds."""

    def __init__(
        self,
        schema: str | None,
        name: str,
        clause: Any,
        kinds: dict[str, str],
        dialect: str,
        is_query: bool,
        version: tuple[Any, ...] = (),
    ) -> None:
        self.schema = schema
        self.name = name
        self.clause = clause
        self.kinds = kinds
        self.dialect = dialect
        self.is_query = is_query
        self.version = version

    @classmethod
    def of(cls, config: StoreConfig, connection: Connection) -> _Base:
        dialect = connection.dialect.name
        queries = config.mapping.query
        if queries:
            sql = queries.get(_family(dialect), queries.get(""))
            if sql is None:
                raise ConfigError(
                    [
                        f"stores.{config.name}.query: no query for "
                        f"{dialect}; add query.{_family(dialect)} or "
                        "query.default"
                    ]
                )
            return cls._query(config, connection, sql, dialect)
        return cls._table(config, connection, dialect)

    @classmethod
    def _query(
        cls, config: StoreConfig, connection: Connection, sql: str, d: str
    ) -> _Base:
        # A backslash keeps every colon literal (PostgreSQL casts, JSON),
        # so no part of the user's text becomes a bound parameter.
        literal_sql = sql.replace(":", "\\:")
        probe = text(f"SELECT * FROM ({literal_sql}) AS probe WHERE 1 = 0")
        try:
            result = connection.execute(probe)
        except Exception as exc:  # the database says what is wrong
            reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
            raise ConfigError(
                [
                    f"stores.{config.name}.query: the database refused it: "
                    f"{reason}"
                ]
            ) from None
        names = list(result.keys())
        described = result.cursor.description
        codes = [d[1] for d in described] if described else [None] * len(names)
        result.close()
        kinds = {
            n: _kind_of_code(d, c) for n, c in zip(names, codes, strict=True)
        }
        clause = (
            text(literal_sql)
            .columns(*(column(n) for n in names))
            .subquery("relation")
        )
        version = connection.dialect.server_version_info or ()
        return cls(None, "(query)", clause, kinds, d, True, version)

    @classmethod
    def _table(
        cls, config: StoreConfig, connection: Connection, d: str
    ) -> _Base:
        inspector = inspect(connection)
        schema, name = config.schema, config.table
        where = f"store {config.name!r}"
        if schema is not None:
            schemas = list(inspector.get_schema_names())
            schema = resolve(schema, schemas)
            if schema is None:
                listed = ", ".join(sorted(schemas)[:_LISTED]) or "none"
                raise ConfigError(
                    [
                        f"{where}: schema {config.schema!r} of table "
                        f"{config.qualified_table!r} does not exist; "
                        f"schemas there: {listed}"
                    ]
                )
        tables = list(inspector.get_table_names(schema=schema))
        tables += list(inspector.get_view_names(schema=schema))
        real_name = resolve(name, tables)
        if real_name is None:
            listed = ", ".join(sorted(tables)[:_LISTED]) or "none"
            in_schema = f" in schema {schema!r}" if schema else ""
            raise ConfigError(
                [
                    f"{where}: table {config.qualified_table!r} does not "
                    f"exist{in_schema}; tables there: {listed}"
                ]
            )
        reflected = inspector.get_columns(real_name, schema=schema)
        kinds = {c["name"]: _kind_of_type(d, c["type"]) for c in reflected}
        clause = table(real_name, *(column(n) for n in kinds), schema=schema)
        version = connection.dialect.server_version_info or ()
        return cls(schema, real_name, clause, kinds, d, False, version)


class _Binder:
    """Resolves every role of one store against its base relation."""

    def __init__(
        self, config: StoreConfig, base: _Base, statuses: StatusMap
    ) -> None:
        self.config = config
        self.mapping = config.mapping
        self.base = base
        self.statuses = statuses
        self.problems: list[str] = []
        self.where = f"stores.{config.name}"
        self.names = list(base.kinds)

    def bind(self) -> BoundTable:
        for name in self.mapping.column_encodings:
            if resolve(name, self.names) is None:
                self.problems.append(
                    f"{self.where}.timestamps.per_column.{name}: no such "
                    f"column in {self.config.qualified_table!r}"
                )
        sources = {role: self.resolve_source(role) for role in COLUMN_ROLES}
        found = {r: s for r, s in sources.items() if s is not None}
        encodings = {
            role: self.encoding(role, found[role])
            for role in TIME_ROLES
            if role in found
        }
        status = found.get("status")
        is_integer = isinstance(status, str) and (
            self.base.kinds.get(status) == _NUMBER
        )
        if self._plain(found):
            columns = {r: s for r, s in found.items() if isinstance(s, str)}
            source = self.base.clause
            mapped = False
        else:
            columns = {role: role for role in found}
            if self.mapping.status_rules:
                columns["status"] = "status"
            source = self.derived(found, is_integer)
            mapped = True
            is_integer = is_integer and not self.mapping.status_rules
        times = {
            role: TimeColumn(
                column(columns[role]),
                encodings[role] == _AWARE,
                "timestamp"
                if encodings[role] in (_AWARE, _NAIVE)
                else encodings[role],
            )
            for role in encodings
        }
        return BoundTable(
            schema=self.base.schema,
            name=self.base.name,
            columns=columns,
            times=times,
            status_is_integer=is_integer,
            dialect=self.base.dialect,
            source=source,
            mapped=mapped,
            real_columns={
                r: s for r, s in found.items() if isinstance(s, str)
            },
        )

    def _status_needs_text(self, found: Mapping[str, RoleSource]) -> bool:
        # PostgreSQL compares an enum (or domain) with text values only
        # after a cast; other databases compare them as they are.
        status = found.get("status")
        return (
            _family(self.base.dialect) == "postgresql"
            and isinstance(status, str)
            and self.base.kinds.get(status) not in (_TEXT, _NUMBER)
        )

    def _plain(self, found: Mapping[str, RoleSource]) -> bool:
        m = self.mapping
        return not (
            self.base.is_query
            or self._status_needs_text(found)
            or m.filter
            or m.status_rules
            or m.only_when
            or any(not isinstance(s, str) for s in found.values())
            or len(set(found.values())) < len(found)
        )

    def resolve_source(self, role: str) -> RoleSource | None:
        source = self.config.columns.source(role)
        if source is None:
            return None
        needed = role in self.config.columns.explicit and (
            role not in self.mapping.optional_roles
        )
        if role == "status":
            needed = needed or not self.mapping.status_rules
        elif role in REQUIRED_ROLES:
            needed = True
        wanted = _columns_of(source)
        real = [resolve(name, self.names) for name in wanted]
        if any(r is None for r in real):
            if needed:
                missing = [
                    w for w, r in zip(wanted, real, strict=True) if r is None
                ]
                listed = ", ".join(self.names[:_LISTED])
                self.problems.append(
                    f"{self.where}.columns.{role}: column "
                    f"{', '.join(map(repr, missing))} is not in "
                    f"{self.config.qualified_table!r}; its columns are: "
                    f"{listed}"
                )
            return None
        names = [r for r in real if r is not None]
        if isinstance(source, JsonPath):
            return JsonPath(names[0], source.path)
        return names[0] if len(names) == 1 else tuple(names)

    def encoding(self, role: str, source: RoleSource) -> str:
        kinds = [self.kind_of(role, name) for name in _columns_of(source)]
        if len(set(kinds)) > 1:
            self.problems.append(
                f"{self.where}.columns.{role}: the fallback columns are "
                f"encoded differently ({', '.join(kinds)}); a chain needs "
                "one encoding"
            )
        return kinds[0]

    def kind_of(self, role: str, name: str) -> str:
        m = self.mapping
        declared = m.column_encodings.get(name, m.time_encoding)
        kind = self.base.kinds.get(name, _UNKNOWN)
        place = (
            f"{self.where} ({role})"
            if " " in role
            else f"{self.where}.columns.{role}"
        )
        if declared.startswith("epoch"):
            if kind in (_AWARE, _NAIVE):
                self.problems.append(
                    f"{place}: column {name!r} is a timestamp, but "
                    f"timestamps say {declared}; drop that encoding"
                )
                return kind
            return declared
        if kind == _NUMBER:
            self.problems.append(
                f"{place}: column {name!r} holds numbers; if they are "
                "Unix times set timestamps.per_column."
                f"{name} = epoch_s, epoch_ms or epoch_float"
            )
            return _NAIVE
        if kind in (_OTHER, _TEXT, _JSON):
            self.problems.append(
                f"{place}: column {name!r} is not a timestamp type"
            )
            return _NAIVE
        if kind == _UNKNOWN:
            return _AWARE if declared == "aware" else _NAIVE
        return kind

    def derived(
        self, found: Mapping[str, RoleSource], is_integer: bool
    ) -> Any:
        base = self.base.clause
        exprs = {role: self.expression(s) for role, s in found.items()}
        if "status" in exprs and self._status_needs_text(found):
            exprs["status"] = cast(exprs["status"], String(255))
        if self.mapping.status_rules:
            exprs["status"] = self.rule_status(exprs.get("status"))
        status = exprs.get("status")
        for role, canonicals in self.mapping.only_when.items():
            if role in exprs and status is not None:
                exprs[role] = case(
                    (self.status_among(status, canonicals), exprs[role])
                )
        query = select(*(e.label(r) for r, e in exprs.items())).select_from(
            base
        )
        for condition in self.mapping.filter:
            query = query.where(self.condition(condition))
        return query.subquery(_DERIVED)

    def status_among(
        self, status: Any, canonicals: Sequence[str]
    ) -> ColumnElement[bool]:
        """The row's canonical status is one of ``canonicals``; ``other``
        takes in every value the mapping does not know, as the counts do."""

        def values(wanted: Sequence[str]) -> list[Any]:
            raw = self.statuses.raw_values(wanted)
            if self.mapping.status_rules:
                raw = [str(v) for v in raw]
            return raw + [RULE_MARK + c for c in wanted]

        if "other" not in canonicals:
            return status.in_(values(canonicals))  # type: ignore[no-any-return]
        rest = [c for c in CANONICAL_STATUSES if c not in canonicals]
        if not rest:
            return true()
        return or_(status.is_(None), not_(status.in_(values(rest))))

    def rule_status(self, status: ColumnElement[Any] | None) -> Any:
        default = self.mapping.default_status
        otherwise: Any = (
            cast(status, String(255))
            if status is not None
            else literal(RULE_MARK + (default or "other"))
        )
        whens = [
            (
                and_(*(self.condition(c) for c in rule.when)),
                literal(RULE_MARK + rule.status),
            )
            for rule in self.mapping.status_rules
        ]
        return case(*whens, else_=otherwise)

    def expression(self, source: RoleSource) -> ColumnElement[Any]:
        c = self.base.clause.c
        if isinstance(source, str):
            found: ColumnElement[Any] = c[source]
            return found
        if isinstance(source, tuple):
            return func.coalesce(*(c[n] for n in source))
        return self.json(source)

    def json(self, source: JsonPath) -> ColumnElement[Any]:
        """The text at a JSON path, NULL where the value is not valid
        JSON: one malformed row must not fail every read of the store."""
        col = self.base.clause.c[source.column]
        kind = self.base.kinds.get(source.column, _UNKNOWN)
        family = _family(self.base.dialect)
        if kind not in (_JSON, _TEXT, _UNKNOWN):
            self.problems.append(
                f"{self.where}: JSON path on column {source.column!r}, "
                "which holds neither JSON nor text"
            )
            return null()
        if family == "postgresql":
            return self.postgres_json(source, col, kind)
        path = "$" + "".join(f'."{k}"' for k in source.path)
        extracted = func.json_extract(col, literal_column(f"'{path}'"))
        if family == "mysql":
            extracted = func.json_unquote(extracted)
        valid: ColumnElement[Any] = case(
            (func.json_valid(col) == 1, extracted)
        )
        return valid

    def postgres_json(
        self, source: JsonPath, col: Any, kind: str
    ) -> ColumnElement[Any]:
        keys = ",".join(source.path)
        at: ColumnElement[Any] = cast(col, JSONB).op("#>>")(
            literal_column(f"'{{{keys}}}'")
        )
        if kind == _JSON:
            return at
        major = self.base.version[0] if self.base.version else 0
        if isinstance(major, int) and major >= 16:
            guarded: ColumnElement[Any] = case(
                (col.bool_op("IS")(literal_column("JSON")), at)
            )
            return guarded
        self.problems.append(
            f"{self.where}: JSON path on text column {source.column!r}: "
            "PostgreSQL before 16 cannot skip a malformed value there, so "
            "one bad row would fail every read; store it as json or jsonb, "
            "or read it through a query"
        )
        return null()

    def condition(self, cond: Condition) -> ColumnElement[bool]:
        if cond.op == "any":
            return or_(
                *(
                    and_(*(self.condition(c) for c in group))
                    for group in cond.any_of
                )
            )
        if cond.op in ("past", "future"):
            return self.clock_condition(cond)
        target = self.operand(cond.column)
        if target is None:
            return false()
        return _compare(cond, target, self.operand(cond.other))

    def clock_condition(self, cond: Condition) -> ColumnElement[bool]:
        """A time column before (past) or after (future) the database
        clock, read with the column's encoding."""
        if (
            not isinstance(cond.column, str)
            or self.operand(cond.column) is None
        ):
            self.problems.append(
                f"{self.where}: {cond.op} compares a plain time column "
                "with the clock, not a JSON value"
            )
            return false()
        name = resolve(cond.column, self.names) or cond.column
        encoding = self.kind_of(f"condition on {name}", name)
        col = TimeColumn(
            self.base.clause.c[name],
            encoding == _AWARE,
            encoding if encoding.startswith("epoch") else "timestamp",
        )
        ts = time_sql_for(self.base.dialect, self.config.timezone)
        now = ts.at(col, None)
        if cond.op == "past":
            return ts.value(col) <= now
        return ts.value(col) > now

    def operand(self, source: RoleSource | None) -> Any:
        if source is None:
            return None
        real = resolve(_columns_of(source)[0], self.names)
        if real is None:
            self.problems.append(
                f"{self.where}: a rule or filter reads column "
                f"{_columns_of(source)[0]!r}, which is not in "
                f"{self.config.qualified_table!r}"
            )
            return None
        if isinstance(source, JsonPath):
            return self.json(JsonPath(real, source.path))
        return self.base.clause.c[real]


def _compare(cond: Condition, target: Any, other: Any) -> ColumnElement[bool]:
    op, value = cond.op, cond.value
    if op == "is_null":
        return target.is_(None)  # type: ignore[no-any-return]
    if op == "not_null":
        return target.isnot(None)  # type: ignore[no-any-return]
    if op == "is_true":
        return target == true()  # type: ignore[no-any-return]
    if op == "is_false":
        return target == false()  # type: ignore[no-any-return]
    if op == "in":
        return target.in_(list(value))  # type: ignore[no-any-return]
    if op == "not_in":
        return not_(target.in_(list(value)))  # type: ignore[no-any-return]
    if op == "starts_with":
        escaped = (
            str(value)
            .replace("\\", "\\\\")
            .replace("%", "\\%")
            .replace("_", "\\_")
        )
        return target.like(  # type: ignore[no-any-return]
            escaped + "%", escape="\\"
        )
    right = other if other is not None else literal(value)
    compare = {
        "eq": target == right,
        "ne": target != right,
        "gt": target > right,
        "ge": target >= right,
        "lt": target < right,
        "le": target <= right,
    }
    result: ColumnElement[bool] = compare[op]
    return result


def resolve(wanted: str, existing: Sequence[str]) -> str | None:
    """Match a name exactly, else case-insensitively when that is unique."""
    if wanted in existing:
        return wanted
    folded = [n for n in existing if n.casefold() == wanted.casefold()]
    return folded[0] if len(folded) == 1 else None


def _columns_of(source: RoleSource) -> list[str]:
    if isinstance(source, str):
        return [source]
    if isinstance(source, JsonPath):
        return [source.column]
    return list(source)


def _family(dialect: str) -> str:
    return "mysql" if dialect in ("mysql", "mariadb") else dialect


def _kind_of_type(dialect: str, column_type: Any) -> str:
    if is_timestamp(dialect, column_type) and dialect != "sqlite":
        return _AWARE if is_aware(dialect, column_type) else _NAIVE
    if isinstance(column_type, Integer | Numeric | Float):
        return _NUMBER
    if dialect == "sqlite":
        # SQLite keeps times as text of any declared type: read them all.
        return _UNKNOWN
    if isinstance(column_type, JSON):
        return _JSON
    if isinstance(column_type, String) and not isinstance(column_type, Enum):
        return _TEXT
    if dialect == "sqlite":
        return _UNKNOWN
    return _OTHER


def _kind_of_code(dialect: str, code: Any) -> str:
    family = _family(dialect)
    if family == "postgresql" and isinstance(code, int):
        if code in _PG_NUMBERS:
            return _NUMBER
        return _PG_TYPES.get(code, _OTHER)
    if family == "mysql" and isinstance(code, int):
        if code in _MYSQL_NUMBERS:
            return _NUMBER
        return _MYSQL_TYPES.get(code, _TEXT)
    return _UNKNOWN

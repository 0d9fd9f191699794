"""A preset's framework tables under their real names, and generated rows
in the framework's own layout.

The rows are clones of the preset's ``[[test.rows]]`` templates with
their times moved (seeded, so a failure can be replayed), unique ids,
child rows (step executions, claimed executions...) cloned with their
parent, and a few flawed rows (finish before start, a missing or future
timestamp). Every time is a whole second and lies more than a minute away
from ``now``, ``now - 4h`` and ``now - 24h``, so the seconds between
generating the rows and reading them cannot change a count.

Rendering per column encoding, the ``@now`` syntax and the DDL splitting
are the checker's own helpers (``otel_batchmon.presets._selfcheck``).
"""

from __future__ import annotations

import datetime as dt
import random
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from otel_batchmon.presets import _selfcheck
from otel_batchmon.presets._selfcheck import (
    parse_at,
    render_value,
    split_sql,
    substitute,
)

PRESET_DIR = Path(_selfcheck.__file__).resolve().parent
# conftest's backend names -> the presets' dialect names
DIALECT_OF = {
    "sqlite": "sqlite",
    "postgresql": "postgresql",
    "mariadb": "mysql",
}
HOUR = 3600
WINDOW_SECONDS = 24 * HOUR
STUCK_SECONDS = 4 * HOUR
HORIZON_SECONDS = 48 * HOUR
# No generated time comes closer than this to a window or stuck edge.
MARGIN_SECONDS = 90
EDGES = (0, -STUCK_SECONDS, -WINDOW_SECONDS)
# The substitution of the checker without its pre_ renaming: real names.
_REAL_NAMES: dict[str, Any] = {"test": {"tables": [], "objects": []}}
# River's CHECK ties finalized_at to the final states: never NULL there.
_FINISH_REQUIRED = {"river"}
# Relations that rename or derive their columns: which base column of the
# template table feeds a relation column (only those a flaw may touch).
_BASE_COLUMNS = {
    "spring_batch": {
        "id": "JOB_EXECUTION_ID",
        "status": "STATUS",
        "exit_code": "EXIT_CODE",
        "queued_at": "CREATE_TIME",
        "started_at": "START_TIME",
        "finished_at": "END_TIME",
    },
    "solid_queue": {
        "created_at": "created_at",
        "scheduled_at": "scheduled_at",
    },
}
_UUID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$", re.I)
_CREATED = re.compile(r"CREATE\s+(TABLE|TYPE)\s+([^\s(]+)", re.I)


def preset_names() -> list[str]:
    """Every shipped preset, by name."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_preset(name: str) -> dict[str, Any]:
    """The parsed TOML of one preset."""
    return _selfcheck.load(PRESET_DIR / f"{name}.toml")


def backends_of(preset: dict[str, Any]) -> list[str]:
    """The conftest backends among the dialects the preset supports."""
    wanted = set(preset["dialects"])
    return [b for b, d in DIALECT_OF.items() if d in wanted]


def bare_table(name: str) -> str:
    """``{prefix}JOB_EXECUTION`` -> ``JOB_EXECUTION``, ``{s}.job`` -> job."""
    return re.sub(r"\{[^}]*\}", "", name).split(".")[-1]


# ---------------------------------------------------------------- tables


@dataclass
class Placement:
    """Where a preset's tables were created, and the store settings that
    point the engine at them."""

    preset: dict[str, Any]
    backend: str
    url: str
    engine: Engine
    parameters: dict[str, str]
    namespace: str | None
    created: list[tuple[str, str]] = field(default_factory=list)

    @property
    def dialect(self) -> str:
        return DIALECT_OF[self.backend]


def has_schema_parameter(preset: dict[str, Any]) -> bool:
    """True when a parameter can move the tables to another schema."""
    kinds = {p.get("kind") for p in preset.get("parameters", {}).values()}
    return bool(kinds & {"schema", "identifier_prefix"})


def parameters_for(
    preset: dict[str, Any], dialect: str, namespace: str | None
) -> dict[str, str]:
    """Every preset parameter: real names, schema ``namespace`` (or
    SQLite's ``main``) where the preset takes a schema."""
    values: dict[str, str] = {}
    for name, spec in preset.get("parameters", {}).items():
        kind, default = spec.get("kind"), str(spec.get("default", ""))
        if kind == "schema":
            values[name] = namespace or "main"
        elif kind == "identifier_prefix" and namespace:
            values[name] = f"{namespace}.{default.split('.')[-1]}"
        else:
            values[name] = default
    return values


def render_ddl(
    preset: dict[str, Any],
    dialect: str,
    parameters: dict[str, str],
    without: frozenset[str] = frozenset(),
) -> list[str]:
    """The test DDL with the parameters in and the real table names,
    leaving out the columns named in ``without`` (an older release).

    Spring Batch's DDL puts the table prefix into constraint names; a
    prefix carrying a schema (``bmp_x.BATCH_``) is not a valid constraint
    name, so the schema part is dropped there.
    """
    script = preset["test"]["ddl"][dialect]
    statements = [
        substitute(s, _REAL_NAMES, parameters) for s in split_sql(script)
    ]
    if without:
        statements = [_without_columns(s, without) for s in statements]
    return [
        re.sub(r"CONSTRAINT\s+\w+\.(\w+)", r"CONSTRAINT \1", s, flags=re.I)
        for s in statements
    ]


def optional_columns(preset: dict[str, Any]) -> frozenset[str]:
    """Columns of the preset's optional roles (absent in some releases)."""
    columns = preset["columns"]
    names = [
        columns.get(role, "") for role in columns.get("optional_roles", [])
    ]
    return frozenset(n.lower() for n in names if isinstance(n, str) and n)


def _without_columns(statement: str, without: frozenset[str]) -> str:
    lines = [
        line
        for line in statement.splitlines()
        if line.strip().split(" ", 1)[0].strip('`"').lower() not in without
    ]
    return re.sub(r",(\s*\n\s*\))", r"\1", "\n".join(lines))


@contextmanager
def framework_tables(
    preset: dict[str, Any],
    backend: str,
    url: str,
    engine: Engine,
    without: frozenset[str] = frozenset(),
) -> Iterator[Placement]:
    """Create the preset's tables, yield where they are, drop them.

    PostgreSQL: schema ``bmp_<preset>`` when the preset takes a schema,
    else ``public``. MariaDB: database ``bmp_<preset>``, else ``test``.
    SQLite: the given file. Outside a namespace of our own, an existing
    table of the same name is never touched: the test fails instead.
    """
    dialect = DIALECT_OF[backend]
    namespace = None
    if dialect != "sqlite" and has_schema_parameter(preset):
        namespace = f"bmp_{preset['name']}"
    parameters = parameters_for(preset, dialect, namespace)
    placement = Placement(preset, backend, url, engine, parameters, namespace)
    statements = render_ddl(preset, dialect, parameters, without)
    try:
        _create(placement, statements)
        yield placement
    finally:
        _drop(placement)


def _create(placement: Placement, statements: list[str]) -> None:
    namespace, dialect = placement.namespace, placement.dialect
    kind = "SCHEMA" if dialect == "postgresql" else "DATABASE"
    if namespace is not None:
        with placement.engine.begin() as connection:
            # bmp_ names are this module's own: a leftover of an aborted
            # run of these tests may be dropped.
            cascade = " CASCADE" if dialect == "postgresql" else ""
            connection.exec_driver_sql(
                f"DROP {kind} IF EXISTS {namespace}{cascade}"
            )
            connection.exec_driver_sql(f"CREATE {kind} {namespace}")
        placement.created.append((kind, namespace))
    else:
        _refuse_existing(placement, statements)
    for statement in statements:
        with placement.engine.begin() as connection:
            connection.exec_driver_sql(statement)
        found = _CREATED.match(statement)
        if found and namespace is None:
            placement.created.append((found.group(1).upper(), found.group(2)))


def _refuse_existing(placement: Placement, statements: list[str]) -> None:
    inspector = sa.inspect(placement.engine)
    for statement in statements:
        found = _CREATED.match(statement)
        if found and found.group(1).upper() == "TABLE":
            name = found.group(2).split(".")[-1]
            if inspector.has_table(name):
                raise AssertionError(
                    f"table {name} already exists in {placement.url}; "
                    "it is not ours, so this test will not replace it"
                )


def _drop(placement: Placement) -> None:
    if placement.dialect == "sqlite":
        placement.created.clear()
        return
    cascade = " CASCADE" if placement.dialect == "postgresql" else ""
    with placement.engine.begin() as connection:
        for kind, name in reversed(placement.created):
            connection.exec_driver_sql(
                f"DROP {kind} IF EXISTS {name}{cascade}"
            )
    placement.created.clear()


# ------------------------------------------------------------------ rows


@dataclass
class TableRows:
    """Generated rows of one ``[[test.rows]]`` group.

    Time columns hold aware UTC datetimes (or None); everything else the
    template's value.
    """

    table: str
    encodings: dict[str, str]
    dialect_encodings: dict[str, dict[str, str]]
    casts: dict[str, dict[str, str]]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def encoding(self, column: str, dialect: str) -> str | None:
        by_dialect = self.dialect_encodings.get(dialect, {})
        return by_dialect.get(column, self.encodings.get(column))


@dataclass
class Generated:
    """Generated rows of every table of a preset, and what they mean."""

    now: dt.datetime
    groups: list[TableRows]
    # id -> the template's _expect, for clones the flaws left alone
    expected_status: dict[str, str]
    # id -> the flaw given to that clone
    flaws: dict[str, str]

    def without(self, columns: frozenset[str]) -> None:
        """Drop these columns from every row (an older release's layout)."""
        for group in self.groups:
            for row in group.rows:
                for key in [k for k in row if k.lower() in columns]:
                    del row[key]

    def rows_of(self, table: str) -> list[dict[str, Any]]:
        """Rows of every group whose bare table name is ``table``."""
        wanted = table.lower()
        return [
            row
            for group in self.groups
            if bare_table(group.table).lower() == wanted
            for row in group.rows
        ]


def sample_rows(
    preset: dict[str, Any], now: dt.datetime | None = None
) -> Generated:
    """The template rows themselves, times rendered at ``now``."""
    base = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    maker = _Generator(preset, random.Random(0), base)
    expected: dict[str, str] = {}
    for group, out in zip(preset["test"]["rows"], maker.out, strict=True):
        for row in group["values"]:
            out.rows.append(maker._plain(row))
            if "_expect" in row:
                expected[str(_get(row, maker.id_column))] = row["_expect"]
    return Generated(base, maker.out, expected, {})


def generate(
    preset: dict[str, Any],
    count: int = 300,
    seed: int = 1,
    now: dt.datetime | None = None,
) -> Generated:
    """``count`` clones of the template rows, with their child rows."""
    rng = random.Random(f"{preset['name']}:{seed}")
    base = now or dt.datetime.now(dt.UTC)
    base = base.replace(microsecond=0)
    return _Generator(preset, rng, base).run(count)


class _Generator:
    def __init__(
        self, preset: dict[str, Any], rng: random.Random, now: dt.datetime
    ) -> None:
        self.preset = preset
        self.rng = rng
        self.now = now
        self.id_column = preset["test"]["id_column"]
        self.groups = preset["test"]["rows"]
        self.ddl = _ddl_facts(preset)
        self.counters: dict[tuple[str, str], int] = {}
        self.out = [
            TableRows(
                g["table"],
                dict(g.get("encodings", {})),
                dict(g.get("dialect_encodings", {})),
                dict(g.get("casts", {})),
            )
            for g in self.groups
        ]
        self.expected: dict[str, str] = {}
        self.flaws: dict[str, str] = {}

    def run(self, count: int) -> Generated:
        templates = [
            (i, row)
            for i, group in enumerate(self.groups)
            if any("_expect" in r for r in group["values"])
            for row in group["values"]
        ]
        template_ids = {str(_get(r, self.id_column)) for _, r in templates}
        links = self._child_links(template_ids, {i for i, _ in templates})
        for i, group in enumerate(self.groups):
            if i in links or any(i == t for t, _ in templates):
                continue
            # Parents (job instances, flows): once, as written.
            for row in group["values"]:
                self.out[i].rows.append(self._plain(row))
        order = list(range(len(templates)))
        for n in range(count):
            if n % len(order) == 0:
                self.rng.shuffle(order)
            group_index, template = templates[order[n % len(order)]]
            self._clone(group_index, template, links)
        return Generated(self.now, self.out, self.expected, self.flaws)

    def _child_links(
        self, template_ids: set[str], template_groups: set[int]
    ) -> dict[int, str]:
        """Groups whose rows point at a template row: index -> column."""
        links: dict[int, str] = {}
        for i, group in enumerate(self.groups):
            if i in template_groups:
                continue
            for key in group["values"][0]:
                lowered = key.lower()
                if lowered != self.id_column.lower() and not (
                    lowered.endswith("_id")
                ):
                    continue
                values = {str(r.get(key)) for r in group["values"]}
                if values <= template_ids:
                    links[i] = key
                    break
        return links

    def _plain(self, row: dict[str, Any]) -> dict[str, Any]:
        return {
            k: self._at(parse_at(v, self.now))
            if isinstance(v, str) and v.startswith("@now")
            else v
            for k, v in row.items()
            if not k.startswith("_")
        }

    @staticmethod
    def _at(moment: dt.datetime) -> dt.datetime:
        return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)

    def _clone(
        self, group_index: int, template: dict[str, Any], links: dict[int, str]
    ) -> None:
        template_id = str(_get(template, self.id_column))
        children = [
            (i, row)
            for i, column in links.items()
            for row in self.groups[i]["values"]
            if str(row.get(column)) == template_id
        ]
        offsets = {
            self._offset(v)
            for row in [template, *(r for _, r in children)]
            for v in row.values()
            if isinstance(v, str) and v.startswith("@now")
        }
        flip = self.rng.random() < 0.35
        moved = self._time_map(sorted(offsets), flip)
        table = self.groups[group_index]["table"]
        row = self._moved(template, moved)
        self._unique(bare_table(table), row, skip=None)
        self._unique_column(row, self.id_column)
        new_id = _get(row, self.id_column)
        for i, child in children:
            copy = self._moved(child, moved)
            copy[links[i]] = new_id
            self._unique(bare_table(self.groups[i]["table"]), copy, links[i])
            self.out[i].rows.append(copy)
        vary = _VARIATIONS.get(self.preset["name"])
        if vary is not None:
            vary(self.rng, row)
        flaw = None
        if self.rng.random() < 0.12:
            flaw = self._flaw(template, row, bare_table(table))
        if flaw:
            self.flaws[str(new_id)] = flaw
        elif "_expect" in template:
            self.expected[str(new_id)] = template["_expect"]
        self.out[group_index].rows.append(row)

    def _offset(self, value: str) -> int:
        return int((parse_at(value, self.now) - self.now).total_seconds())

    def _moved(
        self, row: dict[str, Any], moved: dict[int, int]
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in row.items():
            if key.startswith("_"):
                continue
            if isinstance(value, str) and value.startswith("@now"):
                seconds = moved[self._offset(value)]
                value = self.now + dt.timedelta(seconds=seconds)
            out[key] = value
        return out

    def _time_map(self, offsets: list[int], flip: bool) -> dict[int, int]:
        """Template offsets -> new offsets, order kept within past and
        within future times. Past times move together (one anchor, one
        stretch) anywhere in the last 48 h; future ones stay future, or
        with ``flip`` become due (between the latest past time and now).
        """
        past = [o for o in offsets if o <= 0]
        future = [o for o in offsets if o > 0]
        span = past[-1] - past[0] if past else 0
        for _ in range(500):
            stretch = self.rng.uniform(0.3, 2.0)
            if span * stretch > 40 * HOUR:
                stretch = 40 * HOUR / span
            width = span * stretch
            anchor = self.rng.uniform(
                -HORIZON_SECONDS + HOUR, -(width + 2 * MARGIN_SECONDS)
            )
            result = {o: round(anchor + stretch * (o - past[0])) for o in past}
            scale = self.rng.uniform(0.3, 3.0)
            result |= {
                o: max(2 * MARGIN_SECONDS, round(scale * o)) for o in future
            }
            latest = max((result[o] for o in past), default=-HORIZON_SECONDS)
            room = -latest - 2 * MARGIN_SECONDS
            if flip and future and room > 20 * 60:
                share = self.rng.uniform(0.1, 0.9) * room / future[-1]
                result |= {o: round(latest + share * o) for o in future}
            if all(_clear(v) for v in result.values()):
                return result
        raise AssertionError(f"no placement for offsets {offsets}")

    def _unique(
        self, table: str, row: dict[str, Any], skip: str | None
    ) -> None:
        for column in sorted(self.ddl.unique.get(table.lower(), set())):
            key = _key(row, column)
            if key is not None and key != skip:
                self._unique_column(row, key)

    def _unique_column(self, row: dict[str, Any], column: str) -> None:
        key = _key(row, column)
        if key is None:
            return
        value = row[key]
        if isinstance(value, bool) or value is None:
            return
        if isinstance(value, int):
            slot = (column.lower(), "int")
            self.counters[slot] = self.counters.get(slot, 1000) + 1
            row[key] = self.counters[slot]
        elif isinstance(value, str) and _UUID.match(value):
            row[key] = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        elif isinstance(value, str):
            slot = (column.lower(), "str")
            self.counters[slot] = self.counters.get(slot, 0) + 1
            row[key] = f"{value}-g{self.counters[slot]}"

    # -------------------------------------------------------------- flaws

    def _flaw(
        self, template: dict[str, Any], row: dict[str, Any], table: str
    ) -> str | None:
        """Give the clone one impossible or edge timestamp, if its layout
        allows; returns the flaw's name."""
        choices = self._flaw_choices(template.get("_expect"), row, table)
        if not choices:
            return None
        flaw = self.rng.choice(sorted(choices))
        column, moment = choices[flaw]
        row[column] = moment
        return flaw

    def _flaw_choices(
        self, status: str | None, row: dict[str, Any], table: str
    ) -> dict[str, tuple[str, dt.datetime | None]]:
        """flaw name -> (column, new value) for the flaws this row allows."""
        start = self._base_column(row, "started_at")
        finish = self._finish_column(row)
        began = None if start is None else row[start]
        ended = None if finish is None else row[finish]
        later = self.now + dt.timedelta(
            seconds=self.rng.randint(HOUR, 3 * HOUR)
        )
        choices: dict[str, tuple[str, dt.datetime | None]] = {}
        finished = status in ("completed", "failed")
        if finished and start and finish and began and ended:
            earlier = began - dt.timedelta(seconds=self.rng.randint(60, HOUR))
            if _clear(self._seconds(earlier)):
                choices["finish_before_start"] = (finish, earlier)
        if finished and start and began and self._nullable(table, start):
            choices["no_start"] = (start, None)
        if status == "completed" and finish and ended:
            choices["future_finish"] = (finish, later)
        if (
            finished
            and finish
            and ended
            and self.preset["name"] not in (_FINISH_REQUIRED)
        ):
            choices["no_finish"] = (finish, None)
        if status == "processing" and start and began:
            choices["future_start"] = (start, later)
        columns = self.preset["columns"]
        finish_only = columns.get("only_when", {}).get("finished_at")
        spec = columns["finished_at"]
        if finish_only and status not in finish_only and isinstance(spec, str):
            # Celery 4 moves date_done on every state change: a running
            # row with a finish time that must not count.
            ago = self.rng.randint(2 * MARGIN_SECONDS, 3 * HOUR)
            moment = self.now - dt.timedelta(seconds=ago)
            choices["finish_ignored"] = (_key(row, spec) or spec, moment)
        return choices

    def _seconds(self, moment: dt.datetime) -> int:
        return int((moment - self.now).total_seconds())

    def _base_column(self, row: dict[str, Any], role: str) -> str | None:
        spec = self.preset["columns"].get(role, "")
        if not isinstance(spec, str) or not spec:
            return None
        relation = self.preset["relation"]
        aliases = _BASE_COLUMNS.get(self.preset["name"])
        if aliases is not None:
            base = aliases.get(spec)
            return None if base is None else _key(row, base)
        if relation["kind"] in ("table", "select"):
            return _key(row, spec)
        return None

    def _finish_column(self, row: dict[str, Any]) -> str | None:
        spec = self.preset["columns"].get("finished_at", "")
        if isinstance(spec, list):
            for member in spec:
                key = _key(row, member)
                if key is not None and row[key] is not None:
                    return key
            return None
        return self._base_column(row, "finished_at")

    def _nullable(self, table: str, column: str) -> bool:
        return column.lower() not in self.ddl.not_null.get(
            table.lower(), set()
        )


def _spring_exit_codes(rng: random.Random, row: dict[str, Any]) -> None:
    """A listener may end a COMPLETED execution with exit code FAILED or
    NOOP: what the opt-in rules of spring_batch refine."""
    if row.get("STATUS") == "COMPLETED" and rng.random() < 0.4:
        row["EXIT_CODE"] = rng.choice(["FAILED", "FAILED_VALIDATION", "NOOP"])


_VARIATIONS = {"spring_batch": _spring_exit_codes}


def _clear(seconds: float) -> bool:
    return all(abs(seconds - edge) > MARGIN_SECONDS for edge in EDGES)


def _key(row: dict[str, Any], column: str) -> str | None:
    """The row's key for ``column``, matched case-insensitively."""
    if column in row:
        return column
    lowered = column.lower()
    return next((k for k in row if k.lower() == lowered), None)


def _get(row: dict[str, Any], column: str) -> Any:
    key = _key(row, column)
    return None if key is None else row[key]


@dataclass
class _DdlFacts:
    unique: dict[str, set[str]]
    not_null: dict[str, set[str]]


def _ddl_facts(preset: dict[str, Any]) -> _DdlFacts:
    """Unique and NOT NULL columns per bare table name, from every DDL.

    For a composite key the last column is the one made unique, so
    (dag_id, run_id) keeps the DAG id and varies the run id.
    """
    facts = _DdlFacts({}, {})
    for script in preset["test"]["ddl"].values():
        for statement in split_sql(script):
            found = re.match(
                r"CREATE\s+TABLE\s+(\S+)\s*\((.*)\)", statement, re.I | re.S
            )
            if not found:
                continue
            table = bare_table(found.group(1)).lower()
            unique = facts.unique.setdefault(table, set())
            not_null = facts.not_null.setdefault(table, set())
            for line in found.group(2).splitlines():
                _read_column_line(line.strip().rstrip(","), unique, not_null)
    return facts


def _read_column_line(line: str, unique: set[str], not_null: set[str]) -> None:
    composite = re.search(r"(PRIMARY\s+KEY|UNIQUE)\s*\(([^)]*)\)", line, re.I)
    first = line.split(" ", 1)[0].strip('`"').lower()
    if composite and (
        line.upper().startswith(("CONSTRAINT", "PRIMARY", "UNIQUE"))
    ):
        names = [
            n.strip().strip('`"').lower()
            for n in composite.group(2).split(",")
        ]
        unique.add(names[-1])
        return
    if not first or first.upper() in ("FOREIGN", "CHECK", "KEY", "INDEX"):
        return
    upper = line.upper()
    if "PRIMARY KEY" in upper or re.search(r"\bUNIQUE\b", upper):
        unique.add(first)
    if "NOT NULL" in upper or "PRIMARY KEY" in upper:
        not_null.add(first)


# ---------------------------------------------------------------- insert


def insert_rows(
    placement: Placement,
    data: Generated,
    naive_offset: dt.timedelta = dt.timedelta(0),
) -> int:
    """Insert every generated row (executemany per table and key set);
    returns how many rows went in.

    ``naive_offset`` writes the columns the preset declares ``naive`` as
    wall-clock time of a zone that far from UTC (a writer's local time).
    """
    dialect = placement.dialect
    now = data.now.replace(tzinfo=None)
    total = 0
    with placement.engine.begin() as connection:
        _utc_session(connection, dialect)
        for group in data.groups:
            table = substitute(group.table, _REAL_NAMES, placement.parameters)
            by_keys: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for row in group.rows:
                by_keys.setdefault(tuple(row), []).append(row)
            for keys, rows in by_keys.items():
                statement = _insert_statement(table, keys, group, dialect)
                encodings = [group.encoding(k, dialect) for k in keys]
                shifts = [
                    naive_offset
                    if _declared(placement.preset, k, e) == "naive"
                    else dt.timedelta(0)
                    for k, e in zip(keys, encodings, strict=True)
                ]
                params = [
                    {
                        f"v{i}": _render(
                            row[k], encodings[i], dialect, now, shifts[i]
                        )
                        for i, k in enumerate(keys)
                    }
                    for row in rows
                ]
                connection.execute(sa.text(statement), params)
                total += len(rows)
    return total


def _declared(
    preset: dict[str, Any], column: str, encoding: str | None
) -> str:
    """The encoding of a column: the row group's, else [timestamps]."""
    if encoding is not None:
        return encoding
    stamps = preset.get("timestamps", {})
    per_column = {
        k.lower(): v for k, v in stamps.get("per_column", {}).items()
    }
    return str(per_column.get(column.lower(), stamps.get("default", "naive")))


def _utc_session(connection: Connection, dialect: str) -> None:
    if dialect == "postgresql":
        connection.exec_driver_sql("SET TIME ZONE 'UTC'")
    elif dialect == "mysql":
        connection.exec_driver_sql("SET time_zone = '+00:00'")


def _insert_statement(
    table: str, keys: tuple[str, ...], group: TableRows, dialect: str
) -> str:
    casts = group.casts.get(dialect, {})
    placeholders = [
        casts[k].replace("?", f":v{i}") if k in casts else f":v{i}"
        for i, k in enumerate(keys)
    ]
    return (
        f"INSERT INTO {table} ({', '.join(keys)}) "
        f"VALUES ({', '.join(placeholders)})"
    )


def _render(
    value: Any,
    encoding: str | None,
    dialect: str,
    now: dt.datetime,
    shift: dt.timedelta = dt.timedelta(0),
) -> Any:
    if isinstance(value, dt.datetime):
        moment = value.replace(tzinfo=None) + shift
        seconds = int((moment - now).total_seconds())
        sign = "+" if seconds >= 0 else "-"
        value = f"@now{sign}{abs(seconds)}s"
    return render_value(value, encoding, dialect, now)

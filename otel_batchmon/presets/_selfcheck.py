"""Check the preset data files against real databases (development tool).

For every ``*.toml`` preset in this directory and every dialect it lists
(and that is reachable), this creates the preset's test DDL with every
table renamed ``pre_<name>``, inserts its sample rows (``@now-2h`` style
offsets rendered per column encoding), runs the preset's relation, and
evaluates the status mapping with a small reference evaluator of the
mapping language described in presets/README.md. It fails when a mapped
column is missing from the relation, a sample row's canonical status is
not its ``_expect``, or a finished row lacks its timestamps. The tables
are dropped afterwards.

    python -m otel_batchmon.presets._selfcheck [--only NAME] \
        [--pg URL] [--mysql URL] [--no-pg] [--no-mysql]

It reads no framework's real tables and writes only ``pre_*`` objects.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROLES_REQUIRED = ("id", "started_at", "finished_at")
CANONICAL = ("pending", "processing", "completed", "failed", "other")
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
PREFIX_IDENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*\.)?[A-Za-z0-9_]*$")
OFFSET = re.compile(r"([+-])((?:\d+[dhms])+)")
UNIT = {"d": 86400, "h": 3600, "m": 60, "s": 1}
NON_ROLE_KEYS = (
    "optional_roles",
    "window_by",
    "only_when",
    "default_status",
    "finish_optional_for",
)
SCHEMA_FOR_TESTS = {"postgresql": "public", "mysql": "test", "sqlite": "main"}


def load(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        return tomllib.load(f)


def structural_problems(p: dict[str, Any]) -> list[str]:
    out = []
    for key in (
        "format",
        "name",
        "title",
        "completeness",
        "description",
        "dialects",
        "sources",
        "versions",
        "relation",
        "columns",
        "timestamps",
        "metrics",
        "retention",
        "test",
    ):
        if key not in p:
            out.append(f"missing [{key}]")
    for s in p.get("sources", []):
        keys = (
            ("url", "version", "used_for")
            if "url" in s
            else ("repo", "path", "commit", "used_for")
        )
        for k in keys:
            if k not in s:
                out.append(f"source without {k}: {s}")
        if "commit" in s and (
            not re.fullmatch(r"[0-9a-f]{40}", s["commit"])
            or set(s["commit"]) == {"0"}
        ):
            out.append(f"source commit is not a full sha: {s['commit']}")
    cols = p.get("columns", {})
    for role in ROLES_REQUIRED:
        if role not in cols:
            out.append(f"column role {role} not mapped")
    if "status" not in cols and "default_status" not in cols:
        out.append("neither a status column nor status_rules")
    st = p.get("statuses", {})
    seen: dict[str, str] = {}
    for canon, values in st.items():
        if canon in ("reasons", "stuck_statuses"):
            continue
        if canon not in CANONICAL:
            out.append(f"unknown canonical status {canon}")
        for v in values:
            if str(v) in seen:
                out.append(f"status value {v!r} in {seen[str(v)]} and {canon}")
            seen[str(v)] = canon
    for rule in p.get("status_rules", []):
        if rule.get("status") not in CANONICAL:
            out.append(f"rule {rule.get('name')} has bad status")
    m = p.get("metrics", {})
    if "available" not in m:
        out.append("metrics.available missing")
    return out


def render_params(p: dict[str, Any], dialect: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, spec in p.get("parameters", {}).items():
        values[name] = spec.get("default", "")
        if spec.get("kind") == "schema":
            values[name] = SCHEMA_FOR_TESTS[dialect]
    values.update(p.get("test", {}).get("parameters", {}))
    for name, value in values.items():
        kind = p.get("parameters", {}).get(name, {}).get("kind", "identifier")
        ok = PREFIX_IDENT if kind == "identifier_prefix" else IDENT
        if not ok.match(value):
            raise ValueError(
                f"parameter {name}={value!r} is not an identifier"
            )
    return values


def substitute(text: str, p: dict[str, Any], params: dict[str, str]) -> str:
    for name, value in params.items():
        text = text.replace("{" + name + "}", value)
    for obj in p["test"].get("tables", []) + p["test"].get("objects", []):
        text = re.sub(rf"\b{re.escape(obj)}\b", f"pre_{obj}", text)
    return text


def parse_at(value: str, now: dt.datetime) -> dt.datetime:
    rest = value[len("@now") :]
    t = now
    for sign, body in OFFSET.findall(rest):
        secs = sum(
            int(n) * UNIT[u] for n, u in re.findall(r"(\d+)([dhms])", body)
        )
        t = t + dt.timedelta(seconds=secs if sign == "+" else -secs)
    return t


def render_value(
    v: Any, enc: str | None, dialect: str, now: dt.datetime
) -> Any:
    if isinstance(v, str) and v.startswith("@now"):
        t = parse_at(v, now)
        if enc == "epoch_s":
            return int(t.replace(tzinfo=dt.UTC).timestamp())
        if enc == "epoch_ms":
            return int(t.replace(tzinfo=dt.UTC).timestamp() * 1000)
        if enc == "epoch_float":
            return t.replace(tzinfo=dt.UTC).timestamp()
        if enc == "iso_z":
            return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if dialect == "sqlite":
            return t.isoformat(sep=" ")
        return t
    if isinstance(v, dict | list):
        return json.dumps(v)
    return v


def split_sql(script: str) -> list[str]:
    return [
        s.strip()
        for s in re.split(r";\s*\n", script.strip() + "\n")
        if s.strip()
    ]


def get(row: dict[str, Any], spec: Any) -> Any:
    """Evaluate a column spec (name, fallback list, or json path) on a row."""
    if isinstance(spec, list):
        for s in spec:
            v = get(row, s)
            if v is not None:
                return v
        return None
    if isinstance(spec, dict):
        raw = row.get(spec["json"].lower())
        if raw is None:
            return None
        data = json.loads(raw) if isinstance(raw, str | bytes) else raw
        for key in spec["path"]:
            if isinstance(data, list) and isinstance(key, int):
                data = data[key] if -len(data) <= key < len(data) else None
            elif isinstance(data, dict):
                data = data.get(key)
            else:
                data = None
            if data is None:
                return None
        return data
    if spec == "":
        return None
    return row.get(spec.lower())


def cmp_value(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        return (
            v.replace(tzinfo=None)
            if v.tzinfo is None
            else v.astimezone(dt.UTC).replace(tzinfo=None)
        )
    return v


def cond_true(row: dict[str, Any], c: dict[str, Any]) -> bool:
    if "any" in c:
        return any(all(cond_true(row, x) for x in group) for group in c["any"])
    v = get(row, c["column"])
    op = c["op"]
    if op == "is_null":
        return v is None
    if op == "not_null":
        return v is not None
    if v is None:
        return False
    other: Any = get(row, c["other"]) if "other" in c else c.get("value")
    if "other" in c and other is None:
        return False
    v = cmp_value(v)
    other = cmp_value(other)
    if isinstance(v, str) and isinstance(other, dt.datetime):
        v = dt.datetime.fromisoformat(v.replace("Z", ""))
    if op == "eq":
        return str(v) == str(other)
    if op == "ne":
        return str(v) != str(other)
    if op == "in":
        return str(v) in {str(x) for x in other}
    if op == "not_in":
        return str(v) not in {str(x) for x in other}
    if op == "starts_with":
        return str(v).startswith(str(other))
    if op == "is_true":
        return bool(v)
    if op == "is_false":
        return not bool(v)
    if op == "gt":
        return bool(v > other)
    if op == "ge":
        return bool(v >= other)
    if op == "lt":
        return bool(v < other)
    if op == "le":
        return bool(v <= other)
    raise ValueError(f"unknown operator {op!r}")


def canonical(p: dict[str, Any], row: dict[str, Any], opt_in: bool) -> str:
    for rule in p.get("status_rules", []):
        if not rule.get("enabled", True) and not opt_in:
            continue
        if all(cond_true(row, c) for c in rule["when"]):
            return str(rule["status"])
    raw = get(row, p["columns"].get("status", ""))
    if raw is None:
        return str(p["columns"].get("default_status", "other"))
    for canon, values in p.get("statuses", {}).items():
        if canon in ("reasons", "stuck_statuses"):
            continue
        if str(raw) in {str(x) for x in values}:
            return str(canon)
    return "other"


def check_dialect(p: dict[str, Any], dialect: str, url: str) -> list[str]:
    import sqlalchemy as sa

    problems: list[str] = []
    ddl = p["test"]["ddl"].get(dialect)
    if ddl is None:
        return [f"{dialect}: no test DDL"]
    params = render_params(p, dialect)
    engine = sa.create_engine(url)
    statements = [substitute(s, p, params) for s in split_sql(ddl)]
    created: list[tuple[str, str]] = []
    for s in statements:
        m = re.match(r"CREATE\s+(TABLE|TYPE|SEQUENCE|VIEW)\s+(\S+)", s, re.I)
        if m:
            created.append((m.group(1).upper(), m.group(2).rstrip("(")))
    for name in [n for _, n in created]:
        bare = name.split(".")[-1]
        if not bare.lower().startswith("pre_"):
            return [f"{dialect}: refusing to create {name}: not a pre_ object"]
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    try:
        with engine.begin() as conn:
            if dialect == "postgresql":
                conn.exec_driver_sql("SET TIME ZONE 'UTC'")
            if dialect == "mysql":
                conn.exec_driver_sql("SET time_zone = '+00:00'")
            for s in statements:
                conn.exec_driver_sql(s)
            expected: dict[str, str] = {}
            expected_err: dict[str, str] = {}
            for group in p["test"]["rows"]:
                table = substitute(group["table"], p, params)
                encs = group.get("encodings", {})
                dialect_encs = group.get("dialect_encodings", {}).get(
                    dialect, {}
                )
                for values in group["values"]:
                    row = {
                        k: v
                        for k, v in values.items()
                        if not k.startswith("_")
                    }
                    if "_expect" in values:
                        expected[str(row[p["test"]["id_column"]])] = values[
                            "_expect"
                        ]
                    if "_expect_error" in values:
                        expected_err[str(row[p["test"]["id_column"]])] = (
                            values["_expect_error"]
                        )
                    cols = list(row)
                    bind = {
                        f"v{i}": render_value(
                            row[c],
                            dialect_encs.get(c, encs.get(c)),
                            dialect,
                            now,
                        )
                        for i, c in enumerate(cols)
                    }
                    casts = group.get("casts", {}).get(dialect, {})
                    ph = [
                        f"{casts[c]}".replace("?", f":v{i}")
                        if c in casts
                        else f":v{i}"
                        for i, c in enumerate(cols)
                    ]
                    quoted = [
                        f'"{c}"' if dialect != "mysql" else f"`{c}`"
                        for c in cols
                    ]
                    if p["test"].get("quote_columns", False):
                        collist = ", ".join(quoted)
                    else:
                        collist = ", ".join(cols)
                    conn.execute(
                        sa.text(
                            f"INSERT INTO {table} ({collist}) "
                            f"VALUES ({', '.join(ph)})"
                        ),
                        bind,
                    )
            rel = p["relation"]
            if rel["kind"] == "table":
                sql = f"SELECT * FROM {substitute(rel['table'], p, params)}"
            else:
                body = rel.get("dialect_sql", {}).get(dialect, rel["sql"])
                sql = f"SELECT * FROM ({substitute(body, p, params)}) AS r"
            result = conn.execute(sa.text(sql))
            rows = [
                {k.lower(): v for k, v in r._mapping.items()} for r in result
            ]
            if not rows:
                problems.append(f"{dialect}: relation returned no rows")
            have = set(rows[0]) if rows else set()
            optional = set(p["columns"].get("optional_roles", []))
            for role, spec in p["columns"].items():
                if role in NON_ROLE_KEYS or role in optional:
                    continue
                names = spec if isinstance(spec, list) else [spec]
                for n in names:
                    n = n["json"] if isinstance(n, dict) else n
                    if n and n.lower() not in have:
                        problems.append(
                            f"{dialect}: role {role} -> {n} not in "
                            f"relation {sorted(have)}"
                        )
            for rule in p.get("status_rules", []):
                for c in rule["when"]:
                    for cc in c.get("any", [[c]]):
                        for x in cc if isinstance(cc, list) else [cc]:
                            for key in ("column", "other"):
                                if key in x:
                                    n = (
                                        x[key]["json"]
                                        if isinstance(x[key], dict)
                                        else x[key]
                                    )
                                    if n.lower() not in have:
                                        problems.append(
                                            f"{dialect}: rule {rule['name']}"
                                            f" column {n} missing"
                                        )
            idcol = p["columns"]["id"]
            seen = set()
            unavailable_start = p["columns"].get("started_at") == ""
            for r in rows:
                rid = str(get(r, idcol))
                seen.add(rid)
                got = canonical(p, r, opt_in=False)
                want = expected.get(rid)
                if want is not None and got != want:
                    problems.append(
                        f"{dialect}: id {rid}: status {got}, "
                        f"expected {want} (row {r})"
                    )
                if (
                    rid in expected_err
                    and get(r, p["columns"].get("error", ""))
                    != expected_err[rid]
                ):
                    problems.append(
                        f"{dialect}: id {rid}: error "
                        f"{get(r, p['columns'].get('error', ''))!r}, "
                        f"expected {expected_err[rid]!r}"
                    )
                only = p["columns"].get("only_when", {})
                start_ok = (
                    "started_at" in only and got not in only["started_at"]
                )
                if got in ("completed", "failed") and got not in p[
                    "columns"
                ].get("finish_optional_for", []):
                    st = get(r, p["columns"]["started_at"])
                    fi = get(r, p["columns"]["finished_at"])
                    if fi is None:
                        problems.append(
                            f"{dialect}: id {rid} is {got} without finished_at"
                        )
                    elif st is None and not unavailable_start and not start_ok:
                        problems.append(
                            f"{dialect}: id {rid} is {got} without started_at"
                        )
            for rid in expected:
                if rid not in seen:
                    problems.append(
                        f"{dialect}: sample id {rid} missing from "
                        "relation output"
                    )
            for key in p["columns"]:
                if key not in (
                    *NON_ROLE_KEYS,
                    "id",
                    "status",
                    "queued_at",
                    "started_at",
                    "finished_at",
                    "heartbeat_at",
                    "due_at",
                    "kind",
                    "error",
                    "records_total",
                    "records_failed",
                    "refine",
                ):
                    problems.append(f"unknown role {key}")
    finally:
        with engine.begin() as conn:
            for kind, name in reversed(created):
                extra = " CASCADE" if dialect == "postgresql" else ""
                conn.exec_driver_sql(f"DROP {kind} IF EXISTS {name}{extra}")
        engine.dispose()
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only")
    ap.add_argument(
        "--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    ap.add_argument(
        "--mysql", default="mysql+pymysql://root@127.0.0.1:3306/test"
    )
    ap.add_argument("--no-pg", action="store_true")
    ap.add_argument("--no-mysql", action="store_true")
    args = ap.parse_args(argv)
    failures = 0
    tmp = tempfile.TemporaryDirectory()
    for path in sorted(HERE.glob("*.toml")):
        p = load(path)
        if args.only and p.get("name") != args.only:
            continue
        problems = structural_problems(p)
        for dialect in p.get("dialects", []):
            if dialect == "postgresql" and args.no_pg:
                continue
            if dialect == "mysql" and args.no_mysql:
                continue
            url = {
                "postgresql": args.pg,
                "mysql": args.mysql,
                "sqlite": f"sqlite:///{tmp.name}/{p['name']}.db",
            }[dialect]
            try:
                problems += check_dialect(p, dialect, url)
            except Exception as exc:  # report and go on with the next preset
                problems.append(f"{dialect}: {type(exc).__name__}: {exc}")
        status = "ok" if not problems else "FAIL"
        print(f"{p.get('name', path.name)}: {status}")
        for line in problems:
            print(f"  - {line}")
        failures += bool(problems)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

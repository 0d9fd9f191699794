"""Cost of a refresh against large batch tables, four ways side by side.

For each database, table size and growth model (see refresh/dataset.py),
one generated table with the recommended indexes is refreshed, in
rotating order, by:

* ``naive``: one query per exported value (refresh/sql.py);
* ``query-exporter``: the SQL of its configuration, one query per metric
  (the exporter itself is also run once per database from its own venv
  and scraped on 127.0.0.1, to prove the configuration works);
* ``ours, full``: ``BatchStore.read``, the single UNION ALL statement;
* ``ours, incremental``: ``IncrementalRefresh.read``, with its full
  reconciliation amortised over ``--reconcile-every`` (cost = read +
  reconcile x refresh interval / reconcile period); "not available" when
  ``otel_batchmon.incremental`` cannot be imported.

A writer thread changes the table meanwhile at the model's daily rate,
sped up ``--time-scale`` times. The incremental read is measured one
refresh interval (``--refresh-interval`` / ``--time-scale``) after a read
of its own, so it reads the changes of one interval. Targets are ratios
of this one run.

    python benchmarks/bench_refresh.py           # 10k-10M, enforces targets
    python benchmarks/bench_refresh.py --quick   # 10k-100k, reports only
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from refresh import qexporter
from refresh.approaches import (
    Capture,
    FullRefresh,
    IncrementalMonitor,
    Measured,
    SqlMonitor,
    incremental_or_reason,
    measure,
)
from refresh.cycles import run_cycles, time_callbacks
from refresh.dataset import Dataset, Target, drop, generate, size_label
from refresh.report import markdown_table, svg_plot, verdicts
from refresh.sql import naive_queries, query_exporter_queries
from refresh.writer import Writer
from sqlalchemy import create_engine, text

from otel_batchmon._engine import create_monitor_engine

HERE = Path(__file__).resolve().parent
POSTGRES_URL = os.environ.get(
    "BATCHMON_BENCH_POSTGRES_URL",
    "postgresql+psycopg://postgres@127.0.0.1:5432/test",
)
MARIADB_URL = os.environ.get(
    "BATCHMON_BENCH_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"
)
FULL_SIZES = (10_000, 100_000, 1_000_000, 10_000_000)
QUICK_SIZES = (10_000, 100_000)
CYCLE_ROWS = 100_000
STATEMENT_TIMEOUT_SECONDS = 300.0
# From this size on a round takes minutes on 2 shared cores: fewer rounds.
BIG_ROWS = 10_000_000
BIG_ROUNDS = 3


def main(argv: Sequence[str] | None = None) -> int:
    """Run every case; exit 1 when a target fails (not with --quick)."""
    args = _arguments(argv)
    if args.merge:
        return _merge(args)
    started = time.monotonic()
    targets, unavailable = _targets(args)
    if unavailable and os.environ.get("CI") == "true":
        print(f"CI=true and not reachable: {unavailable}", file=sys.stderr)
        return 1
    results: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "mode": "quick" if args.quick else "full",
        "machine": _machine(targets),
        "settings": {
            "refresh_interval_seconds": args.refresh_interval,
            "reconcile_every_seconds": args.reconcile_every,
            "time_scale": args.time_scale,
            "settle_lag_seconds": args.settle_lag,
            "rounds": args.rounds,
        },
        "skipped": unavailable,
        "cases": [],
        "cycles": [],
        "callbacks": [],
        "query_exporter": {},
    }
    for target in targets:
        _run_target(target, args, results)
    results["seconds"] = round(time.monotonic() - started, 1)
    return _finish(results, args)


def _finish(results: dict[str, Any], args: argparse.Namespace) -> int:
    found = verdicts(results["cases"], results["cycles"], results["callbacks"])
    results["targets"] = [v.__dict__ for v in found]
    _write(results, args)
    print()
    print(markdown_table(results["cases"]))
    print()
    for verdict in found:
        print(verdict.line())
    print(f"done in {results['seconds']:.0f} s")
    if args.quick:
        print("--quick: targets reported, not enforced")
        return 0
    return 0 if all(v.passed for v in found) else 1


def _merge(args: argparse.Namespace) -> int:
    """One report over several result files."""
    parts = [json.loads(Path(p).read_text()) for p in args.merge]
    merged: dict[str, Any] = {
        **parts[0],
        "command": " ; ".join(p["command"] for p in parts),
        "merged_from": list(args.merge),
        "seconds": max(p.get("seconds", 0) for p in parts),
    }
    for key in ("cases", "cycles", "callbacks"):
        merged[key] = [item for p in parts for item in p[key]]
    order = {"sqlite": 0, "postgresql": 1, "mysql": 2}
    merged["cases"].sort(
        key=lambda c: (order.get(c["database"], 3), c["rows"], c["model"])
    )
    for key in ("skipped", "query_exporter"):
        merged[key] = {k: v for p in parts for k, v in p[key].items()}
    merged["machine"]["code"] = [p["machine"]["code"] for p in parts]
    merged["machine"]["databases"] = {
        k: v for p in parts for k, v in p["machine"]["databases"].items()
    }
    args.quick = any(p["mode"] == "quick" for p in parts)
    return _finish(merged, args)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--databases",
        default=None,
        help="comma-separated: sqlite,postgresql,mysql",
    )
    parser.add_argument(
        "--sizes", default=None, help="comma-separated row counts"
    )
    parser.add_argument("--models", default="history,traffic")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--cycles", type=int, default=None)
    parser.add_argument("--mysql-max-rows", type=int, default=1_000_000)
    parser.add_argument("--refresh-interval", type=float, default=30.0)
    parser.add_argument("--reconcile-every", type=float, default=600.0)
    parser.add_argument("--time-scale", type=float, default=30.0)
    parser.add_argument("--settle-lag", type=float, default=30.0)
    parser.add_argument("--workdir", default="/tmp/bench-refresh")
    parser.add_argument(
        "--out",
        default=None,
        help="results folder (default: results/ here; the workdir with "
        "--quick, so CI leaves the checkout clean)",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="report on the cases of earlier result files together "
        "(for example databases run in separate processes); runs nothing",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the generated tables"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    default_dbs = "sqlite,postgresql" if quick else "sqlite,postgresql,mysql"
    args.databases = (args.databases or default_dbs).split(",")
    args.sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else list(QUICK_SIZES if quick else FULL_SIZES)
    )
    args.models = args.models.split(",")
    args.out = args.out or (args.workdir if quick else str(HERE / "results"))
    args.rounds = args.rounds or (3 if quick else 5)
    args.cycles = args.cycles or (20 if quick else 1000)
    return args


def _targets(args: argparse.Namespace) -> tuple[list[Target], dict[str, str]]:
    targets, unavailable = [], {}
    urls = {"postgresql": POSTGRES_URL, "mysql": MARIADB_URL}
    for name in args.databases:
        if name == "sqlite":
            targets.append(Target("sqlite", args.workdir))
            continue
        try:
            engine = create_engine(
                urls[name], connect_args={"connect_timeout": 5}
            )
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            engine.dispose()
            targets.append(Target(name, urls[name]))
        except Exception as exc:
            unavailable[name] = f"{type(exc).__name__}: {exc}"[:300]
            print(f"skipping {name}: not reachable", file=sys.stderr)
    return targets, unavailable


def _run_target(
    target: Target, args: argparse.Namespace, results: dict[str, Any]
) -> None:
    for rows in args.sizes:
        if target.dialect == "mysql" and rows > args.mysql_max_rows:
            results["skipped"][f"mysql {size_label(rows)}"] = (
                f"above --mysql-max-rows {args.mysql_max_rows:,}"
            )
            continue
        for model in args.models:
            dataset = Dataset(target, model, rows)
            print(
                f"{target.dialect} {model} {size_label(rows)}: generating",
                flush=True,
            )
            seconds = generate(dataset)
            try:
                if target.dialect not in results["query_exporter"]:
                    results["query_exporter"][target.dialect] = (
                        _run_query_exporter(dataset, args)
                    )
                if rows == CYCLE_ROWS and model == "history":
                    _cycles_and_callbacks(dataset, args, results)
                case = _run_case(dataset, args)
                case["generate_seconds"] = round(seconds, 1)
                results["cases"].append(case)
                _write(results, args, quiet=True)
            finally:
                if not args.keep:
                    drop(dataset)


def _run_query_exporter(
    dataset: Dataset, args: argparse.Namespace
) -> dict[str, Any]:
    folder = Path(args.workdir)
    folder.mkdir(parents=True, exist_ok=True)
    dialect = dataset.target.dialect
    config = qexporter.write_config(
        folder / f"query-exporter-{dialect}.yaml",
        dataset.url,
        dataset.table,
        dialect,
    )
    run = qexporter.run_once(config, folder / f"query-exporter-{dialect}.log")
    print(
        f"  query-exporter {qexporter.version()}: "
        f"{'ok' if run.ok else 'FAILED'}, {run.detail}",
        flush=True,
    )
    return {
        **run.__dict__,
        "version": qexporter.version(),
        "table": dataset.table,
    }


def _cycles_and_callbacks(
    dataset: Dataset, args: argparse.Namespace, results: dict[str, Any]
) -> None:
    where = f"{dataset.target.dialect} {size_label(dataset.rows)}"
    for approach in ("full", "incremental"):
        run = run_cycles(
            dataset.url,
            dataset.table,
            args.cycles,
            approach,
            args.reconcile_every,
        )
        if approach == "incremental" and run.error and "Import" in run.error:
            continue
        results["cycles"].append(
            {**run.__dict__, "where": f"{where}, ours {approach}"}
        )
        print(
            f"  {args.cycles} cycles ({approach}): "
            f"{run.error or f'{run.growth_kb:+.0f} KB'}",
            flush=True,
        )
    timing = time_callbacks(dataset.store_config(), 100 if args.quick else 500)
    results["callbacks"].append({**timing.__dict__, "where": where})


def _run_case(dataset: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    dialect = dataset.target.dialect
    engine = create_monitor_engine(
        dataset.url, STATEMENT_TIMEOUT_SECONDS, 10.0
    )
    capture = Capture(engine)
    config = dataset.store_config()
    monitors: list[Any] = [
        SqlMonitor("naive", naive_queries(dataset.table, dialect)),
        SqlMonitor(
            "query-exporter", query_exporter_queries(dataset.table, dialect)
        ),
        FullRefresh(config),
    ]
    # The writer runs time_scale times faster than the day it models, so
    # the settle lag shrinks with it, as the refresh interval does.
    incremental = incremental_or_reason(
        config, args.reconcile_every, args.settle_lag / args.time_scale
    )
    if isinstance(incremental, IncrementalMonitor):
        monitors.append(incremental)
    samples: dict[str, list[Measured]] = {m.name: [] for m in monitors}
    changed: list[int] = []
    reconciles: list[Measured] = []
    writer = Writer(
        dataset.url,
        dataset.table,
        dataset.batches_per_second * args.time_scale,
        max_seconds=1800.0,
    )
    try:
        for monitor in monitors:  # warm-up; the incremental reconciles
            measure(engine, capture, monitor)
        window_rows = _window_rows(monitors[2])
        writer.start()
        # Measure only once the rows finished within one read's look-back
        # (settle lag, interval and the read's 5 s clock margin) are the
        # writer's: sooner, the first size measured reads fewer of them.
        time.sleep(
            (args.settle_lag + args.refresh_interval) / args.time_scale + 6.0
        )
        rounds = args.rounds if dataset.rows < BIG_ROWS else BIG_ROUNDS
        for index in range(rounds):
            began = time.monotonic()
            order = (
                monitors[index % len(monitors) :]
                + monitors[: index % len(monitors)]
            )
            for monitor in order:
                if monitor is incremental:
                    # Measured one refresh interval after a read of its
                    # own, as it runs in production: the other approaches'
                    # reads (a minute at 10M rows) would otherwise be the
                    # interval, and the changes it reads would grow with
                    # their cost rather than with the writer's rate.
                    measure(engine, capture, incremental)  # not kept
                    last_changed = writer.changed_rows
                    time.sleep(args.refresh_interval / args.time_scale)
                    changed.append(writer.changed_rows - last_changed)
                samples[monitor.name].append(measure(engine, capture, monitor))
            time.sleep(max(0.0, 1.0 - (time.monotonic() - began)))
        if isinstance(incremental, IncrementalMonitor):
            reconciles = _reconciles(engine, capture, incremental, args)
    finally:
        writer.stop()
        engine.dispose()
    case = {
        "database": dialect,
        "model": dataset.model,
        "rows": dataset.rows,
        "window_rows": window_rows,
        "writer": {
            "batches_per_second": round(writer.rate, 3),
            "changed_rows": writer.changed_rows,
            "statements": writer.statements,
            "error": writer.error,
        },
        "approaches": {
            name: _summary(measured) for name, measured in samples.items()
        },
    }
    if isinstance(incremental, str):
        case["approaches"]["ours, incremental"] = {"status": incremental}
    else:
        _amortise(case, reconciles, changed, args)
    _print_case(case)
    return case


def _window_rows(full: FullRefresh) -> int:
    snapshot = full.snapshot
    return int(sum(snapshot.window_counts.values())) if snapshot else 0


def _reconciles(
    engine: Any,
    capture: Capture,
    incremental: IncrementalMonitor,
    args: argparse.Namespace,
) -> list[Measured]:
    measured = []
    incremental.reconciling = True
    try:
        for _ in range(2):
            measured.append(measure(engine, capture, incremental))
    finally:
        incremental.reconciling = False
    return measured


def _summary(measured: list[Measured]) -> dict[str, Any]:
    def median(values: list[float]) -> float:
        return float(statistics.median(values))

    summary: dict[str, Any] = {
        "wall_ms": median([m.wall_seconds for m in measured]) * 1000,
        "db_ms": median([m.db_seconds for m in measured]) * 1000,
        "db_ms_all": [round(m.db_seconds * 1000, 3) for m in measured],
        "statements": max(m.statements for m in measured),
    }
    if measured[0].rows_read is not None:
        summary["rows_read"] = median([m.rows_read or 0 for m in measured])
        summary["buffers"] = median([m.buffers or 0 for m in measured])
    skipped = sorted({s for m in measured for s in m.skipped})
    if skipped:
        summary["not_explained"] = skipped
    return summary


def _amortise(
    case: dict[str, Any],
    reconciles: list[Measured],
    changed: list[int],
    args: argparse.Namespace,
) -> None:
    entry = case["approaches"]["ours, incremental"]
    reconcile = _summary(reconciles)
    share = args.refresh_interval / args.reconcile_every
    entry["reconcile_db_ms"] = reconcile["db_ms"]
    entry["reconcile_wall_ms"] = reconcile["wall_ms"]
    entry["reconcile_share"] = share
    entry["cost_ms"] = entry["db_ms"] + reconcile["db_ms"] * share
    per_round = float(statistics.median(changed)) if changed else 0.0
    entry["changed_rows_per_read"] = per_round
    if per_round > 0:
        entry["cost_per_changed_row_ms"] = entry["cost_ms"] / per_round


def _print_case(case: dict[str, Any]) -> None:
    print(
        f"  window {case['window_rows']:,} rows, writer changed "
        f"{case['writer']['changed_rows']:,} rows"
    )
    for name, entry in case["approaches"].items():
        if "db_ms" not in entry:
            print(f"  {name:18} {entry.get('status')}")
            continue
        cost = entry.get("cost_ms", entry["db_ms"])
        print(
            f"  {name:18} {entry['statements']:3} statements  wall "
            f"{entry['wall_ms']:9.2f} ms  db {cost:9.2f} ms",
            flush=True,
        )


def _machine(targets: list[Target]) -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text().splitlines()[0]
    versions: dict[str, str] = {"sqlite": sqlite3.sqlite_version}
    for target in targets:
        if target.dialect == "sqlite":
            continue
        engine = create_engine(target.url_base)
        with engine.connect() as connection:
            versions[target.dialect] = str(
                connection.execute(text("SELECT version()")).scalar()
            )
        engine.dispose()
    nproc = subprocess.run(
        ["nproc"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "code": _code_state(),
        "nproc": nproc,
        "memory": meminfo.split(":", 1)[1].strip(),
        "python": platform.python_version(),
        "databases": versions,
        "query_exporter": qexporter.version() or "not installed",
    }


def _code_state() -> dict[str, Any]:
    """Which otel_batchmon was measured: the commit, and the package
    files that differed from it (the checkout is shared and moving)."""

    def git(*words: str) -> str:
        return subprocess.run(
            ["git", *words],
            capture_output=True,
            text=True,
            cwd=HERE,
            check=False,
        ).stdout.strip()

    changed = git("status", "--porcelain", "--", "../otel_batchmon")
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted_package_files": changed.splitlines(),
    }


def _write(
    results: dict[str, Any], args: argparse.Namespace, quiet: bool = False
) -> None:
    """Write the JSON and the plot (also after each case, so a long run
    that is stopped keeps what it measured)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    day = datetime.date.today().isoformat()
    path = out / f"refresh-{day}{suffix}.json"
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    svg = out / f"refresh{suffix}.svg"
    svg.write_text(svg_plot(results["cases"]) + "\n")
    if not quiet:
        print(f"results: {path}, plot: {svg}")


if __name__ == "__main__":
    sys.exit(main())

"""Targets as ratios of one run, the results table and the SVG plot."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

APPROACHES = ("naive", "query-exporter", "ours, full", "ours, incremental")
INCREMENTAL = "ours, incremental"
BASELINES = ("naive", "query-exporter")
RSS_GROWTH_BOUND_KB = 2048.0
CALLBACK_BOUND_MS = 1.0
COLOURS = {
    "naive": "#d62728",
    "query-exporter": "#ff7f0e",
    "ours, full": "#1f77b4",
    "ours, incremental": "#2ca02c",
}


@dataclass(frozen=True)
class Verdict:
    """One target: what was compared, the ratio, and whether it held."""

    name: str
    detail: str
    passed: bool | None  # None: could not be evaluated

    def line(self) -> str:
        word = {True: "PASS", False: "FAIL", None: "N/A "}[self.passed]
        return f"{word} {self.name}: {self.detail}"


def cost_ms(case: dict[str, Any], approach: str) -> float | None:
    """Database ms per refresh (incremental: reconcile amortised)."""
    entry = case["approaches"].get(approach)
    if not entry or "db_ms" not in entry:
        return None
    return float(entry.get("cost_ms", entry["db_ms"]))


def _find(
    cases: Iterable[dict[str, Any]], database: str, model: str, rows: int
) -> dict[str, Any] | None:
    for case in cases:
        if (case["database"], case["model"], case["rows"]) == (
            database,
            model,
            rows,
        ):
            return case
    return None


def verdicts(
    cases: list[dict[str, Any]],
    cycles: list[dict[str, Any]],
    callbacks: list[dict[str, Any]],
) -> list[Verdict]:
    """Evaluate every target that this run's data allows."""
    out: list[Verdict] = []
    for database in sorted({c["database"] for c in cases}):
        for model in ("history", "traffic"):
            out += _speedup(cases, database, model, 1_000_000, 5.0)
        out += _speedup(cases, database, "traffic", 10_000_000, 10.0)
        out.append(_history_flat(cases, database))
        out.append(_per_changed_row(cases, database))
    for run in cycles:
        name = f"RSS flat over {run['cycles']} refreshes ({run['where']})"
        if run.get("error"):
            out.append(Verdict(name, run["error"], None))
            continue
        growth = run["rss_end_kb"] - run["rss_start_kb"]
        out.append(
            Verdict(
                name,
                f"{run['rss_start_kb'] / 1024:.1f} -> "
                f"{run['rss_end_kb'] / 1024:.1f} MB, growth {growth:.0f} KB "
                f"(bound {RSS_GROWTH_BOUND_KB:.0f} KB)",
                growth <= RSS_GROWTH_BOUND_KB,
            )
        )
    for timing in callbacks:
        out.append(
            Verdict(
                f"gauge callbacks ({timing['where']})",
                f"collect() of the catalogue median "
                f"{timing['median_ms']:.3f} ms, p95 {timing['p95_ms']:.3f} "
                f"ms, {timing['points']} points (bound "
                f"{CALLBACK_BOUND_MS} ms)",
                timing["median_ms"] < CALLBACK_BOUND_MS,
            )
        )
    return out


def _speedup(
    cases: list[dict[str, Any]],
    database: str,
    model: str,
    rows: int,
    factor: float,
) -> list[Verdict]:
    case = _find(cases, database, model, rows)
    label = f"{database} {model} {rows:,} rows"
    if case is None:
        return []
    ours = cost_ms(case, INCREMENTAL)
    out = []
    for baseline in BASELINES:
        name = (
            f"{label}: incremental >= {factor:g}x less db time than {baseline}"
        )
        theirs = cost_ms(case, baseline)
        if ours is None or theirs is None:
            missing = INCREMENTAL if ours is None else baseline
            out.append(Verdict(name, f"{missing} not measured", None))
            continue
        ratio = theirs / ours if ours > 0 else float("inf")
        read = case["approaches"][INCREMENTAL]["db_ms"]
        out.append(
            Verdict(
                name,
                f"{baseline} {theirs:.2f} ms / incremental {ours:.2f} ms "
                f"= {ratio:.1f}x (its read alone, {read:.2f} ms: "
                f"{theirs / read:.0f}x)",
                ratio >= factor,
            )
        )
    return out


def _history_flat(cases: list[dict[str, Any]], database: str) -> Verdict:
    name = f"{database} history: incremental at 10M <= 1.3x of 1M"
    small = _find(cases, database, "history", 1_000_000)
    big = _find(cases, database, "history", 10_000_000)
    if small is None or big is None:
        return Verdict(name, "1M and 10M not both measured", None)
    a, b = cost_ms(small, INCREMENTAL), cost_ms(big, INCREMENTAL)
    if a is None or b is None:
        return Verdict(name, "incremental not measured", None)
    full = ""
    fa, fb = cost_ms(small, "ours, full"), cost_ms(big, "ours, full")
    if fa and fb:
        full = f" (full: {fb / fa:.2f}x)"
    return Verdict(
        name, f"{b:.2f} / {a:.2f} ms = {b / a:.2f}x{full}", b / a <= 1.3
    )


def _per_changed_row(cases: list[dict[str, Any]], database: str) -> Verdict:
    name = (
        f"{database} traffic: incremental cost per changed row at 10M "
        "<= 1.5x of 1M"
    )
    entries = []
    for rows in (1_000_000, 10_000_000):
        case = _find(cases, database, "traffic", rows)
        entry = (case or {}).get("approaches", {}).get(INCREMENTAL) or {}
        if "cost_per_changed_row_ms" not in entry:
            return Verdict(name, "not measured at 1M and 10M", None)
        entries.append(entry)
    a, b = (float(e["cost_per_changed_row_ms"]) for e in entries)
    read_a, read_b = (
        e["db_ms"] / e["changed_rows_per_read"] * 1000 for e in entries
    )
    return Verdict(
        name,
        f"{b * 1000:.0f} / {a * 1000:.0f} us per changed row = {b / a:.2f}x "
        f"(read alone, without the amortised reconcile: {read_b:.0f} / "
        f"{read_a:.0f} us = {read_b / read_a:.2f}x; changed rows per read "
        f"{entries[1]['changed_rows_per_read']:.0f} / "
        f"{entries[0]['changed_rows_per_read']:.0f})",
        b / a <= 1.5,
    )


def markdown_table(cases: list[dict[str, Any]]) -> str:
    """One line per case and approach."""
    lines = [
        "| database | model | rows | window rows | approach | statements "
        "| wall ms | db ms | rows read | buffers |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for case in cases:
        for approach in APPROACHES:
            entry = case["approaches"].get(approach)
            if entry is None:
                continue
            if "db_ms" not in entry:
                lines.append(
                    f"| {case['database']} | {case['model']} | "
                    f"{case['rows']:,} | {case['window_rows']:,} | "
                    f"{approach} | {entry.get('status', '')} | | | | |"
                )
                continue
            db = f"{entry['db_ms']:.2f}"
            if "cost_ms" in entry:
                db = (
                    f"{entry['cost_ms']:.2f} (read {entry['db_ms']:.2f} + "
                    f"reconcile {entry['reconcile_db_ms']:.1f} x "
                    f"{entry['reconcile_share']:.2f})"
                )
            lines.append(
                f"| {case['database']} | {case['model']} | "
                f"{case['rows']:,} | {case['window_rows']:,} | {approach} | "
                f"{entry['statements']} | {entry['wall_ms']:.2f} | {db} | "
                f"{_show(entry.get('rows_read'))} | "
                f"{_show(entry.get('buffers'))} |"
            )
    return "\n".join(lines)


def _show(value: Any) -> str:
    return "" if value is None else f"{value:,.0f}"


def svg_plot(cases: list[dict[str, Any]]) -> str:
    """Log-log database ms against table rows, one panel per database
    and growth model, one line per approach."""
    panels = sorted({(c["database"], c["model"]) for c in cases})
    width, height, pad = 420, 300, 55
    columns = 2
    rows_of_panels = (len(panels) + columns - 1) // columns
    total_w, total_h = columns * width, rows_of_panels * height + 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" '
        f'height="{total_h}" font-family="sans-serif" font-size="11">',
        f'<rect width="{total_w}" height="{total_h}" fill="white"/>',
    ]
    values = [
        cost_ms(c, a)
        for c in cases
        for a in APPROACHES
        if cost_ms(c, a) is not None
    ]
    sizes = sorted({c["rows"] for c in cases})
    if not values or not sizes:
        return "\n".join([*parts, "</svg>"])
    y_low = _decade_floor(min(v for v in values if v and v > 0))
    y_high = _decade_ceil(max(values))
    x_low, x_high = _decade_floor(min(sizes)), _decade_ceil(max(sizes))
    # One decade at least, so a single size or value still has an axis.
    x_high = max(x_high, x_low * 10)
    y_high = max(y_high, y_low * 10)
    for index, (database, model) in enumerate(panels):
        left = (index % columns) * width
        top = (index // columns) * height
        frame = _Frame(
            left + pad, top + 25, width - pad - 15, height - pad - 30
        )
        parts += frame.axes(x_low, x_high, y_low, y_high)
        parts.append(
            f'<text x="{left + width / 2}" y="{top + 16}" '
            f'text-anchor="middle" font-weight="bold">'
            f"{database}, {model} model: db ms per refresh</text>"
        )
        for approach in APPROACHES:
            points = []
            for case in cases:
                if (case["database"], case["model"]) != (database, model):
                    continue
                value = cost_ms(case, approach)
                if value and value > 0:
                    points.append((case["rows"], value))
            parts += frame.line(
                sorted(points), COLOURS[approach], x_low, x_high, y_low, y_high
            )
    legend_y = total_h - 15
    for index, approach in enumerate(APPROACHES):
        x = 20 + index * 180
        parts.append(
            f'<line x1="{x}" y1="{legend_y - 4}" x2="{x + 24}" '
            f'y2="{legend_y - 4}" stroke="{COLOURS[approach]}" '
            'stroke-width="2"/>'
        )
        parts.append(f'<text x="{x + 30}" y="{legend_y}">{approach}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _decade_floor(value: float) -> float:
    power = 1.0
    while power > value:
        power /= 10
    while power * 10 <= value:
        power *= 10
    return power


def _decade_ceil(value: float) -> float:
    power = _decade_floor(value)
    return power if power >= value else power * 10


@dataclass(frozen=True)
class _Frame:
    left: float
    top: float
    width: float
    height: float

    def x(self, value: float, low: float, high: float) -> float:
        from math import log10

        share = (log10(value) - log10(low)) / (log10(high) - log10(low))
        return self.left + share * self.width

    def y(self, value: float, low: float, high: float) -> float:
        from math import log10

        share = (log10(value) - log10(low)) / (log10(high) - log10(low))
        return self.top + self.height - share * self.height

    def axes(
        self, x_low: float, x_high: float, y_low: float, y_high: float
    ) -> list[str]:
        bottom = self.top + self.height
        out = [
            f'<rect x="{self.left}" y="{self.top}" width="{self.width}" '
            f'height="{self.height}" fill="none" stroke="#444"/>'
        ]
        tick = x_low
        while tick <= x_high * 1.001:
            x = self.x(tick, x_low, x_high)
            out.append(
                f'<line x1="{x:.1f}" y1="{self.top}" x2="{x:.1f}" '
                f'y2="{bottom}" stroke="#ddd"/>'
            )
            out.append(
                f'<text x="{x:.1f}" y="{bottom + 14}" text-anchor="middle">'
                f"{_rows_label(tick)}</text>"
            )
            tick *= 10
        tick = y_low
        while tick <= y_high * 1.001:
            y = self.y(tick, y_low, y_high)
            out.append(
                f'<line x1="{self.left}" y1="{y:.1f}" '
                f'x2="{self.left + self.width}" y2="{y:.1f}" stroke="#ddd"/>'
            )
            out.append(
                f'<text x="{self.left - 5}" y="{y + 4:.1f}" '
                f'text-anchor="end">{tick:g}</text>'
            )
            tick *= 10
        out.append(
            f'<text x="{self.left + self.width / 2}" y="{bottom + 28}" '
            'text-anchor="middle">table rows</text>'
        )
        return out

    def line(
        self,
        points: list[tuple[int, float]],
        colour: str,
        x_low: float,
        x_high: float,
        y_low: float,
        y_high: float,
    ) -> list[str]:
        if not points:
            return []
        xy = [
            (self.x(r, x_low, x_high), self.y(v, y_low, y_high))
            for r, v in points
        ]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
        out = [
            f'<polyline points="{path}" fill="none" stroke="{colour}" '
            'stroke-width="2"/>'
        ]
        out += [
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>'
            for x, y in xy
        ]
        return out


def _rows_label(rows: float) -> str:
    if rows >= 1_000_000:
        return f"{rows / 1_000_000:g}M"
    if rows >= 1000:
        return f"{rows / 1000:g}k"
    return f"{rows:g}"

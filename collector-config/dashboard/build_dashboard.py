"""Build the otel_batchmon Grafana dashboard from code.

Usage:
    python collector-config/dashboard/build_dashboard.py          # write
    python collector-config/dashboard/build_dashboard.py --check  # compare

Needs `grafana-foundation-sdk` (a development dependency only; the
committed JSON is what users import). The queries use the metric names
the OpenTelemetry Collector's Prometheus exporters give the catalogue in
`otel_batchmon/instruments.py`; tests/test_dashboard.py checks every
expression with promtool and against that catalogue.

Two query habits, both deliberate:

- Gauges are read with `max without (instance)`: only the lease holder
  reports database-wide values, but an exporter keeps a dead replica's
  last value for minutes, and adding replicas would multiply them.
- Counters and histograms are read with `sum(increase(...))`: each
  finished batch is recorded once, by one process, and counters restart
  with every process (new instance label), so the sum over instances is
  the total. `batch_source` is always filtered so that rows seen in the
  table (`store`) and rows reported by worker code (`worker`) are never
  added together.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import (
    dashboard,
    heatmap,
    prometheus,
    stat,
    timeseries,
)
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUTPUT = Path(__file__).with_name("otel-batchmon.json")
UID = "otel-batchmon"

_DATASOURCE = models.DataSourceRef(type_val="prometheus", uid="${datasource}")
_SELECTOR = 'job=~"$job", batch_store=~"$store"'
_EVENTS = _SELECTOR + ', batch_source=~"$source"'


def build() -> dashboard.Dashboard:
    """Return the dashboard builder with every row and panel."""
    board = (
        dashboard.Dashboard("otel_batchmon: batch jobs")
        .uid(UID)
        .description(
            "Batch jobs watched by otel_batchmon through an OpenTelemetry "
            "Collector Prometheus exporter."
        )
        .tags(["otel-batchmon", "batch", "opentelemetry"])
        .time("now-24h", "now")
        .refresh("1m")
        .timezone("browser")
        .tooltip(models.DashboardCursorSync.CROSSHAIR)
    )
    for variable in _variables():
        board = board.with_variable(variable)
    board = board.with_row(dashboard.Row("Batches in the window"))
    for panel in _window_panels():
        board = board.with_panel(panel)
    board = board.with_row(dashboard.Row("Finished and active batches"))
    for panel in _activity_panels():
        board = board.with_panel(panel)
    board = board.with_row(dashboard.Row("Monitor health"))
    for panel in _monitor_panels():
        board = board.with_panel(panel)
    return board


def render() -> str:
    """Return the dashboard as the exact text of the committed file."""
    model = build().build()
    text = JSONEncoder(sort_keys=True, indent=2).encode(model)
    # Round-trip through json so key order and spacing are canonical.
    return json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the dashboard JSON, or with --check compare it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if the committed JSON differs from a fresh build",
    )
    args = parser.parse_args(argv)
    text = render()
    if not args.check:
        OUTPUT.write_text(text, encoding="utf-8")
        return 0
    if OUTPUT.read_text(encoding="utf-8") == text:
        return 0
    print(f"{OUTPUT} is out of date: run {Path(__file__).name}")
    return 1


def _variables() -> list[cogbuilder.Builder[models.VariableModel]]:
    label_source = "batchmon_snapshot_age_seconds"
    return [
        dashboard.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus"),
        dashboard.QueryVariable("job")
        .label("Job")
        .datasource(_DATASOURCE)
        .query(f"label_values({label_source}, job)")
        .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(models.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*"),
        dashboard.QueryVariable("store")
        .label("Store")
        .datasource(_DATASOURCE)
        .query(f'label_values({label_source}{{job=~"$job"}}, batch_store)')
        .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(models.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*"),
        dashboard.CustomVariable("source")
        .label("Event source")
        .description(
            "store: rows the monitor saw finish in the table; worker: "
            "batches reported by track_batch. Never add the two."
        )
        .values("store,worker")
        .current(models.VariableOption(text="store", value="store")),
    ]


def _window_panels() -> list[cogbuilder.Builder[models.Panel]]:
    return [
        _stat(
            "Batches in the window",
            f"max without (instance) (batch_window_count{{{_SELECTOR}}})",
            "{{batch_store}} {{batch_status}}",
            unit="short",
            width=8,
        ),
        _stat(
            "Failure ratio",
            "max without (instance) "
            f"(batch_window_failure_ratio{{{_SELECTOR}}})",
            "{{batch_store}}",
            unit="percentunit",
            steps=[(None, "green"), (0.05, "orange"), (0.2, "red")],
        ),
        _stat(
            "Stuck batches",
            f"max without (instance) (batch_stuck_count{{{_SELECTOR}}})",
            "{{batch_store}}",
            unit="short",
            steps=[(None, "green"), (1, "red")],
        ),
        _stat(
            "Since last success",
            "max without (instance) "
            f"(batch_last_success_age_seconds{{{_SELECTOR}}})",
            "{{batch_store}}",
            unit="s",
            steps=[(None, "green"), (6 * 3600, "red")],
        ),
        _stat(
            "Mean duration",
            "max without (instance) "
            f"(batch_window_duration_mean_seconds{{{_SELECTOR}}})",
            "{{batch_store}}",
            unit="s",
        ),
    ]


def _activity_panels() -> list[cogbuilder.Builder[models.Panel]]:
    return [
        _timeseries(
            "Finished batches",
            [
                (
                    "sum by (batch_store, batch_status) (increase("
                    f"batch_finished_total{{{_EVENTS}}}[$__rate_interval]))",
                    "{{batch_store}} {{batch_status}}",
                )
            ],
            unit="short",
            width=12,
        ),
        _duration_heatmap(),
        _timeseries(
            "Active batches",
            [
                (
                    "max without (instance) "
                    f"(batch_active_count{{{_SELECTOR}}})",
                    "{{batch_store}} {{batch_status}}",
                )
            ],
            unit="short",
        ),
        _timeseries(
            "Oldest active batch",
            [
                (
                    "max without (instance) "
                    f"(batch_processing_oldest_age_seconds{{{_SELECTOR}}})",
                    "{{batch_store}} processing",
                ),
                (
                    "max without (instance) "
                    f"(batch_pending_oldest_age_seconds{{{_SELECTOR}}})",
                    "{{batch_store}} pending",
                ),
            ],
            unit="s",
        ),
        _timeseries(
            "Records processed",
            [
                (
                    "sum by (batch_store, batch_record_outcome) (increase("
                    f"batch_records_total{{{_EVENTS}}}[$__rate_interval]))",
                    "{{batch_store}} {{batch_record_outcome}}",
                )
            ],
            unit="short",
        ),
    ]


def _monitor_panels() -> list[cogbuilder.Builder[models.Panel]]:
    return [
        _timeseries(
            "Snapshot age per instance",
            [
                (
                    f"batchmon_snapshot_age_seconds{{{_SELECTOR}}}",
                    "{{instance}} {{batch_store}}",
                )
            ],
            unit="s",
        ),
        _timeseries(
            "Refresh errors",
            [
                (
                    "sum by (batch_store, error_type) (increase("
                    f"batchmon_refresh_errors_total{{{_SELECTOR}}}"
                    "[$__rate_interval]))",
                    "{{batch_store}} {{error_type}}",
                )
            ],
            unit="short",
        ),
        _timeseries(
            "Refresh duration (p95)",
            [
                (
                    "histogram_quantile(0.95, sum by (le, batch_store) (rate("
                    "batchmon_refresh_duration_seconds_bucket"
                    f"{{{_SELECTOR}}}[$__rate_interval])))",
                    "{{batch_store}}",
                )
            ],
            unit="s",
        ),
    ]


def _duration_heatmap() -> heatmap.Panel:
    query = (
        prometheus.Dataquery()
        .expr(
            "sum by (le) (increase("
            f"batch_duration_seconds_bucket{{{_EVENTS}}}[$__rate_interval]))"
        )
        .legend_format("{{le}}")
        .format(PromQueryFormat.HEATMAP)
        .ref_id("A")
    )
    return (
        heatmap.Panel()
        .title("Batch duration")
        .description("Finished batches per duration bucket (batch.duration).")
        .datasource(_DATASOURCE)
        .with_target(query)
        .calculate(False)
        .show_tooltip()
        .y_axis(heatmap.YAxisConfig().unit("s"))
        .cell_values(heatmap.CellValues().unit("short"))
        .height(8)
        .span(12)
    )


def _stat(
    title: str,
    expr: str,
    legend: str,
    *,
    unit: str,
    width: int = 4,
    steps: list[tuple[float | None, str]] | None = None,
) -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .datasource(_DATASOURCE)
        .with_target(_query(expr, legend, instant=True))
        .unit(unit)
        .color_mode(common.BigValueColorMode.VALUE)
        .graph_mode(common.BigValueGraphMode.NONE)
        .reduce_options(
            common_builders.ReduceDataOptions().calcs(["lastNotNull"])
        )
        .height(5)
        .span(width)
    )
    if steps is not None:
        panel = panel.thresholds(_thresholds(steps))
    return panel


def _timeseries(
    title: str,
    queries: list[tuple[str, str]],
    *,
    unit: str,
    width: int = 8,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .datasource(_DATASOURCE)
        .unit(unit)
        .height(8)
        .span(width)
    )
    for index, (expr, legend) in enumerate(queries):
        ref = chr(ord("A") + index)
        panel = panel.with_target(_query(expr, legend, ref=ref))
    return panel


def _query(
    expr: str, legend: str, *, ref: str = "A", instant: bool = False
) -> prometheus.Dataquery:
    query = prometheus.Dataquery().expr(expr).legend_format(legend)
    query = query.ref_id(ref)
    return query.instant() if instant else query.range()


def _thresholds(
    steps: list[tuple[float | None, str]],
) -> dashboard.ThresholdsConfig:
    return (
        dashboard.ThresholdsConfig()
        .mode(models.ThresholdsMode.ABSOLUTE)
        .steps([models.Threshold(value, color) for value, color in steps])
    )


if __name__ == "__main__":
    sys.exit(main())

"""The shipped Grafana dashboard: generated, valid PromQL, real names.

Every expression goes through `promtool check rules` inside a throwaway
recording-rule file (promtool can only run queries against a server) and
may name only series the Collector exports for the catalogue.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from _prometheus_names import (
    exported_metric_names,
    promql_metric_names,
    require_tool,
)

from otel_batchmon.instruments import InstrumentKind

DASHBOARD_DIR = Path(__file__).resolve().parents[1] / "collector-config"
DASHBOARD_DIR = DASHBOARD_DIR / "dashboard"
DASHBOARD = DASHBOARD_DIR / "otel-batchmon.json"
GENERATOR = DASHBOARD_DIR / "build_dashboard.py"
TIMEOUT_SECONDS = 30

# Grafana substitutes these before a query reaches Prometheus.
_GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$job": ".*",
    "$store": ".*",
    "$source": "store",
}


def _dashboard() -> dict[str, Any]:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return board


def _panels() -> list[dict[str, Any]]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def _expressions() -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in _panels()
        for target in panel.get("targets", [])
    ]


def _variable_selectors() -> list[str]:
    selectors = []
    for variable in _dashboard()["templating"]["list"]:
        match = re.fullmatch(
            r"label_values\((.+),\s*\w+\)", str(variable.get("query", ""))
        )
        if variable["type"] == "query" and match:
            selectors.append(match.group(1))
    return selectors


def _as_prometheus_sees_it(expr: str) -> str:
    for variable, value in _GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def _load_generator() -> ModuleType:
    try:
        import grafana_foundation_sdk  # noqa: F401
    except ImportError:
        message = "grafana-foundation-sdk is not installed (dev dependency)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    module_spec = importlib.util.spec_from_file_location(
        "build_dashboard", GENERATOR
    )
    assert module_spec is not None
    assert module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_regenerating_the_dashboard_gives_the_committed_file() -> None:
    generator = _load_generator()

    assert generator.render() == DASHBOARD.read_text(encoding="utf-8")


def test_every_expression_is_valid_promql_for_promtool(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    expressions = [expr for _, expr in _expressions()]
    expressions += _variable_selectors()
    rules = {
        "groups": [
            {
                "name": "dashboard-expressions",
                "rules": [
                    {
                        "record": f"dashboard:expression_{index}",
                        "expr": _as_prometheus_sees_it(expr),
                    }
                    for index, expr in enumerate(expressions)
                ],
            }
        ]
    }
    rule_file = tmp_path / "dashboard-rules.yml"
    rule_file.write_text(yaml.safe_dump(rules), encoding="utf-8")

    result = subprocess.run(
        [promtool, "check", "rules", str(rule_file)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(expressions)} rules found" in result.stdout


def test_promtool_rejects_a_broken_expression(tmp_path: Path) -> None:
    # Guards the check above against passing whatever it is given.
    promtool = require_tool("promtool")
    rule_file = tmp_path / "broken.yml"
    rule_file.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "broken",
                        "rules": [
                            {"record": "x:y", "expr": "sum by (le (foo)"}
                        ],
                    }
                ]
            }
        ),
        encoding="utf-8",
    )

    result = subprocess.run(
        [promtool, "check", "rules", str(rule_file)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )

    assert result.returncode != 0


def test_expressions_name_only_series_of_the_catalogue() -> None:
    exported = exported_metric_names()
    expressions = [expr for _, expr in _expressions()]

    for expr in [*expressions, *_variable_selectors()]:
        names = promql_metric_names(_as_prometheus_sees_it(expr))

        assert names, expr
        assert names <= exported.keys(), expr


def test_gauges_are_never_summed_across_instances() -> None:
    exported = exported_metric_names()

    for title, expr in _expressions():
        kinds = {
            exported[name].kind
            for name in promql_metric_names(_as_prometheus_sees_it(expr))
        }
        if re.search(r"\bsum\b", expr):
            assert InstrumentKind.GAUGE not in kinds, title
        elif kinds == {InstrumentKind.GAUGE} and "instance" not in title:
            assert "max without (instance)" in expr, title


def test_event_panels_filter_one_batch_source() -> None:
    for title, expr in _expressions():
        names = promql_metric_names(_as_prometheus_sees_it(expr))
        if names & {"batch_finished_total", "batch_records_total"}:
            assert 'batch_source=~"$source"' in expr, title


def test_dashboard_shows_every_view_the_design_asks_for() -> None:
    names_by_type: dict[str, set[str]] = {}
    for panel in _panels():
        for target in panel.get("targets", []):
            names_by_type.setdefault(panel["type"], set()).update(
                promql_metric_names(_as_prometheus_sees_it(target["expr"]))
            )
    shown = set().union(*names_by_type.values())

    assert "batch_duration_seconds_bucket" in names_by_type["heatmap"]
    assert {
        "batch_window_count",
        "batch_window_failure_ratio",
        "batch_stuck_count",
        "batch_last_success_age_seconds",
        "batch_finished_total",
        "batchmon_snapshot_age_seconds",
        "batchmon_refresh_errors_total",
    } <= shown


def test_panels_use_the_datasource_variable_and_fit_the_grid() -> None:
    for panel in _panels():
        grid = panel["gridPos"]

        assert panel["datasource"] == {
            "type": "prometheus",
            "uid": "${datasource}",
        }
        assert grid["x"] + grid["w"] <= 24, panel["title"]

"""The shipped Prometheus rules and Alertmanager example, with real tools.

promtool checks and unit-tests the rules (firing, not firing, and three
replicas that must not add up); amtool checks the Alertmanager example
and its routing. Metric names in the rules must be names the Collector
really exports for the catalogue, derived here from
`otel_batchmon.instruments`, never restated.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from _prometheus_names import (
    exported_label_names,
    exported_metric_names,
    metric_name,
    promql_metric_names,
    require_tool,
)

from otel_batchmon.instruments import InstrumentKind, spec

CONFIG_DIR = Path(__file__).resolve().parents[1] / "collector-config"
RULES = CONFIG_DIR / "prometheus" / "batchmon-rules.yml"
RULE_TESTS = sorted((CONFIG_DIR / "prometheus" / "tests").glob("*.yml"))
ALERTMANAGER = CONFIG_DIR / "alertmanager" / "alertmanager.yml"
TIMEOUT_SECONDS = 30


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
        cwd=CONFIG_DIR,
    )


@pytest.mark.parametrize(
    ("name", "unit", "kind", "expected"),
    [
        ("batch.stuck.count", "{batch}", "gauge", "batch_stuck_count"),
        (
            "batch.last_success.age",
            "s",
            "gauge",
            "batch_last_success_age_seconds",
        ),
        (
            "batch.window.failure_ratio",
            "1",
            "gauge",
            "batch_window_failure_ratio",
        ),
        ("queue.fill", "1", "gauge", "queue_fill_ratio"),
        ("batch.finished", "{batch}", "counter", "batch_finished_total"),
        ("jobs.total.done", "{job}", "counter", "jobs_done_total"),
        ("wait.seconds", "s", "histogram", "wait_seconds"),
        ("batch.duration", "s", "histogram", "batch_duration_seconds"),
    ],
)
def test_collector_name_translation_matches_the_exporter_rules(
    name: str, unit: str, kind: str, expected: str
) -> None:
    assert metric_name(name, unit, InstrumentKind(kind)) == expected


def test_catalogue_names_translate_to_the_documented_examples() -> None:
    names = exported_metric_names()

    # The examples the design and README promise.
    assert "batch_stuck_count" in names
    assert "batchmon_snapshot_age_seconds" in names
    assert "batch_duration_seconds_bucket" in names
    assert "batchmon_refresh_errors_total" in names
    assert "batch_window_failure_ratio_ratio" not in names
    assert spec("batch.window.failure_ratio").unit == "1"


def test_rules_file_passes_promtool_check() -> None:
    promtool = require_tool("promtool")

    result = _run(promtool, "check", "rules", str(RULES))

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(_rules())} rules found" in result.stdout


def test_rule_unit_tests_pass_in_promtool() -> None:
    promtool = require_tool("promtool")

    result = _run(promtool, "test", "rules", *map(str, RULE_TESTS))

    assert len(RULE_TESTS) >= 2
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout


def test_rule_unit_tests_catch_a_sum_across_replicas(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    summed = RULES.read_text(encoding="utf-8").replace(
        "max without (instance)", "sum without (instance)"
    )
    (tmp_path / "batchmon-rules.yml").write_text(summed, encoding="utf-8")
    tests = tmp_path / "tests"
    tests.mkdir()
    for path in RULE_TESTS:
        (tests / path.name).write_text(path.read_text(encoding="utf-8"))

    result = _run(promtool, "test", "rules", *map(str, tests.glob("*.yml")))

    assert result.returncode != 0
    assert "three replicas" in result.stdout + result.stderr


def test_rules_use_only_metric_names_the_collector_exports() -> None:
    exported = exported_metric_names()

    for rule in _rules():
        names = promql_metric_names(str(rule["expr"]))

        assert names, rule["alert"]
        assert names <= exported.keys(), rule["alert"]


def test_rules_group_only_by_labels_the_series_carry() -> None:
    exported = exported_metric_names()

    for rule in _rules():
        expr = str(rule["expr"])
        grouped = re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
        labels = {
            label.strip() for group in grouped for label in group.split(",")
        }
        for name in promql_metric_names(expr):
            assert labels <= exported_label_names(exported[name]), rule[
                "alert"
            ]


def test_rules_never_add_up_replicas() -> None:
    for rule in _rules():
        expr = str(rule["expr"])

        assert not re.search(r"\b(sum|count)\b", expr), rule["alert"]
        assert (
            "max without (instance)" in expr or "absent_over_time" in expr
        ), rule["alert"]


def test_rules_cover_every_condition_of_the_design() -> None:
    by_metric = {
        name: rule["alert"]
        for rule in _rules()
        for name in promql_metric_names(str(rule["expr"]))
    }
    absent = [r for r in _rules() if "absent_over_time" in str(r["expr"])]

    for catalogue_name in (
        "batch.stuck.count",
        "batch.window.failure_ratio",
        "batch.last_success.age",
        "batchmon.snapshot.age",
        "batchmon.refresh.errors",
    ):
        entry = spec(catalogue_name)
        assert metric_name(entry.name, entry.unit, entry.kind) in by_metric
    assert len(absent) == 1


def test_every_alert_has_severity_summary_and_description() -> None:
    for rule in _rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]


def test_alertmanager_example_passes_amtool_check() -> None:
    amtool = require_tool("amtool")

    result = _run(amtool, "check-config", str(ALERTMANAGER))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (
            ["alertname=BatchmonBatchesStuck", "severity=warning"],
            "batch-team-slack",
        ),
        (
            ["alertname=BatchmonAbsent", "severity=critical"],
            "batch-team-slack-and-email",
        ),
    ],
)
def test_alertmanager_routes_critical_alerts_to_email_as_well(
    labels: list[str], receiver: str
) -> None:
    amtool = require_tool("amtool")

    result = _run(
        amtool,
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER}",
        f"--verify.receivers={receiver}",
        *labels,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def test_alertmanager_example_holds_no_literal_secret() -> None:
    document = yaml.safe_load(ALERTMANAGER.read_text(encoding="utf-8"))
    globals_ = document["global"]

    assert "smtp_auth_password" not in globals_
    assert "slack_api_url" not in globals_
    assert globals_["smtp_auth_password_file"].startswith("/")
    assert globals_["slack_api_url_file"].startswith("/")

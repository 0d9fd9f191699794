"""Prometheus names of the catalogue, as the Collector exports them.

The shipped path is SDK -> OTLP -> Collector `prometheus` (or
`prometheusremotewrite`) exporter with the default translation strategy
(`UnderscoreEscapingWithSuffixes`). These helpers restate the rules of
the translator that exporter uses (prometheus/otlptranslator, earlier
contrib pkg/translator/prometheus) so that tests derive every exported
name from `otel_batchmon.instruments.CATALOGUE` instead of a hand list:

- the name is split into tokens on every character outside
  ``[a-zA-Z0-9:]``, so dots *and* underscores separate tokens;
- the unit's main part is mapped (``s`` -> ``seconds``, ``1`` -> nothing)
  and appended unless that token is already in the name; ``{...}``
  annotations are dropped;
- monotonic sums (our counters) move any ``total`` token to the end;
- gauges with unit ``1`` move any ``ratio`` token to the end, so a name
  that already ends in ``ratio`` gets no second one.

Also holds a best-effort PromQL metric-name extractor and the small
"find a command-line tool" helper the backend tests share: in CI
(``CI=true``) a missing tool is a failure, elsewhere a skip.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest

from otel_batchmon.instruments import (
    CATALOGUE,
    InstrumentKind,
    InstrumentSpec,
)

# Main units the catalogue could use, mapped as the translator maps them.
_UNIT_WORDS = {
    "d": "days",
    "h": "hours",
    "min": "minutes",
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes",
    "1": "",
    "%": "percent",
}
_PER_UNIT_WORDS = {"s": "second", "m": "minute", "h": "hour", "d": "day"}
_SEPARATOR = re.compile(r"[^a-zA-Z0-9:]+")
_HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
_DEBIAN_PACKAGES = {
    "promtool": "prometheus",
    "amtool": "prometheus-alertmanager",
}
_PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


def promql_metric_names(expr: str) -> set[str]:
    """Return the metric names a PromQL expression selects (best effort).

    Strips strings, label matchers, ranges and grouping clauses, then
    keeps identifiers that are not function calls or keywords. Enough for
    the plain expressions these files use; not a PromQL parser.
    """
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)",
        " ",
        text,
    )
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        rest = text[match.end() :].lstrip()
        word = match.group(0)
        if rest.startswith("(") or word.lower() in _PROMQL_WORDS:
            continue
        names.add(word)
    return names


def metric_name(name: str, unit: str, kind: InstrumentKind) -> str:
    """Return the Prometheus name the Collector gives one OTel metric."""
    tokens = [token for token in _SEPARATOR.split(name) if token]
    main_unit, per_unit = _unit_tokens(unit)
    if main_unit and main_unit not in tokens:
        tokens.append(main_unit)
    if per_unit and per_unit not in tokens:
        tokens.append(per_unit)
    if kind is InstrumentKind.COUNTER:
        tokens = [token for token in tokens if token != "total"]
        tokens.append("total")
    if unit == "1" and kind is InstrumentKind.GAUGE:
        tokens = [token for token in tokens if token != "ratio"]
        tokens.append("ratio")
    return "_".join(tokens)


def label_name(attribute: str) -> str:
    """Return the Prometheus label an OTel attribute key becomes."""
    label = re.sub(r"_+", "_", _SEPARATOR.sub("_", attribute))
    return f"key_{label}" if label[0].isdigit() else label


def spec_metric_name(spec: InstrumentSpec) -> str:
    """Return the exported family name of one catalogue entry."""
    return metric_name(spec.name, spec.unit, spec.kind)


def exported_metric_names() -> dict[str, InstrumentSpec]:
    """Map every series name a scrape can show to its catalogue entry."""
    names: dict[str, InstrumentSpec] = {}
    for spec in CATALOGUE:
        family = spec_metric_name(spec)
        if spec.kind is InstrumentKind.HISTOGRAM:
            for suffix in _HISTOGRAM_SERIES:
                names[family + suffix] = spec
        else:
            names[family] = spec
    return names


def exported_label_names(spec: InstrumentSpec) -> set[str]:
    """Return the labels a series of ``spec`` carries after translation."""
    labels = {label_name(attribute) for attribute in spec.attributes}
    # service.name -> job, service.instance.id -> instance.
    labels |= {"job", "instance"}
    if spec.kind is InstrumentKind.HISTOGRAM:
        labels.add("le")
    return labels


def require_tool(name: str) -> str:
    """Return the path of ``name``; fail in CI and skip elsewhere if absent."""
    path = shutil.which(name)
    if path is not None:
        return path
    package = _DEBIAN_PACKAGES.get(name, name)
    message = f"{name} is not on PATH (Debian: apt-get install {package})"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _unit_tokens(unit: str) -> tuple[str, str]:
    main, _, per = unit.partition("/")
    main, per = main.strip(), per.strip()
    main_word = (
        "" if "{" in main or "}" in main else _UNIT_WORDS.get(main, main)
    )
    per_word = ""
    if per and "{" not in per and "}" not in per:
        per_word = "per_" + _PER_UNIT_WORDS.get(per, per)
    return _clean(main_word), _clean(per_word)


def _clean(word: str) -> str:
    return re.sub(r"_+", "_", _SEPARATOR.sub("_", word)).strip("_")

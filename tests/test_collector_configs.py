"""Static checks of the shipped OpenTelemetry Collector configs.

No Collector binary can run here, so each file is checked the way the
Collector would reject it: YAML shape, pipelines naming defined
components, component types that exist (and are not removed) in the
distribution the file claims, and keys each component knows. Component
facts come from the project's reference file
(tests/data/collector_components.json, a copy of the team's reference
facts kept in the repository so a clean clone tests on its own).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "collector-config"
README = CONFIG_DIR / "README.md"
REFERENCE = Path(__file__).parent / "data" / "collector_components.json"
CONFIGS = sorted(
    path
    for folder in ("agent", "local", "gateway")
    for path in (CONFIG_DIR / folder).glob("*.yaml")
)
KINDS = ("receivers", "processors", "exporters", "extensions", "connectors")

# Known configuration keys per component type, as nested dicts; ANY marks
# a free-form map (headers, labels) whose keys are the user's. Sources
# (read through the search tool's stored copies):
# - otlp receiver: collector receiver/otlpreceiver README and
#   config/configgrpc, config/confighttp server settings.
# - memory_limiter: collector processor/memorylimiterprocessor README.
# - batch: collector processor/batchprocessor README.
# - deltatocumulative: contrib processor/deltatocumulativeprocessor README
#   (max_stale, max_streams).
# - cumulativetodelta: contrib processor/cumulativetodeltaprocessor README
#   (include, exclude, max_staleness, initial_value).
# - otlp / otlphttp exporters: collector exporter/otlpexporter and
#   exporter/otlphttpexporter READMEs, config/configtls, exporterhelper
#   (retry_on_failure, sending_queue).
# - debug: collector exporter/debugexporter README.
# - prometheus: contrib exporter/prometheusexporter README.
# - prometheusremotewrite: contrib exporter/prometheusremotewriteexporter
#   README (remote_write_queue instead of sending_queue).
# - datadog: contrib exporter/datadogexporter example/config.yaml.
# - health_check: contrib extension/healthcheckextension README.
ANY: dict[str, Any] = {}
_TLS_CLIENT = dict.fromkeys(
    (
        "insecure",
        "insecure_skip_verify",
        "ca_file",
        "cert_file",
        "key_file",
        "server_name_override",
        "min_version",
        "max_version",
    ),
    None,
)
_TLS_SERVER = dict.fromkeys(
    ("ca_file", "cert_file", "key_file", "client_ca_file", "min_version"),
    None,
)
_RETRY = dict.fromkeys(
    (
        "enabled",
        "initial_interval",
        "randomization_factor",
        "multiplier",
        "max_interval",
        "max_elapsed_time",
    ),
    None,
)
_QUEUE = dict.fromkeys(
    ("enabled", "num_consumers", "queue_size", "storage", "sizer"), None
)
_HTTP_CLIENT = {
    "endpoint": None,
    "tls": _TLS_CLIENT,
    "headers": ANY,
    "timeout": None,
    "compression": None,
    "read_buffer_size": None,
    "write_buffer_size": None,
    "proxy_url": None,
    "auth": ANY,
}
_EXPORTER_HELPER = {"retry_on_failure": _RETRY, "sending_queue": _QUEUE}
KNOWN_KEYS: dict[str, dict[str, dict[str, Any]]] = {
    "receivers": {
        "otlp": {
            "protocols": {
                "grpc": {
                    "endpoint": None,
                    "transport": None,
                    "tls": _TLS_SERVER,
                    "max_recv_msg_size_mib": None,
                    "max_concurrent_streams": None,
                    "keepalive": ANY,
                    "include_metadata": None,
                    "auth": ANY,
                },
                "http": {
                    "endpoint": None,
                    "tls": _TLS_SERVER,
                    "cors": ANY,
                    "include_metadata": None,
                    "max_request_body_size": None,
                    "metrics_url_path": None,
                    "auth": ANY,
                },
            }
        },
    },
    "processors": {
        "memory_limiter": dict.fromkeys(
            (
                "check_interval",
                "limit_mib",
                "spike_limit_mib",
                "limit_percentage",
                "spike_limit_percentage",
            ),
            None,
        ),
        "batch": dict.fromkeys(
            (
                "timeout",
                "send_batch_size",
                "send_batch_max_size",
                "metadata_keys",
                "metadata_cardinality_limit",
            ),
            None,
        ),
        "deltatocumulative": {"max_stale": None, "max_streams": None},
        "cumulativetodelta": {
            "include": ANY,
            "exclude": ANY,
            "max_staleness": None,
            "initial_value": None,
        },
    },
    "exporters": {
        "debug": dict.fromkeys(
            (
                "verbosity",
                "sampling_initial",
                "sampling_thereafter",
                "use_internal_logger",
            ),
            None,
        ),
        "otlp": {
            "endpoint": None,
            "tls": _TLS_CLIENT,
            "headers": ANY,
            "compression": None,
            "timeout": None,
            "balancer_name": None,
            "auth": ANY,
            **_EXPORTER_HELPER,
        },
        "otlphttp": {
            **_HTTP_CLIENT,
            "metrics_endpoint": None,
            "encoding": None,
            **_EXPORTER_HELPER,
        },
        "prometheus": {
            "endpoint": None,
            "tls": _TLS_SERVER,
            "namespace": None,
            "const_labels": ANY,
            "send_timestamps": None,
            "metric_expiration": None,
            "resource_to_telemetry_conversion": {"enabled": None},
            "enable_open_metrics": None,
            "add_metric_suffixes": None,
            "without_scope_info": None,
        },
        "prometheusremotewrite": {
            **_HTTP_CLIENT,
            "namespace": None,
            "external_labels": ANY,
            "add_metric_suffixes": None,
            "remote_write_queue": dict.fromkeys(
                ("enabled", "queue_size", "num_consumers"), None
            ),
            "resource_to_telemetry_conversion": {"enabled": None},
            "target_info": {"enabled": None},
            "export_created_metric": {"enabled": None},
            "wal": ANY,
            "retry_on_failure": _RETRY,
        },
        "datadog": {
            "api": dict.fromkeys(("key", "site", "fail_on_invalid_key"), None),
            "hostname": None,
            "only_metadata": None,
            "tls": _TLS_CLIENT,
            "metrics": {
                "endpoint": None,
                "delta_ttl": None,
                "resource_attributes_as_tags": None,
                "instrumentation_scope_metadata_as_tags": None,
                "histograms": {
                    "mode": None,
                    "send_count_sum_metrics": None,
                },
                "sums": {"cumulative_monotonic_mode": None},
                "summaries": {"mode": None},
            },
            "host_metadata": ANY,
            "timeout": None,
            **_EXPORTER_HELPER,
        },
    },
    "extensions": {
        "health_check": {"endpoint": None, "path": None, "tls": _TLS_SERVER},
    },
}
SECRET_KEY = re.compile(
    r"(key|token|secret|password|authorization|api-key|-team)$",
    re.IGNORECASE,
)
ENV_REFERENCE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")
BARE_ENV = re.compile(r"(?<!\$)\$(?![{$])[A-Za-z_]")


def _load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(document, dict), f"{path.name} is not a mapping"
    return document


def _header(path: Path) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        match = re.match(r"#\s*([a-z-]+):\s*(.+)$", line)
        if match:
            fields.setdefault(match.group(1), match.group(2).strip())
    return fields


def _reference() -> dict[str, Any]:
    if not REFERENCE.exists():
        message = f"reference facts missing: {REFERENCE}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    facts: dict[str, Any] = json.loads(REFERENCE.read_text(encoding="utf-8"))
    return facts


def _component_type(component_id: str) -> str:
    return component_id.split("/", 1)[0]


def _pipelines(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    pipelines: dict[str, dict[str, Any]] = document.get("service", {}).get(
        "pipelines", {}
    )
    return pipelines


def _used_components(document: dict[str, Any]) -> set[tuple[str, str]]:
    used = {
        ("extensions", name)
        for name in document.get("service", {}).get("extensions", [])
    }
    for pipeline in _pipelines(document).values():
        for kind in ("receivers", "processors", "exporters"):
            used |= {(kind, name) for name in pipeline.get(kind, [])}
    return used


def _unknown_keys(value: Any, known: dict[str, Any], where: str) -> list[str]:
    if known is ANY or not isinstance(value, dict):
        return []
    problems = []
    for key, child in value.items():
        if key not in known:
            problems.append(f"{where}.{key}")
        elif isinstance(known[key], dict):
            problems += _unknown_keys(child, known[key], f"{where}.{key}")
    return problems


def _strings(value: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [
            item
            for key, child in value.items()
            for item in _strings(child, f"{path}.{key}")
        ]
    if isinstance(value, list):
        return [
            item
            for index, child in enumerate(value)
            for item in _strings(child, f"{path}[{index}]")
        ]
    return [(path, value)] if isinstance(value, str) else []


def test_config_directory_ships_agent_local_and_gateway_layouts() -> None:
    layouts = {_header(path).get("layout") for path in CONFIGS}

    assert layouts == {"agent", "local", "gateway"}
    assert len(CONFIGS) >= 8


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses_with_receivers_and_a_metrics_pipeline(
    path: Path,
) -> None:
    document = _load(path)

    assert "otlp" in document["receivers"]
    assert "metrics" in _pipelines(document)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_header_states_distribution_versions_and_layout(path: Path) -> None:
    header = _header(path)

    assert header.get("distribution") in {"core", "contrib"}
    assert re.fullmatch(
        r"v0\.\d+\.\d+ - v0\.\d+\.\d+", header.get("collector-versions", "")
    )
    assert header.get("layout") in {"agent", "local", "gateway"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_pipeline_component_is_defined_and_every_one_used(
    path: Path,
) -> None:
    document = _load(path)
    defined = {
        (kind, name) for kind in KINDS for name in (document.get(kind) or {})
    }
    used = _used_components(document)

    assert used - defined == set(), "used but not defined"
    assert defined - used == set(), "defined but never used"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_component_types_exist_in_the_claimed_distribution(
    path: Path,
) -> None:
    reference = _reference()
    document = _load(path)
    distribution = _header(path)["distribution"]
    removed = {
        entry["name"]
        for entry in reference["removed"]
        if entry.get("removed_in")
    }
    problems = []
    for kind, name in _used_components(document):
        component_type = _component_type(name)
        entry = _reference_entry(reference, kind, component_type)
        if component_type in removed or entry is None:
            problems.append(f"{kind}/{component_type}: unknown or removed")
        elif not entry[f"in_{distribution}_distribution"]:
            problems.append(f"{kind}/{component_type}: not in {distribution}")

    assert problems == []


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_deprecated_component_names_mention_their_new_name(
    path: Path,
) -> None:
    reference = _reference()
    document = _load(path)
    text = path.read_text(encoding="utf-8")
    missing = []
    for kind, name in _used_components(document):
        component_type = _component_type(name)
        entry = _reference_entry(reference, kind, component_type)
        if entry is None or component_type not in entry["deprecated_aliases"]:
            continue
        if entry["name"] not in text:
            missing.append(f"{component_type} -> {entry['name']}")

    assert missing == []


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_component_key_is_a_known_key(path: Path) -> None:
    document = _load(path)
    problems = []
    for kind in KINDS:
        for name, settings in (document.get(kind) or {}).items():
            known = KNOWN_KEYS.get(kind, {}).get(_component_type(name))
            if known is None:
                problems.append(f"{kind}/{name}: no key table in this test")
                continue
            problems += _unknown_keys(settings or {}, known, f"{kind}.{name}")

    assert problems == []


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_memory_limiter_first_and_batch_last_in_every_pipeline(
    path: Path,
) -> None:
    for pipeline in _pipelines(_load(path)).values():
        processors = [_component_type(p) for p in pipeline["processors"]]

        assert processors[0] == "memory_limiter"
        if "batch" in processors:
            assert processors[-1] == "batch"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_receivers_bind_an_explicit_host(path: Path) -> None:
    protocols = _load(path)["receivers"]["otlp"]["protocols"]
    layout = _header(path)["layout"]
    expected = (
        "localhost:"
        if layout in {"agent", "local"}
        else "${env:BATCHMON_COLLECTOR_HOST:-localhost}:"
    )

    for protocol in ("grpc", "http"):
        assert protocols[protocol]["endpoint"].startswith(expected)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_environment_variables_are_documented_in_readme(path: Path) -> None:
    readme = README.read_text(encoding="utf-8")
    names = set(ENV_REFERENCE.findall(path.read_text(encoding="utf-8")))

    assert {name for name in names if f"`{name}`" not in readme} == set()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_secrets_come_only_from_environment_variables(path: Path) -> None:
    values = _strings(_load(path))
    literal_secrets = [
        where
        for where, value in values
        if SECRET_KEY.search(where) and "${env:" not in value
    ]
    bare_expansions = [
        where for where, value in values if BARE_ENV.search(value)
    ]

    assert literal_secrets == []
    assert bare_expansions == []


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_no_removed_configuration_fields(path: Path) -> None:
    document = _load(path)
    telemetry = document.get("service", {}).get("telemetry", {})
    limiters = [
        settings or {}
        for name, settings in document["processors"].items()
        if _component_type(name) == "memory_limiter"
    ]

    assert "address" not in telemetry.get("metrics", {})
    assert all("ballast_size_mib" not in s for s in limiters)


def test_prometheus_exporters_keep_the_default_name_translation() -> None:
    # The shipped rules and dashboard expect suffixed names
    # (batch_duration_seconds, batchmon_refresh_errors_total).
    settings = [
        (path.name, exporter)
        for path in CONFIGS
        for name, exporter in _load(path)["exporters"].items()
        if _component_type(name) in {"prometheus", "prometheusremotewrite"}
    ]

    assert settings
    for _, exporter in settings:
        assert exporter.get("add_metric_suffixes", True) is True
        assert "translation_strategy" not in exporter
        assert not exporter.get("namespace")


def test_remote_write_pipelines_turn_delta_into_cumulative_first() -> None:
    # prometheusremotewrite drops delta counters and histograms silently.
    checked = 0
    for path in CONFIGS:
        for pipeline in _pipelines(_load(path)).values():
            exporters = {_component_type(e) for e in pipeline["exporters"]}
            if "prometheusremotewrite" in exporters:
                processors = [
                    _component_type(p) for p in pipeline["processors"]
                ]
                assert "deltatocumulative" in processors, path.name
                checked += 1

    assert checked >= 1


def test_readme_table_lists_every_config_file() -> None:
    readme = README.read_text(encoding="utf-8")
    missing = [
        str(path.relative_to(CONFIG_DIR))
        for path in CONFIGS
        if f"`{path.relative_to(CONFIG_DIR)}`" not in readme
    ]

    assert missing == []


def _reference_entry(
    reference: dict[str, Any], kind: str, component_type: str
) -> dict[str, Any] | None:
    entry: dict[str, Any]
    for entry in reference["components"].get(kind, []):
        if component_type in (entry["name"], *entry["deprecated_aliases"]):
            return entry
    return None

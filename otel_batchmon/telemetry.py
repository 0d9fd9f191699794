"""A MeterProvider built from the standard ``OTEL_*`` environment.

Only the command line uses this; library users and
``opentelemetry-instrument`` bring their own provider. Exporter settings
(endpoint, headers, timeout, temporality) are left to the exporters, which
read the standard variables themselves.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource

from otel_batchmon._engine import mask_text
from otel_batchmon._summary import SummaryExporter
from otel_batchmon.errors import ConfigError

_log = logging.getLogger(__name__)

__all__ = ["ExportProbe", "Telemetry", "build_telemetry", "describe_target"]

_EXPORTERS = ("otlp", "console", "prometheus", "none")
_PROTOCOLS = ("grpc", "http/protobuf")


class ExportProbe(MetricExporter):
    """Wraps an exporter to remember whether its exports succeeded.

    The SDK's ``force_flush`` returns true even when the export failed, so
    ``run --once`` asks the probe instead. With ``target`` it also logs one
    warning when exports start failing and one line when they work again
    (the exporters' own per-attempt logs are muted by the command line).
    """

    def __init__(
        self, inner: MetricExporter, target: str | None = None
    ) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self.inner = inner
        self.target = target
        self.exports = 0
        self.failures = 0
        self._failing = 0
        self._lock = threading.Lock()

    def export(
        self,
        metrics_data: MetricsData,
        timeout_millis: float = 10_000,
        **kwargs: Any,
    ) -> MetricExportResult:
        """Export through the wrapped exporter and count the outcome."""
        try:
            result = self.inner.export(metrics_data, timeout_millis, **kwargs)
        except Exception:
            result = MetricExportResult.FAILURE
        with self._lock:
            self.exports += 1
            failed = result is not MetricExportResult.SUCCESS
            self.failures += failed
            streak, self._failing = self._failing, self._failing + 1
            if not failed:
                self._failing = 0
        if self.target is not None:
            self._report(failed, streak)
        return result

    def _report(self, failed: bool, streak: int) -> None:
        if failed and streak == 0:
            _log.warning(
                "metrics export to %s failed; retrying at every export "
                "interval (is a collector listening there, speaking that "
                "protocol?)",
                self.target,
            )
        elif not failed and streak:
            _log.info(
                "metrics export to %s works again after %d failed attempts",
                self.target,
                streak,
            )

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Flush the wrapped exporter."""
        return self.inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Shut the wrapped exporter down."""
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)


@dataclass
class Telemetry:
    """The provider the command line exports through, and its probes."""

    provider: MeterProvider | None
    probes: list[ExportProbe] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)

    def failed_exports(self) -> int:
        """Failed exports over every probed exporter so far."""
        return sum(p.failures for p in self.probes)

    def shutdown(self) -> None:
        """Flush and shut the provider down."""
        if self.provider is not None:
            self.provider.shutdown()


def build_telemetry(
    default_exporter: str = "otlp",
    environ: Mapping[str, str] | None = None,
    stream: TextIO | None = None,
    periodic: bool = True,
) -> Telemetry:
    """Build the provider named by OTEL_METRICS_EXPORTER and friends.

    With ``periodic=False`` nothing exports on its own: the caller flushes
    (``run --once``), and shutting down sends nothing more.
    """
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return Telemetry(None)
    names = _exporter_names(env, default_exporter)
    _check_environment(env, names)
    readers: list[MetricReader] = []
    telemetry = Telemetry(None)
    for name in names:
        if name == "none":
            continue
        if name == "prometheus":
            readers.append(_prometheus_reader(env))
            telemetry.targets.append(_prometheus_target(env))
            continue
        target = describe_target(name, env)
        # --once reports a failed export itself, in its one error line.
        probe = ExportProbe(
            _build_exporter(name, env, stream), target if periodic else None
        )
        telemetry.probes.append(probe)
        telemetry.targets.append(target)
        interval = None if periodic else math.inf
        readers.append(
            PeriodicExportingMetricReader(
                probe, export_interval_millis=interval
            )
        )
    telemetry.provider = MeterProvider(
        resource=_resource(), metric_readers=readers
    )
    return telemetry


def _exporter_names(env: Mapping[str, str], default: str) -> list[str]:
    raw = env.get("OTEL_METRICS_EXPORTER", "").strip() or default
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in (*_EXPORTERS, "summary")]
    if unknown:
        raise ConfigError(
            [
                f"OTEL_METRICS_EXPORTER={raw!r}: unknown exporter "
                f"{', '.join(unknown)}; use one of {', '.join(_EXPORTERS)}"
            ]
        )
    return names


_NUMBERS = (
    "OTEL_METRIC_EXPORT_INTERVAL",
    "OTEL_METRIC_EXPORT_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
)
_COMPRESSIONS = ("gzip", "deflate", "none")


def _check_environment(env: Mapping[str, str], names: list[str]) -> None:
    """Refuse bad standard variables the SDK would ignore or crash on."""
    problems = []
    for variable in _NUMBERS:
        text = env.get(variable, "").strip()
        if not text:
            continue
        try:
            number = float(text)
        except ValueError:
            number = -1.0
        if not math.isfinite(number) or number < 0:
            problems.append(
                f"{variable}={text!r} is not a number of "
                + ("milliseconds" if "EXPORT_" in variable else "seconds")
            )
    for variable in (
        "OTEL_EXPORTER_OTLP_COMPRESSION",
        "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
    ):
        text = env.get(variable, "").strip().lower()
        if text and text not in _COMPRESSIONS:
            problems.append(
                f"{variable}={text!r}: use one of {', '.join(_COMPRESSIONS)}"
            )
    for variable in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    ):
        if "@" in _authority(env.get(variable, "")):
            problems.append(
                f"{variable} carries credentials; put them in "
                "OTEL_EXPORTER_OTLP_HEADERS instead (they would be sent "
                "nowhere and shown in logs)"
            )
    if "otlp" in names:
        problems.extend(_header_problems(env))
    if "prometheus" in names:
        port = env.get("OTEL_EXPORTER_PROMETHEUS_PORT", "9464").strip()
        if not port.isdigit() or not 0 < int(port) < 65536:
            problems.append(
                f"OTEL_EXPORTER_PROMETHEUS_PORT={port!r} is not a port "
                "(1-65535)"
            )
    if problems:
        raise ConfigError(problems)


# The SDK's liberal name=value form (opentelemetry.util.re). An entry it
# cannot parse is dropped with a warning that quotes it, token and all.
_HEADER = re.compile(
    r"[ \t]*[\x21\x23-\x27\x2a\x2b\x2d\x2e\x30-\x39\x41-\x5a\x5e-\x7a"
    r"\x7c\x7e]+[ \t]*=[ \t]*[\x20\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*"
)


def _header_problems(env: Mapping[str, str]) -> list[str]:
    problems = []
    for variable in (
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
    ):
        entries = re.split(r"[ \t]*,[ \t]*", env.get(variable, ""))
        for number, entry in enumerate(entries, 1):
            if entry and not _HEADER.fullmatch(entry.strip()):
                problems.append(
                    f"{variable}: entry {number} is not a name=value pair "
                    "the exporters accept (not shown, it may hold a secret);"
                    " URL-encode the value: authorization=Bearer%20TOKEN"
                )
    return problems


def _authority(endpoint: str) -> str:
    rest = endpoint.split("://", 1)[-1]
    return rest.split("/", 1)[0]


def _protocol(env: Mapping[str, str]) -> str:
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    if protocol not in _PROTOCOLS:
        raise ConfigError(
            [
                f"OTLP protocol {protocol!r} is not supported for metrics; "
                f"set OTEL_EXPORTER_OTLP_PROTOCOL to {' or '.join(_PROTOCOLS)}"
            ]
        )
    return protocol


def _build_exporter(
    name: str, env: Mapping[str, str], stream: TextIO | None
) -> MetricExporter:
    try:
        return _push_exporter(name, env, stream)
    except ConfigError:
        raise
    except Exception as exc:
        # The exporters read their OTEL_EXPORTER_OTLP_* variables when
        # built; a value they reject must not become a traceback.
        raise ConfigError(
            [
                f"cannot build the {name} exporter from the "
                f"OTEL_EXPORTER_OTLP_* variables: {mask_text(str(exc))}"
            ]
        ) from None


def _push_exporter(
    name: str, env: Mapping[str, str], stream: TextIO | None
) -> MetricExporter:
    if name == "console":
        return ConsoleMetricExporter(out=stream or sys.stdout)
    if name == "summary":
        return SummaryExporter(stream or sys.stdout)
    if _protocol(env) == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcExporter,
        )

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpExporter,
    )

    return HttpExporter()


def describe_target(name: str, env: Mapping[str, str]) -> str:
    """Say where an exporter sends data, for messages (no credentials)."""
    if name in ("console", "summary"):
        return "the console"
    protocol = _protocol(env)
    specific = env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
    generic = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if protocol == "grpc":
        endpoint = specific or generic or "http://localhost:4317"
    elif specific:
        endpoint = specific
    else:
        base = (generic or "http://localhost:4318").rstrip("/")
        endpoint = f"{base}/v1/metrics"
    shown = f"OTLP {protocol} endpoint {mask_text(endpoint)}"
    if protocol == "grpc" and "://" not in endpoint:
        shown += " (no http:// scheme, so TLS)"
    return shown


def _prometheus_reader(env: Mapping[str, str]) -> MetricReader:
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server
    except ModuleNotFoundError:
        raise ConfigError(
            [
                "OTEL_METRICS_EXPORTER=prometheus needs the Prometheus "
                "exporter: pip install 'otel-batchmon[prometheus]'"
            ]
        ) from None
    host = env.get("OTEL_EXPORTER_PROMETHEUS_HOST", "localhost")
    port_text = env.get("OTEL_EXPORTER_PROMETHEUS_PORT", "9464")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(
            [f"OTEL_EXPORTER_PROMETHEUS_PORT={port_text!r} is not a port"]
        ) from None
    try:
        start_http_server(port=port, addr=host)
    except OSError as exc:
        raise ConfigError(
            [
                f"cannot serve Prometheus metrics on {host}:{port} "
                f"(OTEL_EXPORTER_PROMETHEUS_HOST/PORT): {exc.strerror or exc}"
            ]
        ) from None
    reader: MetricReader = PrometheusMetricReader()
    return reader


def _prometheus_target(env: Mapping[str, str]) -> str:
    host = env.get("OTEL_EXPORTER_PROMETHEUS_HOST", "localhost")
    port = env.get("OTEL_EXPORTER_PROMETHEUS_PORT", "9464")
    return f"Prometheus scrape endpoint http://{host}:{port}/metrics"


def _resource() -> Resource:
    # service.name is never forced: OTEL_SERVICE_NAME and
    # OTEL_RESOURCE_ATTRIBUTES win; only the SDK's placeholder is replaced.
    resource = Resource.create()
    name = str(resource.attributes.get("service.name", ""))
    if name.startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "otel-batchmon"}))
    return resource

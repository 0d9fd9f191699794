"""gunicorn settings for the example: providers and monitor per worker.

An exporter made before ``fork`` shares its connection with every child,
and one child's exports were seen to vanish that way, so each worker
builds its own provider after the fork, then starts its monitor. The
monitor is not started in the master: with leader election the master
would hold the lease while exporting nothing.
"""

from __future__ import annotations

from typing import Any


def post_fork(server: Any, worker: Any) -> None:
    """Give this worker its own provider, exporter and reader thread."""
    from opentelemetry import metrics
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
        OTLPMetricExporter,
    )
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        PeriodicExportingMetricReader,
    )

    reader = PeriodicExportingMetricReader(OTLPMetricExporter())
    metrics.set_meter_provider(MeterProvider([reader]))

    import import_service

    import_service.start_monitoring()

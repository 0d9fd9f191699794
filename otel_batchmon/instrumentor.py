"""``BatchmonInstrumentor``: the monitor under ``opentelemetry-instrument``.

Loaded through the ``opentelemetry_instrumentor`` entry point (name
``otel_batchmon``) or imported explicitly; it needs the
``opentelemetry-instrumentation`` package, which the rest of otel_batchmon
does not. Settings come from ``OTEL_BATCHMON_*`` (and
``OTEL_BATCHMON_CONFIG``); without any, it does nothing. A bad setting is
logged as one error and never stops the host application.

>>> BatchmonInstrumentor().instrument(meter_provider=provider)
>>> BatchmonInstrumentor().uninstrument()
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Collection, Mapping
from typing import Any

from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)
from opentelemetry.metrics import MeterProvider
from sqlalchemy.engine import Engine

from otel_batchmon._engine import mask_text
from otel_batchmon.config import (
    ENV_CONFIG_FILE,
    ENV_PREFIX,
    MonitorConfig,
    load_config,
)
from otel_batchmon.errors import BatchmonError
from otel_batchmon.health import HealthServer
from otel_batchmon.monitor import BatchMonitor
from otel_batchmon.package import _instruments

__all__ = ["BatchmonInstrumentor"]

_log = logging.getLogger(__name__)


class BatchmonInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Runs a BatchMonitor for as long as the process is instrumented.

    Keyword arguments of ``instrument``: ``meter_provider`` (default the
    global one, which a distro configures) and ``config``, a
    MonitorConfig that replaces the ``OTEL_BATCHMON_*`` settings.
    """

    _monitor: BatchMonitor | None = None
    _health: HealthServer | None = None
    _guard = threading.Lock()

    def instrumentation_dependencies(self) -> Collection[str]:
        """The packages this instrumentation needs: SQLAlchemy 2."""
        return _instruments

    @property
    def monitor(self) -> BatchMonitor | None:
        """The running monitor, or None when nothing was started."""
        return self._monitor

    def _instrument(self, **kwargs: Any) -> None:
        with self._guard:
            if self._monitor is not None:
                return
            engine: Engine | None = kwargs.get("engine")
            config = _settings(
                kwargs.get("config"), _with_engine_url(os.environ, engine)
            )
            if config is None:
                return
            provider: MeterProvider | None = kwargs.get("meter_provider")
            engines = (
                {store.name: engine for store in config.stores}
                if engine is not None
                else None
            )
            self._monitor, self._health = _start(config, provider, engines)

    def _uninstrument(self, **kwargs: Any) -> None:
        with self._guard:
            monitor, health = self._monitor, self._health
            self._monitor, self._health = None, None
        if health is not None:
            health.stop()
        if monitor is not None:
            monitor.stop(monitor.config.shutdown_timeout_seconds)


def _settings(
    given: MonitorConfig | None, env: Mapping[str, str]
) -> MonitorConfig | None:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        _log.debug("otel_batchmon: OTEL_SDK_DISABLED=true; not monitoring")
        return None
    if given is not None:
        return given
    if not any(name.startswith(ENV_PREFIX) for name in env):
        _log.debug(
            "otel_batchmon: no %s* or %s setting; not monitoring",
            ENV_PREFIX,
            ENV_CONFIG_FILE,
        )
        return None
    try:
        return load_config(environ=env)
    except BatchmonError as exc:
        _log.error("otel_batchmon not started: %s", mask_text(str(exc)))
        return None


def _with_engine_url(
    env: Mapping[str, str], engine: Engine | None
) -> Mapping[str, str]:
    """Let ``instrument(engine=...)`` stand in for the database URL."""
    name = f"{ENV_PREFIX}DATABASE_URL"
    if engine is None or name in env:
        return env
    url = engine.url.render_as_string(hide_password=False)
    return {**env, name: url}


def _start(
    config: MonitorConfig,
    provider: MeterProvider | None,
    engines: Mapping[str, Engine] | None = None,
) -> tuple[BatchMonitor | None, HealthServer | None]:
    if config.leader_election is None:
        # An instrumented app usually runs as several replicas or workers;
        # one of them reports each store's database-wide data.
        config = dataclasses.replace(config, leader_election=True)
    # The host application must start whatever happens here, so every
    # failure becomes one log record instead of an exception.
    monitor: BatchMonitor | None = None
    try:
        monitor = BatchMonitor(config, provider, engines=engines)
        monitor.start()
    except Exception as exc:
        if monitor is not None:
            monitor.stop(0)
        if isinstance(exc, BatchmonError):
            _log.error("otel_batchmon not started: %s", mask_text(str(exc)))
        else:
            _log.exception("otel_batchmon not started: unexpected error")
        return None, None
    return monitor, _start_health(monitor)


def _start_health(monitor: BatchMonitor) -> HealthServer | None:
    if monitor.config.health_address is None:
        return None
    server = HealthServer(monitor, monitor.config.health_address)
    try:
        server.start()
    except BatchmonError as exc:
        _log.error("otel_batchmon health endpoint not started: %s", exc)
        return None
    return server

"""OpenTelemetry metrics for batch jobs whose state lives in a SQL table.

>>> from otel_batchmon import BatchMonitor, load_config
>>> monitor = BatchMonitor(load_config("batchmon.toml"))
>>> monitor.start()
"""

from otel_batchmon.collector import MetricsCollector
from otel_batchmon.config import (
    ColumnMap,
    MonitorConfig,
    StoreConfig,
    load_config,
    parse_config,
)
from otel_batchmon.errors import (
    BatchmonError,
    ConfigError,
    ExportError,
    StoreError,
)
from otel_batchmon.monitor import BatchMonitor
from otel_batchmon.snapshot import StoreSnapshot
from otel_batchmon.tracking import (
    BatchRun,
    BatchTracker,
    current_batch,
    track_batch,
)
from otel_batchmon.version import __version__

__all__ = [
    "BatchMonitor",
    "BatchRun",
    "BatchTracker",
    "BatchmonError",
    "ColumnMap",
    "ConfigError",
    "ExportError",
    "MetricsCollector",
    "MonitorConfig",
    "StoreConfig",
    "StoreError",
    "StoreSnapshot",
    "__version__",
    "current_batch",
    "load_config",
    "parse_config",
    "track_batch",
]

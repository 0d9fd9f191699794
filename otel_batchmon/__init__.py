"""OpenTelemetry metrics for batch jobs whose state lives in a SQL table.

>>> from otel_batchmon import BatchMonitor, load_config
>>> monitor = BatchMonitor(load_config("batchmon.toml"))
>>> monitor.start()
"""

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
from otel_batchmon.version import __version__

__all__ = [
    "BatchMonitor",
    "BatchmonError",
    "ColumnMap",
    "ConfigError",
    "ExportError",
    "MonitorConfig",
    "StoreConfig",
    "StoreError",
    "StoreSnapshot",
    "__version__",
    "load_config",
    "parse_config",
]

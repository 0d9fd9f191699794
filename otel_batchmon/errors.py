"""Exceptions raised by otel_batchmon; every one derives from BatchmonError."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "BatchmonError",
    "ConfigError",
    "ExportError",
    "StoreError",
]


class BatchmonError(Exception):
    """Base class of every error otel_batchmon raises on purpose."""


class ConfigError(BatchmonError):
    """The configuration is wrong; ``problems`` lists every problem found.

    Each problem names where it is (``stores.main.window``), what was
    found and what to write instead, so one run reports them all.
    """

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = tuple(problems)
        if len(self.problems) == 1:
            super().__init__(f"configuration problem: {self.problems[0]}")
            return
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"configuration has {len(self.problems)} problems:\n{lines}"
        )


class StoreError(BatchmonError):
    """The batch store could not be reached, read or mapped."""


class ExportError(BatchmonError):
    """Metrics could not be delivered to the configured exporter."""

"""The immutable result of one refresh of one store."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["INVALID_REASONS", "StoreSnapshot"]

INVALID_REASONS = (
    "finish_before_start",
    "finish_without_start",
    "finished_without_finish_time",
    "future_timestamp",
)


def _frozen(values: Mapping[str, int]) -> Mapping[str, int]:
    return MappingProxyType(dict(values))


@dataclass(frozen=True)
class StoreSnapshot:
    """What one refresh read: the values behind every snapshot gauge.

    ``None`` means the value does not exist (no finished batch in the
    window, no processing batch...): the gauge reports nothing, never 0 or
    NaN.
    """

    store: str
    database_time: float
    window_counts: Mapping[str, int]
    failure_ratio: float | None
    duration_mean_seconds: float | None
    stuck_count: int
    active_counts: Mapping[str, int]
    processing_oldest_age_seconds: float | None
    pending_oldest_age_seconds: float | None
    last_success_age_seconds: float | None
    invalid_rows: Mapping[str, int]
    unmapped_statuses: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        for name in ("window_counts", "active_counts", "invalid_rows"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))

    def summary_lines(self) -> list[str]:
        """Describe the snapshot for a person, one fact per line."""
        counts = ", ".join(f"{k} {v}" for k, v in self.window_counts.items())
        active = ", ".join(f"{k} {v}" for k, v in self.active_counts.items())
        lines = [
            f"store {self.store}",
            f"  in window: {counts}",
            f"  failure ratio: {_show(self.failure_ratio, '{:.3f}')}",
            f"  mean duration: {_show(self.duration_mean_seconds)}",
            f"  stuck: {self.stuck_count}",
            f"  active: {active}",
            "  oldest processing: "
            f"{_show(self.processing_oldest_age_seconds)}",
            f"  oldest pending: {_show(self.pending_oldest_age_seconds)}",
            "  last success: "
            + (
                "none"
                if self.last_success_age_seconds is None
                else f"{self.last_success_age_seconds:.1f}s ago"
            ),
        ]
        invalid = {k: v for k, v in self.invalid_rows.items() if v}
        if invalid:
            lines.append(f"  invalid rows: {invalid}")
        if self.unmapped_statuses:
            unknown = ", ".join(sorted(self.unmapped_statuses))
            lines.append(f"  unmapped status values (as other): {unknown}")
        return lines


def _show(value: float | None, pattern: str = "{:.1f}s") -> str:
    return "none" if value is None else pattern.format(value)

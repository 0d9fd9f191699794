"""The one catalogue of every metric otel_batchmon exports.

Pure data: names, kinds, units, descriptions, attributes and buckets.
The monitor, the worker API and the README's metric table all read this
table, so a metric is defined in exactly one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "BATCH_DURATION_BUCKETS",
    "CATALOGUE",
    "REFRESH_DURATION_BUCKETS",
    "InstrumentKind",
    "InstrumentSpec",
    "markdown_table",
    "spec",
]


class InstrumentKind(StrEnum):
    """The OTel instrument kinds the catalogue uses."""

    GAUGE = "gauge"
    COUNTER = "counter"
    HISTOGRAM = "histogram"


# Batch durations span seconds to a day; the SDK's default buckets end at
# 10000 s, which would fold every long import into the overflow bucket.
BATCH_DURATION_BUCKETS: tuple[float, ...] = (
    1, 5, 15, 30, 60, 120, 300, 600, 900, 1800,
    3600, 7200, 14400, 28800, 86400,
)  # fmt: skip

# The database-client buckets of the semantic conventions.
REFRESH_DURATION_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10,
)  # fmt: skip


@dataclass(frozen=True)
class InstrumentSpec:
    """One metric: what it is called, what it measures, how it is keyed."""

    name: str
    kind: InstrumentKind
    unit: str
    description: str
    # batch.kind is present only when the kind is known (a mapped kind
    # column, or the kind given to track_batch).
    attributes: tuple[str, ...] = ()
    replaces: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None


_G = InstrumentKind.GAUGE
_C = InstrumentKind.COUNTER
_H = InstrumentKind.HISTOGRAM

CATALOGUE: tuple[InstrumentSpec, ...] = (
    InstrumentSpec(
        "batch.window.count",
        _G,
        "{batch}",
        "Batches whose start (or queued) time lies in the store's window.",
        ("batch.store", "batch.status"),
        (
            "batch_processing_total_24h",
            "batch_processing_successful_24h",
            "batch_processing_failed_24h",
        ),
    ),
    InstrumentSpec(
        "batch.window.failure_ratio",
        _G,
        "1",
        "Failed / (completed + failed) batches in the window, 0 to 1.",
        ("batch.store",),
        ("batch_processing_failure_rate",),
    ),
    InstrumentSpec(
        "batch.window.duration.mean",
        _G,
        "s",
        "Mean duration of the finished batches in the window.",
        ("batch.store",),
        ("batch_processing_avg_time_minutes",),
    ),
    InstrumentSpec(
        "batch.stuck.count",
        _G,
        "{batch}",
        "Batches in a stuck status that started before now minus the "
        "stuck threshold.",
        ("batch.store",),
        ("batch_processing_stuck_count",),
    ),
    InstrumentSpec(
        "batch.active.count",
        _G,
        "{batch}",
        "All pending and all processing batches, whatever their age.",
        ("batch.store", "batch.status"),
    ),
    InstrumentSpec(
        "batch.processing.oldest_age",
        _G,
        "s",
        "Age of the oldest processing batch, from its start time.",
        ("batch.store",),
    ),
    InstrumentSpec(
        "batch.pending.oldest_age",
        _G,
        "s",
        "Age of the oldest pending batch, from its queued time.",
        ("batch.store",),
    ),
    InstrumentSpec(
        "batch.last_success.age",
        _G,
        "s",
        "Time since the latest completed batch finished.",
        ("batch.store",),
    ),
    InstrumentSpec(
        "batch.finished",
        _C,
        "{batch}",
        "Finished batches, counted once each.",
        ("batch.store", "batch.status", "batch.source", "batch.kind"),
    ),
    InstrumentSpec(
        "batch.duration",
        _H,
        "s",
        "Duration of each finished batch, from start to finish.",
        ("batch.store", "batch.status", "batch.source", "batch.kind"),
        buckets=BATCH_DURATION_BUCKETS,
    ),
    InstrumentSpec(
        "batch.queue.duration",
        _H,
        "s",
        "Time each batch waited between being queued and starting.",
        ("batch.store", "batch.source", "batch.kind"),
        buckets=BATCH_DURATION_BUCKETS,
    ),
    InstrumentSpec(
        "batch.records",
        _C,
        "{record}",
        "Records processed by finished batches, by outcome (ok, failed).",
        (
            "batch.store",
            "batch.record.outcome",
            "batch.source",
            "batch.kind",
        ),
    ),
    InstrumentSpec(
        "batch.alerts",
        _C,
        "{alert}",
        "Alert incidents opened and resolved, once per transition "
        "(stuck, no_success, failure_streak).",
        ("batch.store", "alert.type", "alert.state"),
        ("batch_alerts_total",),
    ),
    InstrumentSpec(
        "batchmon.stuck.actions",
        _C,
        "{batch}",
        "Stuck batches the configured action changed, or would change in "
        "a dry run, once per batch.",
        ("batch.store", "batchmon.action", "batchmon.dry_run"),
    ),
    InstrumentSpec(
        "batchmon.refresh.duration",
        _H,
        "s",
        "Duration of each refresh of a store, by outcome.",
        ("batch.store", "batchmon.outcome"),
        buckets=REFRESH_DURATION_BUCKETS,
    ),
    InstrumentSpec(
        "batchmon.refresh.errors",
        _C,
        "{error}",
        "Failed refreshes, by error type.",
        ("batch.store", "error.type"),
    ),
    InstrumentSpec(
        "batchmon.snapshot.age",
        _G,
        "s",
        "Seconds since the last good refresh, or since start before one.",
        ("batch.store",),
    ),
    InstrumentSpec(
        "batchmon.leader",
        _G,
        "{leader}",
        "1 while this instance reports the store's database-wide data "
        "(it holds the leader lease, or leader election is off), else 0.",
        ("batch.store",),
    ),
    InstrumentSpec(
        "batchmon.rows.invalid",
        _G,
        "{row}",
        "Rows in the window with impossible timestamps, by reason; they "
        "keep their status in counts but are left out of durations.",
        ("batch.store", "batchmon.reason"),
    ),
    InstrumentSpec(
        "batchmon.events.invalid",
        _C,
        "{row}",
        "Finished rows claimed for events whose timestamps or record "
        "counts are impossible, by reason; they are counted in "
        "batch.finished, bad timestamps are left out of the histograms "
        "and bad counts out of batch.records.",
        ("batch.store", "batchmon.reason"),
    ),
    InstrumentSpec(
        "batchmon.rows.late",
        _C,
        "{row}",
        "Finished rows committed after their time range was claimed, "
        "found by the trailing recount; they are not in batch.finished.",
        ("batch.store",),
    ),
)


def spec(name: str) -> InstrumentSpec:
    """Return the catalogue entry called ``name``."""
    for entry in CATALOGUE:
        if entry.name == name:
            return entry
    raise KeyError(f"{name!r} is not in the otel_batchmon catalogue")


def markdown_table() -> str:
    """The README's metric table, rendered from the catalogue."""
    rows = [
        "| name | kind | unit | attributes | replaces | description |",
        "|---|---|---|---|---|---|",
    ]
    for entry in CATALOGUE:
        attributes = ", ".join(f"`{a}`" for a in entry.attributes)
        replaces = ", ".join(f"`{r}`" for r in entry.replaces)
        rows.append(
            f"| `{entry.name}` | {entry.kind} | `{entry.unit}` | "
            f"{attributes} | {replaces} | {entry.description} |"
        )
    return "\n".join(rows)

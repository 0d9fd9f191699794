"""An independent, pure-Python reading of the gauges of a preset store.

It follows the README's definitions of the gauges (DESIGN.md's, with a
finish but no start invalid only for completed and failed rows, and a row
not yet due out of the stuck count) and the preset semantics of
otel_batchmon/presets/README.md: the relation (emulated here over the
generated rows, not read from the database), status rules then value
lists, fallback chains, ``only_when``, ``finish_optional_for``,
``window_by``, ``due_at``, stuck statuses including pending (by queued
time), and ``[metrics.unavailable]``. Times are Unix seconds (floats).
Nothing here imports the engine (store, status, config).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

CANONICAL = ("pending", "processing", "completed", "failed")
OTHER = "other"
REASONS = (
    "finish_before_start",
    "finish_without_start",
    "finished_without_finish_time",
    "future_timestamp",
)
FINISHED = ("completed", "failed")
TIME_ROLES = ("queued_at", "started_at", "finished_at", "due_at")
Rows = Callable[[str], list[dict[str, Any]]]


@dataclass(frozen=True)
class Expected:
    """The value of every gauge; None where the gauge must be absent."""

    window_counts: dict[str, int]
    failure_ratio: float | None
    duration_mean: float | None
    stuck: int
    active: dict[str, int]
    processing_oldest_age: float | None
    pending_oldest_age: float | None
    last_success_age: float | None
    invalid: dict[str, int]
    unavailable: frozenset[str]


# -------------------------------------------------------------- relation


def relation_rows(
    preset: dict[str, Any], rows_of: Rows
) -> list[dict[str, Any]]:
    """The preset's relation over the generated base rows, as the
    database would return it: lower-case column names, times as epoch
    seconds. ``rows_of(table)`` gives a base table's rows."""
    special = _RELATIONS.get(preset["name"])
    if special is not None:
        return [_epochs(r) for r in special(rows_of)]
    relation = preset["relation"]
    if relation["kind"] == "table":
        source = _defaults(relation["table"], preset)
    else:
        found = re.search(r"\bFROM\s+(\S+)", relation["sql"], re.I)
        assert found, "a SELECT relation names its table after FROM"
        source = _defaults(found.group(1), preset)
    return [_epochs(r) for r in rows_of(source.split(".")[-1])]


def _defaults(text: str, preset: dict[str, Any]) -> str:
    for name, spec in preset.get("parameters", {}).items():
        text = text.replace("{" + name + "}", str(spec.get("default", "")))
    return text


def _lower(row: dict[str, Any]) -> dict[str, Any]:
    return {k.lower(): v for k, v in row.items()}


def _epochs(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k.lower(): v.timestamp() if isinstance(v, dt.datetime) else v
        for k, v in row.items()
    }


def _spring_batch(rows_of: Rows) -> Iterable[dict[str, Any]]:
    read: dict[Any, int] = {}
    skipped: dict[Any, int] = {}
    for step in map(_lower, rows_of("STEP_EXECUTION")):
        key = step["job_execution_id"]
        read[key] = read.get(key, 0) + step["read_count"]
        skipped[key] = skipped.get(key, 0) + sum(
            step[c]
            for c in (
                "read_skip_count",
                "process_skip_count",
                "write_skip_count",
            )
        )
    for e in map(_lower, rows_of("JOB_EXECUTION")):
        yield {
            "records_total": read.get(e["job_execution_id"]),
            "records_failed": skipped.get(e["job_execution_id"]),
            "id": e["job_execution_id"],
            "status": e.get("status"),
            "exit_code": e.get("exit_code"),
            "queued_at": e.get("create_time"),
            "started_at": e.get("start_time"),
            "finished_at": e.get("end_time"),
            "heartbeat_at": e.get("last_updated"),
        }


def _solid_queue(rows_of: Rows) -> Iterable[dict[str, Any]]:
    def by_job(table: str) -> dict[Any, dict[str, Any]]:
        return {r["job_id"]: r for r in map(_lower, rows_of(table))}

    claimed = by_job("solid_queue_claimed_executions")
    failed = by_job("solid_queue_failed_executions")
    ready = by_job("solid_queue_ready_executions")
    scheduled = by_job("solid_queue_scheduled_executions")
    blocked = by_job("solid_queue_blocked_executions")
    for job in map(_lower, rows_of("solid_queue_jobs")):
        key = job["id"]
        if job.get("finished_at") is not None:
            state = "finished"
        elif key in failed:
            state = "failed"
        elif key in claimed:
            state = "claimed"
        elif key in ready:
            state = "ready"
        elif key in scheduled:
            state = "scheduled"
        elif key in blocked:
            state = "blocked"
        else:
            state = "none"
        ended = job.get("finished_at")
        if ended is None and key in failed:
            ended = failed[key]["created_at"]
        yield {
            "id": key,
            "class_name": job.get("class_name"),
            "created_at": job.get("created_at"),
            "scheduled_at": job.get("scheduled_at"),
            "claimed_at": claimed.get(key, {}).get("created_at"),
            "ended_at": ended,
            "error": failed.get(key, {}).get("error"),
            "execution_state": state,
        }


def _pgboss_legacy(rows_of: Rows) -> Iterable[dict[str, Any]]:
    for row in map(_lower, [*rows_of("job"), *rows_of("archive")]):
        if not str(row.get("name", "")).startswith("__state__completed__"):
            yield row


_RELATIONS: dict[str, Callable[[Rows], Iterable[dict[str, Any]]]] = {
    "spring_batch": _spring_batch,
    "solid_queue": _solid_queue,
    "pgboss_legacy": _pgboss_legacy,
}


# ---------------------------------------------------------------- status


def value(row: dict[str, Any], spec: Any) -> Any:
    """A role or rule column on a relation row: a column name, a fallback
    chain (first non-NULL) or a JSON path; ``""`` is no column."""
    if isinstance(spec, list):
        return next(
            (v for v in (value(row, s) for s in spec) if v is not None), None
        )
    if isinstance(spec, dict):
        data = row.get(spec["json"].lower())
        if isinstance(data, str | bytes):
            data = json.loads(data)
        for step in spec["path"]:
            data = data.get(step) if isinstance(data, dict) else None
        return data
    return row.get(spec.lower()) if spec else None


def canonical(
    preset: dict[str, Any], row: dict[str, Any], opt_in: Iterable[str] = ()
) -> str:
    """Rules in file order (opt-in ones only when named), then the value
    lists (exact, then case-folded); no status column: default_status."""
    chosen = set(opt_in)
    for rule in preset.get("status_rules", []):
        if not rule.get("enabled", True) and rule["name"] not in chosen:
            continue
        if all(_holds(row, c) for c in rule["when"]):
            return str(rule["status"])
    spec = preset["columns"].get("status", "")
    if not spec:
        return str(preset["columns"].get("default_status", OTHER))
    raw = value(row, spec)
    if raw is None:
        return OTHER
    lists = preset.get("statuses", {})
    names = (*CANONICAL, OTHER)
    for fold in (False, True):
        for status in names:
            for listed in lists.get(status, []):
                a, b = str(listed), str(raw)
                if a == b or (fold and a.casefold() == b.casefold()):
                    return status
    return OTHER


def _holds(row: dict[str, Any], condition: dict[str, Any]) -> bool:
    if "any" in condition:
        return any(
            all(_holds(row, c) for c in group) for group in condition["any"]
        )
    seen = value(row, condition["column"])
    op = condition["op"]
    if op in ("is_null", "not_null"):
        return bool((seen is None) == (op == "is_null"))
    if seen is None:
        return False
    if op in ("is_true", "is_false"):
        truth = str(seen).lower() in ("1", "t", "true")
        return bool(truth == (op == "is_true"))
    ref = (
        value(row, condition["other"])
        if "other" in condition
        else condition.get("value")
    )
    if ref is None:
        return False
    if op in ("in", "not_in"):
        inside = str(seen) in {str(x) for x in ref}
        return bool(inside == (op == "in"))
    if op == "starts_with":
        return str(seen).startswith(str(ref))
    left, right = _comparable(seen, ref)
    return bool(
        {
            "eq": left == right,
            "ne": left != right,
            "gt": left > right,
            "ge": left >= right,
            "lt": left < right,
            "le": left <= right,
        }[op]
    )


def _comparable(a: Any, b: Any) -> tuple[Any, Any]:
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers):
        return float(a), float(b)
    return str(a), str(b)


# ---------------------------------------------------------------- gauges


@dataclass
class _Row:
    status: str
    queued: float | None
    start: float | None
    finish: float | None
    due: float | None
    start_ignored: bool


def expected(
    preset: dict[str, Any],
    relation: list[dict[str, Any]],
    now: float,
    window_seconds: float = 24 * 3600,
    stuck_after_seconds: float = 4 * 3600,
    opt_in: Iterable[str] = (),
) -> Expected:
    """Every gauge of the store at database time ``now``."""
    rows = [_read(preset, r, tuple(opt_in)) for r in relation]
    columns = preset["columns"]
    statuses = preset.get("statuses", {})
    stuck_statuses = set(statuses.get("stuck_statuses", ["processing"]))
    has_start = bool(columns.get("started_at"))
    has_queued = bool(columns.get("queued_at"))
    optional_finish = set(columns.get("finish_optional_for", []))
    window_by = columns.get("window_by")

    counts = dict.fromkeys((*CANONICAL, OTHER), 0)
    invalid = dict.fromkeys(REASONS, 0)
    durations: list[float] = []
    for row in rows:
        if window_by:
            moment = {"queued_at": row.queued, "started_at": row.start}.get(
                window_by, row.finish
            )
        else:
            moment = row.start if row.start is not None else row.queued
        if moment is None or not now - window_seconds <= moment <= now:
            continue
        counts[row.status] += 1
        start, finish = row.start, row.finish
        if start is not None and finish is not None and finish < start:
            invalid["finish_before_start"] += 1
        if (
            finish is not None
            and start is None
            and row.status in FINISHED
            and has_start
            and not row.start_ignored
        ):
            invalid["finish_without_start"] += 1
        if (
            finish is None
            and row.status in FINISHED
            and row.status not in optional_finish
        ):
            invalid["finished_without_finish_time"] += 1
        if finish is not None and finish > now:
            invalid["future_timestamp"] += 1
        if (
            row.status in FINISHED
            and start is not None
            and finish is not None
            and start <= finish <= now
        ):
            durations.append(finish - start)

    live = [
        r
        for r in rows
        if r.status in ("pending", "processing") or r.status in stuck_statuses
    ]
    invalid["future_timestamp"] += sum(
        1 for r in live if r.start is not None and r.start > now
    )
    cutoff = now - stuck_after_seconds
    stuck = sum(
        1
        for r in live
        if r.status in stuck_statuses
        and not (r.due is not None and r.due > now)
        and (
            (r.start is not None and r.start < cutoff)
            or (
                r.start is None
                and r.status == "pending"
                and r.queued is not None
                and r.queued < cutoff
            )
        )
    )
    processing_starts = [
        r.start
        for r in rows
        if r.status == "processing" and r.start is not None and r.start <= now
    ]
    pending_bases = [
        b
        for b in (_pending_basis(r, has_queued, now) for r in rows)
        if b is not None
    ]
    successes = [
        r.finish
        for r in rows
        if r.status == "completed" and r.finish is not None and r.finish <= now
    ]
    decided = counts["completed"] + counts["failed"]
    return Expected(
        window_counts=counts,
        failure_ratio=counts["failed"] / decided if decided else None,
        duration_mean=sum(durations) / len(durations) if durations else None,
        stuck=stuck,
        active={
            s: sum(1 for r in rows if r.status == s)
            for s in ("pending", "processing")
        },
        processing_oldest_age=(
            now - min(processing_starts) if processing_starts else None
        ),
        pending_oldest_age=now - min(pending_bases) if pending_bases else None,
        last_success_age=now - max(successes) if successes else None,
        invalid=invalid,
        unavailable=frozenset(
            preset.get("metrics", {}).get("unavailable", {})
        ),
    )


def _read(
    preset: dict[str, Any], row: dict[str, Any], opt_in: tuple[str, ...]
) -> _Row:
    columns = preset["columns"]
    status = canonical(preset, row, opt_in)
    times: dict[str, float | None] = {}
    for role in TIME_ROLES:
        found = value(row, columns.get(role, ""))
        times[role] = None if found is None else float(found)
    only = columns.get("only_when", {})
    for role, allowed in only.items():
        if status not in allowed:
            times[role] = None
    return _Row(
        status=status,
        queued=times["queued_at"],
        start=times["started_at"],
        finish=times["finished_at"],
        due=times["due_at"],
        start_ignored="started_at" in only
        and status not in only["started_at"],
    )


def _pending_basis(row: _Row, has_queued: bool, now: float) -> float | None:
    """When a pending row started waiting: its queued time (start time
    without a queued column), or its due time when later; None while it
    is not yet due."""
    if row.status != "pending":
        return None
    if row.due is not None and row.due > now:
        return None
    basis = row.queued if has_queued else row.start
    if row.due is not None:
        basis = row.due if basis is None else max(basis, row.due)
    if basis is None or basis > now:
        return None
    return basis


@dataclass(frozen=True)
class ExpectedEvents:
    """What one backfilled claim of every finished row records."""

    finished: dict[str, int]
    durations: dict[str, int]
    records: dict[str, float]


def expected_events(
    preset: dict[str, Any],
    relation: list[dict[str, Any]],
    now: float,
    opt_in: Iterable[str] = (),
) -> ExpectedEvents:
    """Rows finished by ``now`` (no settle lag, backfill over everything):
    batch.finished per final status (completed, failed, other);
    batch.duration for rows with start <= finish; batch.records for rows
    whose counts are possible (0 <= failed <= total), whatever their
    timestamps (the engine's reading of the README's "timestamps or
    record counts are impossible ... left out of the histograms and
    records": timestamps rule the histograms, counts the records)."""
    columns = preset["columns"]
    finished: dict[str, int] = {}
    durations: dict[str, int] = {}
    records = {"ok": 0.0, "failed": 0.0}
    for raw in relation:
        row = _read(preset, raw, tuple(opt_in))
        if row.finish is None or row.finish > now:
            continue
        if row.status in ("pending", "processing"):
            continue  # an unfinished status: batchmon.events.invalid
        finished[row.status] = finished.get(row.status, 0) + 1
        total = value(raw, columns.get("records_total", ""))
        failed = value(raw, columns.get("records_failed", "")) or 0
        if total is not None and 0 <= failed <= total:
            records["ok"] += total - failed
            records["failed"] += failed
        if row.start is not None and row.finish >= row.start:
            durations[row.status] = durations.get(row.status, 0) + 1
    return ExpectedEvents(finished, durations, records)

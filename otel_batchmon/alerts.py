"""Alert incidents: stuck batches, no recent success, failure streaks.

Evaluated after each good refresh, on the database clock, by the instance
that reports the store. Opening and resolving each add 1 to
``batch.alerts`` and log one line; nothing repeats while an incident stays
open (unless ``renotify_every``), across refreshes and restarts, because
incidents live in the state tables. A failed refresh evaluates nothing.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from opentelemetry.metrics import Meter
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from otel_batchmon._alert_rows import (
    StuckBatch,
    failed_streak_kinds,
    stuck_batches,
)
from otel_batchmon._engine import classify
from otel_batchmon._state_handle import StateHandle, handle_for
from otel_batchmon.config import MonitorConfig
from otel_batchmon.incidents import Incident, IncidentLog
from otel_batchmon.instruments import spec
from otel_batchmon.remedy import finish_stuck, foreign_framework
from otel_batchmon.store import BatchStore

__all__ = ["AlertEvaluator"]

_log = logging.getLogger(__name__)
_MICROS = 1_000_000


@dataclass(frozen=True)
class _Condition:
    alert_type: str
    key: str
    started_us: int
    details: dict[str, Any] = field(default_factory=dict)


class AlertEvaluator:
    """Keeps every store's incidents in step with what the table shows.

    ``after_read`` is what the refresher calls after a good gauge read.
    """

    def __init__(
        self,
        config: MonitorConfig,
        meter: Meter,
        handles: dict[str, StateHandle] | None = None,
    ) -> None:
        self.config = config
        alerts, actions = spec("batch.alerts"), spec("batchmon.stuck.actions")
        self._alerts = meter.create_counter(
            alerts.name, alerts.unit, alerts.description
        )
        self._actions = meter.create_counter(
            actions.name, actions.unit, actions.description
        )
        self._handles = {} if handles is None else handles
        self._writers: dict[str, Engine] = {}
        self._dry_runs: set[str] = set()
        self._refused: set[str] = set()
        self._last_problem: dict[str, str] = {}
        self._lock = threading.Lock()

    def after_read(self, store: BatchStore, engine: Engine) -> None:
        """Open and resolve the store's incidents; never raises."""
        try:
            self._evaluate(store, engine)
        except Exception as exc:
            problem = classify(exc).message
            if self._last_problem.get(store.name) != problem:
                self._last_problem[store.name] = problem
                _log.warning(
                    "store %s: alerts skipped: %s", store.name, problem
                )

    def close(self) -> None:
        """Release the state and writer engines."""
        with self._lock:
            for writer in self._writers.values():
                writer.dispose()

    def _evaluate(self, store: BatchStore, engine: Engine) -> None:
        snapshot = store.last_snapshot
        log = self._incident_log(store)
        if snapshot is None or log is None:
            return
        now_us = round(snapshot.database_time * _MICROS)
        conditions, stuck = self._conditions(store, engine, now_us)
        self._reconcile(store.name, log, conditions, now_us)
        self._act(store, stuck)

    def _conditions(
        self, store: BatchStore, engine: Engine, now_us: int
    ) -> tuple[dict[tuple[str, str], _Condition], list[StuckBatch]]:
        alerts = store.config.alerts
        thresholds = alerts.stuck_after_by_kind
        lowest = min([store.config.stuck_after_seconds, *thresholds.values()])
        with engine.connect() as connection, connection.begin():
            stuck = stuck_batches(store, connection, lowest)
            streaks = (
                failed_streak_kinds(store, connection, alerts.failure_streak)
                if alerts.failure_streak
                else {}
            )
        found: dict[tuple[str, str], _Condition] = {}
        for batch in stuck:
            limit = thresholds.get(
                batch.kind or "", store.config.stuck_after_seconds
            )
            if batch.age_seconds <= limit:
                continue
            found[("stuck", batch.key)] = _Condition(
                "stuck",
                batch.key,
                batch.started_us + round(limit * _MICROS),
                _stuck_details(batch),
            )
        for kind, last_us in streaks.items():
            found[("failure_streak", kind)] = _Condition(
                "failure_streak",
                kind,
                last_us,
                {"kind": kind, "length": alerts.failure_streak},
            )
        silence = self._no_success(store, now_us)
        if silence is not None:
            found[("no_success", "")] = silence
        return found, stuck

    def _no_success(self, store: BatchStore, now_us: int) -> _Condition | None:
        within = store.config.alerts.no_success_within_seconds
        snapshot = store.last_snapshot
        if within is None or snapshot is None:
            return None
        age = snapshot.last_success_age_seconds
        if age is not None and age <= within:
            return None
        since = 0 if age is None else now_us - round(age * _MICROS)
        started = since + round(within * _MICROS) if since else 0
        details = {"within_seconds": within, "last_success_age": age}
        return _Condition("no_success", "", started, details)

    def _reconcile(
        self,
        store: str,
        log: IncidentLog,
        conditions: dict[tuple[str, str], _Condition],
        now_us: int,
    ) -> None:
        open_now = {
            (i.alert_type, i.key): i for i in log.open_incidents(store)
        }
        stuck_keys = [k for t, k in conditions if t == "stuck"]
        stuck_keys = [k for k in stuck_keys if ("stuck", k) not in open_now]
        # A stuck batch opens once in its life, however it flaps.
        seen = log.seen(store, "stuck", stuck_keys)
        for identity, condition in conditions.items():
            incident = open_now.get(identity)
            if incident is not None:
                self._maybe_renotify(store, log, incident, now_us)
                continue
            if condition.alert_type == "stuck" and condition.key in seen:
                continue
            self._open(store, log, condition, now_us)
        for identity, incident in open_now.items():
            if identity not in conditions:
                self._resolve(store, log, incident, now_us)

    def _open(
        self, store: str, log: IncidentLog, condition: _Condition, now_us: int
    ) -> None:
        incident = Incident(
            store=store,
            alert_type=condition.alert_type,
            key=condition.key,
            opened_us=condition.started_us,
            notified_us=now_us,
            details=condition.details,
        )
        if not log.open(incident):
            return
        self._count(store, condition.alert_type, "open")
        _log.warning(
            "store %s: %s incident opened: %s",
            store,
            condition.alert_type,
            _describe(condition.details),
        )

    def _resolve(
        self, store: str, log: IncidentLog, incident: Incident, now_us: int
    ) -> None:
        # A reason means someone resolved it by hand (`stuck resolve`).
        resolution = "manual" if incident.reason else "cleared"
        if not log.resolve(incident, now_us, resolution, incident.reason):
            return
        self._count(store, incident.alert_type, "resolved")
        _log.info(
            "store %s: %s incident resolved (%s): %s",
            store,
            incident.alert_type,
            resolution,
            _describe(incident.details),
        )

    def _maybe_renotify(
        self, store: str, log: IncidentLog, incident: Incident, now_us: int
    ) -> None:
        every = self._store_alerts(store).renotify_every_seconds
        if every is None or now_us - incident.notified_us < every * _MICROS:
            return
        if log.renotified(incident, now_us):
            self._count(store, incident.alert_type, "open")
            _log.warning(
                "store %s: %s incident still open: %s",
                store,
                incident.alert_type,
                _describe(incident.details),
            )

    def _act(self, store: BatchStore, stuck: list[StuckBatch]) -> None:
        alerts = store.config.alerts
        after = alerts.stuck_action_after_seconds
        if alerts.stuck_action != "fail" or after is None:
            return
        owner = foreign_framework(store.config)
        if owner is not None:
            if store.name not in self._refused:
                self._refused.add(store.name)
                _log.warning(
                    'store %s: stuck.action = "fail" is refused: the '
                    "table is %s's, and otel-batchmon never writes to "
                    "another framework's tables",
                    store.name,
                    owner,
                )
            return
        for batch in stuck:
            if batch.age_seconds <= after:
                continue
            if alerts.stuck_action_dry_run and batch.key in self._dry_runs:
                continue
            change = finish_stuck(
                store,
                self._writer(store),
                batch.raw_id,
                batch.raw_started,
                "failed",
                f"stuck for {batch.age_seconds:.0f}s; failed by otel-batchmon",
                alerts.stuck_action_dry_run,
            )
            if alerts.stuck_action_dry_run:
                self._dry_runs.add(batch.key)
                _log.warning(
                    "store %s: would mark stuck batch %s failed (dry_run): %s",
                    store.name,
                    batch.batch_id,
                    change.statement,
                )
            elif not change.changed:
                continue
            self._actions.add(
                1,
                {
                    "batch.store": store.name,
                    "batchmon.action": "fail",
                    "batchmon.dry_run": str(
                        alerts.stuck_action_dry_run
                    ).lower(),
                },
            )

    def _count(self, store: str, alert_type: str, state: str) -> None:
        self._alerts.add(
            1,
            {
                "batch.store": store,
                "alert.type": alert_type,
                "alert.state": state,
            },
        )

    def _store_alerts(self, store: str) -> Any:
        for candidate in self.config.stores:
            if candidate.name == store:
                return candidate.alerts
        raise KeyError(store)

    def _incident_log(self, store: BatchStore) -> IncidentLog | None:
        url = self.config.state_url or store.config.database_url
        state = handle_for(self._handles, url, self.config).ready()
        return None if state is None else IncidentLog(state)

    def _writer(self, store: BatchStore) -> Engine:
        with self._lock:
            writer = self._writers.get(store.name)
            if writer is None:
                writer = create_engine(
                    store.config.database_url, pool_pre_ping=True
                )
                self._writers[store.name] = writer
            return writer


def _stuck_details(batch: StuckBatch) -> dict[str, Any]:
    started = datetime.fromtimestamp(batch.started_us / _MICROS, UTC)
    return {
        "batch_id": batch.batch_id,
        "kind": batch.kind,
        "status": batch.status,
        "started_at": started.isoformat(),
        "age_seconds": round(batch.age_seconds),
    }


def _describe(details: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in details.items() if v is not None)

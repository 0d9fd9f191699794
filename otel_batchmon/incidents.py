"""Alert incidents kept in the state tables, so restarts never re-fire them.

An incident opens once when its condition starts and resolves once when
it ends; a stuck batch (keyed by store, id and start time) never opens a
second incident, even if it flaps around the threshold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, insert, select, update
from sqlalchemy.exc import IntegrityError

from otel_batchmon.state import StateStore

__all__ = ["Incident", "IncidentLog"]


@dataclass(frozen=True)
class Incident:
    """One alert incident of a store."""

    store: str
    alert_type: str
    key: str
    opened_us: int
    notified_us: int
    resolved_us: int | None = None
    resolution: str | None = None
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly view, for ``stuck list --json``."""
        return {
            "store": self.store,
            "alert_type": self.alert_type,
            "key": self.key,
            "opened_us": self.opened_us,
            "resolved_us": self.resolved_us,
            "resolution": self.resolution,
            "reason": self.reason,
            "details": self.details,
        }


class IncidentLog:
    """Reads and changes incidents; every change is one short transaction.

    Opening and resolving are conditional writes, so when two monitors race
    only one of them reports the transition.
    """

    def __init__(self, state: StateStore) -> None:
        self.state = state
        self.table = state.tables.incident

    def open_incidents(self, store: str) -> list[Incident]:
        """Every unresolved incident of a store."""
        c = self.table.c
        query = select(self.table).where(
            c.store == store, c.resolved_us.is_(None)
        )
        with self.state._begin() as connection:
            rows = connection.execute(query).mappings().all()
        return [_incident(row) for row in rows]

    def seen(self, store: str, alert_type: str, keys: list[str]) -> set[str]:
        """Which of ``keys`` already had an incident, open or resolved."""
        if not keys:
            return set()
        c = self.table.c
        query = select(c.incident_key).where(
            c.store == store,
            c.alert_type == alert_type,
            c.incident_key.in_(keys),
        )
        with self.state._begin() as connection:
            return {row[0] for row in connection.execute(query)}

    def open(self, incident: Incident) -> bool:
        """Record a new incident; False when another monitor was first."""
        try:
            with self.state._begin() as connection:
                if self._is_open(connection, incident):
                    return False
                connection.execute(
                    insert(self.table).values(
                        store=incident.store,
                        alert_type=incident.alert_type,
                        incident_key=incident.key,
                        opened_us=incident.opened_us,
                        notified_us=incident.notified_us,
                        details=json.dumps(incident.details, default=str),
                    )
                )
        except IntegrityError:
            return False
        return True

    def resolve(
        self,
        incident: Incident,
        now_us: int,
        resolution: str,
        reason: str | None = None,
    ) -> bool:
        """Mark an open incident resolved; False if it was already."""
        with self.state._begin() as connection:
            done = connection.execute(
                update(self.table)
                .where(_same(self.table, incident))
                .where(self.table.c.resolved_us.is_(None))
                .values(
                    resolved_us=now_us, resolution=resolution, reason=reason
                )
            )
        return done.rowcount == 1

    def note(self, store: str, key_prefix: str, reason: str) -> int:
        """Record a reason on open incidents whose key starts with
        ``key_prefix``; the monitor resolves them when the condition ends.
        """
        c = self.table.c
        with self.state._begin() as connection:
            done = connection.execute(
                update(self.table)
                .where(
                    c.store == store,
                    c.resolved_us.is_(None),
                    c.incident_key.startswith(key_prefix, autoescape=True),
                )
                .values(reason=reason)
            )
        return int(done.rowcount)

    def renotified(self, incident: Incident, now_us: int) -> bool:
        """Move an open incident's last notification to ``now_us``."""
        with self.state._begin() as connection:
            done = connection.execute(
                update(self.table)
                .where(_same(self.table, incident))
                .where(self.table.c.notified_us == incident.notified_us)
                .values(notified_us=now_us)
            )
        return done.rowcount == 1

    def _is_open(self, connection: Any, incident: Incident) -> bool:
        c = self.table.c
        found = connection.execute(
            select(c.opened_us).where(
                c.store == incident.store,
                c.alert_type == incident.alert_type,
                c.incident_key == incident.key,
                c.resolved_us.is_(None),
            )
        ).first()
        return found is not None


def _same(table: Any, incident: Incident) -> Any:
    c = table.c
    return and_(
        c.store == incident.store,
        c.alert_type == incident.alert_type,
        c.incident_key == incident.key,
        c.opened_us == incident.opened_us,
    )


def _incident(row: Any) -> Incident:
    details = json.loads(row["details"]) if row["details"] else {}
    return Incident(
        store=row["store"],
        alert_type=row["alert_type"],
        key=row["incident_key"],
        opened_us=int(row["opened_us"]),
        notified_us=int(row["notified_us"]),
        resolved_us=row["resolved_us"],
        resolution=row["resolution"],
        reason=row["reason"],
        details=details,
    )

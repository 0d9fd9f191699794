"""Attribute-set capping and warn-once bookkeeping for the worker API.

The SDK keeps at most 2000 attribute sets per metric and then folds
every new set into one ``otel.metric.overflow`` point, losing all the
values. We cap earlier and fold into ``_other`` values that keep the
attribute keys, so dashboards grouping by a key still see the overflow.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from opentelemetry.util.types import AttributeValue

__all__ = [
    "OTHER",
    "AttributeSetCap",
    "BatchAttributeCache",
    "BatchAttributes",
    "WarnOnce",
]

_logger = logging.getLogger(__name__)

OTHER = "_other"


class WarnOnce:
    """Remember which (metric, problem) pairs have already been logged."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def first(self, metric: str, problem: str) -> bool:
        """Return True the first time ``(metric, problem)`` is seen."""
        key = (metric, problem)
        if key in self._seen:
            return False
        with self._lock:
            if key in self._seen:
                return False
            self._seen.add(key)
            return True


class AttributeSetCap:
    """Admit at most ``limit`` distinct attribute sets for one subject.

    Sets beyond the cap fold to the same keys with every value ``_other``;
    the first fold logs one warning for the metric.
    """

    def __init__(self, subject: str, limit: int) -> None:
        if limit < 1:
            raise ValueError(
                f"attribute set limit for {subject} must be at least 1, "
                f"got {limit}"
            )
        self.subject = subject
        self.limit = limit
        self._seen: set[frozenset[tuple[str, AttributeValue]]] = set()
        self._folded = False
        self._lock = threading.Lock()

    def admit(
        self, attributes: Mapping[str, AttributeValue]
    ) -> tuple[dict[str, AttributeValue], bool]:
        """Return the attributes to record and whether they were admitted.

        Admitted sets come back unchanged (as a new dict); a set beyond the
        cap comes back folded to ``_other`` with False.
        """
        key = frozenset(attributes.items())
        if key in self._seen:
            return dict(attributes), True
        with self._lock:
            if key in self._seen or len(self._seen) < self.limit:
                self._seen.add(key)
                return dict(attributes), True
            first_fold = not self._folded
            self._folded = True
        if first_fold:
            _logger.warning(
                "%s reached its cap of %d attribute sets; new sets are "
                "recorded with every value set to %r",
                self.subject,
                self.limit,
                OTHER,
            )
        return dict.fromkeys(attributes, OTHER), False


class BatchAttributes:
    """The prebuilt attribute dicts of one (store, kind) pair."""

    __slots__ = ("completed", "failed", "ok", "queue", "records_failed")

    def __init__(self, source: str, store: str | None, kind: str | None):
        base: dict[str, str] = {"batch.source": source}
        if store is not None:
            base["batch.store"] = store
        if kind is not None:
            base["batch.kind"] = kind
        self.queue = base
        self.completed = {**base, "batch.status": "completed"}
        self.failed = {**base, "batch.status": "failed"}
        self.ok = {**base, "batch.record.outcome": "ok"}
        self.records_failed = {**base, "batch.record.outcome": "failed"}


class BatchAttributeCache:
    """``BatchAttributes`` per (store, kind), capped at ``limit`` pairs.

    Pairs beyond the cap share attributes whose store and kind are
    ``_other``; they are built anew each time so the cache stays bounded.
    """

    def __init__(self, source: str, limit: int) -> None:
        self._source = source
        self._cap = AttributeSetCap(
            "track_batch (batch.store, batch.kind)", limit
        )
        self._pairs: dict[tuple[str | None, str | None], BatchAttributes]
        self._pairs = {}

    def get(self, store: str | None, kind: str | None) -> BatchAttributes:
        """Return the attributes for this pair, folded beyond the cap."""
        attributes = self._pairs.get((store, kind))
        if attributes is not None:
            return attributes
        if not self._cap.admit({"store": store or "", "kind": kind or ""})[1]:
            return BatchAttributes(
                self._source,
                None if store is None else OTHER,
                None if kind is None else OTHER,
            )
        attributes = BatchAttributes(self._source, store, kind)
        self._pairs[(store, kind)] = attributes
        return attributes

"""Table status values mapped to the canonical statuses, and the snapshot
assembled from the refresh rows with that mapping.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from otel_batchmon.config import CANONICAL_STATUSES, StoreConfig
from otel_batchmon.errors import ConfigError
from otel_batchmon.snapshot import INVALID_REASONS, StoreSnapshot

__all__ = ["OTHER", "StatusMap"]

OTHER = "other"
_log = logging.getLogger(__name__)


class StatusMap:
    """Maps raw status values of a table to the canonical words.

    A value the mapping does not know becomes ``other`` and is logged once
    per store and value.
    """

    def __init__(
        self,
        mapping: Mapping[str, Sequence[str | int]],
        case_insensitive: bool = False,
        pad_space: bool = False,
    ) -> None:
        self.mapping = {k: tuple(v) for k, v in mapping.items()}
        # Matching must agree with the SQL `status IN (...)` of the same
        # refresh: exact on PostgreSQL and SQLite, but MySQL and MariaDB
        # compare (and group) with a case-insensitive collation by default,
        # and a PAD SPACE collation (MariaDB's default) also ignores
        # trailing spaces: 'processing ' = 'processing'.
        self.case_insensitive = case_insensitive
        self.pad_space = pad_space
        self._exact = {
            str(value): canonical
            for canonical, values in self.mapping.items()
            for value in values
        }
        self._folded = {self._fold(k): v for k, v in self._exact.items()}
        self._warned: set[str | None] = set()
        self._lock = threading.Lock()

    def canonical(self, raw: object, store: str = "") -> str:
        """Return the canonical status of a raw value, or ``other``."""
        text = None if raw is None else str(raw)
        if text is not None:
            found = self._exact.get(text)
            if found is None and self.case_insensitive:
                found = self._folded.get(self._fold(text))
            if found:
                return found
        with self._lock:
            if text not in self._warned:
                self._warned.add(text)
                if text is None:
                    _log.warning(
                        "store %s: rows with a NULL status are reported as "
                        "'other' (set null_status to count them as one of "
                        "the canonical statuses)",
                        store,
                    )
                else:
                    _log.warning(
                        "store %s: status value %r is not in the mapping; "
                        "it is reported as 'other' (map it under "
                        "[statuses])",
                        store,
                        text,
                    )
        return OTHER

    @staticmethod
    def shown(raw: object) -> str:
        """A status as people read it: a rule's result is its canonical
        word, anything else the table's own value."""
        from otel_batchmon._relation import RULE_MARK

        text = "NULL" if raw is None else str(raw)
        return text.removeprefix(RULE_MARK)

    def is_known(self, raw: object) -> bool:
        """Tell whether a raw value maps to a canonical status."""
        if raw is None:
            return False
        text = str(raw)
        if self.case_insensitive:
            return self._fold(text) in self._folded
        return text in self._exact

    def padded(self, pad_space: bool) -> StatusMap:
        """The same mapping, ignoring trailing spaces or not."""
        return StatusMap(self.mapping, self.case_insensitive, pad_space)

    def _fold(self, text: str) -> str:
        folded = text.casefold()
        return folded.rstrip(" ") if self.pad_space else folded

    def raw_values(self, canonicals: Iterable[str]) -> list[str | int]:
        """Every raw value that maps to one of ``canonicals``."""
        wanted = set(canonicals)
        return [
            value
            for canonical, values in self.mapping.items()
            if canonical in wanted
            for value in values
        ]

    def as_integers(self, store: str) -> StatusMap:
        """The same mapping for an integer status column."""
        converted: dict[str, tuple[str | int, ...]] = {}
        problems = []
        for canonical, values in self.mapping.items():
            numbers: list[str | int] = []
            for value in values:
                try:
                    numbers.append(int(value))
                except ValueError:
                    problems.append(
                        f"stores.{store}.statuses.{canonical}: the status "
                        f"column holds integers, but {value!r} is not one"
                    )
            converted[canonical] = tuple(numbers)
        if problems:
            raise ConfigError(problems)
        return StatusMap(converted, self.case_insensitive, self.pad_space)

    def with_rules(self, mark: str) -> StatusMap:
        """The mapping for a status computed by rules: values compare as
        text, and each rule's ``mark + status`` means that status."""
        texts: dict[str, tuple[str | int, ...]] = {
            canonical: tuple(str(v) for v in values)
            for canonical, values in self.mapping.items()
        }
        for canonical in (*CANONICAL_STATUSES, OTHER):
            texts[canonical] = (*texts.get(canonical, ()), mark + canonical)
        return StatusMap(texts, self.case_insensitive, self.pad_space)

    def for_dialect(self, dialect: str) -> StatusMap:
        """The same mapping, matching case as the dialect's SQL does."""
        folding = dialect in ("mysql", "mariadb")
        return StatusMap(self.mapping, folding)

    def snapshot(
        self, config: StoreConfig, rows: Sequence[Sequence[Any]]
    ) -> StoreSnapshot:
        """Assemble the snapshot from the rows of the refresh statement."""
        return _Assembly(self, config).build(rows)


class _Assembly:
    """Folds the refresh rows (part, status, v0..v6, now) per status."""

    def __init__(self, statuses: StatusMap, config: StoreConfig) -> None:
        self.statuses = statuses
        self.config = config
        self.window = dict.fromkeys((*CANONICAL_STATUSES, OTHER), 0)
        self.active = dict.fromkeys(("pending", "processing"), 0)
        self.invalid = dict.fromkeys(INVALID_REASONS, 0)
        self.unmapped: set[str] = set()
        self.finished = {"completed": 0.0, "failed": 0.0}
        self.duration_sum = 0.0
        self.duration_count = 0
        self.stuck = 0
        self.oldest: dict[str, float | None] = {
            "processing": None,
            "pending": None,
        }
        self.last_success: float | None = None
        self.now: float | None = None

    def build(self, rows: Sequence[Sequence[Any]]) -> StoreSnapshot:
        for part, raw, *values, now in rows:
            numbers = [0.0 if v is None else float(v) for v in values]
            if part == "p":
                self.last_success = values[1]
                self.now = float(now)
                continue
            status = self.statuses.canonical(raw, self.config.name)
            if status == OTHER and not self.statuses.is_known(raw):
                self.unmapped.add("NULL" if raw is None else repr(raw))
            if part == "w":
                self.add_window(status, numbers)
            else:
                self.add_active(status, numbers, values)
        if self.now is None:
            raise ValueError("the refresh returned no clock row")
        return self.result(self.now)

    def add_window(self, status: str, numbers: list[float]) -> None:
        count, valid, total, backwards, no_start, no_finish, late = numbers
        mapping = self.config.mapping
        self.window[status] += int(count)
        if status in self.finished:
            self.finished[status] += count
            self.duration_count += int(valid)
            self.duration_sum += total
            # Some tables never record a finish for some statuses (a
            # Laravel batch that ran with failures): not invalid there.
            if status not in mapping.finish_optional_for:
                self.invalid["finished_without_finish_time"] += int(no_finish)
        self.invalid["finish_before_start"] += int(backwards)
        # Only a finished batch must have started: a batch cancelled
        # before it ran has a finish and no start. A start kept only for
        # some statuses (only_when) is missing by design on the others.
        starts = mapping.only_when.get("started_at", self.finished)
        if status in self.finished and status in starts:
            self.invalid["finish_without_start"] += int(no_start)
        self.invalid["future_timestamp"] += int(late)

    def add_active(
        self, status: str, numbers: list[float], values: list[Any]
    ) -> None:
        count, stuck, _, _, future = numbers[:5]
        if status in self.config.stuck_statuses:
            self.stuck += int(stuck)
        self.invalid["future_timestamp"] += int(future)
        if status not in self.active:
            return
        self.active[status] += int(count)
        # v2 is the oldest start, v3 the oldest pending-age basis (queued
        # time, or start time when the table has no queued column).
        first = values[3] if status == "pending" else values[2]
        if first is not None:
            known = self.oldest[status]
            self.oldest[status] = first if known is None else min(known, first)

    def result(self, now: float) -> StoreSnapshot:
        decided = self.finished["completed"] + self.finished["failed"]
        ratio = self.finished["failed"] / decided if decided else None
        mean = (
            self.duration_sum / self.duration_count
            if self.duration_count
            else None
        )
        return StoreSnapshot(
            store=self.config.name,
            database_time=now,
            window_counts=self.window,
            failure_ratio=ratio,
            duration_mean_seconds=mean,
            stuck_count=self.stuck,
            active_counts=self.active,
            processing_oldest_age_seconds=_age(now, self.oldest["processing"]),
            pending_oldest_age_seconds=_age(now, self.oldest["pending"]),
            last_success_age_seconds=_age(now, self.last_success),
            invalid_rows=self.invalid,
            unmapped_statuses=frozenset(self.unmapped),
        )


def _age(now: float, then: Any) -> float | None:
    return None if then is None else max(0.0, now - float(then))

"""A concurrent writer: the application working on the batch table while
the monitors read it.

It runs in its own thread with its own engine (autocommit, one statement
per transaction) at the dataset's daily rate sped up by ``time_scale``:
new pending batches, pending -> processing -> completed or failed, some
finishes committed late with a back-dated finish time, and retries that
re-open failed rows. It stops when told or after ``max_seconds``.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import create_engine, insert, update

from otel_batchmon.tables import default_batch_table

LATE_COMMIT_SHARE = 0.1
LATE_COMMIT_SECONDS = 120.0
FAIL_SHARE = 0.05
RETRY_SHARE = 0.3
_TICK_SECONDS = 0.02


class Writer(threading.Thread):
    """Writes to ``table`` at ``batches_per_second`` until ``stop()``."""

    def __init__(
        self,
        url: str,
        table: str,
        batches_per_second: float,
        max_seconds: float,
        seed: int = 9,
    ) -> None:
        super().__init__(name="bench-writer", daemon=True)
        self.url = url
        self.table = default_batch_table(table)
        self.rate = batches_per_second
        self.max_seconds = max_seconds
        self.random = random.Random(seed)
        self.naive_times = not url.startswith("postgresql")
        self.changed_rows = 0
        self.statements: dict[str, int] = {}
        self.error: str | None = None
        self._stop_event = threading.Event()
        self._pending: deque[tuple[str, float]] = deque()
        self._running: list[tuple[float, str]] = []
        self._failed: deque[tuple[str, float]] = deque()
        self._serial = 0

    def stop(self) -> None:
        """Ask the thread to stop and wait for it."""
        self._stop_event.set()
        self.join(30)

    def run(self) -> None:
        engine = create_engine(
            self.url, isolation_level="AUTOCOMMIT", pool_size=1
        )
        begun = time.monotonic()
        try:
            with engine.connect() as connection:
                while not self._stop_event.is_set():
                    elapsed = time.monotonic() - begun
                    if elapsed > self.max_seconds:
                        break
                    self._tick(connection, elapsed)
                    self._stop_event.wait(_TICK_SECONDS)
        except Exception as exc:  # reported in the results, not raised
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            engine.dispose()

    def _tick(self, connection: Any, elapsed: float) -> None:
        now = time.monotonic()
        while self._serial < self.rate * elapsed:
            self._insert(connection, now)
        while self._pending and self._pending[0][1] <= now:
            batch_id, _ = self._pending.popleft()
            self._start(connection, batch_id, now)
        self._running.sort()
        while self._running and self._running[0][0] <= now:
            _, batch_id = self._running.pop(0)
            self._finish(connection, batch_id, now)
        while self._failed and self._failed[0][1] <= now:
            batch_id, _ = self._failed.popleft()
            self._start(connection, batch_id, now, retry=True)

    def _clock(self, shift_seconds: float = 0.0) -> datetime:
        moment = datetime.now(UTC) + timedelta(seconds=shift_seconds)
        return moment.replace(tzinfo=None) if self.naive_times else moment

    def _execute(self, connection: Any, kind: str, statement: Any) -> None:
        # Each statement names one row by id; some drivers report no
        # rowcount in autocommit, so the statement is the unit.
        connection.execute(statement)
        self.changed_rows += 1
        self.statements[kind] = self.statements.get(kind, 0) + 1

    def _insert(self, connection: Any, now: float) -> None:
        self._serial += 1
        batch_id = f"w{self.ident}-{self._serial}"
        self._execute(
            connection,
            "insert",
            insert(self.table).values(
                id=batch_id,
                kind=f"job-{self._serial % 7}",
                status="pending",
                created_at=self._clock(),
                records_total=100 + self._serial % 900,
                records_failed=0,
            ),
        )
        self._pending.append((batch_id, now + self.random.uniform(0.1, 0.5)))

    def _start(
        self, connection: Any, batch_id: str, now: float, retry: bool = False
    ) -> None:
        t = self.table
        self._execute(
            connection,
            "retry" if retry else "start",
            update(t)
            .where(t.c.id == batch_id)
            .values(
                status="processing",
                started_at=self._clock(),
                finished_at=None,
                error=None,
            ),
        )
        ends = now + self.random.uniform(0.3, 3.0)
        self._running.append((ends, batch_id))

    def _finish(self, connection: Any, batch_id: str, now: float) -> None:
        t = self.table
        failed = self.random.random() < FAIL_SHARE
        late = self.random.random() < LATE_COMMIT_SHARE
        # A late commit: the worker's run ended a while ago and its row
        # arrives only now, behind rows a reader has already passed.
        values: dict[str, Any] = {
            "status": "failed" if failed else "completed",
            "finished_at": self._clock(),
            "error": "writer failure" if failed else None,
        }
        if late:
            values["started_at"] = self._clock(-LATE_COMMIT_SECONDS - 1.0)
            values["finished_at"] = self._clock(-LATE_COMMIT_SECONDS)
        self._execute(
            connection,
            "late finish" if late else "finish",
            update(t).where(t.c.id == batch_id).values(**values),
        )
        if failed and self.random.random() < RETRY_SHARE:
            self._failed.append((batch_id, now + 0.5))

"""Leadership: one holder per store, a lease that never lets two report."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from sqlalchemy import text

from otel_batchmon.config import StoreConfig
from otel_batchmon.leader import Leadership, lock_for
from tests.conftest import Database


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _store(db: Database, name: str = "jobs") -> StoreConfig:
    return StoreConfig(name=name, database_url=db.url, table=name)


def _pair(
    db: Database, clock: FakeClock, lease: float = 10.0
) -> tuple[Leadership, Leadership]:
    store = _store(db, db.table_name("lead"))
    first = Leadership(lock_for(store, 5), lease, clock)
    second = Leadership(lock_for(store, 5), lease, clock)
    return first, second


def test_only_one_instance_holds_and_it_waits_out_the_grace(
    db: Database,
) -> None:
    clock = FakeClock()
    first, second = _pair(db, clock)
    try:
        assert first.renew() is False  # holds, but the grace is running
        assert second.renew() is False
        clock.now += 10
        assert first.renew() is True
        assert second.renew() is False
        assert first.valid()
        assert not second.valid()
    finally:
        first.stop()
        second.stop()


def test_leader_that_stops_confirming_goes_quiet_before_a_takeover(
    db: Database,
) -> None:
    clock = FakeClock()
    first, second = _pair(db, clock)
    try:
        first.renew()
        clock.now += 10
        assert first.renew()
        # The leader's lock is freed (its process died, say) while it has
        # not noticed; the follower acquires at once.
        first._lock.release()
        assert second.renew() is False
        clock.now += 9.9
        assert first.valid(), "still inside its last lease"
        assert not second.valid(), "still inside its grace"
        clock.now += 0.2
        assert not first.valid()
        assert second.renew() is True
    finally:
        first.stop()
        second.stop()


def test_killed_leader_session_loses_the_lease(postgres: Database) -> None:
    clock = FakeClock()
    first, second = _pair(postgres, clock)
    try:
        first.renew()
        clock.now += 10
        assert first.renew()
        with postgres.engine.begin() as connection:
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND granted "
                    "AND pid <> pg_backend_pid() AND objid = :low"
                ),
                {"low": _low_bits(first)},
            )
        assert first.renew() is False
        assert second.renew() is False
        clock.now += 10
        assert second.renew() is True
    finally:
        first.stop()
        second.stop()


def _low_bits(leadership: Leadership) -> int:
    key: int = leadership._lock._key  # type: ignore[attr-defined]
    return key & 0xFFFFFFFF


def test_killed_mariadb_session_loses_the_lease(mariadb: Database) -> None:
    clock = FakeClock()
    first, second = _pair(mariadb, clock)
    try:
        first.renew()
        clock.now += 10
        assert first.renew()
        lock_name = first._lock._key  # type: ignore[attr-defined]
        with mariadb.engine.begin() as connection:
            holder = connection.execute(
                text("SELECT IS_USED_LOCK(:name)"), {"name": lock_name}
            ).scalar()
            connection.execute(text(f"KILL {int(holder)}"))
        assert first.renew() is False
        assert second.renew() is False
        clock.now += 10
        assert second.renew() is True
    finally:
        first.stop()
        second.stop()


def test_four_processes_on_one_sqlite_file_elect_one_leader(
    tmp_path: Path,
) -> None:
    database = tmp_path / "jobs.db"
    script = textwrap.dedent(
        f"""
        import sys, time
        from otel_batchmon.config import StoreConfig
        from otel_batchmon.leader import lock_for
        store = StoreConfig(
            name="jobs", database_url="sqlite:///{database}", table="jobs"
        )
        lock = lock_for(store, 5)
        print(lock.hold(), flush=True)
        sys.stdin.readline()
        """
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        answers = [p.stdout.readline().strip() for p in processes]  # type: ignore[union-attr]
    finally:
        for process in processes:
            process.communicate("\n", timeout=30)
    assert sorted(answers) == ["False", "False", "False", "True"]


def test_forked_child_does_not_inherit_the_lead(sqlite: Database) -> None:
    clock = FakeClock()
    leadership = Leadership(lock_for(_store(sqlite), 5), 1.0, clock)
    leadership.renew()
    clock.now += 1
    assert leadership.renew()
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(reader)
        answer = b"1" if leadership.renew() else b"0"
        os.write(writer, answer)
        os._exit(0)
    os.close(writer)
    answer = os.read(reader, 1)
    os.waitpid(pid, 0)
    os.close(reader)
    leadership.stop()
    assert answer == b"0"


def test_background_renewal_makes_the_sole_instance_leader(
    db: Database,
) -> None:
    import threading

    became = threading.Event()
    store = _store(db, db.table_name("lead"))
    leadership = Leadership(
        lock_for(store, 5), 0.2, on_change=lambda v: v and became.set()
    )
    leadership.start()
    try:
        assert became.wait(10)
        assert leadership.valid()
    finally:
        leadership.stop()
    assert not leadership.valid()


def test_memory_database_is_always_its_own_leader() -> None:
    clock = FakeClock()
    store = StoreConfig(name="m", database_url="sqlite://", table="t")
    leadership = Leadership(lock_for(store, 5), 1.0, clock)
    leadership.renew()
    clock.now += 1
    assert leadership.renew()
    leadership.stop()

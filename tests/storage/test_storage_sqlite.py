"""SQLite-only behaviour: the OS lock between processes, crash durability, settings."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from quota_server.storage import Fenced, LeaseHeld, Recovered, StorageError, UsageRow
from quota_server.storage.sqlite import SqliteStorage

from .conftest import ManualClock

ROOT = Path(__file__).resolve().parents[2]
TTL_MS = 30_000

CHILD = """
import asyncio, sys
from quota_server.storage.sqlite import SqliteStorage

async def main():
    store = SqliteStorage(sys.argv[1])
    await store.open()
    epoch = await store.acquire_lease("child", 60_000)
    print("epoch", epoch, flush=True)
    for seq in range(1, int(sys.argv[2]) + 1):
        await store.append(epoch, seq, b"r%d" % seq, [], [])
        print("acked", seq, flush=True)
    print("holding", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


class Child:
    """A second server process on the same file, which we can kill -9."""

    def __init__(self, db: Path, appends: int) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(db), str(appends)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.epoch = 0
        self.acked = 0

    def read_until(self, marker: str, stop_after_acks: int | None = None) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            word, _, value = line.strip().partition(" ")
            if word == "epoch":
                self.epoch = int(value)
            elif word == "acked":
                self.acked = int(value)
                if stop_after_acks is not None and self.acked >= stop_after_acks:
                    return
            if word == marker:
                return
        raise AssertionError(f"child exited early: {self.proc.stderr.read() if self.proc.stderr else ''}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "dir" / "quota.db"


async def test_second_instance_is_locked_out_while_the_first_holds_the_lease(db: Path) -> None:
    """Two stores on one file: the flock refuses the second, even once the TTL has run out."""
    clock = ManualClock()
    first, second = SqliteStorage(str(db), clock_ms=clock), SqliteStorage(str(db), clock_ms=clock)
    await first.open()
    await second.open()
    try:
        epoch = await first.acquire_lease("first", TTL_MS)
        with pytest.raises(LeaseHeld, match="lock"):
            await second.acquire_lease("second", TTL_MS)
        clock.advance(10 * TTL_MS)
        with pytest.raises(LeaseHeld):
            await second.acquire_lease("second", TTL_MS)
        await first.append(epoch, 1, b"r1", [], [])

        await first.close()  # the holder goes away (as a dead process would): the lock is free
        taken = await second.acquire_lease("second", TTL_MS)
        assert taken > epoch
        await second.append(taken, 2, b"r2", [], [])
    finally:
        await first.close()
        await second.close()


async def test_release_frees_the_file_for_another_instance(db: Path) -> None:
    """After release_lease the lock file is free at once."""
    first, second = SqliteStorage(str(db)), SqliteStorage(str(db))
    await first.open()
    await second.open()
    try:
        epoch = await first.acquire_lease("first", TTL_MS)
        await first.release_lease(epoch)
        assert await second.acquire_lease("second", TTL_MS) > epoch
        with pytest.raises(LeaseHeld):
            await first.acquire_lease("first", TTL_MS)
    finally:
        await first.close()
        await second.close()


async def test_another_process_holding_the_lease_keeps_us_out_until_it_dies(db: Path) -> None:
    """A live server process on the file excludes us; after its kill -9 we take over at once
    (the kernel dropped its flock), with a larger epoch, and see what it acknowledged."""
    child = Child(db, appends=5)
    try:
        child.read_until("holding")
        store = SqliteStorage(str(db))
        await store.open()
        try:
            with pytest.raises(LeaseHeld):
                await store.acquire_lease("parent", TTL_MS)
            child.kill()
            epoch = await store.acquire_lease("parent", TTL_MS)
            assert epoch > child.epoch
            assert await store.load() == Recovered(None, 0, [(s, b"r%d" % s) for s in range(1, 6)])
            with pytest.raises(Fenced):
                await store.append(child.epoch, 6, b"r6", [], [])
        finally:
            await store.close()
    finally:
        if child.proc.poll() is None:
            child.kill()


async def test_acknowledged_appends_survive_kill_9(db: Path) -> None:
    """Every append the child saw acknowledged is loaded after it is killed mid-stream."""
    child = Child(db, appends=100_000)
    try:
        child.read_until("", stop_after_acks=200)
        child.kill()
    finally:
        if child.proc.poll() is None:
            child.kill()
    acked = child.acked
    store = SqliteStorage(str(db))
    await store.open()
    try:
        loaded = await store.load()
    finally:
        await store.close()
    assert loaded.last_seq >= acked >= 200
    assert loaded.records[:acked] == [(s, b"r%d" % s) for s in range(1, acked + 1)]


async def test_file_settings_and_worker_thread(db: Path) -> None:
    """WAL + synchronous=FULL on the connection, which lives on the dedicated worker thread."""
    store = SqliteStorage(str(db))
    await store.open()
    try:
        assert db.exists()  # parent directories were created
        conn = store._conn
        assert conn is not None
        assert await store._run(lambda: conn.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"
        assert await store._run(lambda: conn.execute("PRAGMA synchronous").fetchone()[0]) == 2  # FULL
        name = await store._run(lambda: threading.current_thread().name)
        assert name.startswith("quota-sqlite") and name != threading.current_thread().name
    finally:
        await store.close()


async def test_refuses_a_file_written_by_a_newer_schema(db: Path) -> None:
    """A downgrade must not scribble over data in a format it does not know."""
    db.parent.mkdir(parents=True)
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version=99")
    conn.close()
    store = SqliteStorage(str(db))
    with pytest.raises(StorageError, match="schema version 99"):
        await store.open()


async def test_calls_before_open_fail_cleanly(db: Path) -> None:
    """Using a store that is not open is a StorageError, not a hang or a crash."""
    store = SqliteStorage(str(db))
    with pytest.raises(StorageError, match="not open"):
        await store.load()
    await store.close()  # closing a store that was never opened is fine


async def test_schema_1_usage_rows_are_migrated_and_old_cursors_still_page(db: Path) -> None:
    """A file written by schema version 1 (one usage row per record) opens as version 2 with
    every row readable in the same order, and a cursor issued by version 1 resumes after its row."""
    db.parent.mkdir(parents=True)
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE usage (id INTEGER PRIMARY KEY AUTOINCREMENT, account_id TEXT NOT NULL,"
            " at_ms INTEGER NOT NULL, payload BLOB NOT NULL)"
        )
        conn.executemany(
            "INSERT INTO usage (account_id, at_ms, payload) VALUES (?, ?, ?)",
            [("a", 100 + i // 2, b"old%d" % i) for i in range(5)],
        )
        conn.execute("PRAGMA user_version=1")
    conn.close()
    store = SqliteStorage(str(db))
    await store.open()
    try:
        rows, cursor = await store.list_usage("a", 0, 0, 2, None)
        assert [r.payload for r in rows] == [b"old0", b"old1"]
        rows, _ = await store.list_usage("a", 0, 0, 10, "100:2")  # a version-1 cursor: at_ms:id
        assert [r.payload for r in rows] == [b"old2", b"old3", b"old4"]
        epoch = await store.acquire_lease("me", 30_000)
        await store.append(epoch, 1, b"r", [UsageRow("a", 200, b"new")], [])
        assert [r.payload async for r in store.iter_usage("a", 0, 0)] == [b"old%d" % i for i in range(5)] + [b"new"]
    finally:
        await store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'usage'").fetchone()[0] == 0
        # the new chunk got an id after the migrated ones (AUTOINCREMENT kept its high-water mark)
        assert conn.execute("SELECT max(id) FROM usage_chunk").fetchone()[0] == 6
    conn.close()

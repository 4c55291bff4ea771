"""SQLite-only behaviour: the OS lock between processes, crash durability, settings."""
from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from quota_server.storage import EventRow, Fenced, LeaseHeld, Recovered, SequenceError, StorageError, UsageRow
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
        conn.execute("CREATE TABLE journal (seq INTEGER PRIMARY KEY, record BLOB NOT NULL)")
        conn.execute("CREATE TABLE snapshot (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL,"
                     " blob BLOB NOT NULL)")
        conn.execute("INSERT INTO snapshot (id, seq, blob) VALUES (1, 3, ?)", (b"snap" * 400,))
        conn.execute("INSERT INTO journal (seq, record) VALUES (4, ?)", (b"rec4" * 400,))
        conn.execute(
            "CREATE TABLE meta (id INTEGER PRIMARY KEY CHECK (id = 1), owner TEXT, epoch INTEGER NOT NULL,"
            " expires_at_ms INTEGER NOT NULL, last_seq INTEGER NOT NULL, last_event_id INTEGER NOT NULL)"
        )
        conn.execute("INSERT INTO meta VALUES (1, NULL, 0, 0, 4, 0)")
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
        assert await store.load() == Recovered(b"snap" * 400, 3, [(4, b"rec4" * 400)])
        rows, cursor = await store.list_usage("a", 0, 0, 2, None)
        assert [r.payload for r in rows] == [b"old0", b"old1"]
        rows, _ = await store.list_usage("a", 0, 0, 10, "100:2")  # a version-1 cursor: at_ms:id
        assert [r.payload for r in rows] == [b"old2", b"old3", b"old4"]
        epoch = await store.acquire_lease("me", 30_000)
        await store.append(epoch, 5, b"r", [UsageRow("a", 200, b"new")], [])
        assert [r.payload async for r in store.iter_usage("a", 0, 0)] == [b"old%d" % i for i in range(5)] + [b"new"]
    finally:
        await store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'usage'").fetchone()[0] == 0
        # the new chunk got an id after the migrated ones (AUTOINCREMENT kept its high-water mark)
        assert conn.execute("SELECT max(id) FROM usage_chunk").fetchone()[0] == 6
    conn.close()


async def test_large_blobs_are_stored_compressed_and_read_back_exactly(db: Path) -> None:
    """Records, usage chunks and snapshots from COMPRESS_MIN_BYTES on are stored zstd-compressed
    (codec 2), small ones as they are (codec 0); what load() and list_usage return is the same
    bytes either way, and the retry of a compressed append is still recognised as a duplicate."""
    from quota_server.storage import sqlite as sq

    store = SqliteStorage(str(db))
    await store.open()
    try:
        epoch = await store.acquire_lease("me", 30_000)
        big = b"journal record " * 1000
        rows = [UsageRow("a", 7, b'{"reservation_id":"r%d","amount_charged":1}' % i) for i in range(100)]
        await store.append(epoch, 1, big, rows, [])
        await store.append(epoch, 2, b"tiny", [UsageRow("a", 8, b"x")], [])
        await store.append(epoch, 1, big, rows, [])  # the retry of an ambiguous append: a no-op
        with pytest.raises(SequenceError):
            await store.append(epoch, 1, big + b"!", rows, [])
        assert (await store.load()).records == [(1, big), (2, b"tiny")]
        assert [r async for r in store.iter_usage("a", 0, 0)] == rows + [UsageRow("a", 8, b"x")]
        snapshot = bytes(range(256)) * 64
        await store.write_snapshot(epoch, 2, snapshot)
        assert await store.load() == Recovered(snapshot, 2, [])
    finally:
        await store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM journal").fetchone()[0] == 0  # trimmed by the snapshot
        assert conn.execute("SELECT codec, length(blob) < ? FROM snapshot", (len(snapshot),)).fetchone() == (2, 1)
        codecs = conn.execute("SELECT n, codec FROM usage_chunk ORDER BY id").fetchall()
        assert codecs == [(100, sq.CODEC_ZSTD), (1, sq.CODEC_RAW)]
    conn.close()


async def test_zlib_blobs_of_schema_2_are_still_read(db: Path) -> None:
    """Servers before schema 3 compressed with zlib (codec 1): such a file opens (marked 3), its
    snapshot, records and usage chunks read back exactly, and new writes use zstd beside them."""
    import zlib

    from quota_server.storage import sqlite as sq
    from quota_server.storage.base import pack_payloads

    store = SqliteStorage(str(db))
    await store.open()
    await store.close()
    snapshot, record = b"old snapshot " * 300, b"old record " * 300
    payloads = [b'{"reservation_id":"r%d"}' % i for i in range(50)]
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version=2")
        conn.execute("UPDATE meta SET last_seq = 2")
        conn.execute("INSERT INTO snapshot (seq, blob, codec) VALUES (1, ?, 1)", (zlib.compress(snapshot),))
        conn.execute("INSERT INTO journal (seq, record, codec) VALUES (2, ?, 1)", (zlib.compress(record),))
        conn.execute("INSERT INTO usage_chunk (account_id, at_ms, n, payloads, codec) VALUES ('a', 5, 50, ?, 1)",
                     (zlib.compress(pack_payloads(payloads)),))
    conn.close()
    store = SqliteStorage(str(db))
    await store.open()
    try:
        assert await store.load() == Recovered(snapshot, 1, [(2, record)])
        assert [r.payload async for r in store.iter_usage("a", 0, 0)] == payloads
        epoch = await store.acquire_lease("me", 30_000)
        await store.append(epoch, 3, record * 2, [], [])
        assert (await store.load()).records == [(2, record), (3, record * 2)]
    finally:
        await store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
        assert conn.execute("SELECT seq, codec FROM journal ORDER BY seq").fetchall() == [
            (2, sq.CODEC_ZLIB), (3, sq.CODEC_ZSTD)]
    conn.close()


async def test_a_damaged_compressed_record_is_a_storage_error(db: Path) -> None:
    """A compressed blob that does not decompress is refused on load, not returned as data."""
    store = SqliteStorage(str(db))
    await store.open()
    epoch = await store.acquire_lease("me", 30_000)
    await store.append(epoch, 1, b"journal record " * 1000, [], [])
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE journal SET record = substr(record, 1, 20) WHERE seq = 1")
    conn.close()
    try:
        with pytest.raises(StorageError, match="damaged journal record 1"):
            await store.load()
    finally:
        await store.close()


@pytest.mark.parametrize("fast_appends", [True, False], ids=["c-writer", "thread"])
async def test_background_checkpoints_keep_the_wal_from_growing(db: Path, monkeypatch, fast_appends: bool) -> None:
    """Appends never checkpoint inline (wal_autocheckpoint is off); a background checkpoint runs
    every CHECKPOINT_EVERY_BYTES and the writer restarts the WAL once it reaches
    WAL_RESTART_FRAMES, so a long run of back-to-back appends leaves a bounded WAL behind."""
    import os
    import random

    from quota_server.storage import sqlite as sq

    monkeypatch.setattr(sq, "CHECKPOINT_EVERY_BYTES", 1 << 20)
    monkeypatch.setattr(sq, "WAL_RESTART_FRAMES", 1_024)  # 4 MB
    store = SqliteStorage(str(db), fast_appends=fast_appends)
    await store.open()
    rng = random.Random(1)
    try:
        epoch = await store.acquire_lease("me", 30_000)
        payload_size = 256 * 1024  # incompressible, so the bytes really reach the WAL
        total = 0
        seq = 0
        while total < 40 * sq.CHECKPOINT_EVERY_BYTES:
            seq += 1
            await store.append(epoch, seq, rng.randbytes(payload_size), [], [])
            total += payload_size
        checkpoint = store._checkpoint
        assert checkpoint is not None, "no background checkpoint was started"
        checkpoint.result(timeout=30)
        assert len((await store.load()).records) == seq
        with sqlite3.connect(db) as conn:
            _, wal_frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        conn.close()
        limit = 1_024 * 4096 + 2 * (1 << 20) + 2 * payload_size  # the patched settings, plus slack
        assert wal_frames * 4096 < limit, f"WAL of {wal_frames} frames after {total} bytes appended"
        assert os.path.getsize(str(db) + "-wal") < limit
    finally:
        await store.close()


@pytest.mark.parametrize("fast_appends", [True, False], ids=["c-writer", "thread"])
async def test_a_long_wal_is_restarted_by_the_writer(db: Path, monkeypatch, fast_appends: bool) -> None:
    """When the last background checkpoint saw a WAL of WAL_RESTART_FRAMES or more, the next
    append that crosses CHECKPOINT_EVERY_BYTES restarts the WAL itself (RESTART checkpoint):
    afterwards the WAL holds only what was written since."""
    from quota_server.storage import sqlite as sq

    monkeypatch.setattr(sq, "CHECKPOINT_EVERY_BYTES", 1)
    store = SqliteStorage(str(db), fast_appends=fast_appends)
    await store.open()
    try:
        epoch = await store.acquire_lease("me", 30_000)
        for seq in range(1, 6):
            await store.append(epoch, seq, bytes(range(256)) * 40 * seq, [], [])
            if store._checkpoint is not None:
                store._checkpoint.result(timeout=30)
        store._wal_frames = sq.WAL_RESTART_FRAMES  # as if the background checkpoints fell behind
        await store.append(epoch, 6, b"after the restart", [], [])
        assert store._wal_frames == 0
        await store.append(epoch, 7, b"next", [], [])
        store._checkpoint.result(timeout=30)  # not racing the background checkpoint for its lock
        with sqlite3.connect(db) as conn:
            _, wal_frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        conn.close()
        assert 0 < wal_frames <= 4, f"{wal_frames} frames: the WAL was not restarted"
        assert [seq for seq, _ in (await store.load()).records] == list(range(1, 8))
    finally:
        await store.close()


# -- the C writer thread (quota_server/_sqlwriter.pyx): appends without the GIL -------------------


async def test_appends_run_on_the_c_writer_where_libsqlite3_loads(db: Path) -> None:
    """On Linux with Python's own libsqlite3 (every machine this project runs on) the fast path
    is on, so the contract suite's "sqlite" backend really exercises it."""
    store = SqliteStorage(str(db))
    await store.open()
    try:
        assert store._fast is not None
    finally:
        await store.close()
    off = SqliteStorage(str(db), fast_appends=False)
    await off.open()
    try:
        assert off._fast is None
    finally:
        await off.close()


async def test_the_c_writer_thread_asks_for_prompt_wakeups(db: Path) -> None:
    """Its thread sets a time slice of its own, as the Redis writer's does (_jobthread.h,
    jt_prompt_wakeups; tests/storage/test_rediswriter.py checks the slice itself)."""
    store = SqliteStorage(str(db))
    await store.open()
    try:
        epoch = await store.acquire_lease("me", TTL_MS)
        await store.append(epoch, 1, b"first", [], [])  # the thread has run a job: it has started
        assert store._fast.slice_error() == 0
    finally:
        await store.close()


async def test_a_failing_statement_rolls_the_whole_append_back(db: Path) -> None:
    """SQLite refusing the usage insert (a trigger stands in for a full disk or a constraint)
    leaves nothing of the batch behind: no record, no events, last seq unchanged; the same
    append succeeds once the cause is gone."""
    store = SqliteStorage(str(db))
    await store.open()
    try:
        epoch = await store.acquire_lease("me", TTL_MS)
        await store.append(epoch, 1, b"first", [], [])
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON usage_chunk BEGIN SELECT RAISE(ABORT, 'refused'); END")
        conn.close()
        usage = [UsageRow("acct", 5, b"u")]
        events = [EventRow(1, "acct", "t", 5, b"e")]
        with pytest.raises(StorageError, match="refused"):
            await store.append(epoch, 2, b"second", usage, events)
        assert (await store.load()).records == [(1, b"first")]
        assert await store.read_events(0, 10) == []
        with sqlite3.connect(db) as conn:
            conn.execute("DROP TRIGGER refuse")
        conn.close()
        await store.append(epoch, 2, b"second", usage, events)
        assert (await store.load()).records == [(1, b"first"), (2, b"second")]
        assert [e.event_id for e in await store.read_events(0, 10)] == [1]
        rows, _ = await store.list_usage("acct", 0, 10, 10, None)
        assert [r.payload for r in rows] == [b"u"]
    finally:
        await store.close()


async def test_an_abandoned_append_still_lands_before_the_next_one(db: Path) -> None:
    """A caller that gives up (cancelled) once its append was handed to the writer does not
    stop it: the next append waits for it, and both are on disk."""
    store = SqliteStorage(str(db))
    await store.open()
    try:
        epoch = await store.acquire_lease("me", TTL_MS)
        task = asyncio.create_task(store.append(epoch, 1, b"abandoned", [], []))
        await asyncio.sleep(0)  # the task runs up to waiting for the writer
        assert store._fast.busy()
        task.cancel()
        await store.append(epoch, 2, b"next", [], [])
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await store.load()).records == [(1, b"abandoned"), (2, b"next")]
    finally:
        await store.close()


async def test_fenced_and_sequence_errors_from_the_writer_thread(db: Path) -> None:
    """The checks the transaction makes before writing, answered as the thread path answers
    them (the contract suite covers the rest)."""
    store = SqliteStorage(str(db))
    await store.open()
    try:
        epoch = await store.acquire_lease("me", TTL_MS)
        await store.append(epoch, 1, b"one", [], [EventRow(1, "a", "t", 1, b"")])
        with pytest.raises(Fenced, match=f"current {epoch}, lease held by 'me'"):
            await store.append(epoch - 1, 2, b"two", [], [])
        with pytest.raises(SequenceError, match="does not follow last seq 1"):
            await store.append(epoch, 3, b"three", [], [])
        with pytest.raises(SequenceError, match="event id 1 does not follow 1"):
            await store.append(epoch, 2, b"two", [], [EventRow(1, "a", "t", 1, b"")])
        await store.append(epoch, 1, b"one", [], [])  # a landed retry: compared, nothing written
        with pytest.raises(SequenceError, match="different record"):
            await store.append(epoch, 1, b"other", [], [])
        assert (await store.load()).records == [(1, b"one")]
    finally:
        await store.close()


@pytest.mark.parametrize("fast_appends", [True, False], ids=["c-writer", "thread"])
async def test_appends_are_stored_compressed_when_that_pays(db: Path, fast_appends: bool) -> None:
    """pack_blob's rule on both paths (the C writer's flushes are compressed on the event loop):
    from COMPRESS_MIN_BYTES on and only when smaller; what is read back is the bytes given."""
    import random

    from quota_server.storage.base import COMPRESS_MIN_BYTES

    store = SqliteStorage(str(db), fast_appends=fast_appends)
    await store.open()
    try:
        epoch = await store.acquire_lease("me", TTL_MS)
        compressible = b"journal record " * 1000
        noise = random.Random(7).randbytes(4 * COMPRESS_MIN_BYTES)
        small = b"x" * (COMPRESS_MIN_BYTES - 1)
        await store.append(epoch, 1, compressible, [UsageRow("a", 1, b"usage " * 400)], [])
        await store.append(epoch, 2, noise, [UsageRow("b", 1, noise)], [])
        await store.append(epoch, 3, small, [UsageRow("c", 1, small)], [])
        with sqlite3.connect(db) as conn:
            journal = conn.execute("SELECT seq, codec, length(record) FROM journal ORDER BY seq").fetchall()
            usage = conn.execute("SELECT account_id, codec, length(payloads) FROM usage_chunk ORDER BY id").fetchall()
        conn.close()
        assert journal[0][1] == 2 and journal[0][2] < len(compressible) // 10
        assert journal[1:] == [(2, 0, len(noise)), (3, 0, len(small))]
        assert usage[0][:2] == ("a", 2) and usage[0][2] < 400
        assert usage[1:] == [("b", 0, len(noise)), ("c", 0, len(small))]
        assert (await store.load()).records == [(1, compressible), (2, noise), (3, small)]
        for account, payload in (("a", b"usage " * 400), ("b", noise), ("c", small)):
            rows, _ = await store.list_usage(account, 0, 10, 10, None)
            assert [r.payload for r in rows] == [payload]
    finally:
        await store.close()


def test_a_store_used_from_another_event_loop_still_appends(db: Path) -> None:
    """The C writer reports to the loop that opened the storage; appends made from another
    loop (a tool running several asyncio.run in turn, say) take the worker thread, and closing
    from there does not wait on the first loop."""
    store = SqliteStorage(str(db))
    epoch = asyncio.run(_open_and_lease(store))
    assert store._fast is not None
    asyncio.run(store.append(epoch, 1, b"from a second loop", [], []))
    assert asyncio.run(store.load()).records == [(1, b"from a second loop")]
    asyncio.run(store.close())
    assert store._fast is None


async def _open_and_lease(store: SqliteStorage) -> int:
    await store.open()
    return await store.acquire_lease("me", TTL_MS)

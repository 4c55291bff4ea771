"""The embedded default backend: one SQLite file (standard library ``sqlite3``).

Durability: WAL mode with ``synchronous=FULL``. In WAL mode ``FULL`` fsyncs the WAL at every
commit, so a batch is on disk when ``append`` returns and survives a process crash, an OS crash
and a power loss (on a disk that honours fsync). ``NORMAL`` would only sync at checkpoints: the
database stays consistent but the last commits can be lost on power loss, which breaks "an
acknowledged mutation is never lost".

Concurrency: appends run on the C writer thread of ``quota_server/_sqlwriter.pyx``, with a
connection of its own, one at a time in submission order and without the GIL (see that module);
every other sqlite call runs on one dedicated worker thread that owns its own connection, so the
event loop never blocks. Where the C writer is not available (``fast_appends=False``, or
libsqlite3 cannot be loaded for it), appends run on the worker thread too. SQLite's own locking
(BEGIN IMMEDIATE, with a busy timeout) orders the two connections' transactions.

Ownership: the lease (owner, epoch, expires_at_ms) lives in the ``meta`` row and fences every
write; in addition the holder keeps an exclusive ``flock`` on ``<db>.lock`` while it holds the
lease. The flock is what keeps two live processes off one file (the kernel drops it when the
holder dies, even on kill -9); the epoch is what makes a stale writer's write fail. Because a
free flock proves that no live process holds the lease, a new process takes over a dead
holder's lease at once instead of waiting out its TTL. Local filesystems only (no NFS).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import fcntl
import functools
import os
import re
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .base import (
    EventRow,
    Fenced,
    InvalidCursor,
    LeaseHeld,
    Recovered,
    SequenceError,
    Storage,
    StorageError,
    StorageUnavailable,
    UsageChunk,
    UsageRow,
    check_batch,
    check_limit,
    check_recovered,
    check_ttl,
    CODEC_RAW,
    CODEC_ZLIB,
    CODEC_ZSTD,
    pack_blob,
    unpack_blob,
    unpack_payloads,
)

try:  # the GIL-free append path (quota_server/_sqlwriter.pyx); absent: the thread path only
    from .. import _sqlwriter
except ImportError:  # pragma: no cover - a source tree without the built extension
    _sqlwriter = None

T = TypeVar("T")

CHECKPOINT_EVERY_BYTES = 8 << 20
"""Bytes appended between two background checkpoints (WAL pages copied into the database)."""
WAL_RESTART_FRAMES = 16_384
"""WAL length (frames of one 4 KB page) past which the writer restarts the WAL from its start.
SQLite only reuses the WAL from the start once a checkpoint has copied every frame, which a
background checkpoint racing a busy writer never quite does; so once the WAL is this long, the
writer runs a RESTART checkpoint itself, which has little left to copy (the background ones did
the rest). The WAL file is kept at this size (journal_size_limit), reused rather than regrown."""

SCHEMA_VERSION = 3
"""1: one ``usage`` row per usage record. 2: ``usage_chunk``, one row per (account, at_ms) of a
flush holding all of its records (``base.group_usage``), and blobs zlib-compressed (``codec``);
a version-1 file is migrated at open. 3: blobs may also be zstd-compressed (``codec`` 2; the
tables are those of 2, so a version-2 file is only marked 3 at open, and an older server then
refuses it instead of misreading a blob)."""

BUSY_TIMEOUT_MS_DEFAULT = 5_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    owner TEXT,                       -- NULL: no lease (released)
    epoch INTEGER NOT NULL,           -- the last epoch issued = the current fencing epoch
    expires_at_ms INTEGER NOT NULL,   -- wall clock
    last_seq INTEGER NOT NULL,        -- survives journal trimming
    last_event_id INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (id, owner, epoch, expires_at_ms, last_seq, last_event_id)
    VALUES (1, NULL, 0, 0, 0, 0);
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY,
    record BLOB NOT NULL,
    codec INTEGER NOT NULL DEFAULT 0       -- 0: as written, 1: zlib, 2: zstd (base.pack_blob)
);
CREATE TABLE IF NOT EXISTS snapshot (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    blob BLOB NOT NULL,
    codec INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS usage_chunk (
    id INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused, so cursors stay valid
    account_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    n INTEGER NOT NULL,                     -- usage rows in the chunk (>= 1)
    payloads BLOB NOT NULL,                 -- base.pack_payloads: n = 1 is the payload itself
    codec INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS usage_chunk_account_at ON usage_chunk (account_id, at_ms, id);
CREATE TABLE IF NOT EXISTS events (
    event_id INTEGER PRIMARY KEY,
    account_id TEXT NOT NULL,
    type TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_account ON events (account_id, event_id);
"""

# An append's statements (both append paths use these texts; _sqlwriter.Writer binds each one's
# values in the order written here).
_SQL_READ_META = "SELECT owner, epoch, last_seq, last_event_id FROM meta WHERE id = 1"
_SQL_INSERT_JOURNAL = "INSERT INTO journal (seq, record, codec) VALUES (?, ?, ?)"
_SQL_INSERT_USAGE = "INSERT INTO usage_chunk (account_id, at_ms, n, payloads, codec) VALUES (?, ?, ?, ?, ?)"
_SQL_INSERT_EVENT = "INSERT INTO events (event_id, account_id, type, at_ms, payload) VALUES (?, ?, ?, ?, ?)"
_SQL_UPDATE_META = "UPDATE meta SET last_seq = ?, last_event_id = ? WHERE id = 1"
_APPEND_STATEMENTS = (_SQL_READ_META, _SQL_INSERT_JOURNAL, _SQL_INSERT_USAGE, _SQL_INSERT_EVENT, _SQL_UPDATE_META)

# Primary result codes after which a retry can succeed (locked by another process, I/O error,
# disk full, out of memory). Anything else (corrupt, not a database, constraint) is a StorageError.
_RETRYABLE_CODES = frozenset({5, 6, 7, 10, 13, 14, 15})  # BUSY LOCKED NOMEM IOERR FULL CANTOPEN PROTOCOL

_CURSOR = re.compile(r"(\d+):(\d+)(?::(\d+))?")
"""A usage cursor ``at_ms:chunk_id:index`` (the last row returned); ``at_ms:chunk_id`` (what
schema version 1 issued, one row per chunk id) means "after that whole chunk"."""


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _map_error(exc: BaseException) -> StorageError:
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and (code & 0xFF) in _RETRYABLE_CODES:
            return StorageUnavailable(f"sqlite: {exc}")
        return StorageError(f"sqlite: {exc}")
    if isinstance(exc, PermissionError):
        return StorageError(f"sqlite: {exc}")
    return StorageUnavailable(f"sqlite: {exc}")


class SqliteStorage(Storage):
    """Storage in one SQLite file at ``path`` (parent directories are created)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock_ms: Callable[[], int] = wall_clock_ms,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS_DEFAULT,
        fast_appends: bool = True,
    ) -> None:
        """`fast_appends`: run appends on the C writer thread of `_sqlwriter` (no GIL hand-offs;
        see that module) when libsqlite3 can be loaded for it; False: always on the worker
        thread through Python's sqlite3 module, as every other statement runs."""
        self.path = os.fspath(path)
        if self.path in ("", ":memory:") or self.path.startswith("file:"):
            raise ValueError(f"sqlite storage needs a file path, got {self.path!r}")
        self.lock_path = self.path + ".lock"
        self._clock_ms = clock_ms
        self._busy_timeout_ms = busy_timeout_ms
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        # Checkpoints run on their own thread and connection, so appends never wait for one
        # (SQLite's automatic checkpoint would run inside the append that crosses the mark).
        self._checkpointer: concurrent.futures.ThreadPoolExecutor | None = None
        self._checkpoint: concurrent.futures.Future | None = None
        self._ckpt_conn: sqlite3.Connection | None = None  # owned by the checkpoint thread
        self._bytes_since_checkpoint = 0
        self._wal_frames = 0  # the WAL's length as the last background checkpoint saw it
        # The fast append path (loop side): the C writer, the future of its job in flight, and
        # the bytes appended since the last checkpoint bookkeeping (_after_write) ran.
        self._fast_appends = fast_appends
        self._fast: Any = None
        self._fast_loop: asyncio.AbstractEventLoop | None = None  # the loop watching its eventfd
        self._fast_done: asyncio.Future | None = None
        self._fast_bytes = 0
        # Owned by the worker thread only:
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None

    # -- plumbing --------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise StorageError("sqlite storage is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        except StorageError:
            raise
        except (sqlite3.Error, OSError) as exc:
            raise _map_error(exc) from exc

    def _write_txn(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``body`` in one IMMEDIATE transaction (takes the write lock up front, so the
        checks in ``body`` and the writes that follow are atomic)."""
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = body(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    def _read_txn(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``body`` in one read transaction: a consistent view across several SELECTs."""
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN")
        try:
            return body(conn)
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="quota-sqlite"
        )
        try:
            await self._run(self._open_sync)
        except BaseException:
            executor, self._executor = self._executor, None
            executor.shutdown(wait=False)
            raise
        if self._fast_appends and _sqlwriter is not None and _sqlwriter.available():
            try:
                self._open_fast()
            except BaseException:
                await self.close()
                raise

    def _open_fast(self) -> None:
        """Start the C writer (its own connection, set up as _open_sync sets up the worker's)."""
        pragmas = (f"PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=0; "
                   f"PRAGMA journal_size_limit={WAL_RESTART_FRAMES * 4096};")
        try:
            fast = _sqlwriter.Writer(self.path, self._busy_timeout_ms, pragmas, _APPEND_STATEMENTS)
        except OSError as exc:
            raise StorageError(f"sqlite: {exc}") from None
        loop = asyncio.get_running_loop()
        try:
            loop.add_reader(fast.fileno(), self._fast_ready, fast)
        except BaseException:
            fast.close()
            raise
        self._fast = fast
        self._fast_loop = loop

    def _fast_ready(self, fast: Any) -> None:
        """The C writer's eventfd is readable: its job has run."""
        try:
            os.read(fast.fileno(), 8)
        except BlockingIOError:
            return
        job = fast.collect()
        done, self._fast_done = self._fast_done, None
        if job is not None and done is not None and not done.done():
            done.set_result(job)

    async def _close_fast(self) -> None:
        fast, loop = self._fast, self._fast_loop
        if fast is None:
            return
        if loop is asyncio.get_running_loop():
            while self._fast_done is not None:  # let the job in flight land (or fail)
                await asyncio.shield(self._fast_done)
        self._fast = self._fast_loop = None
        if not loop.is_closed():
            loop.remove_reader(fast.fileno())
        fast.close()  # a job still running (its loop gone) finishes first

    def _open_sync(self) -> None:
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=self._busy_timeout_ms / 1000, isolation_level=None
        )
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StorageError(f"sqlite: cannot enable WAL on {self.path} (got {mode!r})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA wal_autocheckpoint=0")  # see _after_write
            conn.execute(f"PRAGMA journal_size_limit={WAL_RESTART_FRAMES * 4096}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"sqlite: {self.path} has schema version {version}; this build knows "
                    f"{SCHEMA_VERSION} (refusing to touch data written by a newer server)"
                )
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                if version == 1:
                    _migrate_v1(conn)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    async def close(self) -> None:
        if self._executor is None:
            return
        try:
            await self._close_fast()
            if self._checkpointer is not None:
                checkpointer, self._checkpointer = self._checkpointer, None
                checkpointer.submit(self._close_checkpoint_conn)
                await asyncio.get_running_loop().run_in_executor(None, checkpointer.shutdown, True)
            await self._run(self._close_sync)
        finally:
            executor, self._executor = self._executor, None
            executor.shutdown(wait=True)

    # -- checkpoints -----------------------------------------------------------------------

    def _after_write(self, written: int) -> None:
        """Called on the worker thread after committed appends of `written` bytes in all (after
        each one on the thread path; on the C writer's only once a checkpoint is due)."""
        self._bytes_since_checkpoint += written
        if self._bytes_since_checkpoint < CHECKPOINT_EVERY_BYTES:
            return
        if self._checkpoint is not None and not self._checkpoint.done():
            return
        if self._wal_frames >= WAL_RESTART_FRAMES:
            # See WAL_RESTART_FRAMES: copy the little the last background checkpoint left
            # and start the WAL over (this append's caller waits for it). Busy: next time.
            assert self._conn is not None
            busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            if not busy:
                self._wal_frames = 0
                self._bytes_since_checkpoint = 0
                return
        if self._checkpointer is None:
            self._checkpointer = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="quota-sqlite-checkpoint"
            )
        self._bytes_since_checkpoint = 0
        self._checkpoint = self._checkpointer.submit(self._checkpoint_sync)

    def _checkpoint_sync(self) -> None:
        """A PASSIVE checkpoint on the checkpoint thread: copies what it can without blocking
        the writer. Failures are left for the next one (the WAL keeps everything meanwhile)."""
        try:
            if self._ckpt_conn is None:
                self._ckpt_conn = sqlite3.connect(self.path, timeout=self._busy_timeout_ms / 1000,
                                                  isolation_level=None, check_same_thread=False)
            _, log_frames, _ = self._ckpt_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self._wal_frames = max(log_frames, 0)
        except sqlite3.Error:
            pass

    def _close_checkpoint_conn(self) -> None:
        if self._ckpt_conn is not None:
            conn, self._ckpt_conn = self._ckpt_conn, None
            conn.close()

    def _close_sync(self) -> None:
        self._drop_flock()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    # -- lease -----------------------------------------------------------------------------

    def _take_flock(self, owner: str) -> None:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LeaseHeld(
                    f"another live process holds {self.lock_path} (and with it the lease)"
                ) from None
            raise
        # Who holds it, for an operator looking at the file; not used for decisions.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{owner} pid={os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _drop_flock(self) -> None:
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            os.close(fd)  # closing the only descriptor releases the flock

    async def acquire_lease(self, owner: str, ttl_ms: int) -> int:
        if not owner:
            raise ValueError("owner must not be empty")
        check_ttl(ttl_ms)
        return await self._run(self._acquire_sync, owner, ttl_ms)

    def _acquire_sync(self, owner: str, ttl_ms: int) -> int:
        took_flock = self._lock_fd is None
        if took_flock:
            self._take_flock(owner)

        def body(conn: sqlite3.Connection) -> int:
            holder, epoch, expires_at_ms = conn.execute(
                "SELECT owner, epoch, expires_at_ms FROM meta WHERE id = 1"
            ).fetchone()
            now_ms = self._clock_ms()
            # With a freshly taken flock the recorded holder is dead: take over at once.
            if not took_flock and holder is not None and holder != owner and expires_at_ms > now_ms:
                raise LeaseHeld(
                    f"lease held by {holder!r} (epoch {epoch}) for {expires_at_ms - now_ms} ms more"
                )
            conn.execute(
                "UPDATE meta SET owner = ?, epoch = ?, expires_at_ms = ? WHERE id = 1",
                (owner, epoch + 1, now_ms + ttl_ms),
            )
            return int(epoch) + 1

        try:
            return self._write_txn(body)
        except BaseException:
            if took_flock:
                self._drop_flock()
            raise

    async def renew_lease(self, epoch: int, ttl_ms: int) -> None:
        check_ttl(ttl_ms)
        await self._run(self._renew_sync, epoch, ttl_ms)

    def _renew_sync(self, epoch: int, ttl_ms: int) -> None:
        def body(conn: sqlite3.Connection) -> None:
            _check_fence(conn, epoch)
            conn.execute(
                "UPDATE meta SET expires_at_ms = ? WHERE id = 1", (self._clock_ms() + ttl_ms,)
            )

        self._write_txn(body)

    async def release_lease(self, epoch: int) -> None:
        await self._run(self._release_sync, epoch)

    def _release_sync(self, epoch: int) -> None:
        def body(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE meta SET owner = NULL, expires_at_ms = 0 "
                "WHERE id = 1 AND owner IS NOT NULL AND epoch = ?",
                (epoch,),
            )
            return cur.rowcount == 1

        if self._write_txn(body):
            self._drop_flock()

    # -- journal and snapshot --------------------------------------------------------------

    async def load(self) -> Recovered:
        return await self._run(self._read_txn, _load)

    async def append(
        self,
        epoch: int,
        seq: int,
        record: bytes,
        usage: list[UsageRow],
        events: list[EventRow],
        packed: list[UsageChunk] = (),
    ) -> None:
        chunks = check_batch(seq, usage, events, packed)
        if self._fast is None or self._fast_loop is not asyncio.get_running_loop():
            # (The C writer reports to the loop that opened the storage; from any other, the
            # worker thread does the append.)
            await self._run(self._append_sync, epoch, seq, bytes(record), chunks, events)
            return
        await self._append_fast(epoch, seq, bytes(record), chunks, events)

    async def _append_fast(self, epoch: int, seq: int, record: bytes, chunks: list,
                           events: list[EventRow]) -> None:
        """`_append_sync`'s transaction on the C writer thread (compressed here, on the loop,
        as Redis does: it releases the GIL, and no thread waits for the loop to take it back)."""
        (stored, codec), rows = _pack_append(record, chunks)
        job = _sqlwriter.AppendJob(epoch, seq, stored, codec, rows, events)
        while self._fast_done is not None:  # one job at a time (another append's, even abandoned)
            await asyncio.shield(self._fast_done)
        if self._fast is None:
            raise StorageError("sqlite storage is not open")
        done = self._fast_done = asyncio.get_running_loop().create_future()
        try:
            self._fast.submit(job)
        except BaseException:
            self._fast_done = None
            raise
        # Shielded: a caller that gives up does not stop the job, whose outcome the next
        # append waits for (and a retry of this one finds landed or not, as with any write).
        await asyncio.shield(done)
        status = job.status
        if status == _sqlwriter.OK:
            # _after_write (on the worker thread) only when it has something to do: as after
            # each append of the thread path, but without a hand-off per append.
            self._fast_bytes += len(stored) + sum(len(row[3]) for row in rows)
            checkpoint = self._checkpoint
            if (self._fast_bytes + self._bytes_since_checkpoint >= CHECKPOINT_EVERY_BYTES
                    and (checkpoint is None or checkpoint.done())):
                written, self._fast_bytes = self._fast_bytes, 0
                await self._run(self._after_write, written)
            return
        if status == _sqlwriter.FENCED:
            _fence(epoch, job.owner, job.current_epoch)
        if status == _sqlwriter.COVERED:  # the retry of an append that may have landed: compare
            await self._run(self._append_sync, epoch, seq, record, chunks, events)
            return
        if status in (_sqlwriter.GAP, _sqlwriter.EVENT_ORDER):
            _check_order(seq, job.last_seq, events, job.last_event_id)
        if status != _sqlwriter.ERROR:
            raise StorageError(f"sqlite: unexpected outcome {status} of an append")
        if (job.code & 0xFF) in _RETRYABLE_CODES:
            raise StorageUnavailable(f"sqlite: {job.message}")
        raise StorageError(f"sqlite: {job.message}")

    def _append_sync(self, epoch: int, seq: int, record: bytes, chunks: list, events: list[EventRow]) -> None:
        # Compressed before the transaction, so the write lock is held only for the writes.
        stored, rows = _pack_append(record, chunks)
        written = self._write_txn(functools.partial(_append, epoch, seq, record, stored, rows, events))
        self._after_write(written)

    async def write_snapshot(self, epoch: int, seq: int, blob: bytes) -> None:
        if seq < 0:
            raise ValueError(f"seq must be >= 0, got {seq}")
        await self._run(self._snapshot_sync, epoch, seq, bytes(blob))

    def _snapshot_sync(self, epoch: int, seq: int, blob: bytes) -> None:
        stored, codec = pack_blob(blob)
        self._write_txn(functools.partial(_write_snapshot, epoch, seq, stored, codec))
        self._after_write(len(stored))

    # -- usage and events ------------------------------------------------------------------

    async def list_usage(
        self,
        account_id: str,
        from_ms: int,
        to_ms: int,
        limit: int,
        after: str | None,
    ) -> tuple[list[UsageRow], str | None]:
        check_limit(limit)
        start: tuple[int, int, int] | None = None
        if after is not None:
            match = _CURSOR.fullmatch(after)
            if match is None:
                raise InvalidCursor(f"not a usage cursor of this store: {after!r}")
            start = (int(match[1]), int(match[2]), -1 if match[3] is None else int(match[3]))
        return await self._run(
            self._read_txn, functools.partial(_list_usage, account_id, from_ms, to_ms, limit, start)
        )

    async def read_events(
        self, after_event_id: int, limit: int, account_id: str | None = None
    ) -> list[EventRow]:
        check_limit(limit)
        sql = "SELECT event_id, account_id, type, at_ms, payload FROM events WHERE event_id > ?"
        params: list[Any] = [after_event_id]
        if account_id is not None:
            sql += " AND account_id = ?"
            params.append(account_id)
        sql += " ORDER BY event_id LIMIT ?"
        params.append(limit)
        rows = await self._run(self._query, sql, params)
        return [EventRow(eid, acct, typ, at_ms, bytes(payload)) for eid, acct, typ, at_ms, payload in rows]

    def _query(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        assert self._conn is not None
        return self._conn.execute(sql, params).fetchall()


# -- transaction bodies (run on the worker thread inside _write_txn / _read_txn) -------------


def _pack_append(record: bytes, chunks: list[UsageChunk]) -> tuple[tuple[bytes, int], list[tuple[str, int, int, bytes, int]]]:
    """An append's record as stored (blob, codec) and its usage rows as inserted (account_id,
    at_ms, n, payloads as stored, codec)."""
    return pack_blob(record), [(account_id, at_ms, n) + pack_blob(payloads)
                               for account_id, at_ms, n, payloads in chunks]


def _fence(epoch: int, holder: str | None, current: int) -> None:
    """Raise Fenced unless ``epoch`` is the current one and the lease is held."""
    if holder is None or current != epoch:
        state = "released" if holder is None else f"held by {holder!r}"
        raise Fenced(f"epoch {epoch} is not current (current {current}, lease {state})")


def _check_order(seq: int, last_seq: int, events: list[EventRow], last_event_id: int) -> None:
    """Raise SequenceError unless ``seq`` and the first event id follow the last ones (a seq at
    or below the last one is the caller's to check first)."""
    if seq != last_seq + 1:
        raise SequenceError(f"seq {seq} does not follow last seq {last_seq}")
    if events and events[0].event_id <= last_event_id:
        raise SequenceError(f"event id {events[0].event_id} does not follow {last_event_id}")


def _check_fence(conn: sqlite3.Connection, epoch: int) -> tuple[int, int]:
    """Raise Fenced unless ``epoch`` is current; return (last_seq, last_event_id)."""
    holder, current, last_seq, last_event_id = conn.execute(_SQL_READ_META).fetchone()
    _fence(epoch, holder, current)
    return last_seq, last_event_id


def _append(
    epoch: int,
    seq: int,
    record: bytes,
    stored: tuple[bytes, int],
    chunks: list[tuple[str, int, int, bytes, int]],
    events: list[EventRow],
    conn: sqlite3.Connection,
) -> int:
    """`stored` is `record` as stored (blob, codec); `chunks` the usage rows to insert. Returns
    about how many bytes it wrote (0 for a retry that had landed)."""
    last_seq, last_event_id = _check_fence(conn, epoch)
    if seq <= last_seq:
        row = conn.execute("SELECT record, codec FROM journal WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            raise SequenceError(f"seq {seq} is already covered by a snapshot (last seq {last_seq})")
        if unpack_blob(row[0], row[1], f"journal record {seq}") == record:
            return 0  # the retry of an append that had landed: nothing to do
        raise SequenceError(f"seq {seq} already holds a different record")
    _check_order(seq, last_seq, events, last_event_id)
    conn.execute(_SQL_INSERT_JOURNAL, (seq, stored[0], stored[1]))
    written = len(stored[0])
    if chunks:
        conn.executemany(_SQL_INSERT_USAGE, chunks)
        written += sum(len(chunk[3]) for chunk in chunks)
    if events:
        conn.executemany(
            _SQL_INSERT_EVENT, [(e.event_id, e.account_id, e.type, e.at_ms, bytes(e.payload)) for e in events]
        )
        last_event_id = events[-1].event_id
    conn.execute(_SQL_UPDATE_META, (seq, last_event_id))
    return written


def _list_usage(
    account_id: str,
    from_ms: int,
    to_ms: int,
    limit: int,
    start: tuple[int, int, int] | None,
    conn: sqlite3.Connection,
) -> tuple[list[UsageRow], str | None]:
    """One page of `list_usage`; `start` is the decoded cursor (at_ms, chunk id, row index,
    -1 for "after the whole chunk")."""
    sql = "SELECT id, at_ms, n, payloads, codec FROM usage_chunk WHERE account_id = ? AND at_ms >= ?"
    params: list[Any] = [account_id, from_ms]
    if to_ms:
        sql += " AND at_ms < ?"
        params.append(to_ms)
    if start is not None:
        sql += " AND (at_ms, id) >= (?, ?)"
        params += [start[0], start[1]]
    sql += " ORDER BY at_ms, id"
    page: list[UsageRow] = []
    last: tuple[int, int, int] = (0, 0, 0)
    # Chunks are read one at a time (the cursor is lazy) until the page and one more row are in.
    for chunk_id, at_ms, n, blob, codec in conn.execute(sql, params):
        first = 0
        if start is not None and (at_ms, chunk_id) == (start[0], start[1]):
            first = n if start[2] < 0 else start[2] + 1
        if first >= n:
            continue
        payloads = unpack_payloads(unpack_blob(blob, codec, f"usage chunk {chunk_id}"), n)
        for index, payload in enumerate(payloads[first:], first):
            if len(page) == limit:
                return page, f"{last[0]}:{last[1]}:{last[2]}"
            page.append(UsageRow(account_id, at_ms, payload))
            last = (at_ms, chunk_id, index)
    return page, None


def _migrate_v1(conn: sqlite3.Connection) -> None:
    """Schema 1 -> 2: blobs get a codec column (what is there stays as written, codec 0), and
    each old usage row becomes a chunk of one, keeping its id (so a cursor issued before the
    upgrade still pages on)."""
    for table in ("journal", "snapshot"):
        columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
        if "codec" not in columns:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN codec INTEGER NOT NULL DEFAULT 0")
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'usage'").fetchone() is None:
        return
    conn.execute(
        "INSERT INTO usage_chunk (id, account_id, at_ms, n, payloads)"
        " SELECT id, account_id, at_ms, 1, payload FROM usage ORDER BY id"
    )
    conn.execute("DROP TABLE usage")


def _write_snapshot(epoch: int, seq: int, blob: bytes, codec: int, conn: sqlite3.Connection) -> None:
    last_seq, _ = _check_fence(conn, epoch)
    row = conn.execute("SELECT seq FROM snapshot WHERE id = 1").fetchone()
    snapshot_seq = row[0] if row else 0
    if not snapshot_seq <= seq <= last_seq:
        raise SequenceError(
            f"snapshot seq {seq} outside {snapshot_seq}..{last_seq} (current snapshot..last seq)"
        )
    conn.execute("INSERT OR REPLACE INTO snapshot (id, seq, blob, codec) VALUES (1, ?, ?, ?)", (seq, blob, codec))
    conn.execute("DELETE FROM journal WHERE seq <= ?", (seq,))


def _load(conn: sqlite3.Connection) -> Recovered:
    row = conn.execute("SELECT seq, blob, codec FROM snapshot WHERE id = 1").fetchone()
    snapshot, snapshot_seq = (unpack_blob(row[1], row[2], "snapshot"), row[0]) if row else (None, 0)
    records = [
        (seq, unpack_blob(record, codec, f"journal record {seq}"))
        for seq, record, codec in conn.execute(
            "SELECT seq, record, codec FROM journal WHERE seq > ? ORDER BY seq", (snapshot_seq,)
        )
    ]
    (last_seq,) = conn.execute("SELECT last_seq FROM meta WHERE id = 1").fetchone()
    recovered = Recovered(snapshot, snapshot_seq, records)
    check_recovered(recovered, last_seq)
    return recovered


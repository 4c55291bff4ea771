"""The storage interface: persistence for the engine, never a shared counter.

The engine owns all state in memory. Storage keeps, in order, one opaque journal record per
flush (numbered by the engine with ``seq`` = 1, 2, 3, ...), a periodic snapshot that covers
the journal up to some ``seq``, the usage rows and events written in the same atomic step as
their journal record, and an ownership lease whose fencing epoch every write checks.

Recovery is ``load()``: the latest snapshot plus every record after it, in order.
"""
from __future__ import annotations

import abc
import dataclasses
import os
import socket
import threading
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType

import zstandard

# Limits (STYLE: put a limit on everything, in one place).
LIST_LIMIT_MAX = 10_000
"""Largest page ``list_usage`` and ``read_events`` return in one call."""
ITER_PAGE_SIZE = 1_000
"""Rows fetched per round trip by ``iter_usage``."""
LEASE_TTL_MIN_MS = 1
LEASE_TTL_MAX_MS = 3_600_000
"""A lease longer than an hour would keep a dead owner's data unserved for too long."""
ID_MAX = 2**53 - 1
"""Largest seq, event_id and at_ms: exact in a double, which is how Redis' Lua compares numbers."""


class StorageError(Exception):
    """Storage refused or failed an operation; not retryable as is (a bug or corrupted data)."""


class StorageUnavailable(StorageError):
    """The store cannot persist right now (down, timed out, busy, disk full); retry later.

    The outcome of the failed call is unknown: a write may or may not have landed. Retrying
    ``append`` with the same ``seq`` and bytes is safe (it is idempotent).
    """


class LeaseHeld(StorageError):
    """Another owner holds an unexpired lease on this data."""


# Lease owner names this process has used (see holder_died_here).
_OWNERS_HERE: set[str] = set()


def note_owner(owner: str) -> None:
    """Remember that this process takes leases as `owner` (backends call it in acquire_lease)."""
    _OWNERS_HERE.add(owner)


def holder_died_here(owner: str) -> bool:
    """True if lease holder `owner` (``host:pid:tag``, as quota-server names itself) was a
    process of this host that no longer runs: killed (also a zombie not yet reaped) or exited
    without releasing its lease; or an earlier process with this process's pid (a container
    restarted with the server as pid 1, same hostname), told apart by a name this process never
    used. Anything else (another host, a live or stopped process, a name of this process, a
    name of another form) is False: the holder may still be serving."""
    parts = owner.split(":")
    if len(parts) < 3 or parts[0] != socket.gethostname():
        return False
    try:
        pid = int(parts[1])
    except ValueError:
        return False
    if pid == os.getpid():
        return owner not in _OWNERS_HERE
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:        # some other user's live process
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    # "pid (comm) S ...": the state follows the last ')'; Z is a zombie (dead, not yet reaped).
    return stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3] == b"Z"


class Fenced(StorageError):
    """Our epoch is no longer the current fencing epoch: stop serving at once."""


class SequenceError(StorageError):
    """A journal ``seq`` or event id out of order, or a re-append whose bytes differ.

    Always a programmer error in the engine (or two writers sharing one epoch).
    """


class InvalidCursor(StorageError, ValueError):
    """A paging cursor that this backend did not produce (a client error, not a storage one)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Recovered:
    """What ``load()`` returns: the latest snapshot and the records after it, in seq order.

    ``snapshot`` is None (and ``snapshot_seq`` 0) when no snapshot was ever written.
    ``records`` are ``(seq, record)`` with consecutive seqs starting at ``snapshot_seq + 1``.
    """

    snapshot: bytes | None
    snapshot_seq: int
    records: list[tuple[int, bytes]]

    @property
    def last_seq(self) -> int:
        """The seq of the last persisted record: the engine's next append is this + 1."""
        return self.records[-1][0] if self.records else self.snapshot_seq


@dataclasses.dataclass(frozen=True, slots=True)
class UsageRow:
    """One usage record of an account (opaque payload, encoded by the engine)."""

    account_id: str
    at_ms: int
    payload: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class EventRow:
    """One event; ``event_id`` strictly increases over all appends (starts at 1)."""

    event_id: int
    account_id: str
    type: str
    at_ms: int
    payload: bytes


CODEC_RAW, CODEC_ZLIB, CODEC_ZSTD = 0, 1, 2
"""How a stored blob is encoded: as written, zlib (what servers wrote until 2026-11-27; still
read), or zstd (what pack_blob writes now)."""
COMPRESS_MIN_BYTES = 1_024
"""Blobs from this size on are stored compressed (zstd level 1). Journal records and usage
chunks of large flushes shrink about 20x and 50x, snapshots about 10x: what costs most on a
busy server is moving bytes (SQLite: the disk's bandwidth, every byte written to the WAL,
fsynced, then copied by a checkpoint; Redis: the socket, the AOF and Redis' memory). zstd
level 1 compresses a Batch(1000)'s journal record at 1.4-2.3 GB/s on the benchmark machine,
2-3.5x faster than zlib level 1 (which it replaced), into 15-30 % fewer bytes, and releases the
GIL, so backends may compress off the event loop."""
COMPRESS_LEVEL = 1

_zstd = threading.local()
"""Per-thread zstd contexts: one context must not be used by two threads at once, and blobs are
packed on the event loop, the SQLite writer thread and snapshot threads."""


def _compressor() -> zstandard.ZstdCompressor:
    c = getattr(_zstd, "c", None)
    if c is None:
        c = _zstd.c = zstandard.ZstdCompressor(level=COMPRESS_LEVEL)  # frames carry their size
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_zstd, "d", None)
    if d is None:
        d = _zstd.d = zstandard.ZstdDecompressor()
    return d


def pack_blob(data: bytes) -> tuple[bytes, int]:
    """(stored bytes, codec) for `data`: compressed when that pays, else `data` itself."""
    if len(data) >= COMPRESS_MIN_BYTES:
        packed = _compressor().compress(data)
        if len(packed) < len(data):
            return packed, CODEC_ZSTD
    return data, CODEC_RAW


def unpack_blob(data: bytes, codec: int, what: str) -> bytes:
    """The bytes `pack_blob` was given; StorageError if they do not decompress."""
    if codec == CODEC_RAW:
        return bytes(data)
    if codec == CODEC_ZSTD:
        try:
            return _decompressor().decompress(data)
        except zstandard.ZstdError as exc:
            raise StorageError(f"damaged {what}: {exc}") from None
    if codec == CODEC_ZLIB:
        try:
            return zlib.decompress(data)
        except zlib.error as exc:
            raise StorageError(f"damaged {what}: {exc}") from None
    raise StorageError(f"{what} has unknown codec {codec} (written by a newer server?)")


UsageChunk = tuple[str, int, int, bytes]
"""Usage rows of one account with one at_ms, stored together: (account_id, at_ms, n, payloads
packed by `pack_payloads`)."""


def group_usage(usage: list[UsageRow]) -> list[UsageChunk]:
    """A flush's usage rows as chunks: one per (account_id, at_ms), in first-seen order, each
    with its payloads in insertion order.

    Backends persist a chunk as one entry (one row, one script argument), so a flush costs a
    few storage writes however many rows it has. Per account, ordering chunks by (at_ms,
    first-seen) and rows within a chunk by insertion gives exactly the (at_ms, insertion
    order) that ``list_usage`` promises. In practice every row of a flush has the flush's
    at_ms, so this is one chunk per account touched.

    Also validates the rows (ValueError: a programmer error), once per chunk.
    """
    chunks: dict[tuple[str, int], list[bytes]] = {}
    for row in usage:
        key = (row.account_id, row.at_ms)
        payloads = chunks.get(key)
        if payloads is None:
            check_chunk_key(row.account_id, row.at_ms)
            chunks[key] = [row.payload]
        else:
            payloads.append(row.payload)
    return [(account_id, at_ms, len(payloads), pack_payloads(payloads))
            for (account_id, at_ms), payloads in chunks.items()]


def check_chunk_key(account_id: str, at_ms: int) -> None:
    if not account_id:
        raise ValueError("usage row without account_id")
    if not 0 <= at_ms <= ID_MAX:
        raise ValueError(f"usage at_ms must be in 0..{ID_MAX}, got {at_ms}")


def pack_payloads(payloads: list[bytes]) -> bytes:
    """One chunk's payloads as one blob: a single payload as itself, several as repeated
    (4-byte little-endian length, bytes). The reader needs the count (`unpack_payloads`)."""
    if len(payloads) == 1:
        return bytes(payloads[0])
    parts = []
    for payload in payloads:
        parts.append(len(payload).to_bytes(4, "little"))
        parts.append(payload)
    return b"".join(parts)


def unpack_payloads(blob: bytes, n: int) -> list[bytes]:
    """The inverse of `pack_payloads` for a chunk of `n` payloads; StorageError if damaged."""
    if n == 1:
        return [bytes(blob)]
    out = []
    view = memoryview(blob)
    pos = 0
    for _ in range(n):
        size = int.from_bytes(view[pos:pos + 4], "little")
        end = pos + 4 + size
        if end > len(view) or pos + 4 > len(view):
            raise StorageError(f"damaged usage chunk: {n} payloads do not fit in {len(blob)} bytes")
        out.append(bytes(view[pos + 4:end]))
        pos = end
    if pos != len(view):
        raise StorageError(f"damaged usage chunk: {len(view) - pos} bytes after {n} payloads")
    return out


class Storage(abc.ABC):
    """One backend's persistence: lease, journal + snapshot, usage rows and events.

    Calls are coroutines and never block the event loop. ``open()`` before use, ``close()``
    after; ``async with`` does both. Every write takes the caller's fencing ``epoch`` and is
    refused with ``Fenced`` (writing nothing) unless it is still the current epoch, checked
    atomically inside the write itself.

    Lease model: ``acquire_lease`` issues a new epoch, strictly greater than every epoch ever
    issued for this data, and makes it current. The lease expires ``ttl_ms`` after the last
    acquire or renew; after that another owner may acquire (which fences the old epoch). An
    expired lease that nobody took over is still current: its owner can renew it and write.
    A backend may also learn that a holder died before its TTL ran out (SQLite: the OS lock
    on the lock file is gone; Redis: the holder was a process of this host that is gone, see
    ``holder_died_here``) and then lets a new owner in at once. ``owner`` must be unique
    per process incarnation (e.g. ``host:pid:random``): re-acquiring with the same owner is
    allowed while the lease is live and fences the previous epoch.
    """

    async def __aenter__(self) -> Storage:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create the schema if missing. Raises StorageUnavailable if unreachable."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and OS resources. Does not release the lease (see release_lease)."""

    # -- ownership -------------------------------------------------------------------------

    @abc.abstractmethod
    async def acquire_lease(self, owner: str, ttl_ms: int) -> int:
        """Take the ownership lease and return a new fencing epoch.

        Raises LeaseHeld if another owner's lease has not expired.
        """

    @abc.abstractmethod
    async def renew_lease(self, epoch: int, ttl_ms: int) -> None:
        """Extend the lease to ``ttl_ms`` from now. Raises Fenced if ``epoch`` is not current."""

    @abc.abstractmethod
    async def release_lease(self, epoch: int) -> None:
        """Give the lease up; ``epoch`` stops being current. A no-op if it already is not."""

    # -- journal and snapshot --------------------------------------------------------------

    @abc.abstractmethod
    async def load(self) -> Recovered:
        """Read the latest snapshot and every journal record after it, in order.

        Raises StorageError if the journal has a gap (the data is damaged: do not serve).
        """

    @abc.abstractmethod
    async def append(
        self,
        epoch: int,
        seq: int,
        record: bytes,
        usage: list[UsageRow],
        events: list[EventRow],
        packed: list[UsageChunk] = (),
    ) -> None:
        """Persist one flush atomically: the journal record, its usage rows and its events.

        ``packed`` are more usage rows of the flush, already grouped (``UsageChunk``): the
        engine's fast path builds them without a UsageRow per row. They follow ``usage``.

        All or nothing, and only while ``epoch`` is current (else Fenced). ``seq`` must be the
        last seq + 1 (else SequenceError). Idempotent: if record ``seq`` already exists with
        the same bytes this is a success that writes nothing (the retry of an ambiguous
        failure); with other bytes it is SequenceError. Event ids must keep increasing.
        """

    def start_append(self, epoch: int, seq: int, record: bytes, usage: list[UsageRow], events: list[EventRow],
                     packed: list[UsageChunk] = (), *,
                     on_landed: Callable[[], None] | None = None) -> Awaitable[None]:
        """``append``, with what of it can go out without waiting sent now, before the caller
        yields to the loop; awaiting the result finishes it (await it exactly once). The engine
        starts each flush's write so: a write that begins in a task of its own leaves one loop
        iteration later, behind whatever else the loop runs meanwhile (answering the flush
        before, applying the next). The default sends nothing early: it is ``append`` itself.
        It may raise what ``append`` raises for bad arguments, before anything is sent.

        ``on_landed``: called at most once, synchronously from a loop callback, as soon as the
        store knows this append has landed, before the awaitable finishes (which then finishes
        as it would have). A store may never call it (the default does not): the awaitable
        finishing is what counts; this only tells it earlier."""
        return self.append(epoch, seq, record, usage, events, packed)

    def poll(self) -> None:
        """Call the ``on_landed`` of a started append that has landed meanwhile, if this store
        can tell without the event loop's help. The engine calls it between the steps of its
        own work (before applying a batch, before and after decoding a Batch request, after
        encoding its reply: `Engine.poll`), so that a landed write is answered and followed at
        once instead of after the loop's current turn (under a Batch load, several milliseconds
        of decoding and applying). The default does nothing."""

    @abc.abstractmethod
    async def write_snapshot(self, epoch: int, seq: int, blob: bytes) -> None:
        """Store ``blob`` as the state after record ``seq``, then trim the journal up to ``seq``.

        Fenced like ``append``. ``seq`` must lie between the current snapshot's seq and the
        last appended seq (inclusive; re-writing the same seq is allowed), else SequenceError.
        """

    # -- usage and events ------------------------------------------------------------------

    @abc.abstractmethod
    async def list_usage(
        self,
        account_id: str,
        from_ms: int,
        to_ms: int,
        limit: int,
        after: str | None,
    ) -> tuple[list[UsageRow], str | None]:
        """One page of an account's usage with ``from_ms <= at_ms < to_ms`` (``to_ms`` 0: no end).

        Ordered by (at_ms, insertion order). Returns the rows and an opaque cursor for the next
        page, or None when there is none. A cursor this backend did not make: InvalidCursor.
        """

    async def iter_usage(self, account_id: str, from_ms: int, to_ms: int) -> AsyncIterator[UsageRow]:
        """Every usage row in the window, in ``list_usage`` order, fetched page by page."""
        after: str | None = None
        while True:
            rows, after = await self.list_usage(account_id, from_ms, to_ms, ITER_PAGE_SIZE, after)
            for row in rows:
                yield row
            if after is None:
                return

    @abc.abstractmethod
    async def read_events(
        self, after_event_id: int, limit: int, account_id: str | None = None
    ) -> list[EventRow]:
        """Up to ``limit`` events with ``event_id > after_event_id``, in id order,
        optionally only one account's."""

    # -- operations ------------------------------------------------------------------------

    async def check_durability(self) -> str | None:
        """A warning to log at startup when acknowledged writes would not survive a restart."""
        return None


def check_limit(limit: int) -> None:
    """Validate a page size (shared by the backends)."""
    if not 1 <= limit <= LIST_LIMIT_MAX:
        raise ValueError(f"limit must be in 1..{LIST_LIMIT_MAX}, got {limit}")


def check_ttl(ttl_ms: int) -> None:
    """Validate a lease TTL (shared by the backends)."""
    if not LEASE_TTL_MIN_MS <= ttl_ms <= LEASE_TTL_MAX_MS:
        raise ValueError(f"ttl_ms must be in {LEASE_TTL_MIN_MS}..{LEASE_TTL_MAX_MS}, got {ttl_ms}")


def check_batch(seq: int, usage: list[UsageRow], events: list[EventRow],
                packed: list[UsageChunk] = ()) -> list[UsageChunk]:
    """Reject malformed arguments of ``append`` before anything is sent (programmer errors);
    returns every usage row of the flush as chunks: ``usage`` grouped as ``group_usage`` does,
    then ``packed`` (chunks the engine built already)."""
    if not 1 <= seq <= ID_MAX:
        raise ValueError(f"seq must be in 1..{ID_MAX}, got {seq}")
    chunks = group_usage(usage)
    for account_id, at_ms, n, _ in packed:
        check_chunk_key(account_id, at_ms)
        if n < 1:
            raise ValueError(f"a usage chunk holds at least one row, got {n}")
    if packed:
        chunks.extend(packed)
    prev_event_id = 0
    for ev in events:
        if not 1 <= ev.event_id <= ID_MAX:
            raise ValueError(f"event_id must be in 1..{ID_MAX}, got {ev.event_id}")
        if not 0 <= ev.at_ms <= ID_MAX:
            raise ValueError(f"event at_ms must be in 0..{ID_MAX}, got {ev.at_ms}")
        if ev.event_id <= prev_event_id:
            raise SequenceError(f"event ids must increase within a batch: {ev.event_id} after {prev_event_id}")
        prev_event_id = ev.event_id
    return chunks


def check_recovered(recovered: Recovered, last_seq: int) -> None:
    """Refuse to recover from a journal with a gap or a missing tail (damaged data)."""
    expected = recovered.snapshot_seq + 1
    for seq, _ in recovered.records:
        if seq != expected:
            raise StorageError(f"journal gap: expected seq {expected}, found {seq}")
        expected += 1
    if recovered.last_seq != last_seq:
        raise StorageError(
            f"journal ends at seq {recovered.last_seq} but seq {last_seq} was acknowledged"
        )

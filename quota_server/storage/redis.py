"""The production backend: Redis (redis-py asyncio with hiredis).

Every key shares one hash tag (``quota:{q}:...``) so each multi-key script stays legal, and
atomic, on Redis Cluster. Every write is ONE ``EVALSHA`` of a Lua script; the scripts only make
a write atomic (check the fencing epoch, check seq order, write): no business decision is made
in Lua. Each script does all of its checks before its first write, because Redis does not roll
a script back when a command fails half-way.

Keys (P = ``<key_prefix>{<hash_tag>}:``):

- ``P lease``    string ``owner:epoch`` with PX = TTL: the liveness of the lease.
- ``P epoch``    counter, INCR'ed by every acquire: epochs never repeat, even after a release.
- ``P holder``   hash {epoch, owner}, no TTL: the current fencing epoch (gone once released).
- ``P meta``     hash {last_seq, last_event_id, snapshot_seq, usage_lag_ms, format}.
- ``P journal``  STREAM, one entry per flush with the explicit id ``<seq>-0``. A stream rather
  than a hash or zset because it is ordered by seq for free (one XRANGE reads the tail for
  recovery), the server itself refuses an id that does not increase, ``XTRIM MINID`` trims
  behind a snapshot in one command, and it is stored compactly (listpacks in a radix tree).
- ``P snapshot`` string: the latest snapshot blob (its seq is ``meta.snapshot_seq``).
- ``P usage:<account_id>``  STREAM per account; one entry per flush that recorded usage for it:
  fields at_ms and payload (one usage record), or at_ms, n and payloads (n records, each as a
  4-byte little-endian length then its bytes: ``base.pack_payloads``), with field codec 2 when
  those packed payloads are zstd-compressed (from PACK_MIN_BYTES on: a Batch's commits). Entry ids are
  ``<at_ms>-*`` so a time window maps to an id range; when an account's at_ms goes backwards
  (wall clock stepped back) the id keeps the highest at_ms seen (``P usage_top``) and
  ``meta.usage_lag_ms`` records by how much, which widens the upper bound of later scans.
- ``P events``   one global STREAM, ids ``<event_id>-0``, fields account_id, type, at_ms,
  payload: outside consumers can read it with XREAD or consumer groups.

Appends (one EVALSHA a flush) go out from the C writer thread of `_rediswriter` on a connection
of its own (`_ThreadWriter`: it compresses, sends and reads the reply without the GIL), or from
the event loop (`_Writer`) for a store that thread cannot serve (TLS) or while it is busy.

Outages: connection errors, timeouts, a loading or read-only server, OOM and MISCONF become
``StorageUnavailable``; sockets time out after ``op_timeout_ms`` so an outage is reported fast.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import socket
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import hiredis
import redis.asyncio as aioredis
import redis.exceptions as rex
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .. import _wire

try:  # the GIL-free append path (quota_server/_rediswriter.pyx); absent: the loop path only
    from .. import _rediswriter
except ImportError:  # pragma: no cover - a build without the extension
    _rediswriter = None

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
    CODEC_RAW,
    CODEC_ZSTD,
    COMPRESS_LEVEL,
    check_limit,
    pack_blob,
    unpack_blob,
    unpack_payloads,
    check_recovered,
    check_ttl,
    holder_died_here,
    note_owner,
)

log = logging.getLogger("quota.storage.redis")

OP_TIMEOUT_MS_DEFAULT = 2_000
RETRIES_DEFAULT = 1
"""One immediate retry after a connection error heals a pooled connection that went stale (e.g.
after a Redis restart). It is safe because every write is idempotent or harmless to repeat
(append by seq, renew, release, snapshot by seq; a repeated acquire issues one more epoch).
Timeouts are not retried, so a frozen server is reported after one op_timeout_ms."""
LOAD_PAGE_SIZE = 1_000
SCAN_PAGE_MAX = 2_000
FORMAT_VERSION = 3
"""1: blobs as written. 2: journal records (field ``codec``) and the snapshot (``meta.snapshot_codec``)
may be zlib-compressed (base.pack_blob). 3: they may be zstd-compressed. Opening older data marks
it 3, so that an older server refuses it from then on instead of misreading a record."""
PACK_MIN_BYTES = 64 * 1024
"""Blobs from this size on (a large flush's record and usage chunks, snapshots) are stored
compressed. Smaller ones (the records of small flushes) are stored as they are: compressing them
would cost more than it saves Redis. A flush's record and chunks are compressed by the C writer
thread that sends them (`_ThreadWriter`), or, where it cannot serve the store, on the event loop
right before they are sent (about 0.1 ms for a Batch of 1,000 commits): on a Python worker
thread, the write could only leave once the loop came back for the thread's result, which is
after whatever the loop runs meanwhile (applying the next Batch: about a millisecond), and its
callers waited for that too. Snapshots, larger and rarer, are compressed on a worker thread."""

_STREAM_ID = re.compile(rb"(\d+)-(\d+)")
_CURSOR = re.compile(r"(\d+)-(\d+)(?::(\d+))?")
"""A usage cursor: the stream id of the last row's entry, and its index in the entry if the
entry holds several rows and the page ended inside it."""

_ACQUIRE = """
-- KEYS: lease, epoch, holder   ARGV: owner, ttl_ms, the lease value of a dead holder to take
-- over ('' for none: only that exact value, so a holder that renewed or changed meanwhile wins)
local cur = redis.call('GET', KEYS[1])
if cur then
  local holder = string.match(cur, '^(.*):%d+$') or cur
  if holder ~= ARGV[1] and cur ~= ARGV[3] then
    return {0, cur, redis.call('PTTL', KEYS[1])}
  end
end
local epoch = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. epoch, 'PX', ARGV[2])
redis.call('HSET', KEYS[3], 'epoch', epoch, 'owner', ARGV[1])
return {1, epoch}
"""

_RENEW = """
-- KEYS: lease, holder   ARGV: epoch, ttl_ms
if redis.call('HGET', KEYS[2], 'epoch') ~= ARGV[1] then
  return 0
end
local owner = redis.call('HGET', KEYS[2], 'owner')
redis.call('SET', KEYS[1], owner .. ':' .. ARGV[1], 'PX', ARGV[2])
return 1
"""

_RELEASE = """
-- KEYS: lease, holder   ARGV: epoch
if redis.call('HGET', KEYS[2], 'epoch') ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
"""

_APPEND = """
-- KEYS: holder, meta, journal, events, usage_top, usage streams (one per account)...
-- ARGV: epoch, seq, record (as stored), record codec (base.pack_blob), n_chunks, n_events,
--       n_chunks x (key index, account_id, at_ms, n rows, payloads packed by pack_payloads,
--                   their codec: 0 as they are, else compressed by base.pack_blob),
--       n_events x (event_id, account_id, type, at_ms, payload)
-- A flush's usage rows of one account (one at_ms) are one entry of the account's stream: a
-- single row as field payload, several as fields n and payloads (pack_payloads; and codec when
-- compressed). The lengths of uncompressed payloads are checked before the first write. One
-- XADD per account per flush, not per row.
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch ~= ARGV[1] then
  return {'FENCED', epoch or ''}
end
local last_raw = redis.call('HGET', KEYS[2], 'last_seq') or '0'
local last = tonumber(last_raw)
local seq = tonumber(ARGV[2])
if seq <= last then
  local got = redis.call('XRANGE', KEYS[3], ARGV[2] .. '-0', ARGV[2] .. '-0')
  if #got == 0 then
    return {'TRIMMED', last_raw}
  end
  if got[1][2][2] == ARGV[3] then
    return {'DUP'}
  end
  return {'CONFLICT', last_raw}
end
if seq ~= last + 1 then
  return {'GAP', last_raw}
end
local n_chunks = tonumber(ARGV[5])
local n_events = tonumber(ARGV[6])
local ev_base = 7 + 6 * n_chunks
for i = 0, n_chunks - 1 do
  local b = 7 + 6 * i
  local n, blob = tonumber(ARGV[b + 3]), ARGV[b + 4]
  if n > 1 and ARGV[b + 5] == '0' then
    local pos = 1
    for r = 1, n do
      if pos + 3 > #blob then
        return {'BADCHUNK', ARGV[b + 1]}
      end
      local size, nxt = struct.unpack('<I4', blob, pos)
      pos = nxt + size
    end
    if pos ~= #blob + 1 then
      return {'BADCHUNK', ARGV[b + 1]}
    end
  end
end
if n_events > 0 then
  local last_ev_raw = redis.call('HGET', KEYS[2], 'last_event_id') or '0'
  if tonumber(ARGV[ev_base]) <= tonumber(last_ev_raw) then
    return {'EVENT_ORDER', last_ev_raw}
  end
end
-- Every check passed; nothing below can fail, so the script never applies half a batch.
if ARGV[4] == '0' then
  redis.call('XADD', KEYS[3], ARGV[2] .. '-0', 'record', ARGV[3])
else
  redis.call('XADD', KEYS[3], ARGV[2] .. '-0', 'record', ARGV[3], 'codec', ARGV[4])
end
local top_raw, top, acct = {}, {}, {}
local lag = 0
for i = 0, n_chunks - 1 do
  local b = 7 + 6 * i
  local k = tonumber(ARGV[b])
  if top[k] == nil then
    acct[k] = ARGV[b + 1]
    local raw = redis.call('HGET', KEYS[5], acct[k])
    if not raw then
      -- First row of this account, or usage_top was lost: never go below the stream's last
      -- id, or XADD would fail half-way through the script.
      raw = '0'
      if redis.call('EXISTS', KEYS[k]) == 1 then
        local info = redis.call('XINFO', 'STREAM', KEYS[k])
        for i = 1, #info, 2 do
          if info[i] == 'last-generated-id' then
            raw = string.match(info[i + 1], '^(%d+)')
          end
        end
      end
    end
    top_raw[k], top[k] = raw, tonumber(raw)
  end
  local at = tonumber(ARGV[b + 2])
  if at >= top[k] then
    top[k], top_raw[k] = at, ARGV[b + 2]
  elseif top[k] - at > lag then
    lag = top[k] - at
  end
  if ARGV[b + 3] == '1' then
    redis.call('XADD', KEYS[k], top_raw[k] .. '-*', 'at_ms', ARGV[b + 2], 'payload', ARGV[b + 4])
  elseif ARGV[b + 5] == '0' then
    redis.call('XADD', KEYS[k], top_raw[k] .. '-*', 'at_ms', ARGV[b + 2], 'n', ARGV[b + 3],
               'payloads', ARGV[b + 4])
  else
    redis.call('XADD', KEYS[k], top_raw[k] .. '-*', 'at_ms', ARGV[b + 2], 'n', ARGV[b + 3],
               'payloads', ARGV[b + 4], 'codec', ARGV[b + 5])
  end
end
for k, raw in pairs(top_raw) do
  redis.call('HSET', KEYS[5], acct[k], raw)
end
if lag > tonumber(redis.call('HGET', KEYS[2], 'usage_lag_ms') or '0') then
  redis.call('HSET', KEYS[2], 'usage_lag_ms', string.format('%d', lag))
end
for j = 0, n_events - 1 do
  local b = ev_base + 5 * j
  redis.call('XADD', KEYS[4], ARGV[b] .. '-0', 'account_id', ARGV[b + 1], 'type', ARGV[b + 2],
             'at_ms', ARGV[b + 3], 'payload', ARGV[b + 4])
end
if n_events > 0 then
  redis.call('HSET', KEYS[2], 'last_event_id', ARGV[ev_base + 5 * (n_events - 1)])
end
redis.call('HSET', KEYS[2], 'last_seq', ARGV[2])
return {'OK'}
"""

_SNAPSHOT = """
-- KEYS: holder, meta, snapshot, journal   ARGV: epoch, seq, blob (as stored), codec
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch ~= ARGV[1] then
  return {'FENCED', epoch or ''}
end
local snap_raw = redis.call('HGET', KEYS[2], 'snapshot_seq') or '0'
local last_raw = redis.call('HGET', KEYS[2], 'last_seq') or '0'
local seq = tonumber(ARGV[2])
if seq < tonumber(snap_raw) or seq > tonumber(last_raw) then
  return {'RANGE', snap_raw, last_raw}
end
redis.call('SET', KEYS[3], ARGV[3])
redis.call('HSET', KEYS[2], 'snapshot_seq', ARGV[2], 'snapshot_codec', ARGV[4])
-- MINID drops every id below <seq>-1, i.e. every record up to and including seq.
redis.call('XTRIM', KEYS[4], 'MINID', ARGV[2] .. '-1')
return {'OK'}
"""


def _packs(data: bytes) -> bool:
    return len(data) >= PACK_MIN_BYTES


def _stored(data: bytes) -> tuple[bytes, int]:
    """(bytes as stored, codec): compressed from PACK_MIN_BYTES on, else as they are."""
    return pack_blob(data) if _packs(data) else (data, CODEC_RAW)


async def _pack(data: bytes) -> tuple[bytes, int]:
    """_stored, on a worker thread when there is something to compress."""
    return await asyncio.to_thread(pack_blob, data) if _packs(data) else (data, CODEC_RAW)


def _pack_flush(record: bytes, chunks: list[UsageChunk]) -> tuple[tuple[bytes, int], list[tuple[bytes, int]]]:
    """_stored of the record and of each usage chunk's payloads (a chunk of one row is never
    compressed: its payload is a stream field as it is)."""
    return _stored(record), [_stored(p) if n > 1 else (p, CODEC_RAW) for _, _, n, p in chunks]


def usage_entry_payloads(fields: dict[bytes, bytes]) -> list[bytes]:
    """The usage records (JSON payloads) of one entry of a ``usage:<account_id>`` stream, as an
    outside consumer reads it: field ``payload`` (one record), or ``n`` and ``payloads``
    (base.pack_payloads), zstd-compressed when field ``codec`` is 2 (base.pack_blob)."""
    if b"payloads" not in fields:
        return [fields[b"payload"]]
    packed = unpack_blob(fields[b"payloads"], int(fields.get(b"codec", 0)), "usage entry")
    return unpack_payloads(packed, int(fields[b"n"]))


async def _unpack(data: bytes, codec: int, what: str) -> bytes:
    if codec and len(data) >= PACK_MIN_BYTES // 8:
        return await asyncio.to_thread(unpack_blob, data, codec, what)
    return unpack_blob(data, codec, what)


class _Script:
    __slots__ = ("name", "source", "sha")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


_SCRIPTS = {
    name: _Script(name, source)
    for name, source in (
        ("acquire", _ACQUIRE),
        ("renew", _RENEW),
        ("release", _RELEASE),
        ("append", _APPEND),
        ("snapshot", _SNAPSHOT),
    )
}

# Replies after which the same call can succeed later: redis-py turns some into classes (and
# strips their code from the message); the others keep their code as the message prefix.
_RETRYABLE_ERRORS = (rex.ReadOnlyError, rex.OutOfMemoryError, rex.TryAgainError, rex.ClusterDownError)
_RETRYABLE_PREFIXES = ("BUSY", "MISCONF", "NOREPLICAS", "LOADING", "READONLY", "OOM")


def _map_error(exc: BaseException, where: str) -> StorageError:
    """One table from redis-py's exceptions to ours."""
    if isinstance(exc, (rex.AuthenticationError, rex.AuthorizationError)):
        return StorageError(f"redis {where}: {exc}")  # misconfiguration: retrying will not help
    if isinstance(exc, (rex.ConnectionError, rex.TimeoutError, OSError, TimeoutError)):
        return StorageUnavailable(f"redis {where}: {type(exc).__name__}: {exc}")
    if isinstance(exc, _RETRYABLE_ERRORS) or (
        isinstance(exc, rex.ResponseError) and str(exc).startswith(_RETRYABLE_PREFIXES)
    ):
        return StorageUnavailable(f"redis {where}: {type(exc).__name__}: {exc}")
    return StorageError(f"redis {where}: {type(exc).__name__}: {exc}")


def _redacted(url: str) -> str:
    """host:port/db of a URL, without credentials, for messages."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"


class _PackInOneGo:
    """`pack_command` in one Cython call (`_wire.resp_command`) when every argument is bytes,
    str or int, as in every command this module sends; anything else (and a command name with
    a space, which redis-py splits) goes through redis-py's own packing. redis-py packs each
    argument in Python: for the append script, whose arguments grow with the accounts a flush
    touched, that was most of its CPU per flush on the event loop."""

    def pack_command(self, *args):
        name = args[0]
        if type(name) is str and " " not in name:
            packed = _wire.resp_command(args)
            if packed is not None:
                return [packed]
        return super().pack_command(*args)


class _Connection(_PackInOneGo, aioredis.Connection):
    pass


class _SSLConnection(_PackInOneGo, aioredis.SSLConnection):
    pass


_CONNECTION_CLASSES = {aioredis.Connection: _Connection, aioredis.SSLConnection: _SSLConnection}


class _Writer:
    """The connection the append script goes out on: one `Connection` of the client's pool,
    taken out of it and driven directly (send, then read the reply). A flush's write then skips
    redis-py's per-command layers (client, pool, retry and observability wrappers): measured on
    uvloop, a command through the client costs the event loop 80-90 us of CPU, a send and a read
    on one connection 35-40 us. The connection keeps the pool's settings (TLS, credentials,
    database, socket timeouts). Failures are handled as the client's Retry does: one immediate
    retry on a new connection after a connection error (the write is idempotent), none after a
    timeout. One call at a time: the engine has one flush in flight, and `busy` tells a caller
    that overlaps anyway to use the client instead."""

    __slots__ = ("_pool", "_conn", "_retries", "busy")

    def __init__(self, pool: Any, retries: int) -> None:
        self._pool = pool
        self._conn: Any = None
        self._retries = retries
        self.busy = False

    async def call(self, args: tuple) -> Any:
        self.busy = True
        try:
            attempt = 0
            while True:
                conn = self._conn
                if conn is None:
                    conn = self._conn = self._pool.make_connection()
                try:
                    if not conn.is_connected:
                        await conn.connect()
                    await conn.send_packed_command(conn.pack_command(*args), check_health=False)
                    return await conn.read_response()
                except rex.ConnectionError:
                    await self.drop()
                    if attempt >= self._retries:
                        raise
                    attempt += 1
                except (rex.TimeoutError, OSError, TimeoutError, asyncio.CancelledError):
                    # The reply may still come: this connection's next read would take it as
                    # the reply to the next command.
                    await self.drop()
                    raise
        finally:
            self.busy = False

    async def drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.disconnect(nowait=True)


def _connect_socket(host: str, port: int, handshake: list[tuple], timeout_s: float) -> int:
    """A TCP connection to Redis with `handshake` (AUTH, SELECT) sent and every reply checked,
    as a non-blocking socket's file descriptor that the caller owns (for `_ThreadWriter`).
    Blocking: run on a worker thread."""
    sock = socket.create_connection((host, port), timeout=timeout_s)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if handshake:
            sock.sendall(b"".join(_wire.resp_command(command) for command in handshake))
            reader = hiredis.Reader()
            for command in handshake:
                reply = reader.gets()
                while reply is False:
                    data = sock.recv(65536)
                    if not data:
                        raise rex.ConnectionError("connection closed during the handshake")
                    reader.feed(data)
                    reply = reader.gets()
                if isinstance(reply, hiredis.ReplyError):
                    if command[0] == "AUTH":
                        raise rex.AuthenticationError(str(reply))
                    raise rex.ResponseError(f"{command[0]}: {reply}")
        sock.setblocking(False)
        return sock.detach()
    except BaseException:
        sock.close()
        raise


def _reply_of(data: bytes) -> Any:
    """A reply's RESP bytes as redis-py returns them (hiredis); an error reply is raised as
    redis-py raises it for the cases `_eval` and `_map_error` tell apart."""
    reader = hiredis.Reader()
    reader.feed(data)
    reply = reader.gets()
    if isinstance(reply, hiredis.ReplyError):
        message = str(reply)
        if message.startswith("NOSCRIPT"):
            raise rex.NoScriptError(message)
        raise rex.ResponseError(message)
    return reply


def _job_reply(job: Any) -> Any:
    """A finished job's reply, parsed once (`_reply_of`): the reply, or the exception an error
    reply is raised as; None unless the job's status is OK."""
    if job.status != _rediswriter.OK:
        return None
    try:
        return _reply_of(job.reply)
    except Exception as exc:  # noqa: BLE001 - an error reply (or unparsable): `call` raises it
        return exc


def _landed(reply: Any) -> bool:
    """The append script's OK or DUP: the append has landed."""
    return isinstance(reply, list) and bool(reply) and reply[0] in (b"OK", b"DUP")


class _ThreadWriter:
    """The append script on the C thread of `_rediswriter` (a socket of its own): the thread
    compresses the flush's record and usage chunks, sends the EVALSHA and reads the reply
    without the GIL, then signals an eventfd this loop watches; the loop only builds the
    command's plain arguments and parses the reply. Compressing on the loop was the largest
    cost Redis added over memory-only (docs/performance.md, session 13). Failures are handled as
    `_Writer` handles them: one immediate retry on a new connection after a connection error
    (the write is idempotent), none after a timeout; the thread closes the socket after any
    failure. One job at a time: `busy` (a job in flight, even one whose caller gave up) tells
    the storage to use the loop path meanwhile."""

    __slots__ = ("_writer", "loop", "_done", "_waiter", "_on_landed", "_host", "_port", "_handshake",
                 "_op_timeout_ms", "_retries")

    def __init__(self, host: str, port: int, handshake: list[tuple], op_timeout_ms: int, retries: int) -> None:
        self.loop = asyncio.get_running_loop()
        self._writer = _rediswriter.Writer()
        self._done: asyncio.Future | None = None  # the job in flight has run (never cancelled)
        self._waiter: asyncio.Future | None = None  # its caller's (cancelled if the caller gives up)
        self._on_landed: Callable[[], None] | None = None  # Storage.start_append's
        self._host = host
        self._port = port
        self._handshake = handshake
        self._op_timeout_ms = op_timeout_ms
        self._retries = retries
        try:
            self.loop.add_reader(self._writer.fileno(), self._ready)
        except BaseException:
            self._writer.close()
            raise

    @property
    def busy(self) -> bool:
        return self._writer.busy()

    def _ready(self) -> None:
        """The eventfd is readable: the job has run (unless `poll` has collected it already)."""
        try:
            os.read(self._writer.fileno(), 8)
        except BlockingIOError:
            return
        self.poll()

    def poll(self) -> None:
        """Collect the job if it has run: its on_landed, then its futures' results."""
        job = self._writer.collect()
        if job is None:
            return
        done, self._done = self._done, None
        waiter, self._waiter = self._waiter, None
        on_landed, self._on_landed = self._on_landed, None
        reply = _job_reply(job)
        if on_landed is not None and _landed(reply):
            try:
                on_landed()
            except Exception:  # noqa: BLE001 - the caller still gets its reply
                log.exception("the append's on_landed callback failed")
        if done is not None and not done.done():
            done.set_result(job)
        if waiter is not None and not waiter.done():
            waiter.set_result((job, reply))

    async def _connect(self) -> None:
        future = self.loop.run_in_executor(None, _connect_socket, self._host, self._port, self._handshake,
                                           self._op_timeout_ms / 1000)
        try:
            fd = await future
        except asyncio.CancelledError:
            # The connection may still be made: close it then, nobody will adopt it.
            future.add_done_callback(lambda f: f.cancelled() or f.exception() or os.close(f.result()))
            raise
        self._writer.adopt(fd)

    @property
    def connected(self) -> bool:
        return self._writer.has_socket()

    def submit(self, pieces: list, on_landed: Callable[[], None] | None = None) -> asyncio.Future:
        """Hand the command made of `pieces` to the thread now (not `busy`, `connected`, on this
        loop); the future of (its finished job, `_job_reply`), for `call`. `on_landed` runs
        first, from `poll` (the eventfd's callback, or the engine's own call), if the reply says
        the append landed."""
        job = _rediswriter.AppendJob(pieces, PACK_MIN_BYTES, COMPRESS_LEVEL, CODEC_ZSTD, self._op_timeout_ms)
        self._writer.submit(job)
        self._on_landed = on_landed
        self._done = self.loop.create_future()
        waiter = self._waiter = self.loop.create_future()
        return waiter

    async def call(self, pieces: list, sent: asyncio.Future | None = None) -> Any:
        """Run the command made of `pieces` (`_rediswriter.AppendJob`) and return its reply;
        `sent`: the future `submit` gave for them, if they are on their way already."""
        attempt = 0
        while True:
            if sent is None:
                try:
                    if not self._writer.has_socket():
                        await self._connect()
                except OSError as exc:
                    if attempt >= self._retries:
                        raise rex.ConnectionError(f"connecting: {exc}") from None
                    attempt += 1
                    continue
                sent = self.submit(pieces)
            # A caller that gives up cancels its own future only: the job still runs, `busy`
            # stays true until it has (the next append takes the loop path meanwhile) and
            # `_done` tells close() when. (Not asyncio.shield: it would wake the caller one
            # loop iteration later, and the engine's next write waits for this one.)
            job, reply = await sent
            sent = None
            status = job.status
            if status == _rediswriter.OK:
                if isinstance(reply, Exception):
                    raise reply
                return reply
            if status == _rediswriter.TIMEOUT:
                raise rex.TimeoutError(f"no reply within {self._op_timeout_ms} ms")
            if status in (_rediswriter.IO_ERROR, _rediswriter.CLOSED, _rediswriter.NO_SOCKET):
                if attempt < self._retries:
                    attempt += 1
                    continue
                detail = os.strerror(job.errno) if status == _rediswriter.IO_ERROR else "connection closed"
                raise rex.ConnectionError(detail)
            if status == _rediswriter.BAD_REPLY:
                raise rex.ConnectionError("the reply is not RESP (connection closed)")
            raise rex.RedisError(f"the writer thread failed (status {status}); nothing was sent")

    async def close(self) -> None:
        if self.loop is asyncio.get_running_loop():
            while self._done is not None:  # let the job in flight land (or fail)
                await asyncio.shield(self._done)
        if not self.loop.is_closed():
            self.loop.remove_reader(self._writer.fileno())
        self._writer.close()  # a job still running (its loop gone) finishes first


def _append_pieces(keys: list[str], epoch: int, seq: int, record: bytes, chunks: list[UsageChunk],
                   key_index: dict[str, int], events: list[EventRow]) -> list | None:
    """The append script's EVALSHA as `_rediswriter.AppendJob` pieces: its arguments (those of
    RedisStorage.append's loop path) in RESP, with the record and each usage chunk of several
    rows as a blob for the thread to store (compressed, then its codec). None if an argument is
    one `_wire.resp_command` does not encode (the loop path sends it then)."""
    items: list[Any] = ["EVALSHA", _SCRIPTS["append"].sha, len(keys), *keys, epoch, seq,
                        (record if type(record) is bytes else bytes(record),), len(chunks), len(events)]
    for account_id, at_ms, n, payloads in chunks:
        items += (key_index[account_id], account_id, at_ms, n)
        if n > 1:
            items.append((payloads if type(payloads) is bytes else bytes(payloads),))
        else:
            items += (payloads, CODEC_RAW)
    for ev in events:
        items += (ev.event_id, ev.account_id, ev.type, ev.at_ms, ev.payload)
    total = sum(2 if type(item) is tuple else 1 for item in items)
    pieces: list = []
    plain: list = []
    for item in items + [None]:
        if item is not None and type(item) is not tuple:
            plain.append(item)
            continue
        if plain:
            packed = _wire.resp_command(tuple(plain), 0 if pieces else total)
            if packed is None:
                return None
            pieces.append(packed)
            plain = []
        if item is not None:
            pieces.append(item)  # never first: the command starts with plain arguments
    return pieces


class RedisStorage(Storage):
    """Storage in one Redis database (``redis://`` or ``rediss://`` for TLS)."""

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "quota:",
        hash_tag: str = "q",
        op_timeout_ms: int = OP_TIMEOUT_MS_DEFAULT,
        retries: int = RETRIES_DEFAULT,
        thread_appends: bool = True,
    ) -> None:
        """`thread_appends`: send appends from the C writer thread of `_rediswriter` where it can
        serve the store (`_ThreadWriter`); False: from the event loop (`_Writer`), as a store
        it cannot serve (TLS, say) always does."""
        if any(c in key_prefix + hash_tag for c in "{}"):
            raise ValueError("key_prefix and hash_tag must not contain braces")
        if not hash_tag:
            raise ValueError("hash_tag must not be empty")
        if op_timeout_ms <= 0:
            raise ValueError(f"op_timeout_ms must be > 0, got {op_timeout_ms}")
        self.url = url
        self.where = _redacted(url)
        self._op_timeout_ms = op_timeout_ms
        self._retries = retries
        self._thread_appends = thread_appends
        p = f"{key_prefix}{{{hash_tag}}}:"
        self._prefix = p
        self.k_lease = p + "lease"
        self.k_epoch = p + "epoch"
        self.k_holder = p + "holder"
        self.k_meta = p + "meta"
        self.k_journal = p + "journal"
        self.k_snapshot = p + "snapshot"
        self.k_usage_top = p + "usage_top"
        self.k_events = p + "events"
        self._client: aioredis.Redis | None = None
        self._writer: _Writer | None = None
        self._thread_writer: _ThreadWriter | None = None

    def usage_key(self, account_id: str) -> str:
        return f"{self._prefix}usage:{account_id}"

    # -- plumbing --------------------------------------------------------------------------

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            raise StorageError("redis storage is not open")
        return self._client

    async def _eval(self, script: _Script, keys: list[str], args: list[Any], *, hot: bool = False) -> Any:
        """EVALSHA, loading the script again if the server lost it (restart, SCRIPT FLUSH).
        `hot`: on the writer's own connection (`_Writer`), unless it is busy."""
        client = self.client
        writer = self._writer if hot else None
        if writer is not None and writer.busy:
            writer = None
        try:
            try:
                if writer is not None:
                    return await writer.call(("EVALSHA", script.sha, len(keys), *keys, *args))
                return await client.evalsha(script.sha, len(keys), *keys, *args)
            except rex.NoScriptError:
                await client.script_load(script.source)
                return await client.evalsha(script.sha, len(keys), *keys, *args)
        except rex.RedisError as exc:
            raise _map_error(exc, f"{self.where} {script.name}") from exc
        except (OSError, TimeoutError) as exc:
            raise _map_error(exc, f"{self.where} {script.name}") from exc

    async def _call(self, what: str, awaitable: Any) -> Any:
        try:
            return await awaitable
        except (rex.RedisError, OSError, TimeoutError) as exc:
            raise _map_error(exc, f"{self.where} {what}") from exc

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._client is not None:
            return
        timeout_s = self._op_timeout_ms / 1000
        client = aioredis.Redis.from_url(
            self.url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), self._retries, supported_errors=(rex.ConnectionError,)),
            protocol=2,
            decode_responses=False,
            health_check_interval=0,
        )
        pool = client.connection_pool  # no connection made yet: the class its connections will have
        pool.connection_class = _CONNECTION_CLASSES.get(pool.connection_class, pool.connection_class)
        try:
            for script in _SCRIPTS.values():
                await self._call("script load", client.script_load(script.source))
            await self._call("hsetnx", client.hsetnx(self.k_meta, "format", FORMAT_VERSION))
            fmt = int(await self._call("hget", client.hget(self.k_meta, "format")))
            if fmt > FORMAT_VERSION:
                raise StorageError(
                    f"redis {self.where}: data format {fmt} is newer than this build's "
                    f"{FORMAT_VERSION} (refusing to touch it)"
                )
            if fmt < FORMAT_VERSION:
                await self._call("hset", client.hset(self.k_meta, "format", FORMAT_VERSION))
        except BaseException:
            await client.aclose()
            raise
        self._client = client
        self._writer = _Writer(pool, self._retries)
        self._thread_writer = self._start_thread_writer(pool)

    def _start_thread_writer(self, pool: Any) -> _ThreadWriter | None:
        """The C writer thread for appends, where it can serve this store: plain TCP (no TLS, no
        Unix socket), a password given in the URL (not a credential provider), libzstd found."""
        kwargs = pool.connection_kwargs
        if (not self._thread_appends or _rediswriter is None or pool.connection_class is not _Connection
                or kwargs.get("credential_provider") is not None or not _rediswriter.available()):
            return None
        handshake: list[tuple] = []
        password, username = kwargs.get("password"), kwargs.get("username")
        if password is not None:
            handshake.append(("AUTH", username, password) if username else ("AUTH", password))
        if int(kwargs.get("db") or 0):
            handshake.append(("SELECT", int(kwargs["db"])))
        try:
            return _ThreadWriter(kwargs.get("host", "localhost"), int(kwargs.get("port", 6379)), handshake,
                                 self._op_timeout_ms, self._retries)
        except OSError as exc:
            log.warning("redis appends stay on the event loop: %s", exc)
            return None

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            writer, self._writer = self._writer, None
            thread_writer, self._thread_writer = self._thread_writer, None
            if thread_writer is not None:
                await thread_writer.close()
            if writer is not None:
                await writer.drop()
            await client.aclose()

    # -- lease -----------------------------------------------------------------------------

    async def acquire_lease(self, owner: str, ttl_ms: int) -> int:
        if not owner:
            raise ValueError("owner must not be empty")
        check_ttl(ttl_ms)
        keys = [self.k_lease, self.k_epoch, self.k_holder]
        note_owner(owner)
        reply = await self._eval(_SCRIPTS["acquire"], keys, [owner, ttl_ms, ""])
        if reply[0] == 1:
            return int(reply[1])
        lease = reply[1].decode(errors="replace")
        holder = lease.rpartition(":")[0] or lease
        if holder_died_here(holder):
            # Killed (kill -9, OOM) before it could release: nobody serves this data, and the
            # new epoch fences the dead one's in any case. Restart at once, not after the TTL.
            log.warning("lease held as %r for %s ms more by a process of this host that is gone; "
                        "taking over", lease, reply[2])
            reply = await self._eval(_SCRIPTS["acquire"], keys, [owner, ttl_ms, lease])
            if reply[0] == 1:
                return int(reply[1])
            lease = reply[1].decode(errors="replace")
        raise LeaseHeld(f"lease held as {lease!r} for {reply[2]} ms more")

    async def renew_lease(self, epoch: int, ttl_ms: int) -> None:
        check_ttl(ttl_ms)
        if not await self._eval(_SCRIPTS["renew"], [self.k_lease, self.k_holder], [epoch, ttl_ms]):
            raise Fenced(f"epoch {epoch} is not current")

    async def release_lease(self, epoch: int) -> None:
        await self._eval(_SCRIPTS["release"], [self.k_lease, self.k_holder], [epoch])

    # -- journal and snapshot --------------------------------------------------------------

    async def load(self) -> Recovered:
        client = self.client
        async with client.pipeline(transaction=True) as pipe:
            pipe.hmget(self.k_meta, ["snapshot_seq", "last_seq", "snapshot_codec"])
            pipe.get(self.k_snapshot)
            (snapshot_seq_raw, last_seq_raw, snapshot_codec), snapshot = await self._call("load", pipe.execute())
        if snapshot is not None:
            snapshot = await _unpack(snapshot, int(snapshot_codec or 0), "snapshot")
        snapshot_seq = int(snapshot_seq_raw or 0)
        last_seq = int(last_seq_raw or 0)
        records: list[tuple[int, bytes]] = []
        start = f"{snapshot_seq + 1}-0"
        while last_seq > snapshot_seq:
            page = await self._call(
                "load",
                client.xrange(self.k_journal, start, f"{last_seq}-0", count=LOAD_PAGE_SIZE),
            )
            for entry_id, fields in page:
                seq = _stream_ms(entry_id)
                records.append((seq, unpack_blob(fields[b"record"], int(fields.get(b"codec", 0)),
                                                 f"journal record {seq}")))
            if len(page) < LOAD_PAGE_SIZE:
                break
            start = b"(" + page[-1][0]
        recovered = Recovered(snapshot, snapshot_seq, records)
        check_recovered(recovered, last_seq)
        return recovered

    async def append(
        self,
        epoch: int,
        seq: int,
        record: bytes,
        usage: list[UsageRow],
        events: list[EventRow],
        packed: list[UsageChunk] = (),
    ) -> None:
        await self.start_append(epoch, seq, record, usage, events, packed)

    def start_append(self, epoch: int, seq: int, record: bytes, usage: list[UsageRow], events: list[EventRow],
                     packed: list[UsageChunk] = (), *,
                     on_landed: Callable[[], None] | None = None) -> Awaitable[None]:
        """`append`, handed to the writer thread at once when it is ready (Storage.start_append),
        `on_landed` then called from the thread's eventfd callback; else (TLS, the thread busy
        or not connected yet) all of it runs when awaited, and `on_landed` is not called."""
        chunks = check_batch(seq, usage, events, packed)
        keys = [self.k_holder, self.k_meta, self.k_journal, self.k_events, self.k_usage_top]
        key_index: dict[str, int] = {}
        for account_id, _, _, _ in chunks:
            if account_id not in key_index:
                keys.append(self.usage_key(account_id))
                key_index[account_id] = len(keys)  # Lua's KEYS is 1-based
        thread_writer = self._thread_writer
        pieces = sent = None
        if thread_writer is not None and not thread_writer.busy and thread_writer.loop is asyncio.get_running_loop():
            pieces = _append_pieces(keys, epoch, seq, record, chunks, key_index, events)
            if pieces is not None and thread_writer.connected:
                sent = thread_writer.submit(pieces, on_landed)
        return self._append(epoch, seq, record, events, keys, key_index, chunks, thread_writer, pieces, sent)

    def poll(self) -> None:
        thread_writer = self._thread_writer
        if thread_writer is not None and thread_writer.loop is asyncio.get_running_loop():
            thread_writer.poll()

    async def _append(self, epoch: int, seq: int, record: bytes, events: list[EventRow], keys: list[str],
                      key_index: dict[str, int], chunks: list[UsageChunk], thread_writer: _ThreadWriter | None,
                      pieces: list | None, sent: asyncio.Future | None) -> None:
        if pieces is not None:
            reply = await self._thread_call(thread_writer, pieces, sent)
        else:
            (stored, codec), stored_chunks = _pack_flush(record, chunks)
            args: list[Any] = [epoch, seq, stored, codec, len(chunks), len(events)]
            for (account_id, at_ms, n, _), (payloads, chunk_codec) in zip(chunks, stored_chunks):
                args += (key_index[account_id], account_id, at_ms, n, payloads, chunk_codec)
            for ev in events:
                args += (ev.event_id, ev.account_id, ev.type, ev.at_ms, ev.payload)
            reply = await self._eval(_SCRIPTS["append"], keys, args, hot=True)
        status = reply[0]
        if status in (b"OK", b"DUP"):
            return
        detail = reply[1].decode() if len(reply) > 1 else ""
        if status == b"FENCED":
            raise Fenced(f"epoch {epoch} is not current (current {detail or 'none: released'})")
        if status == b"TRIMMED":
            raise SequenceError(f"seq {seq} is already covered by a snapshot (last seq {detail})")
        if status == b"CONFLICT":
            if await self._stored_record(seq) == record:
                return  # the same record, compressed differently (another codec or build): a retry
            raise SequenceError(f"seq {seq} already holds a different record")
        if status == b"GAP":
            raise SequenceError(f"seq {seq} does not follow last seq {detail}")
        if status == b"BADCHUNK":
            raise StorageError(f"redis {self.where}: the append script refused a usage chunk of {detail!r}")
        if status == b"EVENT_ORDER":
            raise SequenceError(f"event id {events[0].event_id} does not follow {detail}")
        raise StorageError(f"redis {self.where}: unexpected append reply {reply!r}")

    async def _thread_call(self, thread_writer: _ThreadWriter, pieces: list, sent: asyncio.Future | None) -> Any:
        """The append's EVALSHA on the writer thread (`sent`: submitted already), loading the
        script again if the server lost it (as `_eval` does)."""
        script = _SCRIPTS["append"]
        try:
            try:
                return await thread_writer.call(pieces, sent)
            except rex.NoScriptError:
                await self.client.script_load(script.source)
                return await thread_writer.call(pieces)
        except (rex.RedisError, OSError, TimeoutError) as exc:
            raise _map_error(exc, f"{self.where} {script.name}") from exc

    async def _stored_record(self, seq: int) -> bytes | None:
        page = await self._call("read record", self.client.xrange(self.k_journal, f"{seq}-0", f"{seq}-0"))
        if not page:
            return None
        fields = page[0][1]
        return unpack_blob(fields[b"record"], int(fields.get(b"codec", 0)), f"journal record {seq}")

    async def write_snapshot(self, epoch: int, seq: int, blob: bytes) -> None:
        if seq < 0:
            raise ValueError(f"seq must be >= 0, got {seq}")
        stored, codec = await _pack(blob)
        reply = await self._eval(
            _SCRIPTS["snapshot"],
            [self.k_holder, self.k_meta, self.k_snapshot, self.k_journal],
            [epoch, seq, stored, codec],
        )
        status = reply[0]
        if status == b"OK":
            return
        if status == b"FENCED":
            raise Fenced(f"epoch {epoch} is not current")
        if status == b"RANGE":
            raise SequenceError(
                f"snapshot seq {seq} outside {reply[1].decode()}..{reply[2].decode()} "
                "(current snapshot..last seq)"
            )
        raise StorageError(f"redis {self.where}: unexpected snapshot reply {reply!r}")

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
        client = self.client
        # An entry's id time is >= its at_ms, so from_ms is a valid lower id bound.
        start_id = (max(from_ms, 0), 0)
        start = f"{start_id[0]}-0"
        resume: tuple[bytes, int] | None = None  # (entry id, rows of it already returned)
        if after is not None:
            match = _CURSOR.fullmatch(after)
            if match is None:
                raise InvalidCursor(f"not a usage cursor of this store: {after!r}")
            if (int(match[1]), int(match[2])) >= start_id:
                entry = f"{match[1]}-{match[2]}"
                if match[3] is None:
                    start = "(" + entry
                else:
                    start = entry
                    resume = (entry.encode(), int(match[3]) + 1)
        end = "+"
        if to_ms:
            lag_ms = int(await self._call("hget", client.hget(self.k_meta, "usage_lag_ms")) or 0)
            end = f"({to_ms + lag_ms}-0"
        key = self.usage_key(account_id)
        count = min(max(limit + 1, 128), SCAN_PAGE_MAX)
        found: list[tuple[str, UsageRow]] = []  # (cursor after this row, row)
        while len(found) <= limit:
            page = await self._call("list usage", client.xrange(key, start, end, count=count))
            for entry_id, fields in page:
                at_ms = int(fields[b"at_ms"])
                if not (at_ms >= from_ms and (not to_ms or at_ms < to_ms)):
                    continue
                payloads = usage_entry_payloads(fields)
                first = resume[1] if resume is not None and resume[0] == entry_id else 0
                name = entry_id.decode()
                for index in range(first, len(payloads)):
                    cursor = name if index == len(payloads) - 1 else f"{name}:{index}"
                    found.append((cursor, UsageRow(account_id, at_ms, payloads[index])))
            if len(page) < count:
                break
            start = b"(" + page[-1][0]
        rows = [row for _, row in found[:limit]]
        if len(found) <= limit:
            return rows, None
        return rows, found[limit - 1][0]

    async def read_events(
        self, after_event_id: int, limit: int, account_id: str | None = None
    ) -> list[EventRow]:
        check_limit(limit)
        client = self.client
        start = f"({after_event_id}-0" if after_event_id > 0 else "-"
        count = limit if account_id is None else SCAN_PAGE_MAX
        out: list[EventRow] = []
        while len(out) < limit:
            page = await self._call("read events", client.xrange(self.k_events, start, "+", count=count))
            for entry_id, fields in page:
                acct = fields[b"account_id"].decode()
                if account_id is None or acct == account_id:
                    out.append(
                        EventRow(
                            _stream_ms(entry_id),
                            acct,
                            fields[b"type"].decode(),
                            int(fields[b"at_ms"]),
                            fields[b"payload"],
                        )
                    )
                    if len(out) == limit:
                        break
            if len(page) < count:
                break
            start = b"(" + page[-1][0]
        return out

    # -- operations ------------------------------------------------------------------------

    async def check_durability(self) -> str | None:
        """Warn when this Redis would lose acknowledged mutations on a restart (or evict them).

        Managed services often disable CONFIG; then INFO persistence tells whether AOF is on.
        """
        client = self.client
        warnings: list[str] = []
        try:
            cfg: dict[str, str] = {}
            for name in ("appendonly", "save", "maxmemory-policy"):
                for key, value in (await client.config_get(name)).items():
                    cfg[str(key)] = str(value)
        except rex.ResponseError:
            try:
                info = await client.info("persistence")
            except rex.NoPermissionError:  # an ACL user without CONFIG and INFO (both @dangerous)
                return (f"cannot check how Redis at {self.where} persists (its user may run neither CONFIG GET "
                        "nor INFO): make sure it has appendonly yes, or acknowledged mutations may be lost "
                        "when Redis restarts")
            except (rex.RedisError, OSError, TimeoutError) as exc:
                raise _map_error(exc, f"{self.where} info") from exc
            if not int(info.get("aof_enabled", 0)):
                warnings.append(
                    f"Redis at {self.where} has AOF disabled (appendonly no) and CONFIG is not "
                    "available to check its RDB settings: acknowledged mutations may be lost "
                    "when Redis restarts; set appendonly yes"
                )
        except (rex.RedisError, OSError, TimeoutError) as exc:
            raise _map_error(exc, f"{self.where} config get") from exc
        else:
            aof = cfg.get("appendonly", "no") == "yes"
            save = cfg.get("save", "").strip()
            if not aof and not save:
                warnings.append(
                    f'Redis at {self.where} keeps nothing on disk (appendonly no, save ""): '
                    "every acknowledged mutation is lost when Redis restarts; set appendonly yes "
                    "(appendfsync always to lose nothing on a host crash)"
                )
            elif not aof:
                warnings.append(
                    f"Redis at {self.where} keeps only RDB snapshots (save {save!r}, appendonly "
                    "no): mutations acknowledged since the last snapshot are lost if Redis stops "
                    "uncleanly; set appendonly yes"
                )
            policy = cfg.get("maxmemory-policy", "noeviction")
            if policy.startswith("allkeys-"):
                warnings.append(
                    f"Redis at {self.where} has maxmemory-policy {policy}: it may evict the "
                    "journal when memory is full; use noeviction"
                )
        return "; ".join(warnings) or None


def _stream_ms(entry_id: bytes) -> int:
    """The ms part of a stream id (our seq or event_id)."""
    match = _STREAM_ID.fullmatch(entry_id)
    if match is None:
        raise StorageError(f"unexpected stream id {entry_id!r}")
    return int(match[1])

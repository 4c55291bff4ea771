"""The engine: the only code that touches the core.

RPC handlers submit op tuples; the engine groups whatever arrived while the previous write was
in flight into the next batch, applies it to the core in one synchronous step, persists the
batch's journal record (plus its usage rows and events) in one storage write, and only then
resolves the waiting handlers. At most one write is in flight; a large enough next batch is
applied while it is (CPU and disk overlap). When many small calls arrive one after another, a
small batch waits up to `flush_window_us` for more (an adaptive window, see `_linger`). Writes
land, and callers are answered, in batch order. The queue is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import _fastledger
from _fastledger import codes as C

from .errors import Overloaded, QuotaError, ShuttingDown, Unavailable
from .snapshotter import ForkedSnapshot, fork_allowed, fork_snapshot
from .storage.base import EventRow, Fenced, Storage, StorageUnavailable, UsageChunk, UsageRow

log = logging.getLogger("quota.engine")

# An extra given with an op: called with (op, result, fresh, now_ms) after apply, it returns
# the usage rows and events the op produced (derived data persisted in the same write).
Derive = Callable[[tuple, tuple, bool, int], tuple[list[UsageRow], list[tuple[str, str, dict]]]]


class GroupDeriver(Protocol):
    """Derives a whole group's usage and events (see Engine.submit_group)."""

    def derive_into(self, results: list[tuple], start: int, replayed: set[int], now_ms: int,
                    usage: list[UsageRow], events: list[tuple[str, str, dict]], packed: list[UsageChunk]) -> None:
        """Append what ops ``results[start:start + len(group)]`` produced (usage rows, or
        usage already packed per account: storage.base.UsageChunk); replays derive nothing."""


EVENTS_PER_SEQ = 1 << 16  # event_id = seq * EVENTS_PER_SEQ + index: unique and increasing
LINGER_RELEARN_EVERY = 16  # every n-th decision may run a whole window (see Engine._linger)
LINGER_ENOUGH_OPS = 16  # a batch this big is not held back for more (see Engine._linger)
LINGER_BACKOFF_MAX = 64  # most relearning windows skipped after ones that brought nothing
SNAPSHOT_RETRY_MIN_S = 1.0  # after a failed snapshot, the next waits this long, doubling
SNAPSHOT_RETRY_MAX_S = 60.0  # up to this (the journal keeps everything meanwhile)


@dataclass(frozen=True, kw_only=True)
class EngineOptions:
    """Tunables of the engine (see docs/configuration.md)."""

    retention_ns: int = 86_400 * 10**9
    max_queue: int = 100_000
    max_batch: int = 16_384
    eager_apply_min_ops: int = 256  # see Engine._flush_loop
    stall_ms: int = 1_000  # a write in flight this long: new mutations UNAVAILABLE (_check_accepting)
    flush_window_us: int = 2_000  # adaptive group commit, see Engine._linger (0: never wait)
    sweep_max_items: int = 1_000
    sweep_interval_ms: int = 250
    snapshot_every_records: int = 20_000
    snapshot_fork: bool = True  # serialize snapshots in a forked child (see snapshotter)
    lease_ttl_ms: int = 10_000
    retry_backoff_min_ms: int = 5
    retry_backoff_max_ms: int = 500


class _Pending:
    """One submission: a single op (a unary RPC) or a group of ops (a Batch) with one future."""

    __slots__ = ("ops", "derives", "future", "single", "early")

    def __init__(self, ops: list[tuple], derives: list | None, future: asyncio.Future, single: bool,
                 early: bool = False) -> None:
        self.ops = ops
        self.derives = derives  # aligned with ops, a GroupDeriver, or None when nothing derives
        self.future = future
        self.single = single
        self.early = early  # answered once applied, not once durable (Engine.submit fail_open)


class _Flush:
    """Applied batches on their way to storage, as one record: what to write and whom to
    answer. Open (more batches may be applied into it) until `Engine._seal` takes the core's
    journal, which then covers every batch applied into it."""

    __slots__ = ("parts", "n_ops", "seq", "record", "usage", "packed", "event_specs", "events", "snapshot", "landed")

    def __init__(self) -> None:
        self.parts: list[tuple[list[_Pending], list[tuple]]] = []  # (batch, its apply's results)
        self.n_ops = 0
        self.seq = 0
        self.record = b""  # empty: the batches changed nothing durable (only the answers wait)
        self.usage: list[UsageRow] = []
        self.packed: list[UsageChunk] = []
        self.event_specs: list[tuple[str, str, dict, int]] = []  # (type, account, attrs, at_ms)
        self.events: list[EventRow] = []
        self.snapshot: bytes | ForkedSnapshot | None = None
        self.landed = False  # written (or nothing to write), its callers answered: Engine._landed

    def fail(self, error: type[QuotaError] = ShuttingDown) -> None:
        for batch, _ in self.parts:
            _fail(batch, error)


def _wake(waiter: asyncio.Future, _done: asyncio.Future | None = None) -> None:
    """Wake `waiter` if it still waits (a write's done callback, bound to the wait it was set for)."""
    if not waiter.done():
        waiter.set_result(None)


def _fail(batch: list[_Pending], error: type[QuotaError] = ShuttingDown) -> None:
    for item in batch:
        if not item.future.done():
            item.future.set_exception(error())


class Engine:
    """Owns the ledger; batches, applies and persists operations in order."""

    def __init__(
        self,
        *,
        storage: Storage,
        owner: str,
        options: EngineOptions = EngineOptions(),
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.storage = storage
        self.owner = owner
        self.options = options
        self._clock_ns = clock_ns
        self._last_now_ns = 0
        self.ledger: Any = None
        self.epoch = 0
        self.seq = 0  # the last seq written (durable)
        self._applied_seq = 0  # the last seq applied to the core (>= seq)
        self._snapshot_seq = 0
        self.snapshot_failures = 0  # failed snapshots in a row (0 after one lands)
        self._snapshot_retry_ns = 0  # after a failure, no new snapshot before this time
        self._pending: list[_Pending] = []
        self._writing: asyncio.Task | None = None  # the write in flight (`_write`), or the last one
        self._writing_flush: _Flush | None = None  # what it writes
        self._behind: _Flush | None = None  # applied behind the write in flight, not yet sealed
        self._queued_ops = 0  # ops in _pending (the queue bound counts ops, not submissions)
        self._wake = asyncio.Event()  # something was queued
        self._waiter: asyncio.Future | None = None  # the flush loop waiting behind a write or lingering
        self._window_s = options.flush_window_us / 1e6
        self._linger_skip = 0  # relearning waits to skip (see _linger)
        self._linger_backoff = 0
        self._lingers = 0
        self._crowd = 0.0  # ops a whole window usually gathers
        self._wake_at_ops = options.eager_apply_min_ops  # queued ops that end a wait
        self.windows_run_out = 0  # waits for more ops that ran the whole window (see _linger)
        self._write_since: float | None = None  # loop time the write in flight started at
        self._stall_s = options.stall_ms / 1000
        # The op that expires what is due, first in every apply (writes and reads alike).
        self._sweep_op = (C.OP_EXPIRE, options.sweep_max_items)
        self._last_write_s = 0.0  # how long the last storage write took
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task] = []
        self._snapshot_task: asyncio.Task | None = None
        self._accepting = False
        self._running = False
        self.storage_down = False
        self.fatal: BaseException | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.events_written = asyncio.Condition()
        self.on_health_change: Callable[[bool], None] | None = None
        # Turns the holds that expired in a flush into usage rows and events (set by the server).
        self.derive_expired: Callable[[list, int], tuple[list[UsageRow], list]] | None = None
        # Threshold notifications (notify.Thresholds): called after each batch is applied with
        # the accounts that recorded usage in it, it returns more events for the same write; if
        # it has them, its `low` (accounts announced low) and `rearm(accounts, now_ms)` let the
        # batch's other ops arm `balance.low` again.
        self.observe: Any = None
        self.on_fatal: Callable[[BaseException], None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Take the lease, recover the ledger from storage, start the flush loop."""
        self._loop = asyncio.get_running_loop()
        self.epoch = await self.storage.acquire_lease(self.owner, self.options.lease_ttl_ms)
        recovered = await self.storage.load()
        retention = self.options.retention_ns
        if recovered.snapshot:
            self.ledger = _fastledger.Ledger.from_snapshot(recovered.snapshot, retention_ns=retention)
        else:
            self.ledger = _fastledger.Ledger(retention_ns=retention)
        for _, record in recovered.records:
            self.ledger.replay(record)
        if recovered.records:
            self.ledger.settle_purge_queue()  # replayed purge entries: into the purge queue's ring
        self.seq = self._applied_seq = recovered.last_seq
        self._snapshot_seq = recovered.snapshot_seq
        self._running = True
        self._accepting = True
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._flush_loop(), name="quota-flush"),
            loop.create_task(self._sweep_loop(), name="quota-sweep"),
            loop.create_task(self._lease_loop(), name="quota-lease"),
        ]
        log.info(
            "recovered seq=%d (snapshot %d + %d records), epoch=%d",
            self.seq, recovered.snapshot_seq, len(recovered.records), self.epoch,
        )

    def stop_accepting(self) -> None:
        """New mutations are refused from now on (UNAVAILABLE / SHUTTING_DOWN); what is already
        submitted goes on (the start of a graceful stop)."""
        self._accepting = False

    async def stop(self) -> None:
        """Stop accepting, finish and persist in-flight work, release the lease."""
        self._accepting = False
        if self._running and self.fatal is None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._drain(), timeout=30)
        self._running = False
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._snapshot_task is not None:
            with contextlib.suppress(Exception):
                await self._snapshot_task
        self._fail_queued(ShuttingDown)
        if self.fatal is None and self.epoch:
            with contextlib.suppress(Exception):
                await self.storage.release_lease(self.epoch)

    async def _drain(self) -> None:
        while self._pending or not self._idle.is_set():
            await self._idle.wait()
            if self._pending:
                await asyncio.sleep(0)

    def now_ns(self) -> int:
        """The engine's clock: wall time, never going backwards."""
        now = self._clock_ns()
        if now < self._last_now_ns:
            now = self._last_now_ns
        self._last_now_ns = now
        return now

    # ------------------------------------------------------------------ submitting

    def _check_accepting(self, *, storage_down_ok: bool = False) -> None:
        """Refuse a new mutation while the server stops (SHUTTING_DOWN) or storage cannot persist
        (UNAVAILABLE): storage is known down (a write failed or timed out), or the write in
        flight has taken `stall_ms` already (a frozen Redis is only known down after
        `timeout_ms`; meanwhile a new call would wait behind the frozen write, so it is refused at
        once instead and its caller may retry with the same id). `storage_down_ok`: a fail-open
        call (Engine.submit), refused for neither reason."""
        if self.fatal is not None or not self._accepting:
            raise ShuttingDown()
        if storage_down_ok:
            return
        if self.storage_down:
            raise Unavailable()
        since = self._write_since
        if since is not None and self._loop.time() - since >= self._stall_s:
            raise Unavailable("storage has not persisted the last batch for a while; retry with the same id")

    async def submit(self, op: tuple, derive: Derive | None = None, *, fail_open: bool = False) -> tuple:
        """Apply one mutation; returns its result once it is durable.

        With `fail_open`, while storage is down the mutation is accepted anyway and answered
        as soon as it is applied; it is persisted with the first write that lands once storage
        is back (lost if the server stops before). Only for what may fail open: calls that
        touch rate limits only (DataPlane.submit), never credit."""
        early = fail_open and self.storage_down
        self._check_accepting(storage_down_ok=fail_open)
        if self._queued_ops >= self.options.max_queue:
            raise Overloaded()
        return await self._enqueue([op], None if derive is None else [derive], True, early)

    async def submit_many(self, items: list[tuple[tuple, Derive | None]]) -> list[tuple]:
        """Apply several mutations (Batch) in order; their results once all are durable.

        The group shares one future and always lands in one flush (so in one storage write).
        """
        self._check_accepting()
        if self._queued_ops + len(items) > self.options.max_queue:
            raise Overloaded()
        ops = [op for op, _ in items]
        derives = [derive for _, derive in items]
        if not any(derives):
            derives = None
        return await self._enqueue(ops, derives, False)

    async def submit_group(self, ops: list[tuple], deriver: GroupDeriver) -> list[tuple]:
        """`submit_many` for a group whose usage and events one object derives for all its ops
        at once (`deriver.derive_into`), instead of one `derive` call per op from Python."""
        self._check_accepting()
        if self._queued_ops + len(ops) > self.options.max_queue:
            raise Overloaded()
        self.poll()  # a write landed while this group was decoded is answered first
        return await self._enqueue(ops, deriver, False)

    def poll(self) -> None:
        """Answer a write that storage can tell has landed, and start the next one, now
        (`Storage.poll`): for callers about to do a long stretch of work on the loop (decoding
        or encoding a Batch), which would otherwise delay both until the loop's next turn."""
        self.storage.poll()

    def _enqueue(self, ops: list[tuple], derives: Any, single: bool, early: bool = False) -> asyncio.Future:
        """Queue a submission (checked by the caller) and wake the flush loop; its future."""
        future = self._loop.create_future()
        self._pending.append(_Pending(ops, derives, future, single, early))
        self._queued_ops += len(ops)
        self._wake.set()
        if self._waiter is not None and (self._queued_ops >= self._wake_at_ops or early):
            self._release_waiter()
        return future

    def _release_waiter(self) -> None:
        """Wake whatever the flush loop waits on now (the queue, a landing, a window's end)."""
        if self._waiter is not None:
            _wake(self._waiter)

    def read(self, op: tuple | None = None) -> tuple | None:
        """Apply a non-mutating op (CHECK) at once, outside the write path; its result (None if
        `op` is None: a read of the ledger follows, GetBalance).

        Holds and lots that are due expire first (the sweep's op, as every write's batch begins
        with): a read answers for now, not for the last sweep (up to `sweep_interval_ms` ago).
        Those time-driven changes ride along with the next flush (the background sweep makes one
        within `sweep_interval_ms`); they acknowledge nothing, and a server restarted before that
        flush expires the same holds at the same times when it recovers.
        """
        if self.fatal is not None:
            raise ShuttingDown()
        if op is None:
            self.ledger.apply([self._sweep_op], self.now_ns())
            return None
        return self.ledger.apply([self._sweep_op, op], self.now_ns())[1]

    # ------------------------------------------------------------------ the write path

    async def _flush_loop(self) -> None:
        """Apply batches and write them, one write in flight at a time. While batch N is being
        written, the next batch fills up; once `eager_apply_min_ops` ops are waiting (a Batch
        RPC, or a crowd of unary calls), they are applied to the core at once, overlapping the
        CPU work with the write, and written as soon as N has landed. Fewer wait for N to land
        (so small calls share one flush instead of paying for many). Writes land in order, and a
        batch is answered only once its write (and so every earlier one) has landed. What is
        applied behind the write in flight is one open flush (`_behind`: up to `max_batch` ops,
        sealed into one record when that write lands; the landed write starts it itself,
        `_write_next`). With no write in flight, a batch of fewer than `eager_apply_min_ops` may
        first wait a little for company (`_linger`)."""
        eager = self.options.eager_apply_min_ops
        room = self.options.max_batch
        poll = self.poll
        try:
            while self._running:
                poll()  # a write landed meanwhile (applying the last batch) is answered now
                write = self._writing
                if write is not None and not write.done() and not self._writing_flush.landed:
                    behind = self._behind
                    # While storage is down, only fail-open calls are queued: apply them at once.
                    if ((self._queued_ops >= eager or (self.storage_down and self._queued_ops))
                            and (behind is None or behind.n_ops < room)):
                        # Enough is waiting: apply it now, behind the write (into the same
                        # record as whatever was applied behind it already).
                        self._behind = self._apply_taken(behind, room - (behind.n_ops if behind else 0))
                        continue
                    # Woken by the write landing or by the queue reaching `eager` (a bare
                    # future: this runs once per flush, asyncio.wait costs more). The write's
                    # done callback wakes this wait only: a write task that ends right after
                    # it landed (`_landed` woke this wait already) has its callbacks scheduled
                    # by then, and one that woke whatever waits next would end the next
                    # batch's wait for company (`_linger`) before it began.
                    waiter = self._waiter = self._loop.create_future()
                    wake = functools.partial(_wake, waiter)
                    write.add_done_callback(wake)
                    try:
                        await waiter
                    finally:
                        self._waiter = None
                        write.remove_done_callback(wake)
                    continue
                if write is not None:
                    self._writing = self._writing_flush = None
                    try:
                        # Raises what the write raised. (A landed write's task may still be
                        # finishing: nothing it does then can fail, it is not waited for.)
                        if write.done():
                            await write
                    except BaseException:
                        if self._behind is not None:
                            self._behind.fail()
                        raise
                if self._behind is not None:
                    self._write_next()
                    await asyncio.sleep(0)  # let the write go out first (`_start_write`)
                    continue
                if not self._pending:
                    self._idle.set()
                    await self._wake.wait()
                    self._wake.clear()
                    continue
                self._idle.clear()
                if self._queued_ops < eager and self._window_s:
                    await self._linger()
                self._start_write(self._apply_taken(None, room))
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a broken invariant or a lost lease: stop serving
            self._die(exc)

    def _write_next(self) -> None:
        """Start writing what was applied behind the write that has just landed."""
        behind, self._behind = self._behind, None
        self._start_write(behind)

    async def _linger(self) -> None:
        """Adaptive group commit: before taking a small batch, wait up to `flush_window_us` for
        more ops, so that many small calls arriving one after another share one flush (one
        storage write, one burst of replies) instead of paying a flush each. It adapts:

        - No wait starts while storage writes take the window or longer (SQLite's fsync behind
          a busy event loop, say): ops gather behind such writes by themselves.
        - No wait starts, and a wait ends, once LINGER_ENOUGH_OPS are queued: a flush that big
          spreads its fixed cost thin enough.
        - `_crowd` is how many ops a whole window gathers (up to that), learned from the
          relearning waits below. A wait also ends as soon as that many ops are
          queued, and none starts when they already are: a few callers in a loop do not wait
          for ops that will never come, and a lone caller does not wait.
        - Every LINGER_RELEARN_EVERY-th decision runs a whole window to learn whether more
          company has come. One that brought no op at all makes the next 1, 2, 4, ... (at most
          LINGER_BACKOFF_MAX) such relearning waits skipped; one that brought something resets
          that.
        """
        if self._last_write_s >= self._window_s:
            return
        before = self._queued_ops
        eager = self.options.eager_apply_min_ops
        whole = not self._crowd or self._lingers % LINGER_RELEARN_EVERY == 0
        self._lingers += 1
        if whole and self._linger_skip:
            self._linger_skip -= 1
            whole = False
        target = min(eager, LINGER_ENOUGH_OPS if whole else round(self._crowd))
        if before >= target:
            return
        loop = self._loop
        waiter = self._waiter = loop.create_future()
        self._wake_at_ops = target
        timer = loop.call_later(self._window_s, self._window_over)
        try:
            await waiter
        finally:
            self._waiter = None
            self._wake_at_ops = eager
            timer.cancel()
        gathered = self._queued_ops
        if whole:  # what a whole window gathers (up to enough)
            self._crowd = gathered if not self._crowd else self._crowd + (gathered - self._crowd) / 4
        if gathered > before:
            self._linger_backoff = 0
        elif whole:
            self._linger_backoff = min(2 * self._linger_backoff or 1, LINGER_BACKOFF_MAX)
            self._linger_skip = self._linger_backoff

    def _window_over(self) -> None:
        self.windows_run_out += 1
        self._release_waiter()

    def _take_batch(self, limit: int) -> list[_Pending]:
        """The next batch: queued submissions up to `limit` ops (at least one submission: a
        group is never split)."""
        pending = self._pending
        n_ops = 0
        count = 0
        for item in pending:
            size = len(item.ops)
            if count and n_ops + size > limit:
                break
            n_ops += size
            count += 1
        batch = pending[:count]
        del pending[:count]
        self._queued_ops -= n_ops
        return batch

    def _apply_taken(self, flush: _Flush | None, room: int) -> _Flush:
        """Take the next batch (at most `room` ops, or one group) and apply it into `flush`
        (a new one if None); the taken submissions fail if that raises."""
        batch = self._take_batch(room)
        try:
            return self._apply_into(flush, batch)
        except BaseException:
            _fail(batch)
            if flush is not None:
                flush.fail()
            raise

    def _apply_into(self, flush: _Flush | None, batch: list[_Pending]) -> _Flush:
        """Apply `batch` to the core and derive what its write carries (synchronous)."""
        now_ns = self.now_ns()
        now_ms = now_ns // 1_000_000
        ops = [self._sweep_op]
        for item in batch:
            ops.extend(item.ops)
        results = self.ledger.apply(ops, now_ns)
        if flush is None:
            flush = _Flush()
        flush.parts.append((batch, results))
        flush.n_ops += len(ops) - 1
        # Ops answered from a stored idempotency record: replays derive no usage or events.
        replayed = set(self.ledger.replayed_indices())
        usage = flush.usage
        packed = flush.packed
        usage_from, packed_from = len(usage), len(packed)
        event_specs: list[tuple[str, str, dict]] = []
        expired = self.ledger.take_expired()
        if expired and self.derive_expired is not None:
            rows, event_specs = self.derive_expired(expired, now_ms)
            usage.extend(rows)
        for account_id, grant_id, amount in self.ledger.take_expired_lots():  # breakage
            event_specs.append(("credits.expired", account_id, {"grant_id": grant_id, "amount": str(amount)}))
        index = 1
        for item in batch:
            if item.early and not item.future.done():  # fail-open during an outage: answered now
                item.future.set_result(results[index] if item.single else results[index:index + len(item.ops)])
            derives = item.derives
            if derives is not None and type(derives) is not list:
                derives.derive_into(results, index, replayed, now_ms, usage, event_specs, packed)
            elif derives is not None:
                for j, derive in enumerate(derives):
                    result = results[index + j]
                    if derive is not None and result[0] == C.OK:
                        rows, evs = derive(item.ops[j], result, index + j not in replayed, now_ms)
                        if rows:
                            usage.extend(rows)
                        if evs:
                            event_specs.extend(evs)
            index += len(item.ops)
        observe = self.observe
        if observe is not None and (len(usage) > usage_from or len(packed) > packed_from):
            touched = {row.account_id for row in usage[usage_from:]}
            touched.update(chunk[0] for chunk in packed[packed_from:])
            try:
                event_specs.extend(observe(touched, now_ms))
            except Exception:  # noqa: BLE001 - notifications must never stop the write path
                log.exception("threshold notifications failed for this batch (its writes go on)")
        low = getattr(observe, "low", None)
        if low:
            # Accounts announced low whose other ops (a grant, a release, an expiry, a new credit
            # limit) may have lifted them back above their threshold: armed again if so.
            lifted = {op[1] for item in batch for op in item.ops if op[1] in low}
            lifted.update(entry[0] for entry in expired if entry[0] in low)
            if lifted:
                try:
                    observe.rearm(lifted, now_ms)
                except Exception:  # noqa: BLE001 - as above
                    log.exception("threshold notifications failed for this batch (its writes go on)")
        if event_specs:
            flush.event_specs.extend((etype, account_id, attrs, now_ms) for etype, account_id, attrs in event_specs)
        return flush

    def _seal(self, flush: _Flush) -> None:
        """Take the core's journal into `flush`: one record for every batch applied into it."""
        record = self.ledger.take_journal()
        if not record:
            return
        seq = self._applied_seq + 1
        self._applied_seq = seq
        flush.seq, flush.record = seq, record
        flush.events = [
            EventRow(
                event_id=seq * EVENTS_PER_SEQ + n + 1,
                account_id=account_id,
                type=etype,
                at_ms=at_ms,
                payload=_encode_attrs(attrs),
            )
            for n, (etype, account_id, attrs, at_ms) in enumerate(flush.event_specs)
        ]
        if seq - self._snapshot_seq >= self.options.snapshot_every_records and (
            self._snapshot_task is None or self._snapshot_task.done()
        ) and (self._snapshot_retry_ns == 0 or self.now_ns() >= self._snapshot_retry_ns):
            # The state after record `seq` is the core's state right now (nothing else has
            # been applied since its journal was taken), so the snapshot is taken here; it is
            # written once the record itself has landed.
            flush.snapshot = self._snapshot_now()
            self._snapshot_seq = seq

    def _snapshot_now(self) -> bytes | ForkedSnapshot:
        """The core's state as it is now: serialized by a forked child (see snapshotter) when
        `snapshot_fork` is on and forking is safe (`fork_allowed`), else here, on the loop."""
        if self.options.snapshot_fork and fork_allowed():
            try:
                return fork_snapshot(self.ledger)
            except OSError as exc:
                log.warning("cannot fork for the snapshot (%s); taking it on the event loop", exc)
        return self.ledger.snapshot()

    def _start_write(self, flush: _Flush) -> asyncio.Task:
        """Seal `flush` and start writing it: storage sends what it can at once
        (`Storage.start_append`: Redis's writer thread gets the flush now), and a task finishes
        the write. The caller then yields once, so that a write that does start in that task
        (handing the record to SQLite's thread, say) runs before anything more is applied behind
        it: otherwise the write would only leave once that apply (about a millisecond for a
        Batch of 1,000) is over, and its callers would wait for it on top of the write itself."""
        try:
            self._seal(flush)
        except BaseException:
            flush.fail()
            raise
        self._write_since = self._loop.time()
        started = None
        if flush.record:
            try:
                started = self.storage.start_append(self.epoch, flush.seq, flush.record, flush.usage, flush.events,
                                                    flush.packed, on_landed=lambda: self._landed(flush))
            except Exception:  # noqa: BLE001 - nothing was sent: the first attempt raises it again
                started = None
        task = self._loop.create_task(self._write(flush, started), name="quota-write")
        if started is not None and hasattr(started, "close"):
            # A task cancelled before its first step never awaits `started`: close it quietly.
            task.add_done_callback(lambda _: started.close())
        self._writing, self._writing_flush = task, flush
        return task

    async def _write(self, flush: _Flush, started: Awaitable[None] | None = None) -> None:
        """Persist one sealed flush (retrying until it lands), then `_landed` (unless storage
        has run it already, the moment the write landed); `started`: its first attempt, begun
        by `_start_write`."""
        try:
            if flush.record:
                await self._persist(flush.seq, flush.record, flush.usage, flush.events, flush.packed,
                                    on_unavailable=lambda: self._answer_unavailable(flush), started=started)
        except BaseException as exc:
            if not flush.landed:  # (once landed, only a cancelled task raises here)
                # Lost lease: stop serving at once (before these callers hear "shutting down").
                if not isinstance(exc, asyncio.CancelledError):
                    self._die(exc)
                self._write_since = None
                flush.fail()
            raise
        self._landed(flush)
        if flush.events:
            async with self.events_written:
                self.events_written.notify_all()

    def _landed(self, flush: _Flush) -> None:
        """`flush` is durable: answer its callers and start writing what was applied behind it
        (synchronous). Runs once per flush, in seq order: from storage the moment it learns
        that the write landed (`Storage.start_append`'s `on_landed`: Redis's writer thread), or
        from `_write` once the append returns."""
        if flush.landed:
            return
        flush.landed = True
        if flush.record:
            self.seq = flush.seq
            if self._write_since is not None:
                self._last_write_s = self._loop.time() - self._write_since
            if self.storage_down:
                log.warning("storage is back")
                self._set_storage_down(False)
        self._write_since = None
        for batch, results in flush.parts:
            index = 1
            for item in batch:
                size = len(item.ops)
                if not item.future.done():
                    item.future.set_result(results[index] if item.single else results[index:index + size])
                index += size
        if flush.snapshot is not None:
            self._snapshot_task = self._loop.create_task(self._write_snapshot(flush.seq, flush.snapshot))
        if self._behind is not None and self._writing_flush is flush and self._running:
            # Start the next write now, not from the flush loop, which would wake one loop
            # iteration later (behind whatever else runs meanwhile: these callers' replies,
            # applying the next Batch).
            try:
                self._write_next()
            except BaseException as exc:  # noqa: BLE001 - as the flush loop: stop serving
                self._die(exc)
        self._release_waiter()

    async def _persist(self, seq: int, record: bytes, usage: list[UsageRow], events: list[EventRow],
                       packed: list[UsageChunk], on_unavailable: Callable[[], None] | None = None,
                       started: Awaitable[None] | None = None) -> None:
        """Write one batch, retrying until it lands; new mutations get UNAVAILABLE meanwhile,
        and `on_unavailable` runs once, at the first failed attempt. `started`: the first
        attempt, begun already (`Storage.start_append`)."""
        backoff_ms = self.options.retry_backoff_min_ms
        while True:
            try:
                if started is not None:
                    attempt, started = started, None
                    await attempt
                else:
                    await self.storage.append(self.epoch, seq, record, usage, events, packed)
            except StorageUnavailable as exc:
                if not self.storage_down:
                    log.warning("storage unavailable, retrying the pending batch: %s", exc)
                    self._set_storage_down(True)
                if on_unavailable is not None:
                    on_unavailable()
                    on_unavailable = None
                await asyncio.sleep(backoff_ms / 1000)
                backoff_ms = min(backoff_ms * 2, self.options.retry_backoff_max_ms)
                continue
            except Fenced:
                raise
            return

    def _set_storage_down(self, down: bool) -> None:
        self.storage_down = down
        if self.on_health_change is not None:
            self.on_health_change(not down)

    async def _write_snapshot(self, seq: int, blob: bytes | ForkedSnapshot) -> None:
        try:
            if isinstance(blob, ForkedSnapshot):
                blob = await blob.result()
            await self.storage.write_snapshot(self.epoch, seq, blob)
        except Fenced as exc:
            self._die(exc)
        except Exception as exc:  # the journal still has everything; try again later (a
            # SnapshotFailed child included), backing off: each attempt serializes the whole
            # state, so a snapshot that keeps failing must not be retried at every flush.
            self.snapshot_failures += 1
            delay_s = min(SNAPSHOT_RETRY_MIN_S * 2 ** (self.snapshot_failures - 1), SNAPSHOT_RETRY_MAX_S)
            self._snapshot_retry_ns = self.now_ns() + int(delay_s * 1e9)
            log.warning("snapshot at seq %d failed (%d in a row; next attempt in %g s at the earliest): %s",
                        seq, self.snapshot_failures, delay_s, exc)
            self._snapshot_seq = min(self._snapshot_seq, seq - self.options.snapshot_every_records)
        else:
            self.snapshot_failures = 0
            self._snapshot_retry_ns = 0

    # ------------------------------------------------------------------ background duties

    async def _sweep_loop(self) -> None:
        """Expire holds and lots and purge old idempotency records even when nobody calls."""
        interval = self.options.sweep_interval_ms / 1000
        while self._running:
            await asyncio.sleep(interval)
            if not self._pending and self._idle.is_set() and self._accepting and not self.storage_down:
                future = asyncio.get_running_loop().create_future()
                self._pending.append(_Pending([(C.OP_EXPIRE, 0)], None, future, True))
                self._queued_ops += 1
                self._wake.set()

    async def _lease_loop(self) -> None:
        interval = self.options.lease_ttl_ms / 3000
        while self._running:
            await asyncio.sleep(interval)
            try:
                await self.storage.renew_lease(self.epoch, self.options.lease_ttl_ms)
            except StorageUnavailable as exc:
                log.warning("lease renewal failed (storage unavailable): %s", exc)
                # An idle server would otherwise report SERVING (and queue the next mutation
                # behind a write that cannot land) until some client's call failed on it.
                if not self.storage_down:
                    self._set_storage_down(True)
                continue
            except Fenced as exc:
                self._die(exc)
                return
            if self.storage_down and self._idle.is_set() and not self._pending:
                # No batch is being retried (that one clears the flag when it lands).
                log.warning("storage is back")
                self._set_storage_down(False)

    def _fail_queued(self, error: type[QuotaError], keep_early: bool = False) -> None:
        """Answer every submission still queued (never applied) with `error`, and drop them;
        `keep_early`: except fail-open ones, which are answered as soon as they are applied."""
        kept = [item for item in self._pending if item.early] if keep_early else []
        _fail([item for item in self._pending if not item.early] if kept else self._pending, error)
        self._pending[:] = kept
        self._queued_ops = sum(len(item.ops) for item in kept)

    def _answer_unavailable(self, flush: _Flush) -> None:
        """The write of `flush` failed for want of storage and will be retried until it lands.
        Its callers, those of what is applied behind it, and those queued are answered
        UNAVAILABLE now instead of waiting for storage to come back (a call may have no
        deadline): each may retry with the same id, which is answered with the original
        result once the write has landed (or applied afresh if it was only queued). Fail-open
        calls queued meanwhile stay queued: they are applied, and answered, at once."""
        flush.fail(Unavailable)
        if self._behind is not None:
            self._behind.fail(Unavailable)
        self._fail_queued(Unavailable, keep_early=True)

    def _die(self, exc: BaseException) -> None:
        if self.fatal is not None:
            return
        self.fatal = exc
        self._accepting = False
        log.critical("engine stopped serving: %r", exc)
        self._fail_queued(ShuttingDown)
        if self.on_fatal is not None:
            self.on_fatal(exc)


def _encode_attrs(attrs: dict[str, str]) -> bytes:
    return json.dumps(attrs, separators=(",", ":"), sort_keys=True).encode()

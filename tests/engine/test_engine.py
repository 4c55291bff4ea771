"""The engine's write path on a real SQLite file, with faults injected around it.

Goals: group commit (one storage write per batch, ops applied in order), acknowledgement only
after the write, UNAVAILABLE for new mutations while a write is failing and full recovery after,
RESOURCE_EXHAUSTED when the queue is full, and no serving after the lease is lost.
"""

from __future__ import annotations

import asyncio

import pytest

from _fastledger import codes as C
from quota_server.engine import Engine, EngineOptions
from quota_server.errors import Overloaded, ShuttingDown, Unavailable
from quota_server.storage.base import Fenced, StorageUnavailable
from quota_server.storage.sqlite import SqliteStorage

SECOND = 1_000_000_000


class ManualClock:
    def __init__(self, now_ns: int = 1_700_000_000 * SECOND) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns


class FaultyStorage:
    """Delegates to a real storage; appends fail while `failing` is set, or block on `gate`."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.failing: type[Exception] | None = None
        self.gate: asyncio.Event | None = None
        self.appends: list[int] = []
        self.starts: list[int] = []  # seqs whose start_append was called, in order
        self.snapshot_failing = False
        self.snapshot_calls: list[int] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def append(self, epoch, seq, record, usage, events, packed=()):
        if self.gate is not None:
            await self.gate.wait()
        if self.failing is not None:
            raise self.failing("injected")
        await self.inner.append(epoch, seq, record, usage, events, packed)
        self.appends.append(seq)

    def start_append(self, epoch, seq, record, usage, events, packed=(), *, on_landed=None):
        self.starts.append(seq)
        return self.append(epoch, seq, record, usage, events, packed)  # not the inner's: faults apply

    async def write_snapshot(self, epoch, seq, blob):
        self.snapshot_calls.append(seq)
        if self.snapshot_failing:
            raise OSError("injected: no space left on device")
        await self.inner.write_snapshot(epoch, seq, blob)


async def _engine(tmp_path, **options) -> tuple[Engine, FaultyStorage, ManualClock]:
    inner = SqliteStorage(str(tmp_path / "q.db"))
    await inner.open()
    storage = FaultyStorage(inner)
    clock = ManualClock()
    opts = EngineOptions(sweep_interval_ms=3_600_000, lease_ttl_ms=60_000, retry_backoff_min_ms=1,
                         retry_backoff_max_ms=5, **options)
    engine = Engine(storage=storage, owner="test", options=opts, clock_ns=clock)
    await engine.start()
    return engine, storage, clock


def _upsert(account_id: str) -> tuple:
    return (C.OP_UPSERT, account_id, "default", 0, None, None, None)


def _grant(account_id: str, grant_id: str, amount: int) -> tuple:
    return (C.OP_GRANT, account_id, grant_id, 1, amount, C.LOT_PURCHASED, 0, 0)


def _charge(account_id: str, charge_id: str, amount: int) -> tuple:
    return (C.OP_CHARGE, account_id, charge_id, 7, amount, True, ())


async def test_concurrent_ops_share_one_write_and_apply_in_order(tmp_path):
    """Ops submitted while a write is in flight go out together in the next single write."""
    engine, storage, _ = await _engine(tmp_path)
    await engine.submit(_upsert("a"))
    await engine.submit(_grant("a", "g", 10))
    storage.gate = asyncio.Event()
    first = asyncio.ensure_future(engine.submit(_charge("a", "c0", 1)))
    await asyncio.sleep(0.01)  # let the flush start and block in the write
    rest = [asyncio.ensure_future(engine.submit(_charge("a", f"c{i}", 1))) for i in range(1, 10)]
    await asyncio.sleep(0.01)
    assert not first.done() and not any(t.done() for t in rest), "nothing is acknowledged before the write"
    writes_before = len(storage.appends)
    storage.gate.set()
    results = await asyncio.gather(first, *rest)
    assert [r[3] for r in results] == list(range(9, -1, -1))  # available_after, in submission order
    assert len(storage.appends) - writes_before == 2  # the blocked one, then all nine together
    await engine.stop()


async def _blocked_behind_a_write(tmp_path, *, eager: int, credit: int, first_amount: int):
    """An engine whose account "a" has `credit`, with charge c0 of `first_amount` applied and
    its write blocked on `storage.gate`: (engine, storage, c0's pending answer)."""
    engine, storage, _ = await _engine(tmp_path, eager_apply_min_ops=eager)
    await engine.submit(_upsert("a"))
    await engine.submit(_grant("a", "g", credit))
    storage.gate = asyncio.Event()
    first = asyncio.ensure_future(engine.submit(_charge("a", "c0", first_amount)))
    await asyncio.sleep(0.01)  # applied, its write blocked
    return engine, storage, first


async def test_a_big_group_is_applied_during_the_write_and_small_calls_wait(tmp_path):
    """While a write is in flight, a few small calls wait for it (they then share one flush),
    but once eager_apply_min_ops are queued they are applied at once, behind the write, and
    answered only after it and their own write have landed."""
    engine, storage, first = await _blocked_behind_a_write(tmp_path, eager=8, credit=1000, first_amount=1)
    small = [asyncio.ensure_future(engine.submit(_charge("a", f"s{i}", 1))) for i in range(3)]
    await asyncio.sleep(0.01)
    assert not engine.ledger.has_charge("a", "s0"), "3 < 8 queued ops: they wait for the write"
    group = asyncio.ensure_future(engine.submit_many([(_charge("a", f"b{i}", 1), None) for i in range(6)]))
    await asyncio.sleep(0.01)
    assert engine.ledger.has_charge("a", "b5") and engine.ledger.has_charge("a", "s0"), "9 >= 8: applied now"
    assert not first.done() and not group.done() and not any(t.done() for t in small)
    writes_before = len(storage.appends)
    storage.gate.set()
    await asyncio.gather(first, group, *small)
    assert len(storage.appends) - writes_before == 2  # the blocked one, then the nine together
    await engine.stop()


async def test_a_landed_write_starts_the_next_before_its_callers_resume(tmp_path):
    """What was applied behind a write is handed to storage (start_append) as soon as that write
    lands, in the same step: before the landed write's own callers resume, and so before
    anything else the loop runs meanwhile."""
    engine, storage, _ = await _engine(tmp_path, eager_apply_min_ops=4)
    await engine.submit(_upsert("a"))
    await engine.submit(_grant("a", "g", 1000))
    storage.gate = asyncio.Event()
    seen_by_c0: list[list[int]] = []

    async def c0() -> None:
        await engine.submit(_charge("a", "c0", 1))
        seen_by_c0.append(list(storage.starts))

    first = asyncio.ensure_future(c0())
    await asyncio.sleep(0.01)  # applied, its write blocked
    blocked = storage.starts[-1]
    group = asyncio.ensure_future(engine.submit_many([(_charge("a", f"b{i}", 1), None) for i in range(5)]))
    await asyncio.sleep(0.01)
    assert engine.ledger.has_charge("a", "b4") and storage.starts[-1] == blocked  # applied behind it
    storage.gate.set()
    await asyncio.gather(first, group)
    assert seen_by_c0 == [storage.starts[:storage.starts.index(blocked) + 2]]
    assert storage.starts[-1] == blocked + 1
    await engine.stop()


async def test_a_write_that_storage_reports_landed_is_answered_before_its_append_returns(tmp_path):
    """start_append's on_landed (Redis's writer thread calls it from its eventfd callback)
    answers the flush's callers, marks its seq durable and starts the next write at once, while
    the append's awaitable has yet to finish; when it does, nothing is answered or written twice."""
    engine, storage, _ = await _engine(tmp_path, eager_apply_min_ops=4)
    await engine.submit(_upsert("a"))
    await engine.submit(_grant("a", "g", 1000))
    hold_back = asyncio.Event()
    landed_calls: list[int] = []

    def start_append(epoch, seq, record, usage, events, packed=(), *, on_landed=None):
        storage.starts.append(seq)

        async def append() -> None:
            await storage.append(epoch, seq, record, usage, events, packed)
            if on_landed is not None and seq == blocked:
                landed_calls.append(seq)
                asyncio.get_running_loop().call_soon(on_landed)
                await hold_back.wait()  # the awaitable finishes much later
        return append()

    storage.start_append = start_append
    storage.gate = asyncio.Event()
    first = asyncio.ensure_future(engine.submit(_charge("a", "c0", 1)))
    await asyncio.sleep(0.01)
    blocked = storage.starts[-1]
    group = asyncio.ensure_future(engine.submit_many([(_charge("a", f"b{i}", 1), None) for i in range(5)]))
    await asyncio.sleep(0.01)
    storage.gate.set()
    assert (await asyncio.wait_for(first, 5))[3] == 999  # answered while its append has not returned
    assert engine.seq >= blocked and storage.starts[-1] == blocked + 1  # the next write has started
    assert [r[3] for r in await asyncio.wait_for(group, 5)] == [998, 997, 996, 995, 994]
    hold_back.set()
    await asyncio.sleep(0.01)
    assert landed_calls == [blocked] and engine.seq == blocked + 1
    assert storage.appends[-2:] == [blocked, blocked + 1]  # each written once
    assert (await engine.submit(_charge("a", "c1", 1)))[3] == 993
    await engine.stop()


async def test_a_fail_open_call_queued_as_a_write_first_fails_is_still_answered(tmp_path):
    """Storage known down: a fail-open call is answered once applied. One queued at the very
    moment the write in flight fails for the first time (which answers that write's callers
    and the queued ones UNAVAILABLE) stays queued and is answered all the same (a black-box
    run saw such a call refused)."""
    engine, storage, _ = await _engine(tmp_path)
    await engine.submit(_upsert("a"))
    engine.storage_down = True  # as the lease loop leaves it when Redis dies
    storage.failing = StorageUnavailable
    storage.gate = asyncio.Event()
    first = await asyncio.wait_for(engine.submit(_upsert("b"), fail_open=True), 5)
    assert first[0] == C.OK  # answered once applied; its write waits at the gate, then fails
    storage.gate.set()  # that write's first attempt runs next, and fails
    queued = engine._enqueue([_upsert("c")], None, True, True)  # as submit(fail_open=True) queues it
    assert (await asyncio.wait_for(queued, 5))[0] == C.OK
    storage.failing = None
    await engine.stop()


async def test_groups_applied_behind_a_write_share_the_next_record(tmp_path):
    """Groups that arrive one after another while a write is in flight are each applied at
    once, into one open flush, and written together as one record when that write has landed;
    a restart replays that record to the same state."""
    engine, storage, first = await _blocked_behind_a_write(tmp_path, eager=4, credit=1000, first_amount=1)
    groups = []
    for g in range(3):
        groups.append(asyncio.ensure_future(
            engine.submit_many([(_charge("a", f"g{g}-{i}", 1), None) for i in range(5)])))
        await asyncio.sleep(0.01)
        assert engine.ledger.has_charge("a", f"g{g}-4"), "applied at once, behind the write"
    assert not first.done() and not any(g.done() for g in groups)
    writes_before = len(storage.appends)
    storage.gate.set()
    results = await asyncio.gather(first, *groups)
    assert len(storage.appends) - writes_before == 2  # the blocked one, then the three groups together
    assert [r[3] for group in results[1:] for r in group] == list(range(998, 983, -1))
    now = engine.now_ns()
    before = engine.ledger.account_view("a", now)
    await engine.stop()
    await engine.storage.close()
    again, _, _ = await _engine(tmp_path)
    assert again.ledger.account_view("a", now) == before
    assert (await again.submit(_charge("a", "g1-2", 1)))[3] == 991  # replayed from its record
    await again.stop()


async def test_a_retry_of_an_op_still_being_written_waits_for_that_write(tmp_path):
    """The next batch is applied while the previous one is written; a retry in it (answered
    from the core's idempotency record of an op not yet durable) is not acknowledged before
    the original's write lands, and neither is anything else in it."""
    engine, storage, original = await _blocked_behind_a_write(tmp_path, eager=1, credit=10, first_amount=4)
    retry = asyncio.ensure_future(engine.submit(_charge("a", "c0", 4)))
    other = asyncio.ensure_future(engine.submit(_charge("a", "c1", 1)))
    await asyncio.sleep(0.01)
    assert engine.ledger.has_charge("a", "c1"), "the next batch was applied during the write"
    assert not original.done() and not retry.done() and not other.done()
    storage.gate.set()
    assert await original == await retry == (C.OK, C.DECISION_OK, 4, 6, 0, "")
    assert (await other)[3] == 5
    await engine.stop()


async def _storage_back(engine: Engine) -> None:
    """Wait (at most 2 s) for the retried write to land and the engine to leave storage_down."""
    for _ in range(400):
        await asyncio.sleep(0.005)
        if not engine.storage_down:
            break
    assert not engine.storage_down


async def test_storage_outage_answers_unavailable_then_recovers(tmp_path):
    """When the pending batch cannot be written, its caller is answered UNAVAILABLE at the first
    failed attempt (it does not wait for storage to come back) and new mutations get UNAVAILABLE,
    not applied; the batch is retried, and once storage returns it lands: the caller's retry with
    the same id gets the original result."""
    engine, storage, _ = await _engine(tmp_path)
    await engine.submit(_upsert("a"))
    await engine.submit(_grant("a", "g", 10))
    storage.failing = StorageUnavailable
    pending = asyncio.ensure_future(engine.submit(_charge("a", "c1", 3)))
    with pytest.raises(Unavailable):
        await asyncio.wait_for(pending, 5)
    assert engine.storage_down
    with pytest.raises(Unavailable):
        await engine.submit(_charge("a", "c2", 3))
    storage.failing = None
    await _storage_back(engine)
    result = await asyncio.wait_for(engine.submit(_charge("a", "c1", 3)), 5)
    assert result == (C.OK, C.DECISION_OK, 3, 7, 0, "")
    # c2 was never applied: it can be charged now, once.
    assert (await engine.submit(_charge("a", "c2", 3)))[3] == 4
    await engine.stop()


async def test_an_outage_answers_the_write_in_flight_what_is_applied_behind_it_and_the_queue(tmp_path):
    """Goal: when the write in flight fails for want of storage, its caller, the group applied
    behind it and a call still queued are all answered UNAVAILABLE at once. After recovery the
    applied ones (the write's, the group's) are on the books and replay to the same results;
    the queued one was never applied, so its retry applies it, once."""
    engine, storage, first = await _blocked_behind_a_write(tmp_path, eager=4, credit=1000, first_amount=1)
    group = asyncio.ensure_future(engine.submit_many([(_charge("a", f"b{i}", 1), None) for i in range(4)]))
    await asyncio.sleep(0.01)
    assert engine.ledger.has_charge("a", "b3"), "4 >= eager: applied behind the write"
    queued = asyncio.ensure_future(engine.submit(_charge("a", "q", 1)))
    await asyncio.sleep(0.01)
    assert not engine.ledger.has_charge("a", "q"), "1 < eager: queued"
    storage.failing = StorageUnavailable
    storage.gate.set()
    for call in (first, group, queued):
        with pytest.raises(Unavailable):
            await asyncio.wait_for(call, 5)
    storage.failing = None
    await _storage_back(engine)
    assert (await engine.submit(_charge("a", "c0", 1)))[3] == 999  # the original result
    replayed = await engine.submit_many([(_charge("a", f"b{i}", 1), None) for i in range(4)])
    assert [r[3] for r in replayed] == [998, 997, 996, 995]
    assert (await engine.submit(_charge("a", "q", 1)))[3] == 994  # applied now, for the first time
    await engine.stop()


async def test_full_queue_is_refused_at_once(tmp_path):
    """A full queue answers RESOURCE_EXHAUSTED (Overloaded) immediately, never blocks."""
    engine, storage, _ = await _engine(tmp_path, max_queue=4)
    await engine.submit(_upsert("a"))
    storage.gate = asyncio.Event()
    blocked = [asyncio.ensure_future(engine.submit(_grant("a", "g0", 1)))]
    await asyncio.sleep(0.01)  # g0 is now in the (blocked) write; the queue is empty
    blocked += [asyncio.ensure_future(engine.submit(_grant("a", f"g{i}", 1))) for i in range(1, 5)]
    await asyncio.sleep(0.01)  # four waiting: the queue is full
    with pytest.raises(Overloaded):
        await engine.submit(_grant("a", "g-over", 1))
    storage.gate.set()
    await asyncio.gather(*blocked)
    await engine.stop()


async def test_lost_lease_stops_serving(tmp_path):
    """A write refused with Fenced (another owner took over) stops the engine for good."""
    engine, storage, _ = await _engine(tmp_path)
    await engine.submit(_upsert("a"))
    storage.failing = Fenced
    with pytest.raises(ShuttingDown):
        await engine.submit(_grant("a", "g", 1))
    assert engine.fatal is not None
    with pytest.raises(ShuttingDown):
        await engine.submit(_grant("a", "g2", 1))
    await engine.stop()


async def test_restart_recovers_every_acknowledged_op(tmp_path):
    """State after a restart on the same file equals the acknowledged state, snapshot or not."""
    engine, _, clock = await _engine(tmp_path, snapshot_every_records=3)
    await engine.submit(_upsert("a"))
    await engine.submit(_grant("a", "g", 100))
    for i in range(10):
        await engine.submit(_charge("a", f"c{i}", i + 1))
    before = engine.ledger.account_view("a", clock())
    await engine.stop()
    await engine.storage.close()
    again, _, _ = await _engine(tmp_path)
    assert again.ledger.account_view("a", clock()) == before
    assert before["available"] == 100 - sum(range(1, 11))
    # Idempotency records survived: a replay returns the original result and charges nothing.
    replay = await again.submit(_charge("a", "c0", 1))
    assert replay == (C.OK, C.DECISION_OK, 1, 99, 0, "")
    assert again.ledger.account_view("a", clock())["available"] == before["available"]
    await again.stop()


async def test_small_calls_arriving_one_after_another_share_one_flush(tmp_path):
    """Adaptive group commit: with no write in flight, a small batch waits up to
    flush_window_us for more; calls that arrive meanwhile go out in the same single write."""
    engine, storage, _ = await _engine(tmp_path, flush_window_us=300_000)
    calls = [asyncio.ensure_future(engine.submit(_upsert("a0")))]
    for i in range(1, 5):
        await asyncio.sleep(0.01)  # one after another, well inside the window
        calls.append(asyncio.ensure_future(engine.submit(_upsert(f"a{i}"))))
    results = await asyncio.gather(*calls)
    assert [r[0] for r in results] == [C.OK] * 5
    assert len(storage.appends) == 1, "the five calls share one write"
    assert engine.windows_run_out == 1
    await engine.stop()


async def test_without_a_window_each_call_is_flushed_at_once(tmp_path):
    engine, storage, _ = await _engine(tmp_path, flush_window_us=0)
    for i in range(5):
        await asyncio.sleep(0.01)
        await engine.submit(_upsert(f"a{i}"))
    assert len(storage.appends) == 5
    assert engine.windows_run_out == 0
    await engine.stop()


async def test_a_lone_caller_stops_waiting_for_company(tmp_path):
    """Waits that bring nothing back off: a lone caller in a loop pays the window on a few of
    its calls (the first, and the rare ones that check whether company has come), not each."""
    engine, storage, _ = await _engine(tmp_path, flush_window_us=50_000)
    for i in range(60):
        assert (await engine.submit(_upsert(f"a{i}")))[0] == C.OK
    assert len(storage.appends) == 60
    assert 1 <= engine.windows_run_out <= 2, engine.windows_run_out  # the 1st and 33rd calls
    await engine.stop()


async def test_a_few_callers_in_a_loop_stop_waiting_once_all_of_them_are_queued(tmp_path):
    """Once a whole window has shown how many calls come together (here the 3 callers), a wait
    ends as soon as that many are queued instead of running out the window."""
    engine, storage, _ = await _engine(tmp_path, flush_window_us=200_000)

    async def caller(name: str) -> None:
        for i in range(20):
            assert (await engine.submit(_upsert(f"{name}-{i}")))[0] == C.OK

    await asyncio.gather(*(caller(name) for name in ("x", "y", "z")))
    assert len(storage.appends) <= 25, "the three callers' calls mostly share writes"
    assert engine.windows_run_out <= 3, engine.windows_run_out  # 60 calls: relearning every 16th wait
    await engine.stop()


async def test_a_large_group_never_waits_for_company(tmp_path):
    engine, storage, _ = await _engine(tmp_path, flush_window_us=30_000_000, eager_apply_min_ops=64)
    results = await engine.submit_many([(_upsert(f"a{i}"), None) for i in range(100)])
    assert [r[0] for r in results] == [C.OK] * 100
    assert engine.windows_run_out == 0
    await engine.stop()


async def test_a_wait_ends_once_enough_ops_are_queued(tmp_path):
    """However long the window, a batch is not held back once LINGER_ENOUGH_OPS are queued."""
    from quota_server.engine import LINGER_ENOUGH_OPS

    engine, storage, _ = await _engine(tmp_path, flush_window_us=30_000_000)
    calls = []
    for i in range(LINGER_ENOUGH_OPS):
        calls.append(asyncio.ensure_future(engine.submit(_upsert(f"a{i}"))))
        await asyncio.sleep(0.005)
    results = await asyncio.wait_for(asyncio.gather(*calls), timeout=20)
    assert [r[0] for r in results] == [C.OK] * LINGER_ENOUGH_OPS
    assert len(storage.appends) == 1 and engine.windows_run_out == 0
    await engine.stop()


async def test_a_write_that_lands_does_not_cut_the_next_wait_for_company_short(tmp_path):
    """A write that finishes in its own task (SQLite's: no landing callback) lands, the flush
    loop goes on to wait for company for the next small batch, and the write task's end must
    not end that wait: the wait belongs to the next batch. (Until session 16 the task's done
    callback released whatever wait was current, so behind SQLite's writes no wait ever ran
    and flushes carried half the ops they did on memory://.)"""
    from quota_server.engine import LINGER_ENOUGH_OPS

    engine, storage, _ = await _engine(tmp_path, flush_window_us=30_000_000)
    storage.gate = asyncio.Event()
    first = [asyncio.ensure_future(engine.submit(_upsert(f"a{i}"))) for i in range(LINGER_ENOUGH_OPS)]
    for _ in range(10):  # the first batch is written; its write waits at the gate
        await asyncio.sleep(0)
    assert storage.starts == [1] and not storage.appends
    late = asyncio.ensure_future(engine.submit(_upsert("late")))
    await asyncio.sleep(0)
    storage.gate.set()
    assert [r[0] for r in await asyncio.gather(*first)] == [C.OK] * LINGER_ENOUGH_OPS
    for _ in range(20):
        await asyncio.sleep(0)
    assert not late.done(), "the lone late call waits for company (the window is 30 s)"
    assert storage.starts == [1]
    # Company comes: once enough ops are queued the wait ends, and they share one write.
    rest = [asyncio.ensure_future(engine.submit(_upsert(f"b{i}"))) for i in range(LINGER_ENOUGH_OPS - 1)]
    results = await asyncio.wait_for(asyncio.gather(late, *rest), timeout=20)
    assert [r[0] for r in results] == [C.OK] * LINGER_ENOUGH_OPS
    assert storage.starts == [1, 2] and engine.windows_run_out == 0
    await engine.stop()


async def test_no_waiting_for_company_behind_slow_writes(tmp_path):
    """Writes that take the window or longer gather ops behind them by themselves: once one
    has, no small batch waits for more."""
    engine, storage, _ = await _engine(tmp_path, flush_window_us=10_000)
    real_append = storage.inner.append

    async def slow_append(*args):
        await asyncio.sleep(0.03)
        await real_append(*args)

    storage.inner.append = slow_append

    async def caller(name: str) -> None:
        for i in range(40):  # about 40 flushes: past two of the relearning waits
            assert (await engine.submit(_upsert(f"{name}-{i}")))[0] == C.OK

    await asyncio.gather(*(caller(name) for name in ("x", "y", "z")))
    assert engine.windows_run_out <= 1  # only, perhaps, the very first batch's (no write yet)
    await engine.stop()


async def test_observe_sees_accounts_with_usage_and_its_failure_does_not_stop_writes(tmp_path):
    """The observe hook gets the accounts that recorded usage in a batch, and its events go out
    with that batch; a hook that raises is logged and the batch is still applied and written."""
    from quota_server.storage.base import UsageRow

    engine, storage, _ = await _engine(tmp_path)
    seen: list[set[str]] = []

    def observe(touched, now_ms):
        seen.append(set(touched))
        if "boom" in touched:
            raise RuntimeError("a bug in a notification")
        return [("test.observed", account_id, {}) for account_id in sorted(touched)]

    def usage_of(account_id):
        def derive(op, r, fresh, now_ms):
            return [UsageRow(account_id=account_id, at_ms=now_ms, payload=b"{}")], []
        return derive

    engine.observe = observe
    try:
        for account_id in ("a", "boom"):
            await engine.submit_many([(_upsert(account_id), None), (_grant(account_id, "g", 10), None)])
        assert seen == []  # no usage, no call
        assert (await engine.submit(_charge("a", "c1", 1), usage_of("a")))[0] == C.OK
        assert (await engine.submit(_charge("boom", "c1", 1), usage_of("boom")))[0] == C.OK
        assert seen == [{"a"}, {"boom"}]
        assert engine.fatal is None and engine.ledger.account_view("boom", engine.now_ns())["available"] == 9
        events = await storage.read_events(0, 100)
        assert [(e.type, e.account_id) for e in events if e.type == "test.observed"] == [("test.observed", "a")]
    finally:
        await engine.stop()


async def test_a_failing_snapshot_is_retried_with_backoff_not_at_every_flush(tmp_path):
    """Each attempt serializes the whole state: after a failure the next waits 1 s, then 2 s,
    4 s... (engine clock), while every batch is still written; one success resets the wait."""
    engine, storage, clock = await _engine(tmp_path, snapshot_every_records=1, snapshot_fork=False)
    storage.snapshot_failing = True
    n = 0

    async def flushes(count: int) -> None:
        nonlocal n
        for _ in range(count):
            n += 1
            assert (await engine.submit(_upsert(f"a{n}")))[0] == C.OK
            if engine._snapshot_task is not None:
                await engine._snapshot_task

    try:
        await flushes(10)
        assert len(storage.snapshot_calls) == 1 and engine.snapshot_failures == 1
        clock.now_ns += SECOND // 2
        await flushes(5)
        assert len(storage.snapshot_calls) == 1       # still inside the first second
        clock.now_ns += SECOND // 2
        await flushes(5)
        assert len(storage.snapshot_calls) == 2 and engine.snapshot_failures == 2
        clock.now_ns += SECOND                          # the wait is 2 s now
        await flushes(5)
        assert len(storage.snapshot_calls) == 2
        clock.now_ns += SECOND
        storage.snapshot_failing = False
        await flushes(1)
        assert len(storage.snapshot_calls) == 3 and engine.snapshot_failures == 0
        # Landed: back to a snapshot every record, no waiting.
        await flushes(3)
        assert len(storage.snapshot_calls) == 6
        assert len(storage.appends) == n                # no batch waited for a snapshot
    finally:
        await engine.stop()
    recovered = await storage.inner.load()
    assert recovered.snapshot_seq == storage.snapshot_calls[-1]
    await storage.inner.close()

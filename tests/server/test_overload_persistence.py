"""Back-pressure and durability of the in-process server: RESOURCE_EXHAUSTED / OVERLOADED when
the engine's queue is full, and every balance, hold, idempotency record and usage record still
there after a restart on the same SQLite file."""
from __future__ import annotations

import asyncio

import grpc
import pytest
from quota.v1 import admin_service_pb2 as apb
from quota.v1 import quota_service_pb2 as pb
from quota.v1.enums_pb2 import DECISION_OK as OK

from tests.support.config import TOKENS_CAPACITY, build_config, config_data
from tests.support.inproc import InProcessServer
from tests.support.status import fails
from tests.support.wait import eventually, wait_until

MAX_QUEUE = 3


async def _is(value, expected) -> bool:
    return await value == expected


async def test_full_queue_is_resource_exhausted_overloaded_and_changes_nothing(tmp_path, manual_clock):
    """Goal: while a storage write is stalled, calls queue up to [server] max_queue; the next one is
    refused at once with RESOURCE_EXHAUSTED / OVERLOADED (not a business denial), and was not
    applied: once the write completes the queued calls succeed and the refused id can be retried."""
    srv = InProcessServer(build_config(config_data(tmp_path / "q.db", server={"max_queue": MAX_QUEUE})), manual_clock)
    await srv.start()
    try:
        await srv.open_account("acct", grant=100)
        storage = srv.server.storage
        real_append = storage.append
        gate, stalled = asyncio.Event(), asyncio.Event()

        async def stalled_append(epoch, seq, record, usage, events, packed=()):
            if usage or packed:  # the batch that carries c0 (background sweeps write no usage rows)
                stalled.set()
                await gate.wait()
            return await real_append(epoch, seq, record, usage, events, packed)

        storage.append = stalled_append
        engine = srv.engine
        first = asyncio.ensure_future(srv.quota.Charge(pb.ChargeRequest(account_id="acct", charge_id="c0", amount=1)))
        await asyncio.wait_for(stalled.wait(), 10)  # c0's batch is in flight and cannot land
        queued = []
        while len(queued) < MAX_QUEUE:
            queued.append(asyncio.ensure_future(srv.quota.Charge(
                pb.ChargeRequest(account_id="acct", charge_id=f"c{len(queued) + 1}", amount=1))))
            await wait_until(lambda: len(engine._pending) == len(queued), what="the call to be queued")
        failure = await fails(srv.quota.Charge(pb.ChargeRequest(account_id="acct", charge_id="over", amount=1)))
        assert (failure.code, failure.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED")
        storage.append = real_append
        gate.set()
        results = await asyncio.gather(first, *queued)
        assert all(r.decision == OK for r in results)
        assert await srv.available("acct") == 100 - len(results)
        retry = await srv.quota.Charge(pb.ChargeRequest(account_id="acct", charge_id="over", amount=1))
        assert (retry.decision, retry.amount_charged) == (OK, 1)
        assert await srv.available("acct") == 100 - len(results) - 1
    finally:
        await srv.stop()


@pytest.mark.parametrize("snapshot_every_records", [10_000, 1], ids=["journal-only", "snapshot-each-record"])
async def test_restart_on_the_same_data_keeps_balances_holds_and_idempotency(tmp_path, manual_clock,
                                                                            snapshot_every_records):
    """Goal: after a graceful stop and a new server on the same SQLite file (recovering from the
    journal, or from snapshots), balances and lots, open holds (still committable), settled holds,
    charge/reserve/commit/grant idempotency records, buckets and usage records are all intact."""
    data = config_data(tmp_path / "q.db", storage={"snapshot_every_records": snapshot_every_records})
    srv = InProcessServer(build_config(data), manual_clock)
    await srv.start()
    try:
        await srv.open_account("acct", grant=1_000)
        await srv.open_account("free-1", "free")
        await srv.open_account("payg-1", "payg")
        charge_req = pb.ChargeRequest(account_id="acct", charge_id="c1", action="image.generate")
        charge = await srv.quota.Charge(charge_req)
        open_req = pb.ReserveRequest(account_id="acct", reservation_id="open", amount=100, ttl_ms=600_000)
        opened = await srv.quota.Reserve(open_req)
        await srv.quota.Reserve(pb.ReserveRequest(account_id="acct", reservation_id="done", amount=50))
        commit_req = pb.CommitRequest(account_id="acct", reservation_id="done", amount=20)
        committed = await srv.quota.Commit(commit_req)
        grant_req = apb.GrantRequest(account_id="acct", grant_id="g2", amount=7)
        granted = await srv.admin.Grant(grant_req)
        await srv.quota.Charge(pb.ChargeRequest(account_id="free-1", charge_id="f1", action="doc.summarize"))
        await srv.quota.Charge(pb.ChargeRequest(account_id="payg-1", charge_id="p1", amount=900))
        before = {a: await srv.balance(a) for a in ("acct", "free-1", "payg-1")}
        usage_before = {a: await srv.usage(a) for a in ("acct", "free-1", "payg-1")}

        await srv.restart()

        for account, balance in before.items():
            assert await srv.balance(account) == balance
            assert await srv.usage(account) == usage_before[account]
        assert (before["acct"].held, before["acct"].available) == (100, 1_000 - 5 - 20 + 7 - 100)
        assert (before["payg-1"].balance, before["payg-1"].available) == (-900, 100)
        assert await srv.quota.Charge(charge_req) == charge
        assert await srv.quota.Reserve(open_req) == opened
        assert await srv.quota.Commit(commit_req) == committed
        assert await srv.admin.Grant(grant_req) == granted
        reused = await fails(srv.quota.Charge(pb.ChargeRequest(account_id="acct", charge_id="c1", amount=6)))
        assert reused.reason == "IDEMPOTENCY_KEY_REUSED"
        assert await srv.balance("acct") == before["acct"]
        settle = await srv.quota.Commit(pb.CommitRequest(account_id="acct", reservation_id="open", amount=60))
        assert (settle.amount_charged, settle.amount_released, settle.late, settle.available_after) == (
            60, 40, False, before["acct"].available + 40)
        limits = {lim.name: lim.remaining for lim in (await srv.balance("free-1")).limits}
        assert limits == {"requests_per_minute": 9, "input_tokens_per_minute": TOKENS_CAPACITY}
        assert len(await srv.usage("acct")) == len(usage_before["acct"]) + 1
    finally:
        await srv.stop()


async def test_a_hold_that_expires_while_the_server_is_down_is_expired_after_restart(tmp_path, manual_clock):
    """Goal: holds keep their expiry across a restart: one that ran out while the server was down is
    released on recovery and its commit is late."""
    srv = InProcessServer(build_config(config_data(tmp_path / "q.db")), manual_clock)
    await srv.start()
    try:
        await srv.open_account("acct", grant=100)
        await srv.quota.Reserve(pb.ReserveRequest(account_id="acct", reservation_id="r1", amount=40, ttl_ms=5_000))
        await srv.stop()
        manual_clock.advance_ms(5_000)
        await srv.start()
        await srv.advance(0)
        b = await srv.balance("acct")
        assert (b.held, b.available) == (0, 100)
        late = await srv.quota.Commit(pb.CommitRequest(account_id="acct", reservation_id="r1"))
        assert (late.amount_charged, late.late, late.available_after) == (40, True, 60)
    finally:
        await srv.stop()


async def test_storage_outage_is_unavailable_and_the_pending_write_lands_when_it_is_back(tmp_path, manual_clock):
    """Goal: while storage cannot persist, the batch in flight is retried and its caller is
    answered UNAVAILABLE / STORAGE_UNAVAILABLE (not acknowledged, and not left waiting), new
    mutations are refused the same without being applied, and health says NOT_SERVING; when
    storage is back the batch lands (the caller's retry gets the original result), health is
    SERVING again, and the refused call retried with the same id succeeds once."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from quota_server.storage.base import StorageUnavailable

    srv = InProcessServer(build_config(config_data(tmp_path / "q.db")), manual_clock)
    await srv.start()
    try:
        await srv.open_account("acct", grant=100)
        storage = srv.server.storage
        real_append = storage.append
        failures = []

        async def failing_append(epoch, seq, record, usage, events, packed=()):
            failures.append(seq)
            raise StorageUnavailable("injected outage")

        health = health_pb2_grpc.HealthStub(srv.channel)

        async def status():
            return (await health.Check(health_pb2.HealthCheckRequest(service=""))).status

        storage.append = failing_append
        waiting = asyncio.ensure_future(srv.quota.Charge(pb.ChargeRequest(account_id="acct", charge_id="c1", amount=10)))
        await wait_until(lambda: srv.engine.storage_down, what="the engine to see the outage")
        failure = await fails(srv.quota.Charge(pb.ChargeRequest(account_id="acct", charge_id="c2", amount=20)))
        assert (failure.code, failure.reason) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE")
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        await eventually(lambda: _is(status(), not_serving), what="health NOT_SERVING during the outage")
        unacknowledged = await fails(asyncio.wait_for(waiting, 10))
        assert (unacknowledged.code, unacknowledged.reason) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE")
        storage.append = real_append
        await wait_until(lambda: not srv.engine.storage_down, what="storage to be back")
        first = await srv.quota.Charge(pb.ChargeRequest(account_id="acct", charge_id="c1", amount=10))
        assert (first.decision, first.amount_charged, first.available_after) == (OK, 10, 90)
        assert len(failures) >= 1
        await eventually(lambda: _is(status(), serving), what="health SERVING after the outage")
        retried = await srv.quota.Charge(pb.ChargeRequest(account_id="acct", charge_id="c2", amount=20))
        assert (retried.decision, retried.amount_charged, retried.available_after) == (OK, 20, 70)
        assert [r.charge_id for r in await srv.usage("acct")] == ["c1", "c2"]
    finally:
        await srv.stop()


async def test_idempotency_results_are_kept_for_the_retention_period(server):
    """Goal: a charge replayed just before [defaults] idempotency_retention_ms (24 h) has passed still
    returns the original result and charges nothing."""
    await server.open_account("acct", grant=100)
    request = pb.ChargeRequest(account_id="acct", charge_id="c1", amount=10)
    first = await server.quota.Charge(request)
    await server.advance(86_400_000 - 1)
    assert await server.quota.Charge(request) == first
    assert await server.available("acct") == 90

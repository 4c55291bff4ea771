"""The asyncio client: same behaviour as the blocking one, awaited."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from scripted import Fail, ScriptedServer, Stream, hang_until_cancelled

from quota.v1 import admin_service_pb2 as admin_pb
from quota.v1 import quota_service_pb2 as pb
from quota_client import (
    AlreadyExists,
    AsyncQuotaClient,
    DeadlineExceeded,
    Decision,
    Denied,
    ops,
)

HELD = pb.ReserveResponse(decision=1, amount_held=100, expires_at_ms=1_000)


async def test_retries_with_the_same_reservation_id(
    aclient: AsyncQuotaClient, server: ScriptedServer, sleeps: list[float]
) -> None:
    """UNAVAILABLE twice, then success: one id, two awaited backoffs."""
    server.script(
        "Reserve", Fail(grpc.StatusCode.UNAVAILABLE), Fail(grpc.StatusCode.UNAVAILABLE), HELD
    )
    result = await aclient.reserve("acct-1", amount=100)
    ids = {r.reservation_id for r in server.requests("Reserve")}
    assert ids == {result.reservation_id} and len(server.requests("Reserve")) == 3
    assert sleeps == [0.05, 0.1]


async def test_error_info_is_parsed(aclient: AsyncQuotaClient, server: ScriptedServer) -> None:
    """AioRpcError details give the same typed error and reason."""
    server.script(
        "Charge",
        Fail(grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED", metadata={"id": "c-1"}),
    )
    with pytest.raises(AlreadyExists) as caught:
        await aclient.charge("acct-1", charge_id="c-1", amount=2)
    assert caught.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert caught.value.metadata == {"id": "c-1"}
    assert len(server.requests("Charge")) == 1


async def test_deadline_is_retried_then_raised(
    aclient: AsyncQuotaClient, server: ScriptedServer, sleeps: list[float]
) -> None:
    """A hanging server exhausts each attempt's deadline."""
    server.script("GetBalance", *[hang_until_cancelled] * 3)
    with pytest.raises(DeadlineExceeded):
        await aclient.get_balance("acct-1", timeout=0.05)
    assert len(server.requests("GetBalance")) == 3 and sleeps == [0.05, 0.1]


async def test_api_key_is_sent(aclient: AsyncQuotaClient, server: ScriptedServer) -> None:
    """The bearer token goes with every call."""
    server.script("Check", pb.CheckResponse(decision=1))
    await aclient.check("acct-1", amount=1)
    assert server.calls["Check"][0].metadata["authorization"] == "Bearer k-123"


async def test_denial_value_and_opt_in_raise(
    aclient: AsyncQuotaClient, server: ScriptedServer
) -> None:
    """Denied is raised only when asked."""
    denial = pb.ChargeResponse(decision=2, available_after=1)
    server.script("Charge", denial, denial)
    assert (await aclient.charge("acct-1", amount=5)).decision is Decision.INSUFFICIENT_CREDITS
    with pytest.raises(Denied):
        await aclient.charge("acct-1", amount=5, raise_on_denial=True)


async def test_reservation_commits_on_exit(
    aclient: AsyncQuotaClient, server: ScriptedServer
) -> None:
    """async with: reserve, extend, commit the actual cost."""
    server.script("Reserve", HELD)
    server.script("Extend", pb.ExtendResponse(decision=1, amount_held=120, expires_at_ms=5))
    server.script("Commit", pb.CommitResponse(amount_charged=110, amount_released=10))
    async with aclient.reservation("acct-1", amount=100) as r:
        await r.extend(hold_total=120)
        r.set_actual(amount=110)
    assert r.amount_held == 120 and r.commit_result is not None
    commit = server.requests("Commit")[0]
    assert (commit.reservation_id, commit.amount) == (r.reservation_id, 110)


async def test_reservation_releases_on_error(
    aclient: AsyncQuotaClient, server: ScriptedServer
) -> None:
    """An exception in the block releases the hold and propagates."""
    server.script("Reserve", HELD)
    server.script("Release", pb.ReleaseResponse(amount_released=100))
    with pytest.raises(ValueError):
        async with aclient.reservation("acct-1", amount=100) as r:
            raise ValueError("cancelled by user")
    assert server.requests("Release")[0].reservation_id == r.reservation_id
    assert server.requests("Commit") == []


async def test_reservation_denied_on_enter(
    aclient: AsyncQuotaClient, server: ScriptedServer
) -> None:
    """A denied reserve raises Denied and the block does not run."""
    server.script("Reserve", pb.ReserveResponse(decision=6))
    with pytest.raises(Denied) as caught:
        async with aclient.reservation("acct-1", amount=100):
            pytest.fail("the block ran without a hold")
    assert caught.value.decision is Decision.ACCOUNT_SUSPENDED


async def test_batch(aclient: AsyncQuotaClient, server: ScriptedServer) -> None:
    """Batch results are typed per op."""
    server.script(
        "Batch",
        pb.BatchResponse(results=[pb.BatchResult(charge=pb.ChargeResponse(decision=1))]),
    )
    op = ops.charge("acct-1", amount=1)
    (charged,) = await aclient.batch([op])
    assert charged.ok and charged.charge_id == op.request.charge_id


async def test_iter_usage_and_watch_events(
    aclient: AsyncQuotaClient, server: ScriptedServer
) -> None:
    """Async iterators page through usage and resume event streams."""
    server.script(
        "ListUsage",
        admin_pb.ListUsageResponse(
            records=[admin_pb.UsageRecord(charge_id="c1")], next_page_token="t"
        ),
        admin_pb.ListUsageResponse(records=[admin_pb.UsageRecord(charge_id="c2")]),
    )
    records = [r.charge_id async for r in aclient.iter_usage("acct-1")]
    assert records == ["c1", "c2"]

    def event(event_id: str) -> admin_pb.WatchEventsResponse:
        return admin_pb.WatchEventsResponse(event=admin_pb.Event(event_id=event_id))

    server.script(
        "WatchEvents",
        Stream((event("e1"),), then=Fail(grpc.StatusCode.UNAVAILABLE)),
        Stream((event("e2"),)),
    )
    events = [e.event_id async for e in aclient.watch_events(after_event_id="e0")]
    assert events == ["e1", "e2"]
    first, second = server.requests("WatchEvents")
    assert (first.after_event_id, second.after_event_id) == ("e0", "e1")


def test_client_built_before_the_event_loop_runs(server: ScriptedServer) -> None:
    """Regression: a grpc.aio channel made outside asyncio.run belonged to another loop
    ("attached to a different loop"); the channel is now opened on first use."""
    server.script("Check", pb.CheckResponse(decision=1))
    client = AsyncQuotaClient(server.target)

    async def main() -> bool:
        async with client:
            return (await client.check("acct-1", amount=1)).ok

    assert asyncio.run(main())

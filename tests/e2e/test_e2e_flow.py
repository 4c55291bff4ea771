"""End to end against a real `quota-server` process: the main flow through the client library,
and 64 concurrent callers racing for the last 50 credits."""
from __future__ import annotations

import asyncio

import grpc
import pytest
from quota.v1 import quota_service_pb2 as pb
from quota.v1 import quota_service_pb2_grpc as pb_grpc
from quota.v1.enums_pb2 import DECISION_INSUFFICIENT_CREDITS, DECISION_OK
from quota_client import AsyncQuotaClient, Decision, LotCategory, NotFound, FailedPrecondition, NO_RETRY

CALLERS = 64
LAST_CREDITS = 50


async def test_main_flow_through_the_client_library(spawn_server):
    """Goal: the everyday flow works against the installed server binary through quota_client:
    create accounts, grant, quote, reserve/commit with the reservation context manager, charge,
    get a denial as data, read balance, usage and summary, and get typed errors with reasons."""
    server = await spawn_server().start()
    async with AsyncQuotaClient(server.target, retry=NO_RETRY) as client:
        created = await client.upsert_account("acme", plan_id="prepaid")
        assert created.created is True
        granted = await client.grant("acme", 1_000, grant_id="purchase-1", category=LotCategory.PURCHASED)
        assert granted.available_after == 1_000
        quote = await client.quote("llm.chat", quantities={"input_tokens": 1234, "output_tokens": 567})
        assert quote.amount == 16
        async with client.reservation("acme", reservation_id="job-1", action="llm.chat",
                                      quantities={"input_tokens": 10_000, "output_tokens": 2_000}) as hold:
            assert hold.amount_held == 72
            hold.set_actual(quantities={"input_tokens": 5_000, "output_tokens": 1_000}, labels={"job": "1"})
        assert (hold.commit_result.amount_charged, hold.commit_result.amount_released) == (36, 36)
        charged = await client.charge("acme", charge_id="img-1", action="image.generate")
        assert (charged.ok, charged.amount_charged, charged.available_after) == (True, 5, 959)
        denied = await client.charge("acme", charge_id="big", amount=10_000)
        assert (denied.ok, denied.decision, denied.available_after) == (False, Decision.INSUFFICIENT_CREDITS, 959)
        balance = await client.get_balance("acme")
        assert (balance.balance, balance.held, balance.available) == (959, 0, 959)
        page = await client.list_usage("acme")
        assert [(r.reservation_id, r.charge_id, r.amount_charged) for r in page.records] == [
            ("job-1", "", 36), ("", "img-1", 5)]
        summary = await client.get_usage_summary("acme")
        assert [(a.action, a.count, a.amount_charged) for a in summary.actions] == [
            ("image.generate", 1, 5), ("llm.chat", 1, 36)]
        with pytest.raises(NotFound) as missing:
            await client.get_balance("nobody")
        assert missing.value.reason == "ACCOUNT_NOT_FOUND"
        await client.reserve("acme", reservation_id="job-2", amount=10)
        await client.release("acme", "job-2")
        with pytest.raises(FailedPrecondition) as released:
            await client.commit("acme", "job-2", amount=3)
        assert released.value.reason == "RESERVATION_RELEASED"


@pytest.mark.parametrize("how", ["charge", "reserve"])
async def test_64_concurrent_callers_race_for_the_last_50_credits(spawn_server, how):
    """Goal: with 50 credits available, 64 callers on their own connections each asking for 1 credit
    at the same time get exactly 50 OK and 14 INSUFFICIENT_CREDITS, and 0 is left: no overspend,
    no lost credit."""
    server = await spawn_server().start()
    async with AsyncQuotaClient(server.target, retry=NO_RETRY) as client:
        await client.upsert_account("race", plan_id="prepaid")
        await client.grant("race", LAST_CREDITS, grant_id="last")
    channels = [grpc.aio.insecure_channel(server.target) for _ in range(CALLERS)]
    try:
        stubs = [pb_grpc.QuotaServiceStub(ch) for ch in channels]
        for ch in channels:
            await ch.channel_ready()

        async def caller(i: int) -> int:
            if how == "charge":
                r = await stubs[i].Charge(pb.ChargeRequest(account_id="race", charge_id=f"c{i}", amount=1), timeout=30)
            else:
                r = await stubs[i].Reserve(pb.ReserveRequest(account_id="race", reservation_id=f"r{i}", amount=1,
                                                             ttl_ms=600_000), timeout=30)
            return r.decision

        decisions = await asyncio.gather(*(caller(i) for i in range(CALLERS)))
    finally:
        for ch in channels:
            await ch.close()
    assert decisions.count(DECISION_OK) == LAST_CREDITS
    assert decisions.count(DECISION_INSUFFICIENT_CREDITS) == CALLERS - LAST_CREDITS
    async with AsyncQuotaClient(server.target, retry=NO_RETRY) as client:
        balance = await client.get_balance("race")
        if how == "charge":
            assert (balance.balance, balance.held, balance.available) == (0, 0, 0)
            assert len((await client.list_usage("race", page_size=1000)).records) == LAST_CREDITS
        else:
            assert (balance.balance, balance.held, balance.available) == (LAST_CREDITS, LAST_CREDITS, 0)

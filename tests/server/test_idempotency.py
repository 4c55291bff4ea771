"""Idempotency ids: a replay with the same parameters returns the original result even after the
account changed; other parameters are ALREADY_EXISTS; denials are not remembered; each kind of
id has its own namespace per account."""
from __future__ import annotations

import grpc
import pytest
from quota.v1 import admin_service_pb2 as apb
from quota.v1 import quota_service_pb2 as pb
from quota.v1.enums_pb2 import DECISION_INSUFFICIENT_CREDITS as INSUFFICIENT
from quota.v1.enums_pb2 import DECISION_OK as OK
from quota.v1.enums_pb2 import EXPIRE_ACTION_COMMIT, LOT_CATEGORY_PROMOTIONAL

from tests.support.status import fails

ALREADY_EXISTS = grpc.StatusCode.ALREADY_EXISTS


async def test_charge_replay_returns_the_original_result_after_the_balance_changed(server):
    """Goal: the same charge id and parameters answer the first result (same available_after) and
    charge once, even after other charges moved the balance; one usage record."""
    await server.open_account("acct", grant=100)
    request = pb.ChargeRequest(account_id="acct", charge_id="c1", action="image.generate", labels={"a": "b"})
    first = await server.quota.Charge(request)
    await server.quota.Charge(pb.ChargeRequest(account_id="acct", charge_id="c2", amount=50))
    replay = await server.quota.Charge(request)
    assert replay == first
    assert (first.amount_charged, first.available_after) == (5, 95)
    assert await server.available("acct") == 45
    assert [r.charge_id for r in await server.usage("acct")] == ["c1", "c2"]


async def test_reserve_replay_returns_the_original_result_after_time_and_balance_changed(server):
    """Goal: a reserve replay answers the original hold (amount, available_after, expires_at_ms) and
    holds nothing more."""
    await server.open_account("acct", grant=100)
    request = pb.ReserveRequest(account_id="acct", reservation_id="r1", amount=30, ttl_ms=60_000)
    first = await server.quota.Reserve(request)
    await server.quota.Charge(pb.ChargeRequest(account_id="acct", charge_id="c", amount=20))
    await server.advance(1_000)
    assert await server.quota.Reserve(request) == first
    b = await server.balance("acct")
    assert (b.held, b.available) == (30, 50)


async def test_reserve_replay_after_commit_still_returns_the_original_hold(server):
    """Goal: a retried reserve whose hold was since committed returns the original reserve result
    instead of holding again."""
    await server.open_account("acct", grant=100)
    request = pb.ReserveRequest(account_id="acct", reservation_id="r1", amount=30)
    first = await server.quota.Reserve(request)
    await server.quota.Commit(pb.CommitRequest(account_id="acct", reservation_id="r1", amount=10))
    assert await server.quota.Reserve(request) == first
    b = await server.balance("acct")
    assert (b.held, b.available) == (0, 90)


async def test_commit_replay_and_reuse_with_other_parameters(server):
    """Goal: a commit replay returns the stored result; a commit of the same hold with another amount,
    other quantities or no amount is ALREADY_EXISTS / IDEMPOTENCY_KEY_REUSED; one usage record."""
    await server.open_account("acct", grant=100)
    await server.quota.Reserve(pb.ReserveRequest(account_id="acct", reservation_id="r1", amount=30))
    request = pb.CommitRequest(account_id="acct", reservation_id="r1", amount=10)
    first = await server.quota.Commit(request)
    await server.quota.Charge(pb.ChargeRequest(account_id="acct", charge_id="c", amount=5))
    assert await server.quota.Commit(request) == first
    for other in (
        pb.CommitRequest(account_id="acct", reservation_id="r1", amount=11),
        pb.CommitRequest(account_id="acct", reservation_id="r1"),
        pb.CommitRequest(account_id="acct", reservation_id="r1", amount=10, labels={"x": "y"}),
    ):
        failure = await fails(server.quota.Commit(other))
        assert (failure.code, failure.reason) == (ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    assert await server.available("acct") == 85
    assert [r.reservation_id for r in await server.usage("acct") if r.reservation_id] == ["r1"]


@pytest.mark.parametrize("change", [
    {"amount": 31}, {"action": "image.generate"}, {"ttl_ms": 5_000}, {"labels": {"k": "v2"}},
    {"allow_partial": True}, {"on_expire": EXPIRE_ACTION_COMMIT},
])
async def test_reserve_id_reused_with_other_parameters_is_already_exists(server, change):
    """Goal: the same reservation id with any other parameter is ALREADY_EXISTS /
    IDEMPOTENCY_KEY_REUSED and leaves the first hold alone."""
    await server.open_account("acct", grant=100)
    base = dict(account_id="acct", reservation_id="r1", amount=30, ttl_ms=10_000, labels={"k": "v"})
    await server.quota.Reserve(pb.ReserveRequest(**base))
    failure = await fails(server.quota.Reserve(pb.ReserveRequest(**{**base, **change})))
    assert (failure.code, failure.reason) == (ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    b = await server.balance("acct")
    assert (b.held, b.available) == (30, 70)


@pytest.mark.parametrize("change", [{"amount": 6}, {"action": "doc.summarize", "amount": 0}, {"labels": {"a": "c"}}])
async def test_charge_id_reused_with_other_parameters_is_already_exists(server, change):
    """Goal: the same charge id with other parameters is ALREADY_EXISTS and charges nothing more."""
    await server.open_account("acct", grant=100)
    base = dict(account_id="acct", charge_id="c1", amount=5, labels={"a": "b"})
    await server.quota.Charge(pb.ChargeRequest(**base))
    failure = await fails(server.quota.Charge(pb.ChargeRequest(**{**base, **change})))
    assert (failure.code, failure.reason) == (ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    assert await server.available("acct") == 95


async def test_grant_replay_and_reuse(server):
    """Goal: a grant replay returns the original lot and available_after without a second lot;
    another amount, category or priority under the same grant id is ALREADY_EXISTS."""
    await server.open_account("acct")
    request = apb.GrantRequest(account_id="acct", grant_id="g1", amount=100)
    first = await server.admin.Grant(request)
    assert (first.lot_id, first.available_after) == ("g1", 100)
    await server.quota.Charge(pb.ChargeRequest(account_id="acct", charge_id="c", amount=40))
    assert await server.admin.Grant(request) == first
    for other in (
        apb.GrantRequest(account_id="acct", grant_id="g1", amount=101),
        apb.GrantRequest(account_id="acct", grant_id="g1", amount=100, category=LOT_CATEGORY_PROMOTIONAL),
        apb.GrantRequest(account_id="acct", grant_id="g1", amount=100, priority=1),
    ):
        failure = await fails(server.admin.Grant(other))
        assert (failure.code, failure.reason) == (ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    b = await server.balance("acct")
    assert (b.balance, [(lot.lot_id, lot.remaining) for lot in b.lots]) == (60, [("g1", 60)])


async def test_denied_reserve_and_charge_are_not_remembered(server):
    """Goal: a denied Reserve or Charge changed nothing and is not remembered, so the same id with the
    same parameters succeeds after a top-up."""
    await server.open_account("acct", grant=100)
    reserve = pb.ReserveRequest(account_id="acct", reservation_id="r1", amount=150)
    charge = pb.ChargeRequest(account_id="acct", charge_id="c1", amount=150)
    assert (await server.quota.Reserve(reserve)).decision == INSUFFICIENT
    assert (await server.quota.Charge(charge)).decision == INSUFFICIENT
    await server.admin.Grant(apb.GrantRequest(account_id="acct", grant_id="topup", amount=200))
    r = await server.quota.Reserve(reserve)
    assert (r.decision, r.amount_held, r.available_after) == (OK, 150, 150)
    c = await server.quota.Charge(charge)
    assert (c.decision, c.amount_charged, c.available_after) == (OK, 150, 0)


async def test_id_kinds_and_accounts_have_separate_namespaces(server):
    """Goal: one string used as a reservation id, a charge id and a grant id of one account, and as a
    reservation id of another account, names four unrelated operations."""
    await server.open_account("a", grant=100)
    await server.open_account("b", grant=100)
    g = await server.admin.Grant(apb.GrantRequest(account_id="a", grant_id="same", amount=10))
    r = await server.quota.Reserve(pb.ReserveRequest(account_id="a", reservation_id="same", amount=20))
    c = await server.quota.Charge(pb.ChargeRequest(account_id="a", charge_id="same", amount=30))
    other = await server.quota.Reserve(pb.ReserveRequest(account_id="b", reservation_id="same", amount=40))
    assert (g.available_after, r.amount_held, c.amount_charged, other.amount_held) == (110, 20, 30, 40)
    assert (await server.balance("a")).available == 60
    assert (await server.balance("b")).available == 60

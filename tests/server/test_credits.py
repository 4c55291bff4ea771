"""Credit accounting: pay-as-you-go overdraft, included plan credits, grants that pay debt first,
the lot consumption order, lots expiring under a hold, and what GetBalance reports."""
from __future__ import annotations

import json

import pytest
from quota.v1 import admin_service_pb2 as apb
from quota.v1 import quota_service_pb2 as pb
from quota.v1.enums_pb2 import DECISION_INSUFFICIENT_CREDITS as INSUFFICIENT
from quota.v1.enums_pb2 import DECISION_OK as OK
from quota.v1.enums_pb2 import (
    LOT_CATEGORY_ADJUSTMENT,
    LOT_CATEGORY_INCLUDED,
    LOT_CATEGORY_PROMOTIONAL,
    LOT_CATEGORY_PURCHASED,
)

from tests.support.clock import PERIOD_END_MS, PERIOD_START_MS
from tests.support.config import CREDIT_LIMIT_PAYG, INCLUDED_FREE, build_config
from tests.support.inproc import InProcessServer, running

INCLUDED_LOT = f"included:free:{PERIOD_START_MS}"


def lots(balance: pb.GetBalanceResponse) -> list[tuple]:
    return [(lot.lot_id, lot.category, lot.remaining, lot.priority, lot.expires_at_ms) for lot in balance.lots]


async def test_pay_as_you_go_spends_into_the_credit_limit(server):
    """Goal: the API.md example: credit limit 1000, 900 spent -> balance -900, available 100; the
    next 101 is denied and 100 more is allowed down to available 0."""
    await server.open_account("payg-1", "payg")
    c = await server.quota.Charge(pb.ChargeRequest(account_id="payg-1", charge_id="c1", amount=900))
    assert (c.decision, c.amount_charged, c.available_after) == (OK, 900, 100)
    b = await server.balance("payg-1")
    assert (b.balance, b.held, b.available, b.credit_limit, b.plan_id) == (-900, 0, 100, CREDIT_LIMIT_PAYG, "payg")
    over = await server.quota.Charge(pb.ChargeRequest(account_id="payg-1", charge_id="c2", amount=101))
    assert (over.decision, over.available_after) == (INSUFFICIENT, 100)
    last = await server.quota.Charge(pb.ChargeRequest(account_id="payg-1", charge_id="c3", amount=100))
    assert (last.decision, last.available_after) == (OK, 0)
    assert (await server.balance("payg-1")).balance == -CREDIT_LIMIT_PAYG


async def test_pay_as_you_go_holds_use_the_overdraft_and_overruns_stop_at_the_limit(server):
    """Goal: a hold is backed by the overdraft; an overrun is charged up to the credit limit and the
    rest is amount_uncharged (the balance never goes below -credit_limit)."""
    await server.open_account("payg-1", "payg")
    r = await server.quota.Reserve(pb.ReserveRequest(account_id="payg-1", reservation_id="r1", amount=100))
    assert (r.decision, r.amount_held, r.available_after) == (OK, 100, 900)
    b = await server.balance("payg-1")
    assert (b.balance, b.held, b.available) == (0, 100, 900)
    c = await server.quota.Commit(pb.CommitRequest(account_id="payg-1", reservation_id="r1", amount=1_500))
    assert (c.amount_charged, c.amount_released, c.amount_uncharged, c.available_after) == (1_000, 0, 500, 0)
    b = await server.balance("payg-1")
    assert (b.balance, b.held, b.available) == (-1_000, 0, 0)


async def test_grant_to_an_account_in_debt_pays_the_debt_first(server):
    """Goal: a grant first pays the debt; only the rest becomes a lot (none if it all went to debt)."""
    await server.open_account("payg-1", "payg")
    await server.quota.Charge(pb.ChargeRequest(account_id="payg-1", charge_id="c1", amount=900))
    g1 = await server.admin.Grant(apb.GrantRequest(account_id="payg-1", grant_id="g1", amount=500))
    assert g1.available_after == 600
    b = await server.balance("payg-1")
    assert (b.balance, b.available, lots(b)) == (-400, 600, [])
    g2 = await server.admin.Grant(apb.GrantRequest(account_id="payg-1", grant_id="g2", amount=1_000))
    assert g2.available_after == 1_600
    b = await server.balance("payg-1")
    assert (b.balance, b.available, lots(b)) == (600, 1_600, [("g2", LOT_CATEGORY_PURCHASED, 600, 0, 0)])


async def test_joining_a_plan_grants_its_included_credits_until_the_period_end(server, manual_clock):
    """Goal: an account created on a plan with included_credits gets them at once as an INCLUDED lot
    expiring at the end of the current (monthly, UTC) period; GetBalance.period reports the period,
    included and used; upserting the same plan again grants nothing more."""
    created = await server.open_account("free-1", "free")
    assert created.created is True
    b = await server.balance("free-1")
    assert (b.balance, b.available) == (INCLUDED_FREE, INCLUDED_FREE)
    assert lots(b) == [(INCLUDED_LOT, LOT_CATEGORY_INCLUDED, INCLUDED_FREE, 0, PERIOD_END_MS)]
    assert (b.period.start_at_ms, b.period.end_at_ms, b.period.included, b.period.used) == (
        PERIOD_START_MS, PERIOD_END_MS, INCLUDED_FREE, 0)
    await server.quota.Charge(pb.ChargeRequest(account_id="free-1", charge_id="c1", action="image.generate"))
    again = await server.admin.UpsertAccount(apb.UpsertAccountRequest(account_id="free-1", plan_id="free"))
    assert again.created is False
    b = await server.balance("free-1")
    assert (b.available, b.period.used) == (INCLUDED_FREE - 5, 5)
    assert lots(b) == [(INCLUDED_LOT, LOT_CATEGORY_INCLUDED, INCLUDED_FREE - 5, 0, PERIOD_END_MS)]


async def test_included_credits_expire_at_the_period_end(server, manual_clock):
    """Goal: the included lot is gone at end_at_ms (unused credit does not roll over with
    rollover_max 0)."""
    await server.open_account("free-1", "free")
    await server.advance(PERIOD_END_MS - manual_clock.now_ms - 1)
    assert (await server.balance("free-1")).available == INCLUDED_FREE
    await server.advance(1)
    b = await server.balance("free-1")
    assert [lot.lot_id for lot in b.lots if lot.lot_id == INCLUDED_LOT] == []


async def test_included_credits_are_granted_again_in_the_next_period(server, manual_clock):
    """Goal: after the period ends the account has a fresh INCLUDED lot for the new period, made
    once (a second renewal pass and a restart grant nothing more), with a credits.granted event."""
    await server.open_account("free-1", "free")
    await server.quota.Charge(pb.ChargeRequest(account_id="free-1", charge_id="c1", amount=INCLUDED_FREE))
    await server.advance(PERIOD_END_MS - manual_clock.now_ms)
    await server.server.renewal.renew_due()  # (or the background pass, if it ran first)
    next_lot = f"included:free:{PERIOD_END_MS}"
    b = await server.balance("free-1")
    assert lots(b) == [(next_lot, LOT_CATEGORY_INCLUDED, INCLUDED_FREE, 0, b.period.end_at_ms)]
    assert (b.period.start_at_ms, b.period.used, b.available) == (PERIOD_END_MS, 0, INCLUDED_FREE)
    assert await server.server.renewal.renew_due() == 0
    await server.restart()
    assert await server.server.renewal.renew_due() == 0
    assert (await server.balance("free-1")).available == INCLUDED_FREE
    events = await server.server.storage.read_events(0, 1000, "free-1")
    granted = [json.loads(e.payload)["grant_id"] for e in events if e.type == "credits.granted"]
    assert granted == [INCLUDED_LOT, next_lot]


async def test_a_spent_included_lot_is_not_granted_again_in_its_period(server, manual_clock):
    """Goal: an account that spent its included credits does not get them again in the same
    period, even after a restart more than a retention (24 h) later: the period's grant record
    outlives the spent lot, so a renewal pass finds it."""
    await server.open_account("free-1", "free")
    await server.quota.Charge(pb.ChargeRequest(account_id="free-1", charge_id="c1", amount=INCLUDED_FREE))
    assert (await server.balance("free-1")).period.used == INCLUDED_FREE  # the lot is gone, not the grant
    await server.advance(2 * 86_400_000)
    await server.restart()
    assert await server.server.renewal.renew_due() == 0
    b = await server.balance("free-1")
    assert (b.available, b.period.used, lots(b)) == (0, INCLUDED_FREE, [])


async def test_unused_included_credit_rolls_over_up_to_rollover_max(server_config_data, manual_clock):
    """Goal: with rollover_max, what the previous period left of its included credit (its
    included and roll-over lots, up to rollover_max) becomes a `rollover:` lot of the new period,
    consumed before the new included lot; credit spent or earmarked at the boundary does not
    roll; a restart grants nothing twice."""
    server_config_data["plans"]["carry"] = {"included_credits": 100, "rollover_max": 60}
    srv = InProcessServer(build_config(server_config_data), manual_clock)
    await srv.start()
    try:
        await srv.open_account("c-1", "carry")                  # 100 included
        await srv.open_account("c-2", "carry")
        await srv.quota.Charge(pb.ChargeRequest(account_id="c-1", charge_id="x1", amount=70))  # 30 left
        await srv.advance(PERIOD_END_MS - 3_600_000 - manual_clock.now_ms)
        r = await srv.quota.Reserve(pb.ReserveRequest(account_id="c-2", reservation_id="r", amount=10,
                                                      ttl_ms=7_200_000))
        assert r.decision == OK                                 # 90 free, 10 earmarked
        await srv.advance(PERIOD_END_MS - manual_clock.now_ms)
        await srv.server.renewal.renew_due()
        second_end = 1_754_006_400_000                          # 2025-08-01T00:00:00Z
        rollover, included = f"rollover:carry:{PERIOD_END_MS}", f"included:carry:{PERIOD_END_MS}"
        assert lots(await srv.balance("c-1")) == [
            (rollover, LOT_CATEGORY_INCLUDED, 30, 0, second_end), (included, LOT_CATEGORY_INCLUDED, 100, 0, second_end)]
        b2 = await srv.balance("c-2")
        assert [(lot.lot_id, lot.remaining) for lot in b2.lots if lot.expires_at_ms == second_end] == [
            (rollover, 60), (included, 100)]                    # 90 left, capped at 60
        await srv.quota.Charge(pb.ChargeRequest(account_id="c-1", charge_id="x2", amount=40))
        assert lots(await srv.balance("c-1")) == [(included, LOT_CATEGORY_INCLUDED, 90, 0, second_end)]
        await srv.restart()
        assert await srv.server.renewal.renew_due() == 0
        assert (await srv.balance("c-1")).available == 90
        # The next boundary: c-1 left 90 of its included lot, capped at 60.
        await srv.advance(second_end - manual_clock.now_ms)
        await srv.server.renewal.renew_due()
        assert [(lot.lot_id, lot.remaining) for lot in (await srv.balance("c-1")).lots] == [
            (f"rollover:carry:{second_end}", 60), (f"included:carry:{second_end}", 100)]
    finally:
        await srv.stop()


async def test_changing_plan_applies_the_new_plan_and_grants_its_included_credits(server):
    """Goal: moving a prepaid account to `free` sets the plan and grants its included credits;
    moving it to `payg` takes the plan's credit limit."""
    await server.open_account("acct", "prepaid", grant=10)
    moved = await server.admin.UpsertAccount(apb.UpsertAccountRequest(account_id="acct", plan_id="free"))
    assert (moved.created, moved.account.plan_id) == (False, "free")
    assert (await server.balance("acct")).available == 10 + INCLUDED_FREE
    payg = await server.admin.UpsertAccount(apb.UpsertAccountRequest(account_id="acct", plan_id="payg"))
    assert payg.account.credit_limit == CREDIT_LIMIT_PAYG
    assert (await server.balance("acct")).available == 10 + INCLUDED_FREE + CREDIT_LIMIT_PAYG


async def test_lots_are_consumed_by_priority_then_expiry_then_age(server, manual_clock):
    """Goal: lower priority first, then the earliest expiry (never-expiring last), then the oldest;
    GetBalance lists lots in that order with their category, priority and expiry."""
    soon = manual_clock.now_ms + 3_600_000
    later = manual_clock.now_ms + 7_200_000
    await server.open_account("acct")
    grants = [
        ("old-forever", 10, LOT_CATEGORY_PURCHASED, 0, 0),
        ("new-forever", 10, LOT_CATEGORY_ADJUSTMENT, 0, 0),
        ("later", 10, LOT_CATEGORY_PROMOTIONAL, 0, later),
        ("soon", 10, LOT_CATEGORY_PROMOTIONAL, 0, soon),
        ("first", 10, LOT_CATEGORY_PURCHASED, -1, 0),
    ]
    for grant_id, amount, category, priority, expires in grants:
        await server.admin.Grant(apb.GrantRequest(account_id="acct", grant_id=grant_id, amount=amount,
                                                  category=category, priority=priority, expires_at_ms=expires))
    b = await server.balance("acct")
    assert lots(b) == [
        ("first", LOT_CATEGORY_PURCHASED, 10, -1, 0),
        ("soon", LOT_CATEGORY_PROMOTIONAL, 10, 0, soon),
        ("later", LOT_CATEGORY_PROMOTIONAL, 10, 0, later),
        ("old-forever", LOT_CATEGORY_PURCHASED, 10, 0, 0),
        ("new-forever", LOT_CATEGORY_ADJUSTMENT, 10, 0, 0),
    ]
    await server.quota.Charge(pb.ChargeRequest(account_id="acct", charge_id="c1", amount=35))
    b = await server.balance("acct")
    assert [(lot.lot_id, lot.remaining) for lot in b.lots] == [("old-forever", 5), ("new-forever", 10)]


async def test_a_lot_that_expires_under_a_hold_keeps_the_earmarked_part(server, manual_clock):
    """Goal: when a lot expires while it backs a hold, its free part expires, the earmarked part
    still counts in the balance until the hold settles, and the unused earmark then expires too."""
    await server.open_account("acct")
    await server.admin.Grant(apb.GrantRequest(account_id="acct", grant_id="promo", amount=50,
                                              category=LOT_CATEGORY_PROMOTIONAL,
                                              expires_at_ms=manual_clock.now_ms + 10_000))
    await server.admin.Grant(apb.GrantRequest(account_id="acct", grant_id="paid", amount=100))
    await server.quota.Reserve(pb.ReserveRequest(account_id="acct", reservation_id="r1", amount=40, ttl_ms=60_000))
    await server.advance(10_000)
    b = await server.balance("acct")
    assert (b.balance, b.held, b.available) == (140, 40, 100)
    assert [(lot.lot_id, lot.remaining) for lot in b.lots] == [("promo", 40), ("paid", 100)]
    c = await server.quota.Commit(pb.CommitRequest(account_id="acct", reservation_id="r1", amount=30))
    assert (c.amount_charged, c.amount_released, c.available_after) == (30, 10, 100)
    b = await server.balance("acct")
    assert (b.balance, b.held, b.available, [lot.lot_id for lot in b.lots]) == (100, 0, 100, ["paid"])


async def test_get_balance_reports_limits_state(server):
    """Goal: GetBalance.limits lists each rate limit of the plan by name, with remaining, capacity
    and the exact time until it is full again (an unused one is full)."""
    await server.open_account("free-1", "free")
    await server.quota.Charge(pb.ChargeRequest(account_id="free-1", charge_id="c1", action="doc.summarize"))
    await server.advance(15_000)
    b = await server.balance("free-1")
    assert [(lim.name, lim.remaining, lim.capacity, lim.reset_after_ms) for lim in b.limits] == [
        ("input_tokens_per_minute", 5_000, 5_000, 0), ("requests_per_minute", 9, 10, 45_000)]


async def test_balance_low_is_armed_again_by_a_top_up(server_config_data, manual_clock):
    """Goal: a grant that lifts available back above low_balance arms balance.low again, so
    the next charge that takes it down to the threshold announces it again (a top-up followed by
    spending, with no usage in between that would have seen the account above)."""
    server_config_data["plans"]["topup"] = {"low_balance": 100}
    async with running(server_config_data, manual_clock) as srv:
        await srv.open_account("t-1", "topup")
        await srv.admin.Grant(apb.GrantRequest(account_id="t-1", grant_id="g0", amount=1000))

        async def charge(cid: str, amount: int) -> None:
            r = await srv.quota.Charge(pb.ChargeRequest(account_id="t-1", charge_id=cid, amount=amount))
            assert r.decision == OK

        async def lows() -> list[str]:
            events = await srv.server.storage.read_events(0, 1000, "t-1")
            return [json.loads(e.payload)["available"] for e in events if e.type == "balance.low"]

        await charge("a", 950)                                   # available 50: low
        assert await lows() == ["50"]
        await srv.admin.Grant(apb.GrantRequest(account_id="t-1", grant_id="g1", amount=500))  # 550
        await charge("b", 500)                                   # 50 again: low again
        assert await lows() == ["50", "50"]
        await srv.quota.Reserve(pb.ReserveRequest(account_id="t-1", reservation_id="r", amount=20))
        await srv.quota.Release(pb.ReleaseRequest(account_id="t-1", reservation_id="r"))
        await charge("c", 10)                                    # 40: still low, announced once
        assert await lows() == ["50", "50"]


async def test_included_credit_thresholds_and_low_balance_are_announced(server_config_data, manual_clock):
    """Goal: credits.threshold at 50, 80 and 100 % of the period's included credits (each once,
    every threshold crossed by one call), balance.low when available falls to the plan's
    low_balance (once, armed again above it); events go out with the batch's write."""
    server_config_data["plans"]["watch"] = {"included_credits": 100, "low_balance": 30}
    srv = InProcessServer(build_config(server_config_data), manual_clock)
    await srv.start()
    try:
        await srv.open_account("w-1", "watch")

        async def charge(cid: str, amount: int) -> None:
            r = await srv.quota.Charge(pb.ChargeRequest(account_id="w-1", charge_id=cid, amount=amount))
            assert r.decision == OK

        async def announced() -> list[tuple]:
            events = await srv.server.storage.read_events(0, 1000, "w-1")
            return [(e.type, json.loads(e.payload).get("percent") or json.loads(e.payload).get("available"))
                    for e in events if e.type in ("credits.threshold", "balance.low")]

        await charge("c1", 40)
        assert await announced() == []
        await charge("c2", 10)                                   # 50 % used
        assert await announced() == [("credits.threshold", "50")]
        await charge("c2", 10)                                   # a replay: nothing new
        await charge("c3", 25)                                   # 75 %: nothing; available 25 <= 30
        assert await announced() == [("credits.threshold", "50"), ("balance.low", "25")]
        await srv.admin.Grant(apb.GrantRequest(account_id="w-1", grant_id="top-up", amount=50, priority=10))
        await charge("c4", 5)                                    # 80 %; available 70: low no more
        await charge("c5", 40)                                   # 100 %; available 30: low again
        assert await announced() == [
            ("credits.threshold", "50"), ("balance.low", "25"), ("credits.threshold", "80"),
            ("credits.threshold", "100"), ("balance.low", "30")]
        events = await srv.server.storage.read_events(0, 1000, "w-1")
        hundred = [json.loads(e.payload) for e in events if e.type == "credits.threshold"][-1]
        assert hundred == {"percent": "100", "included": "100", "used": "100",
                           "period_start_at_ms": str(PERIOD_START_MS)}
    finally:
        await srv.stop()


async def test_period_used_stays_in_range_after_included_credits_change(server_config_data, manual_clock):
    """Goal: when a restart changes the plan's included_credits during a period, the period's lot
    keeps its size and GetBalance.period.used stays within 0..included (it used to go negative
    after a cut, and above what was spent after a raise)."""
    server_config_data["plans"]["inc"] = {"included_credits": 1000}
    async with running(server_config_data, manual_clock) as srv:
        await srv.open_account("i-1", "inc")
        await srv.quota.Charge(pb.ChargeRequest(account_id="i-1", charge_id="c1", amount=100))
        assert (await srv.balance("i-1")).period.used == 100
    server_config_data["plans"]["inc"] = {"included_credits": 500}
    async with running(server_config_data, manual_clock) as srv:
        b = await srv.balance("i-1")
        assert [(lot.lot_id, lot.remaining) for lot in b.lots] == [(f"included:inc:{PERIOD_START_MS}", 900)]
        assert (b.period.included, b.period.used) == (500, 0)     # 500 - 900 clamped
        await srv.quota.Charge(pb.ChargeRequest(account_id="i-1", charge_id="c2", amount=600))  # 300 left
        assert (await srv.balance("i-1")).period.used == 200


async def test_credit_that_expires_unused_is_announced(server, manual_clock):
    """Goal: a lot that expires with unused credit (breakage) emits credits.expired with its
    grant_id and the unused amount, once, in the write of the batch that saw it expire; a lot
    spent before its expiry emits nothing; the part earmarked by an open hold stays for it."""
    await server.open_account("e-1", "prepaid")
    expires = manual_clock.now_ms + 60_000
    await server.admin.Grant(apb.GrantRequest(account_id="e-1", grant_id="promo", amount=50, priority=1,
                                              expires_at_ms=expires))
    await server.admin.Grant(apb.GrantRequest(account_id="e-1", grant_id="gone", amount=5, expires_at_ms=expires))
    await server.quota.Charge(pb.ChargeRequest(account_id="e-1", charge_id="c1", amount=25))   # gone 5, promo 20
    r = await server.quota.Reserve(pb.ReserveRequest(account_id="e-1", reservation_id="r1", amount=10,
                                                     ttl_ms=600_000))
    assert r.decision == OK                                       # 10 of promo's 30 earmarked
    await server.advance(60_000)
    await server.advance(1_000)                                   # nothing more
    events = await server.server.storage.read_events(0, 1000, "e-1")
    assert [(e.type, json.loads(e.payload)) for e in events if e.type == "credits.expired"] == [
        ("credits.expired", {"grant_id": "promo", "amount": "20"})]
    c = await server.quota.Commit(pb.CommitRequest(account_id="e-1", reservation_id="r1", amount=10))
    assert c.amount_charged == 10                                 # the earmark held

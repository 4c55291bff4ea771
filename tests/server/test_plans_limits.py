"""Plan rules on the data plane: the feature gate, token-bucket rate limits (denial, retry hint,
refill on the manual clock, true-up by quantities), the concurrency limit, suspension, unlimited
plans, and the order in which denials are checked."""
from __future__ import annotations

import json
import logging

from quota.v1 import admin_service_pb2 as apb
from quota.v1 import quota_service_pb2 as pb
from quota.v1.enums_pb2 import ACCOUNT_STATUS_ACTIVE, ACCOUNT_STATUS_SUSPENDED
from quota.v1.enums_pb2 import DECISION_ACCOUNT_SUSPENDED as SUSPENDED
from quota.v1.enums_pb2 import DECISION_CONCURRENCY_LIMITED as CONCURRENCY
from quota.v1.enums_pb2 import DECISION_FEATURE_NOT_IN_PLAN as FEATURE
from quota.v1.enums_pb2 import DECISION_INSUFFICIENT_CREDITS as INSUFFICIENT
from quota.v1.enums_pb2 import DECISION_OK as OK
from quota.v1.enums_pb2 import DECISION_RATE_LIMITED as RATE_LIMITED

from tests.support.config import RPM_CAPACITY, TOKENS_CAPACITY, UNLIMITED_RPS_CAPACITY
from tests.support.inproc import running


def charge(account_id: str, charge_id: str, **fields) -> pb.ChargeRequest:
    return pb.ChargeRequest(account_id=account_id, charge_id=charge_id, **fields)


def reserve(account_id: str, reservation_id: str, **fields) -> pb.ReserveRequest:
    return pb.ReserveRequest(account_id=account_id, reservation_id=reservation_id, **fields)


async def test_action_outside_the_plan_features_is_feature_not_in_plan(server):
    """Goal: an action the plan does not list is DECISION_FEATURE_NOT_IN_PLAN for Reserve, Charge and
    Check, even with an explicit amount; nothing is held, charged or taken from a rate limit."""
    await server.open_account("free-1", "free")
    before = await server.balance("free-1")
    r = await server.quota.Reserve(reserve("free-1", "r", action="video.render"))
    assert (r.decision, r.amount_held, r.available_after) == (FEATURE, 0, 100)
    c = await server.quota.Charge(charge("free-1", "c", action="video.render", amount=1))
    assert (c.decision, c.amount_charged) == (FEATURE, 0)
    k = await server.quota.Check(pb.CheckRequest(account_id="free-1", action="video.render"))
    assert (k.decision, k.available) == (FEATURE, 100)
    assert await server.balance("free-1") == before
    allowed = await server.quota.Charge(charge("free-1", "ok", action="doc.summarize"))
    assert (allowed.decision, allowed.amount_charged, allowed.available_after) == (OK, 2, 98)


async def test_rate_limit_denies_with_its_name_and_retry_after_then_refills(server):
    """Goal: the 11th call in a minute on a 10-per-minute plan is DECISION_RATE_LIMITED with
    limit_name and the exact retry_after_ms; the bucket refills when the manual clock reaches it."""
    await server.open_account("free-1", "free")
    for i in range(RPM_CAPACITY):
        ok = await server.quota.Charge(charge("free-1", f"c{i}", action="doc.summarize"))
        assert ok.decision == OK
    denied = await server.quota.Charge(charge("free-1", "c-over", action="doc.summarize"))
    assert (denied.decision, denied.limit_name, denied.retry_after_ms, denied.amount_charged, denied.available_after) == (
        RATE_LIMITED, "requests_per_minute", 60_000, 0, 80)
    reserve_denied = await server.quota.Reserve(reserve("free-1", "r-over", action="doc.summarize"))
    assert (reserve_denied.decision, reserve_denied.limit_name, reserve_denied.amount_held) == (
        RATE_LIMITED, "requests_per_minute", 0)
    await server.advance(59_999)
    check = await server.quota.Check(pb.CheckRequest(account_id="free-1", action="doc.summarize"))
    assert (check.decision, check.retry_after_ms, check.limit_name) == (RATE_LIMITED, 1, "requests_per_minute")
    await server.advance(1)
    again = await server.quota.Charge(charge("free-1", "c-over", action="doc.summarize"))
    assert (again.decision, again.amount_charged, again.available_after) == (OK, 2, 78)


async def test_check_does_not_take_rate_limit_tokens(server):
    """Goal: Check answers from the bucket without taking from it: 3x capacity checks leave the
    bucket full and all 10 real calls still pass."""
    await server.open_account("free-1", "free")
    for _ in range(3 * RPM_CAPACITY):
        k = await server.quota.Check(pb.CheckRequest(account_id="free-1", action="doc.summarize"))
        assert k.decision == OK
    for i in range(RPM_CAPACITY):
        assert (await server.quota.Charge(charge("free-1", f"c{i}", action="doc.summarize"))).decision == OK


async def test_quantity_limit_takes_the_named_quantity(server):
    """Goal: a limit whose cost is a quantity (input_tokens) takes that quantity per call; a call over
    the remaining tokens is RATE_LIMITED by that limit, and one above the bucket's capacity can never
    pass (retry_after_ms 0)."""
    await server.open_account("free-1", "free")
    first = await server.quota.Charge(charge("free-1", "c1", action="llm.chat", quantities={"input_tokens": 3_000}))
    assert (first.decision, first.amount_charged) == (OK, 11)  # ceil(3000*3*1.2/1000)
    second = await server.quota.Charge(charge("free-1", "c2", action="llm.chat", quantities={"input_tokens": 3_000}))
    assert (second.decision, second.limit_name, second.retry_after_ms) == (RATE_LIMITED, "input_tokens_per_minute", 60_000)
    never = await server.quota.Check(pb.CheckRequest(
        account_id="free-1", action="llm.chat", quantities={"input_tokens": TOKENS_CAPACITY + 1}))
    assert (never.decision, never.limit_name, never.retry_after_ms) == (RATE_LIMITED, "input_tokens_per_minute", 0)
    other_action = await server.quota.Charge(charge("free-1", "c3", action="doc.summarize"))
    assert other_action.decision == OK  # the token limit applies to llm.* only
    limits = {lim.name: lim for lim in (await server.balance("free-1")).limits}
    assert (limits["input_tokens_per_minute"].remaining, limits["input_tokens_per_minute"].capacity) == (
        TOKENS_CAPACITY - 3_000, TOKENS_CAPACITY)
    assert (limits["requests_per_minute"].remaining, limits["requests_per_minute"].reset_after_ms) == (
        RPM_CAPACITY - 2, 60_000)


async def test_commit_trues_up_a_quantity_limit_to_the_actual_quantity(server):
    """Goal: a reserve takes its estimated quantity from the limit; the commit's actual quantities
    refund (or take) the difference."""
    await server.open_account("free-1", "free")
    await server.quota.Reserve(reserve("free-1", "r1", action="llm.chat", quantities={"input_tokens": 4_000}))
    limits = {lim.name: lim.remaining for lim in (await server.balance("free-1")).limits}
    assert limits["input_tokens_per_minute"] == TOKENS_CAPACITY - 4_000
    await server.quota.Commit(pb.CommitRequest(account_id="free-1", reservation_id="r1",
                                               quantities={"input_tokens": 1_000}))
    limits = {lim.name: lim.remaining for lim in (await server.balance("free-1")).limits}
    assert limits["input_tokens_per_minute"] == TOKENS_CAPACITY - 1_000


async def test_denied_reserve_takes_no_rate_limit_tokens(server):
    """Goal: a reserve denied for credits takes no tokens (all-or-nothing across credits and limits)."""
    await server.open_account("free-1", "free")
    denied = await server.quota.Reserve(reserve("free-1", "big", action="doc.summarize", amount=1_000))
    assert denied.decision == INSUFFICIENT
    assert [(lim.name, lim.remaining, lim.reset_after_ms) for lim in (await server.balance("free-1")).limits] == [
        ("input_tokens_per_minute", TOKENS_CAPACITY, 0), ("requests_per_minute", RPM_CAPACITY, 0)]  # untouched
    for i in range(RPM_CAPACITY):
        assert (await server.quota.Charge(charge("free-1", f"c{i}", action="doc.summarize"))).decision == OK


async def test_concurrency_limit_counts_open_holds(server):
    """Goal: with max_open_holds 2, a third open hold is DECISION_CONCURRENCY_LIMITED; releasing one
    makes room; a Charge (no hold) is not limited."""
    await server.open_account("team-1", "team", grant=100)
    for rid in ("r1", "r2"):
        assert (await server.quota.Reserve(reserve("team-1", rid, amount=10))).decision == OK
    third = await server.quota.Reserve(reserve("team-1", "r3", amount=10))
    assert (third.decision, third.amount_held, third.available_after) == (CONCURRENCY, 0, 80)
    check = await server.quota.Check(pb.CheckRequest(account_id="team-1", amount=10))
    assert check.decision == CONCURRENCY
    assert (await server.quota.Charge(charge("team-1", "c", amount=10))).decision == OK
    await server.quota.Commit(pb.CommitRequest(account_id="team-1", reservation_id="r1"))
    retry = await server.quota.Reserve(reserve("team-1", "r3", amount=10))
    assert (retry.decision, retry.amount_held, retry.available_after) == (OK, 10, 60)


async def test_suspended_account_is_denied_and_can_still_settle_open_holds(server):
    """Goal: a suspended account gets DECISION_ACCOUNT_SUSPENDED on Reserve, Charge and Check; commits
    and releases of its open holds still work; reactivation lifts it."""
    await server.open_account("acct", grant=100)
    await server.quota.Reserve(reserve("acct", "open1", amount=10))
    await server.quota.Reserve(reserve("acct", "open2", amount=10))
    await server.admin.UpsertAccount(apb.UpsertAccountRequest(account_id="acct", status=ACCOUNT_STATUS_SUSPENDED))
    r = await server.quota.Reserve(reserve("acct", "r", amount=1))
    c = await server.quota.Charge(charge("acct", "c", amount=1))
    k = await server.quota.Check(pb.CheckRequest(account_id="acct", amount=1))
    assert (r.decision, c.decision, k.decision) == (SUSPENDED, SUSPENDED, SUSPENDED)
    committed = await server.quota.Commit(pb.CommitRequest(account_id="acct", reservation_id="open1", amount=4))
    assert (committed.amount_charged, committed.amount_released) == (4, 6)
    released = await server.quota.Release(pb.ReleaseRequest(account_id="acct", reservation_id="open2"))
    assert released.amount_released == 10
    b = await server.balance("acct")
    assert (b.status, b.available) == (ACCOUNT_STATUS_SUSPENDED, 96)
    await server.admin.UpsertAccount(apb.UpsertAccountRequest(account_id="acct", status=ACCOUNT_STATUS_ACTIVE))
    assert (await server.quota.Charge(charge("acct", "c", amount=1))).decision == OK


async def test_suspended_account_cannot_extend_a_hold(server):
    """Goal: "every reserve, charge and extension is denied" for a suspended account (enums.proto):
    raising a hold is DECISION_ACCOUNT_SUSPENDED and leaves it as it was."""
    await server.open_account("acct", grant=100)
    r = await server.quota.Reserve(reserve("acct", "r1", amount=10, ttl_ms=10_000))
    await server.admin.UpsertAccount(apb.UpsertAccountRequest(account_id="acct", status=ACCOUNT_STATUS_SUSPENDED))
    e = await server.quota.Extend(pb.ExtendRequest(account_id="acct", reservation_id="r1", hold_total=50, ttl_ms=20_000))
    assert (e.decision, e.amount_held, e.expires_at_ms, e.available_after) == (SUSPENDED, 10, r.expires_at_ms, 90)
    b = await server.balance("acct")
    assert (b.held, b.available) == (10, 90)


async def test_denials_are_checked_in_the_contract_order(server):
    """Goal: suspended before feature, feature before rate limit, rate limit before concurrency and
    credits, concurrency before credits."""
    # suspended beats feature-not-in-plan
    await server.open_account("free-s", "free")
    await server.admin.UpsertAccount(apb.UpsertAccountRequest(account_id="free-s", status=ACCOUNT_STATUS_SUSPENDED))
    assert (await server.quota.Reserve(reserve("free-s", "r", action="video.render"))).decision == SUSPENDED
    # feature beats rate limit; rate limit beats credits
    await server.open_account("free-r", "free")
    for i in range(RPM_CAPACITY):
        await server.quota.Charge(charge("free-r", f"c{i}", action="doc.summarize"))
    assert (await server.quota.Reserve(reserve("free-r", "r1", action="video.render"))).decision == FEATURE
    assert (await server.quota.Reserve(reserve("free-r", "r2", action="doc.summarize", amount=10**6))).decision == RATE_LIMITED
    # concurrency beats credits
    await server.open_account("team-1", "team", grant=100)
    await server.quota.Reserve(reserve("team-1", "a", amount=1))
    await server.quota.Reserve(reserve("team-1", "b", amount=1))
    assert (await server.quota.Reserve(reserve("team-1", "c", amount=10**6))).decision == CONCURRENCY


async def test_unlimited_plan_never_checks_credits_but_applies_limits(server):
    """Goal: an unlimited account holds and charges any amount with no credits (the balance never
    moves), usage still records the amounts, and its rate limit still applies."""
    await server.open_account("sub", "unlimited")
    r = await server.quota.Reserve(reserve("sub", "r1", amount=10**15))
    assert (r.decision, r.amount_held) == (OK, 10**15)
    c = await server.quota.Commit(pb.CommitRequest(account_id="sub", reservation_id="r1", amount=700))
    assert (c.amount_charged, c.amount_uncharged) == (700, 0)
    ch = await server.quota.Charge(charge("sub", "c1", action="video.render"))
    assert (ch.decision, ch.amount_charged) == (OK, 50)
    assert UNLIMITED_RPS_CAPACITY == 3
    ch2 = await server.quota.Charge(charge("sub", "c2", amount=1))
    assert ch2.decision == OK
    limited = await server.quota.Charge(charge("sub", "c3", amount=1))
    assert (limited.decision, limited.limit_name, limited.retry_after_ms) == (RATE_LIMITED, "requests_per_second", 1_000)
    b = await server.balance("sub")
    assert (b.balance, b.held) == (0, 0)
    assert [(u.reservation_id or u.charge_id, u.amount_charged) for u in await server.usage("sub")] == [
        ("r1", 700), ("c1", 50), ("c2", 1)]


async def test_unlimited_plan_usage_emits_no_balance_depleted(server):
    """Goal: commits and charges on an unlimited plan (whose `available` limits nothing and is
    usually 0) emit no balance.depleted, on the unary calls and in a Batch; a prepaid account
    spent to 0 still does."""
    await server.open_account("sub", "unlimited")
    await server.quota.Reserve(reserve("sub", "r1", amount=100))
    await server.quota.Commit(pb.CommitRequest(account_id="sub", reservation_id="r1", amount=70))
    await server.quota.Charge(charge("sub", "c1", amount=1))
    await server.quota.Batch(pb.BatchRequest(ops=[
        pb.BatchOp(reserve=reserve("sub", "r2", amount=5)),
        pb.BatchOp(commit=pb.CommitRequest(account_id="sub", reservation_id="r2", amount=5)),
        pb.BatchOp(charge=charge("sub", "c2", amount=1)),
    ]))
    await server.open_account("pre", "prepaid")
    await server.admin.Grant(apb.GrantRequest(account_id="pre", grant_id="g", amount=3))
    await server.quota.Batch(pb.BatchRequest(ops=[pb.BatchOp(charge=charge("pre", "c3", amount=3))]))
    events = await server.server.storage.read_events(0, 1000)
    assert [(e.account_id, e.type) for e in events if e.type == "balance.depleted"] == [("pre", "balance.depleted")]
    assert len(await server.usage("sub")) == 3  # the usage itself is recorded


async def test_get_balance_lists_every_limit_of_the_plan_full_until_used(server):
    """Goal: GetBalance.limits has each rate limit of the account's plan, sorted by name, also
    those never used yet (full: remaining = capacity, reset_after_ms 0); a used one shows its
    bucket; after a plan change, the new plan's limits."""
    await server.open_account("free-1", "free")
    fresh = [(lim.name, lim.remaining, lim.capacity, lim.reset_after_ms) for lim in (await server.balance("free-1")).limits]
    assert fresh == [("input_tokens_per_minute", TOKENS_CAPACITY, TOKENS_CAPACITY, 0),
                     ("requests_per_minute", RPM_CAPACITY, RPM_CAPACITY, 0)]
    assert (await server.quota.Charge(charge("free-1", "c1", action="doc.summarize"))).decision == OK
    used = {lim.name: (lim.remaining, lim.reset_after_ms) for lim in (await server.balance("free-1")).limits}
    assert used == {"input_tokens_per_minute": (TOKENS_CAPACITY, 0), "requests_per_minute": (RPM_CAPACITY - 1, 60_000)}
    await server.admin.UpsertAccount(apb.UpsertAccountRequest(account_id="free-1", plan_id="unlimited"))
    assert [lim.name for lim in (await server.balance("free-1")).limits] == [
        lim.name for lim in sorted(server.config.plans["unlimited"].limits, key=lambda lim: lim.name)]


async def test_startup_warns_about_accounts_on_a_plan_the_config_dropped(server_config_data, manual_clock, caplog):
    """Goal: accounts whose plan the configuration no longer defines are served as if they had
    no plan, and the server says so when it starts: one warning per such plan, with the count."""
    server_config_data["plans"]["legacy"] = {"features": ["image.generate"]}
    async with running(server_config_data, manual_clock) as srv:
        await srv.open_account("old-1", "legacy")
        await srv.open_account("old-2", "legacy")
        await srv.open_account("new-1", "prepaid")
    del server_config_data["plans"]["legacy"]
    caplog.set_level(logging.WARNING, logger="quota.server")
    async with running(server_config_data, manual_clock) as srv:
        warnings = [r.getMessage() for r in caplog.records if "does not define" in r.getMessage()]
        assert len(warnings) == 1 and warnings[0].startswith("2 account(s) on plan 'legacy'"), warnings
        await srv.admin.Grant(apb.GrantRequest(account_id="old-1", grant_id="g", amount=10))
        r = await srv.quota.Charge(charge("old-1", "c1", action="video.render", amount=5))  # not a legacy feature
        assert r.decision == OK


async def test_soft_limit_warns_with_limit_low_before_the_limit_blocks(server_config_data, manual_clock):
    """Goal: a rate limit with warn_at_percent (a soft limit) emits limit.low once when usage
    leaves at most that share of its capacity, still allowing calls until the bucket is empty
    (then RATE_LIMITED as any limit); once refilled above, it warns again next time."""
    server_config_data["plans"]["soft"] = {"unlimited": True, "limits": [
        {"name": "images_per_minute", "capacity": 10, "refill_period_ms": 60_000, "warn_at_percent": 20},
        {"name": "plain", "capacity": 1000, "refill_period_ms": 60_000},
    ]}
    async with running(server_config_data, manual_clock) as srv:
        await srv.open_account("s-1", "soft")

        async def lows() -> list[dict]:
            events = await srv.server.storage.read_events(0, 1000, "s-1")
            return [json.loads(e.payload) for e in events if e.type == "limit.low"]

        for i in range(7):
            assert (await srv.quota.Charge(charge("s-1", f"c{i}", amount=1))).decision == OK
        assert await lows() == []                                          # 3 left of 10: above 20 %
        assert (await srv.quota.Charge(charge("s-1", "c7", amount=1))).decision == OK
        warning = {"limit_name": "images_per_minute", "remaining": "2", "capacity": "10", "warn_at_percent": "20"}
        assert await lows() == [warning]                                   # 2 left: 20 %
        for i in (8, 9):
            assert (await srv.quota.Charge(charge("s-1", f"c{i}", amount=1))).decision == OK
        assert (await srv.quota.Charge(charge("s-1", "c10", amount=1))).decision == RATE_LIMITED
        assert await lows() == [warning]                                   # once
        await srv.advance(60_000)                                          # refilled
        for i in range(11, 19):
            assert (await srv.quota.Charge(charge("s-1", f"c{i}", amount=1))).decision == OK
        assert await lows() == [warning, warning]                          # armed again, warned again


async def test_changed_plan_terms_reach_the_accounts_on_the_plan(server_config_data, manual_clock):
    """Goal: max_open_holds and unlimited, copied to an account when it joins its plan, follow
    the plan as configured when the server starts (they used to stay as they were at joining,
    with no way to refresh them short of leaving and re-joining the plan)."""
    server_config_data["plans"]["capped"] = {"max_open_holds": 1}
    async with running(server_config_data, manual_clock) as srv:
        await srv.open_account("k-1", "capped")
        await srv.admin.Grant(apb.GrantRequest(account_id="k-1", grant_id="g", amount=100))
        assert (await srv.quota.Reserve(reserve("k-1", "r1", amount=1))).decision == OK
        assert (await srv.quota.Reserve(reserve("k-1", "r2", amount=1))).decision == CONCURRENCY
        await srv.open_account("k-2", "capped")
        assert (await srv.quota.Charge(charge("k-2", "c1", amount=5))).decision == INSUFFICIENT
    server_config_data["plans"]["capped"] = {"max_open_holds": 2, "unlimited": True}
    async with running(server_config_data, manual_clock) as srv:
        assert (await srv.quota.Reserve(reserve("k-1", "r2", amount=1))).decision == OK
        assert (await srv.quota.Reserve(reserve("k-1", "r3", amount=1))).decision == CONCURRENCY
        assert (await srv.quota.Charge(charge("k-2", "c1", amount=5))).decision == OK  # no credit check now
        account = await srv.admin.GetAccount(apb.GetAccountRequest(account_id="k-2"))
        assert account.account.plan_id == "capped"

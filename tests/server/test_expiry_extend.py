"""Time on the manual clock: holds that expire (released or committed), late commits, releases
after expiry, and Extend (raise, refresh, denial, bad targets, closed holds)."""
from __future__ import annotations

import grpc
import pytest
from quota.v1 import quota_service_pb2 as pb
from quota.v1.enums_pb2 import DECISION_INSUFFICIENT_CREDITS as INSUFFICIENT
from quota.v1.enums_pb2 import DECISION_OK as OK
from quota.v1.enums_pb2 import EXPIRE_ACTION_COMMIT, EXPIRE_ACTION_RELEASE

from tests.support.config import HOLD_TTL_MS
from tests.support.status import fails

FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


def reserve(reservation_id: str, **fields) -> pb.ReserveRequest:
    return pb.ReserveRequest(account_id="acct", reservation_id=reservation_id, **fields)


def commit(reservation_id: str, **fields) -> pb.CommitRequest:
    return pb.CommitRequest(account_id="acct", reservation_id=reservation_id, **fields)


def release(reservation_id: str) -> pb.ReleaseRequest:
    return pb.ReleaseRequest(account_id="acct", reservation_id=reservation_id)


def extend(reservation_id: str, **fields) -> pb.ExtendRequest:
    return pb.ExtendRequest(account_id="acct", reservation_id=reservation_id, **fields)


# -- expiry -----------------------------------------------------------------------------------


async def test_hold_expires_exactly_at_its_ttl_and_is_released(server):
    """Goal: a hold is still held 1 ms before expires_at_ms and released at expires_at_ms."""
    await server.open_account("acct", grant=100)
    await server.quota.Reserve(reserve("r1", amount=60, ttl_ms=1_000))
    await server.advance(999)
    b = await server.balance("acct")
    assert (b.held, b.available) == (60, 40)
    await server.advance(1)
    b = await server.balance("acct")
    assert (b.balance, b.held, b.available) == (100, 0, 100)


async def test_reads_see_a_hold_expired_before_any_sweep(server):
    """Goal: GetBalance and Check answer for now: a hold whose TTL has run out no longer counts
    (held, available, the concurrency limit) even though no sweep or write has run since, as a
    Reserve at the same moment would find (time moves on the manual clock only)."""
    await server.open_account("acct", plan_id="team", grant=100)  # max_open_holds 2
    for rid in ("r1", "r2"):
        await server.quota.Reserve(reserve(rid, amount=50, ttl_ms=1_000))
    b = await server.balance("acct")
    assert (b.held, b.available) == (100, 0)
    server.clock.advance_ms(1_000)  # no sweep, no write: only reads below
    b = await server.balance("acct")
    assert (b.balance, b.held, b.available) == (100, 0, 100)
    c = await server.quota.Check(pb.CheckRequest(account_id="acct", amount=100))
    assert (c.decision, c.available) == (OK, 100)
    r = await server.quota.Reserve(reserve("r3", amount=100))
    assert (r.decision, r.amount_held) == (OK, 100)
    # Check first this time (its own path): both holds of acct-2 are past their TTL.
    await server.open_account("acct-2", plan_id="team", grant=100)
    for rid in ("r1", "r2"):
        await server.quota.Reserve(pb.ReserveRequest(account_id="acct-2", reservation_id=rid, amount=10, ttl_ms=1_000))
    server.clock.advance_ms(1_000)
    c = await server.quota.Check(pb.CheckRequest(account_id="acct-2", amount=100))
    assert (c.decision, c.available) == (OK, 100)


async def test_late_commit_after_expiry_charges_available_and_reports_uncharged(server):
    """Goal: a commit after the hold expired and was released is a late commit: charged from the
    available balance as far as possible (late = true), the rest reported as amount_uncharged and
    in the usage record; its replay returns the same result."""
    await server.open_account("acct", grant=100)
    await server.quota.Reserve(reserve("r1", amount=60, ttl_ms=1_000, on_expire=EXPIRE_ACTION_RELEASE))
    await server.advance(1_000)
    spent = await server.quota.Charge(pb.ChargeRequest(account_id="acct", charge_id="meanwhile", amount=80))
    assert (spent.decision, spent.available_after) == (OK, 20)
    late = await server.quota.Commit(commit("r1"))
    assert (late.amount_charged, late.amount_released, late.amount_uncharged, late.available_after, late.late) == (
        20, 0, 40, 0, True)
    assert await server.quota.Commit(commit("r1")) == late
    b = await server.balance("acct")
    assert (b.balance, b.held, b.available) == (0, 0, 0)
    records = {r.reservation_id: r for r in await server.usage("acct") if r.reservation_id}
    assert (records["r1"].amount_charged, records["r1"].amount_uncharged, records["r1"].late) == (20, 40, True)


async def test_late_commit_with_enough_credit_charges_the_actual_amount(server):
    """Goal: a late commit whose actual cost is covered is charged in full, still late = true."""
    await server.open_account("acct", grant=100)
    await server.quota.Reserve(reserve("r1", amount=60, ttl_ms=1_000))
    await server.advance(5_000)
    late = await server.quota.Commit(commit("r1", amount=25))
    assert (late.amount_charged, late.amount_released, late.amount_uncharged, late.available_after, late.late) == (
        25, 0, 0, 75, True)


async def test_release_after_expiry_returns_zero_and_closes_the_hold(server):
    """Goal: releasing an expired hold returns amount_released = 0; a later commit of it is
    FAILED_PRECONDITION (RESERVATION_RELEASED) and charges nothing."""
    await server.open_account("acct", grant=100)
    await server.quota.Reserve(reserve("r1", amount=60, ttl_ms=1_000))
    await server.advance(1_000)
    r = await server.quota.Release(release("r1"))
    assert (r.amount_released, r.available_after) == (0, 100)
    failure = await fails(server.quota.Commit(commit("r1", amount=10)))
    assert (failure.code, failure.reason) == (FAILED_PRECONDITION, "RESERVATION_RELEASED")
    assert await server.available("acct") == 100
    assert await server.usage("acct") == []


async def test_expire_action_commit_charges_the_whole_hold_at_expiry(server):
    """Goal: with EXPIRE_ACTION_COMMIT the hold is committed in full when it expires; a later commit
    returns that auto-commit result (late = true) and charges nothing more."""
    await server.open_account("acct", grant=100)
    await server.quota.Reserve(reserve("r1", amount=30, ttl_ms=1_000, on_expire=EXPIRE_ACTION_COMMIT))
    await server.advance(1_000)
    b = await server.balance("acct")
    assert (b.balance, b.held, b.available) == (70, 0, 70)
    c = await server.quota.Commit(commit("r1"))
    assert (c.amount_charged, c.amount_released, c.amount_uncharged, c.available_after, c.late) == (30, 0, 0, 70, True)
    assert await server.available("acct") == 70
    failure = await fails(server.quota.Release(release("r1")))
    assert (failure.code, failure.reason) == (FAILED_PRECONDITION, "RESERVATION_COMMITTED")


async def test_expire_action_commit_writes_a_usage_record(server):
    """Goal: the auto-commit at expiry is a commit, so it writes exactly one usage record
    (proto: "UsageRecord is written by every commit and charge"), with the reserve's action;
    a later Commit of it is a replay and adds none. Regression: it wrote none (the engine could
    not see which holds the sweep committed; the core now reports them)."""
    await server.open_account("acct", grant=100)
    await server.quota.Reserve(reserve("r1", amount=30, action="doc.summarize", ttl_ms=1_000,
                                       on_expire=EXPIRE_ACTION_COMMIT))
    await server.advance(1_000)
    await server.quota.Commit(commit("r1"))
    records = await server.usage("acct")
    assert [(r.reservation_id, r.action, r.amount_charged, r.late) for r in records] == [
        ("r1", "doc.summarize", 30, True)]


# -- extend -----------------------------------------------------------------------------------


async def test_extend_raises_the_hold_and_sets_a_new_ttl_from_now(server, manual_clock):
    """Goal: Extend to an absolute hold_total takes the difference from available and sets the TTL
    from now; repeating it (a retry) changes nothing more."""
    await server.open_account("acct", grant=100)
    await server.quota.Reserve(reserve("r1", amount=30, ttl_ms=10_000))
    await server.advance(5_000)
    e = await server.quota.Extend(extend("r1", hold_total=50, ttl_ms=20_000))
    assert (e.decision, e.amount_held, e.expires_at_ms, e.available_after) == (OK, 50, manual_clock.now_ms + 20_000, 50)
    again = await server.quota.Extend(extend("r1", hold_total=50, ttl_ms=20_000))
    assert again == e
    b = await server.balance("acct")
    assert (b.held, b.available) == (50, 50)


async def test_extend_keeps_a_long_operation_alive(server):
    """Goal: a hold extended before its TTL runs out is still open after the original expiry, and
    its commit is not late."""
    await server.open_account("acct", grant=100)
    await server.quota.Reserve(reserve("r1", amount=30, ttl_ms=1_000))
    await server.advance(900)
    await server.quota.Extend(extend("r1", ttl_ms=1_000))
    await server.advance(600)  # 1500 ms after the reserve
    assert (await server.balance("acct")).held == 30
    c = await server.quota.Commit(commit("r1", amount=30))
    assert (c.amount_charged, c.late) == (30, False)


async def test_extend_with_zero_hold_total_keeps_the_amount_and_refreshes_the_ttl(server, manual_clock):
    """Goal: hold_total 0 keeps the amount; ttl_ms sets the TTL from now, and ttl_ms 0 means
    [defaults] hold_ttl_ms as in Reserve (proto ExtendRequest.ttl_ms)."""
    await server.open_account("acct", grant=100)
    await server.quota.Reserve(reserve("r1", amount=30, ttl_ms=10_000))
    await server.advance(4_000)
    e = await server.quota.Extend(extend("r1", ttl_ms=5_000))
    assert (e.decision, e.amount_held, e.expires_at_ms, e.available_after) == (OK, 30, manual_clock.now_ms + 5_000, 70)
    await server.advance(1_000)
    refreshed = await server.quota.Extend(extend("r1"))
    assert (refreshed.decision, refreshed.amount_held, refreshed.expires_at_ms) == (
        OK, 30, manual_clock.now_ms + HOLD_TTL_MS)


async def test_denied_extend_leaves_the_hold_exactly_as_it_was(server, manual_clock):
    """Goal: when the extra credit is not available the decision is INSUFFICIENT_CREDITS and the
    hold keeps its amount and its TTL (the new TTL in the same request is not applied)."""
    await server.open_account("acct", grant=100)
    r = await server.quota.Reserve(reserve("r1", amount=30, ttl_ms=10_000))
    await server.advance(2_000)
    e = await server.quota.Extend(extend("r1", hold_total=101, ttl_ms=50_000))
    assert (e.decision, e.amount_held, e.expires_at_ms, e.available_after) == (INSUFFICIENT, 30, r.expires_at_ms, 70)
    b = await server.balance("acct")
    assert (b.held, b.available) == (30, 70)
    await server.advance(8_000)  # the original TTL still applies
    assert (await server.balance("acct")).held == 0


async def test_extend_below_the_current_hold_is_invalid_argument(server):
    """Goal: a hold_total below the current hold is INVALID_ARGUMENT (reason INVALID_AMOUNT) and
    leaves the hold unchanged."""
    await server.open_account("acct", grant=100)
    await server.quota.Reserve(reserve("r1", amount=30))
    failure = await fails(server.quota.Extend(extend("r1", hold_total=29)))
    assert (failure.code, failure.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_AMOUNT")
    assert (await server.balance("acct")).held == 30


@pytest.mark.parametrize("state,reason", [
    ("committed", "RESERVATION_COMMITTED"),
    ("released", "RESERVATION_RELEASED"),
    ("expired", "RESERVATION_EXPIRED"),
])
async def test_extend_of_a_hold_no_longer_open_is_failed_precondition(server, state, reason):
    """Goal: extending a committed, released or expired hold is FAILED_PRECONDITION and holds nothing."""
    await server.open_account("acct", grant=100)
    await server.quota.Reserve(reserve("r1", amount=30, ttl_ms=1_000))
    if state == "committed":
        await server.quota.Commit(commit("r1", amount=10))
    elif state == "released":
        await server.quota.Release(release("r1"))
    else:
        await server.advance(1_000)
    before = await server.balance("acct")
    failure = await fails(server.quota.Extend(extend("r1", hold_total=40, ttl_ms=5_000)))
    assert (failure.code, failure.reason) == (FAILED_PRECONDITION, reason)
    assert await server.balance("acct") == before

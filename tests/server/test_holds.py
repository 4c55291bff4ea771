"""Reserve, Commit and Release: holds, settling with the actual cost, partial holds, pricing by
action and quantities, and the FAILED_PRECONDITION states of a settled hold."""
from __future__ import annotations

import grpc
from quota.v1 import quota_service_pb2 as pb
from quota.v1.enums_pb2 import DECISION_INSUFFICIENT_CREDITS as INSUFFICIENT
from quota.v1.enums_pb2 import DECISION_OK as OK

from tests.support.config import HOLD_TTL_MS, build_config
from tests.support.status import fails

FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


def reserve(account_id: str, reservation_id: str, **fields) -> pb.ReserveRequest:
    return pb.ReserveRequest(account_id=account_id, reservation_id=reservation_id, **fields)


def commit(account_id: str, reservation_id: str, **fields) -> pb.CommitRequest:
    return pb.CommitRequest(account_id=account_id, reservation_id=reservation_id, **fields)


async def test_reserve_holds_credits_and_get_balance_shows_them(server, manual_clock):
    """Goal: a reserve holds the amount: held 30, balance unchanged, available 70, and the hold
    expires hold_ttl_ms from now."""
    await server.open_account("acct", grant=100)
    r = await server.quota.Reserve(reserve("acct", "r1", amount=30, ttl_ms=0))
    assert (r.decision, r.reservation_id, r.amount_held, r.available_after) == (OK, "r1", 30, 70)
    assert (r.expires_at_ms, r.retry_after_ms, r.limit_name) == (manual_clock.now_ms + HOLD_TTL_MS, 0, "")
    b = await server.balance("acct")
    assert (b.balance, b.held, b.available, b.credit_limit) == (100, 30, 70, 0)


async def test_commit_less_than_held_charges_it_and_releases_the_rest(server):
    """Goal: actual <= held charges actual and returns the rest to the account."""
    await server.open_account("acct", grant=100)
    await server.quota.Reserve(reserve("acct", "r1", amount=30))
    c = await server.quota.Commit(commit("acct", "r1", amount=20))
    assert (c.amount_charged, c.amount_released, c.amount_uncharged, c.available_after, c.late) == (20, 10, 0, 80, False)
    b = await server.balance("acct")
    assert (b.balance, b.held, b.available) == (80, 0, 80)


async def test_commit_without_amount_charges_the_whole_hold(server):
    """Goal: a commit with neither amount nor quantities charges exactly what was held."""
    await server.open_account("acct", grant=100)
    await server.quota.Reserve(reserve("acct", "r1", amount=30))
    c = await server.quota.Commit(commit("acct", "r1"))
    assert (c.amount_charged, c.amount_released, c.amount_uncharged, c.available_after) == (30, 0, 0, 70)


async def test_commit_of_zero_charges_nothing_and_still_records_usage(server):
    """Goal: amount = 0 (set, not absent) releases the whole hold and writes a usage record of 0."""
    await server.open_account("acct", grant=100)
    await server.quota.Reserve(reserve("acct", "r1", amount=30, action="doc.summarize"))
    c = await server.quota.Commit(commit("acct", "r1", amount=0))
    assert (c.amount_charged, c.amount_released, c.available_after) == (0, 30, 100)
    [record] = await server.usage("acct")
    assert (record.reservation_id, record.action, record.amount_charged, record.amount_uncharged) == (
        "r1", "doc.summarize", 0, 0)


async def test_commit_above_the_hold_charges_the_excess_from_available(server):
    """Goal: actual > held charges the hold plus the excess from the available balance."""
    await server.open_account("acct", grant=100)
    await server.quota.Reserve(reserve("acct", "r1", amount=30))
    c = await server.quota.Commit(commit("acct", "r1", amount=50))
    assert (c.amount_charged, c.amount_released, c.amount_uncharged, c.available_after) == (50, 0, 0, 50)


async def test_commit_excess_that_cannot_be_covered_is_reported_uncharged(server):
    """Goal: the part of an overrun that no credit covers is amount_uncharged, recorded in the usage
    record (never silently dropped), and the balance never goes below zero on a prepaid plan."""
    await server.open_account("acct", grant=100)
    await server.quota.Reserve(reserve("acct", "r1", amount=30))
    await server.quota.Charge(pb.ChargeRequest(account_id="acct", charge_id="other", amount=60))
    c = await server.quota.Commit(commit("acct", "r1", amount=50))
    assert (c.amount_charged, c.amount_released, c.amount_uncharged, c.available_after, c.late) == (40, 0, 10, 0, False)
    b = await server.balance("acct")
    assert (b.balance, b.held, b.available) == (0, 0, 0)
    records = {r.reservation_id or r.charge_id: r for r in await server.usage("acct")}
    assert (records["r1"].amount_charged, records["r1"].amount_uncharged) == (40, 10)


async def test_release_frees_the_hold(server):
    """Goal: Release returns the whole hold; releasing again returns the original result."""
    await server.open_account("acct", grant=100)
    await server.quota.Reserve(reserve("acct", "r1", amount=30))
    first = await server.quota.Release(pb.ReleaseRequest(account_id="acct", reservation_id="r1"))
    assert (first.amount_released, first.available_after) == (30, 100)
    await server.quota.Charge(pb.ChargeRequest(account_id="acct", charge_id="c", amount=5))
    again = await server.quota.Release(pb.ReleaseRequest(account_id="acct", reservation_id="r1"))
    assert again == first
    assert await server.available("acct") == 95


async def test_release_after_commit_is_reservation_committed(server):
    """Goal: release after commit is FAILED_PRECONDITION / RESERVATION_COMMITTED and changes nothing."""
    await server.open_account("acct", grant=100)
    await server.quota.Reserve(reserve("acct", "r1", amount=30))
    await server.quota.Commit(commit("acct", "r1", amount=10))
    failure = await fails(server.quota.Release(pb.ReleaseRequest(account_id="acct", reservation_id="r1")))
    assert (failure.code, failure.reason) == (FAILED_PRECONDITION, "RESERVATION_COMMITTED")
    assert await server.available("acct") == 90


async def test_commit_after_release_is_reservation_released(server):
    """Goal: commit after release is FAILED_PRECONDITION / RESERVATION_RELEASED and charges nothing."""
    await server.open_account("acct", grant=100)
    await server.quota.Reserve(reserve("acct", "r1", amount=30))
    await server.quota.Release(pb.ReleaseRequest(account_id="acct", reservation_id="r1"))
    for request in (commit("acct", "r1"), commit("acct", "r1", amount=5)):
        failure = await fails(server.quota.Commit(request))
        assert (failure.code, failure.reason) == (FAILED_PRECONDITION, "RESERVATION_RELEASED")
    assert await server.available("acct") == 100
    assert await server.usage("acct") == []


async def test_insufficient_credits_denies_and_holds_nothing(server):
    """Goal: a reserve above available is DECISION_INSUFFICIENT_CREDITS, a successful RPC that holds
    nothing and reports the current available."""
    await server.open_account("acct", grant=100)
    r = await server.quota.Reserve(reserve("acct", "r1", amount=101))
    assert (r.decision, r.amount_held, r.available_after, r.expires_at_ms) == (INSUFFICIENT, 0, 100, 0)
    b = await server.balance("acct")
    assert (b.held, b.available) == (0, 100)


async def test_partial_reserve_holds_what_is_available_down_to_min_amount(server):
    """Goal: allow_partial holds the available amount when it is at least min_amount; below
    min_amount (or with nothing available and min_amount 0 meaning 1) it is denied."""
    await server.open_account("acct", grant=100)
    too_little = await server.quota.Reserve(reserve("acct", "p0", amount=150, allow_partial=True, min_amount=101))
    assert (too_little.decision, too_little.amount_held) == (INSUFFICIENT, 0)
    partial = await server.quota.Reserve(reserve("acct", "p1", amount=150, allow_partial=True, min_amount=80))
    assert (partial.decision, partial.amount_held, partial.available_after) == (OK, 100, 0)
    empty = await server.quota.Reserve(reserve("acct", "p2", amount=10, allow_partial=True, min_amount=0))
    assert (empty.decision, empty.amount_held) == (INSUFFICIENT, 0)
    full = await server.quota.Release(pb.ReleaseRequest(account_id="acct", reservation_id="p1"))
    assert full.amount_released == 100
    exact = await server.quota.Reserve(reserve("acct", "p3", amount=60, allow_partial=True, min_amount=1))
    assert (exact.decision, exact.amount_held, exact.available_after) == (OK, 60, 40)


async def test_reserve_priced_by_action_and_explicit_amount_override(server):
    """Goal: with no amount the action's catalog price is held; an explicit amount overrides it."""
    await server.open_account("acct", grant=100)
    priced = await server.quota.Reserve(reserve("acct", "img", action="image.generate"))
    assert (priced.decision, priced.amount_held, priced.available_after) == (OK, 5, 95)
    metered = await server.quota.Reserve(reserve(
        "acct", "llm", action="llm.chat", quantities={"input_tokens": 10_000, "output_tokens": 2_000}))
    # ceil(10000*3*1.2/1000) + ceil(2000*15*1.2/1000) = 36 + 36
    assert (metered.amount_held, metered.available_after) == (72, 23)
    override = await server.quota.Reserve(reserve("acct", "ovr", action="image.generate", amount=7))
    assert (override.amount_held, override.available_after) == (7, 16)


async def test_commit_by_quantities_is_priced_at_the_reserved_price(server, server_config_data, manual_clock):
    """Goal: a commit that gives actual quantities is priced with the unit prices frozen at reserve
    time, even after the catalog changed (restart with llm.chat at double price)."""
    await server.open_account("acct", grant=1000)
    r = await server.quota.Reserve(reserve(
        "acct", "llm", action="llm.chat", quantities={"input_tokens": 10_000, "output_tokens": 2_000}))
    assert r.amount_held == 72
    server_config_data["prices"]["llm.chat"]["per_1000"] = {"input_tokens": 6, "output_tokens": 30}
    server.config = build_config(server_config_data)
    await server.restart()
    quote = await server.quota.Quote(pb.QuoteRequest(
        action="llm.chat", quantities={"input_tokens": 5_000, "output_tokens": 1_000}))
    assert quote.amount == 72  # the new catalog: ceil(5000*6*1.2/1000) + ceil(1000*30*1.2/1000)
    c = await server.quota.Commit(commit("acct", "llm", quantities={"input_tokens": 5_000, "output_tokens": 1_000}))
    # the reserved price: ceil(5000*3*1.2/1000) + ceil(1000*15*1.2/1000) = 18 + 18
    assert (c.amount_charged, c.amount_released, c.available_after) == (36, 36, 964)
    [record] = await server.usage("acct")
    assert (record.action, dict(record.quantities), record.amount_charged) == (
        "llm.chat", {"input_tokens": 5_000, "output_tokens": 1_000}, 36)


async def test_commit_by_quantities_needs_a_priced_reservation(server):
    """Goal: quantities cannot price a hold that was reserved by amount only (INVALID_ARGUMENT)."""
    await server.open_account("acct", grant=100)
    await server.quota.Reserve(reserve("acct", "r1", amount=30))
    failure = await fails(server.quota.Commit(commit("acct", "r1", quantities={"input_tokens": 5})))
    assert (failure.code, failure.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert (await server.balance("acct")).held == 30


async def test_commit_priced_above_the_maximum_by_its_quantities_is_invalid_amount(server, server_config_data):
    """Goal: a commit whose quantities price it above AMOUNT_MAX (at the reserved unit prices) is
    INVALID_ARGUMENT / INVALID_AMOUNT naming `quantities`, unary and as one op of a Batch (the
    Batch's other ops are answered), and the hold stays as it was (it was UNKNOWN, and failed
    the whole Batch)."""
    server_config_data["prices"]["huge"] = {"per_1000": {"q": 10**15}}
    server.config = build_config(server_config_data)
    await server.restart()
    await server.open_account("acct", grant=10**15)
    r = await server.quota.Reserve(reserve("acct", "r1", action="huge", quantities={"q": 1}))
    assert (r.decision, r.amount_held) == (OK, 10**12)
    failure = await fails(server.quota.Commit(commit("acct", "r1", quantities={"q": 10**6})))
    assert (failure.code, failure.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_AMOUNT")
    assert failure.metadata["field"] == "quantities"
    batch = await server.quota.Batch(pb.BatchRequest(ops=[
        pb.BatchOp(commit=commit("acct", "r1", quantities={"q": 10**6})),
        pb.BatchOp(reserve=reserve("acct", "r2", amount=5)),
    ]))
    assert batch.results[0].error.reason == "INVALID_AMOUNT"
    assert batch.results[1].reserve.decision == OK
    assert (await server.balance("acct")).held == 10**12 + 5
    done = await server.quota.Commit(commit("acct", "r1", quantities={"q": 1}))
    assert done.amount_charged == 10**12


async def test_commit_labels_are_merged_over_the_reserve_labels_in_usage(server):
    """Goal: the usage record carries the reserve's labels with the commit's labels merged over
    them (proto: UsageRecord.labels is "a commit's merged over its reserve's")."""
    await server.open_account("acct", grant=100)
    await server.quota.Reserve(reserve("acct", "r1", amount=10, labels={"team": "a", "model": "m1"}))
    await server.quota.Commit(commit("acct", "r1", amount=4, labels={"model": "m2", "region": "eu"}))
    [record] = await server.usage("acct")
    assert dict(record.labels) == {"team": "a", "model": "m2", "region": "eu"}


async def test_charge_is_reserve_and_commit_in_one_step(server):
    """Goal: Charge takes the price at once (fixed, metered, or explicit amount) and records usage
    with its labels; a denied charge changes nothing."""
    await server.open_account("acct", grant=100)
    img = await server.quota.Charge(pb.ChargeRequest(
        account_id="acct", charge_id="c1", action="image.generate", labels={"k": "v"}))
    assert (img.decision, img.amount_charged, img.available_after, img.retry_after_ms, img.limit_name) == (OK, 5, 95, 0, "")
    llm = await server.quota.Charge(pb.ChargeRequest(
        account_id="acct", charge_id="c2", action="llm.chat", quantities={"input_tokens": 1234, "output_tokens": 567}))
    assert (llm.amount_charged, llm.available_after) == (16, 79)
    denied = await server.quota.Charge(pb.ChargeRequest(account_id="acct", charge_id="c3", amount=80))
    assert (denied.decision, denied.amount_charged, denied.available_after) == (INSUFFICIENT, 0, 79)
    records = await server.usage("acct")
    assert [(r.charge_id, r.action, r.amount_charged, dict(r.labels)) for r in records] == [
        ("c1", "image.generate", 5, {"k": "v"}), ("c2", "llm.chat", 16, {})]


async def test_check_answers_without_changing_anything(server):
    """Goal: Check gives the decision a charge would get and the available amount, and changes
    nothing (not even when repeated)."""
    await server.open_account("acct", grant=100)
    before = await server.balance("acct")
    ok = await server.quota.Check(pb.CheckRequest(account_id="acct", action="video.render"))
    assert (ok.decision, ok.available) == (OK, 100)
    denied = await server.quota.Check(pb.CheckRequest(account_id="acct", amount=101))
    assert (denied.decision, denied.available) == (INSUFFICIENT, 100)
    assert await server.balance("acct") == before
    assert await server.usage("acct") == []

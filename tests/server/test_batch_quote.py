"""Quote (exact integer prices) and Batch (independent ops with a result or an error each)."""
from __future__ import annotations

import grpc
from quota.v1 import admin_service_pb2 as apb
from quota.v1 import quota_service_pb2 as pb
from quota.v1.enums_pb2 import DECISION_INSUFFICIENT_CREDITS as INSUFFICIENT
from quota.v1.enums_pb2 import DECISION_OK as OK
from quota.v1.enums_pb2 import QUOTE_LINE_KIND_FIXED, QUOTE_LINE_KIND_METERED

from tests.support.status import fails


async def test_quote_prices_metered_lines_each_rounded_up_with_margin(server):
    """Goal: the API.md example: llm.chat with 1234 input and 567 output tokens is
    ceil(1234*3*1.2/1000) + ceil(567*15*1.2/1000) = 5 + 11 = 16, line by line; unnamed quantities
    are ignored; no account is needed."""
    q = await server.quota.Quote(pb.QuoteRequest(
        action="llm.chat", quantities={"input_tokens": 1234, "output_tokens": 567, "images": 9}))
    assert q.amount == 16
    assert q.price_version != ""
    lines = sorted((l.kind, l.quantity_name, l.quantity, l.per_1000, l.margin_percent, l.amount) for l in q.lines)
    assert lines == [
        (QUOTE_LINE_KIND_METERED, "input_tokens", 1234, 3, 20, 5),
        (QUOTE_LINE_KIND_METERED, "output_tokens", 567, 15, 20, 11),
    ]


async def test_quote_fixed_price_and_zero_quantities(server):
    """Goal: a fixed price quotes its amount on a FIXED line; a metered action with no quantities
    costs 0; exact integers, never floats."""
    fixed = await server.quota.Quote(pb.QuoteRequest(action="image.generate"))
    assert fixed.amount == 5
    assert [(l.kind, l.fixed_amount, l.amount) for l in fixed.lines] == [(QUOTE_LINE_KIND_FIXED, 5, 5)]
    empty = await server.quota.Quote(pb.QuoteRequest(action="llm.chat"))
    assert empty.amount == 0
    one = await server.quota.Quote(pb.QuoteRequest(action="llm.chat", quantities={"input_tokens": 1}))
    assert one.amount == 1  # ceil(1*3*120/100000): any usage costs at least one unit
    big = await server.quota.Quote(pb.QuoteRequest(action="llm.chat", quantities={"output_tokens": 10**12}))
    assert big.amount == 18 * 10**9  # 1e12 * 15 * 1.2 / 1000, exactly


async def test_quote_changes_nothing_and_refuses_a_missing_or_negative_input(server):
    """Goal: Quote for an account reads no balance and changes nothing; no action is INVALID_ARGUMENT,
    a negative quantity INVALID_ARGUMENT."""
    await server.open_account("acct", grant=100)
    before = await server.balance("acct")
    q = await server.quota.Quote(pb.QuoteRequest(account_id="acct", action="video.render"))
    assert q.amount == 50
    assert await server.balance("acct") == before
    # account_id only routes the call: an account that does not exist gets the same price
    assert await server.quota.Quote(pb.QuoteRequest(account_id="no-such-account", action="video.render")) == q
    failure = await fails(server.quota.Quote(pb.QuoteRequest(account_id="bad id", action="video.render")))
    assert (failure.code, failure.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ID")
    failure = await fails(server.quota.Quote(pb.QuoteRequest()))
    assert (failure.code, failure.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    failure = await fails(server.quota.Quote(pb.QuoteRequest(action="llm.chat", quantities={"input_tokens": -5})))
    assert (failure.code, failure.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")


async def test_batch_runs_mixed_ops_with_per_item_results_and_errors(server):
    """Goal: a Batch answers one result per op in order: responses for the good ops (mutations are
    applied, reads see them) and, for the bad ones, the error status and ErrorInfo reason the unary
    call would have failed with, without failing the other ops."""
    await server.open_account("acct", grant=100)
    await server.quota.Reserve(pb.ReserveRequest(account_id="acct", reservation_id="earlier", amount=20))
    ops = [
        pb.BatchOp(reserve=pb.ReserveRequest(account_id="acct", reservation_id="r1", amount=10)),
        pb.BatchOp(charge=pb.ChargeRequest(account_id="acct", charge_id="c1", action="image.generate")),
        pb.BatchOp(commit=pb.CommitRequest(account_id="acct", reservation_id="earlier", amount=15)),
        pb.BatchOp(release=pb.ReleaseRequest(account_id="acct", reservation_id="missing")),
        pb.BatchOp(charge=pb.ChargeRequest(account_id="acct", charge_id="bad id", amount=1)),
        pb.BatchOp(charge=pb.ChargeRequest(account_id="acct", charge_id="c2", amount=1_000)),
        pb.BatchOp(extend=pb.ExtendRequest(account_id="acct", reservation_id="earlier", hold_total=30)),
        pb.BatchOp(check=pb.CheckRequest(account_id="acct", amount=70)),
        pb.BatchOp(quote=pb.QuoteRequest(action="doc.summarize")),
        pb.BatchOp(get_balance=pb.GetBalanceRequest(account_id="acct")),
        pb.BatchOp(),
        pb.BatchOp(charge=pb.ChargeRequest(account_id="nobody", charge_id="c", amount=1)),
    ]
    response = await server.quota.Batch(pb.BatchRequest(ops=ops))
    kinds = [r.WhichOneof("result") for r in response.results]
    assert kinds == ["reserve", "charge", "commit", "error", "error", "charge", "error", "check", "quote",
                     "get_balance", "error", "error"]
    r = response.results
    assert (r[0].reserve.decision, r[0].reserve.amount_held) == (OK, 10)
    assert (r[1].charge.decision, r[1].charge.amount_charged) == (OK, 5)
    assert (r[2].commit.amount_charged, r[2].commit.amount_released) == (15, 5)
    assert (r[3].error.code, r[3].error.reason) == (grpc.StatusCode.NOT_FOUND.value[0], "RESERVATION_NOT_FOUND")
    assert (r[4].error.code, r[4].error.reason, dict(r[4].error.metadata)) == (
        grpc.StatusCode.INVALID_ARGUMENT.value[0], "INVALID_ID", {"field": "charge_id"})
    assert r[5].charge.decision == INSUFFICIENT
    assert (r[6].error.code, r[6].error.reason) == (grpc.StatusCode.FAILED_PRECONDITION.value[0], "RESERVATION_COMMITTED")
    assert r[8].quote.amount == 2
    # 100 - 15 (commit) - 5 (charge) - 10 (held r1) = 70 available
    assert (r[9].get_balance.balance, r[9].get_balance.held, r[9].get_balance.available) == (80, 10, 70)
    assert (r[7].check.decision, r[7].check.available) == (OK, 70)
    assert (r[10].error.code, r[10].error.reason) == (grpc.StatusCode.INVALID_ARGUMENT.value[0], "INVALID_ARGUMENT")
    assert (r[11].error.code, r[11].error.reason) == (grpc.StatusCode.NOT_FOUND.value[0], "ACCOUNT_NOT_FOUND")
    b = await server.balance("acct")
    assert (b.balance, b.held, b.available) == (80, 10, 70)


async def test_batch_items_are_idempotent_like_unary_calls(server):
    """Goal: replaying a whole batch returns the same results and charges nothing twice; a batch op
    reusing an id with other parameters gets an IDEMPOTENCY_KEY_REUSED item error."""
    await server.open_account("acct", grant=100)
    request = pb.BatchRequest(ops=[
        pb.BatchOp(charge=pb.ChargeRequest(account_id="acct", charge_id=f"c{i}", amount=10)) for i in range(3)])
    first = await server.quota.Batch(request)
    assert await server.quota.Batch(request) == first
    assert await server.available("acct") == 70
    reuse = await server.quota.Batch(pb.BatchRequest(ops=[
        pb.BatchOp(charge=pb.ChargeRequest(account_id="acct", charge_id="c0", amount=11))]))
    assert (reuse.results[0].error.code, reuse.results[0].error.reason) == (
        grpc.StatusCode.ALREADY_EXISTS.value[0], "IDEMPOTENCY_KEY_REUSED")


async def test_batch_larger_than_max_batch_ops_fails_as_a_whole(server):
    """Goal: more ops than [server] max_batch_ops (default 1000) is INVALID_ARGUMENT for the whole
    batch and nothing in it runs."""
    await server.open_account("acct", grant=2_000)
    ops = [pb.BatchOp(charge=pb.ChargeRequest(account_id="acct", charge_id=f"c{i}", amount=1)) for i in range(1_001)]
    failure = await fails(server.quota.Batch(pb.BatchRequest(ops=ops)))
    assert (failure.code, failure.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert await server.available("acct") == 2_000
    ok = await server.quota.Batch(pb.BatchRequest(ops=ops[:1_000]))
    assert len(ok.results) == 1_000
    assert await server.available("acct") == 1_000


async def test_reserve_and_commit_in_one_batch_write_exactly_one_usage_record(server):
    """Regression: a Reserve and its Commit applied in the same flush (here, one Batch) wrote no
    usage record, because first executions were told apart by the state before the flush. The
    core now reports which ops were replays; a replay of the same Batch adds nothing."""
    await server.open_account("acct", grant=100)
    batch = pb.BatchRequest(ops=[
        pb.BatchOp(reserve=pb.ReserveRequest(account_id="acct", reservation_id="r1", amount=10)),
        pb.BatchOp(commit=pb.CommitRequest(account_id="acct", reservation_id="r1", amount=7)),
    ])
    first = await server.quota.Batch(batch)
    assert first.results[1].commit.amount_charged == 7
    again = await server.quota.Batch(batch)
    assert again == first
    usage = await server.admin.ListUsage(apb.ListUsageRequest(account_id="acct"))
    assert [(r.reservation_id, r.amount_charged) for r in usage.records] == [("r1", 7)]


async def test_batch_reads_see_the_ops_before_them_and_none_after(server):
    """Goal: a Batch runs its ops in order (the proto says so): a Check or GetBalance sees the
    batch's mutations before it and none after it, whether the mutations around it are ones the
    wire fast path decodes (reserves) or not; a pre-flight Check before the Charge it vets
    answers as it would have alone."""
    await server.open_account("acct", grant=100)
    ops = [
        pb.BatchOp(check=pb.CheckRequest(account_id="acct", amount=100)),
        pb.BatchOp(get_balance=pb.GetBalanceRequest(account_id="acct")),
        pb.BatchOp(charge=pb.ChargeRequest(account_id="acct", charge_id="c1", amount=100)),
        pb.BatchOp(check=pb.CheckRequest(account_id="acct", amount=1)),
        pb.BatchOp(get_balance=pb.GetBalanceRequest(account_id="acct")),
    ]
    r = (await server.quota.Batch(pb.BatchRequest(ops=ops))).results
    assert (r[0].check.decision, r[0].check.available) == (OK, 100)
    assert (r[1].get_balance.balance, r[1].get_balance.available) == (100, 100)
    assert (r[2].charge.decision, r[2].charge.amount_charged) == (OK, 100)
    assert (r[3].check.decision, r[3].check.available) == (INSUFFICIENT, 0)
    assert (r[4].get_balance.balance, r[4].get_balance.available) == (0, 0)

    await server.open_account("acct-2", grant=100)
    ops = [
        pb.BatchOp(reserve=pb.ReserveRequest(account_id="acct-2", reservation_id="r1", amount=10)),
        pb.BatchOp(get_balance=pb.GetBalanceRequest(account_id="acct-2")),
        pb.BatchOp(reserve=pb.ReserveRequest(account_id="acct-2", reservation_id="r2", amount=30)),
        pb.BatchOp(check=pb.CheckRequest(account_id="acct-2", amount=61)),
        pb.BatchOp(reserve=pb.ReserveRequest(account_id="acct-2", reservation_id="r3", amount=60)),
        pb.BatchOp(get_balance=pb.GetBalanceRequest(account_id="acct-2")),
    ]
    r = (await server.quota.Batch(pb.BatchRequest(ops=ops))).results
    assert (r[1].get_balance.held, r[1].get_balance.available) == (10, 90)
    assert (r[3].check.decision, r[3].check.available) == (INSUFFICIENT, 60)
    assert (r[4].reserve.decision, r[4].reserve.amount_held) == (OK, 60)
    assert (r[5].get_balance.held, r[5].get_balance.available) == (100, 0)

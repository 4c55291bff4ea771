"""Batch on the wire fast path equals Batch on the Python path.

Random batches (mutations valid and invalid, reads, empty ops, two ops in one, unknown fields,
corrupt items) run on two ledgers restored from the same snapshot: one through
`run_batch_wire` (bytes in, bytes out), one through the generated deserializer, `run_batch` and
the serializer. The ops submitted to the engine are the same tuples in the same order, the
responses parse to the same message, and a request one path refuses the other refuses the same
way.
"""
from __future__ import annotations

import asyncio

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from quota.v1 import quota_service_pb2 as pb

from _fastledger import codes as C
from quota_server.dataplane import run_batch, run_batch_wire
from quota_server.errors import QuotaError

from .support import NOW_NS, MAX_BATCH_OPS, batch_requests, dataplane_on, field_bytes, strict_equal


def run_both(config, snapshot, data: bytes, max_ops: int = MAX_BATCH_OPS):
    """(outcome, submitted ops) of each path; outcome is the response or the exception."""
    outcomes = []
    for fast in (False, True):
        dp, engine = dataplane_on(snapshot, config)
        loop = asyncio.new_event_loop()
        try:
            if fast:
                outcome = pb.BatchResponse.FromString(loop.run_until_complete(run_batch_wire(dp, data, max_ops)))
            else:
                request = pb.BatchRequest.FromString(data)
                if len(request.ops) > max_ops:
                    raise QuotaError("INVALID_ARGUMENT", f"a batch holds at most {max_ops} ops",
                                     metadata={"field": "ops"})
                outcome = pb.BatchResponse.FromString(
                    loop.run_until_complete(run_batch(dp, request)).SerializeToString())
        except (DecodeError, QuotaError) as exc:
            outcome = (type(exc).__name__, str(exc), getattr(exc, "reason", None))
        finally:
            loop.close()
        outcomes.append((outcome, engine.submitted, engine))
    return outcomes


@given(batch_requests())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_batches_answer_like_the_python_path(config, snapshot, data):
    """Goal: same ops submitted in the same order, same results (responses and per-op errors),
    same whole-request failures (corrupt wire format, bad UTF-8)."""
    (slow, slow_ops, slow_engine), (fast, fast_ops, fast_engine) = run_both(config, snapshot, data)
    assert fast == slow
    assert strict_equal([op for op, _ in fast_ops], [op for op, _ in slow_ops])
    # The same usage rows and events, whether derived op by op or as a group.
    assert fast_engine.usage == slow_engine.usage
    assert fast_engine.events == slow_engine.events


def test_batch_with_every_kind_and_errors(config, snapshot):
    """Goal: a hand-written batch mixing fast and handed-over items answers item by item in
    order, reads see the batch's mutations, and errors are per item."""
    ops = [
        pb.BatchOp(reserve=pb.ReserveRequest(account_id="acct-prepaid", reservation_id="b-1", amount=100)),
        pb.BatchOp(commit=pb.CommitRequest(account_id="acct-prepaid", reservation_id="b-1", amount=60)),
        pb.BatchOp(reserve=pb.ReserveRequest(account_id="acct-prepaid", reservation_id="b-2", amount=-5)),
        pb.BatchOp(check=pb.CheckRequest(account_id="acct-prepaid", amount=5)),
        pb.BatchOp(get_balance=pb.GetBalanceRequest(account_id="acct-prepaid")),
        pb.BatchOp(),
        pb.BatchOp(commit=pb.CommitRequest(account_id="acct-prepaid", reservation_id="res-llm",
                                           quantities={"output_tokens": 10})),
        pb.BatchOp(extend=pb.ExtendRequest(account_id="acct-suspended", reservation_id="res-plain", hold_total=99)),
        pb.BatchOp(release=pb.ReleaseRequest(account_id="acct-prepaid", reservation_id="nope")),
        pb.BatchOp(charge=pb.ChargeRequest(account_id="acct-free", charge_id="c-1", action="video.render")),
        pb.BatchOp(charge=pb.ChargeRequest(account_id="acct-free", charge_id="c-2", action="image.generate")),
    ]
    data = pb.BatchRequest(ops=ops).SerializeToString()
    (slow, slow_ops, slow_engine), (fast, fast_ops, fast_engine) = run_both(config, snapshot, data)
    assert fast == slow
    assert strict_equal([op for op, _ in fast_ops], [op for op, _ in slow_ops])
    assert len(fast_engine.usage) == 3 and fast_engine.usage == slow_engine.usage  # 2 commits, 1 charge allowed
    kinds = [r.WhichOneof("result") for r in fast.results]
    assert kinds == ["reserve", "commit", "error", "check", "get_balance", "error", "commit", "extend", "error",
                     "charge", "charge"]
    assert fast.results[2].error.reason == "INVALID_AMOUNT"
    assert fast.results[8].error.reason == "RESERVATION_NOT_FOUND"
    assert fast.results[7].extend.decision == 6  # suspended: answered without the core


def _reserve(account_id: str, reservation_id: str, action: str) -> pb.BatchOp:
    return pb.BatchOp(reserve=pb.ReserveRequest(account_id=account_id, reservation_id=reservation_id,
                                                action=action, amount=1))


def test_gates_follow_the_account_and_the_action_op_by_op(config, snapshot):
    """Goal: the fast path reuses an op's gate and price for the next op only when both name the
    same account and action: a change of either (same action on an account of another plan, another
    action on the same account, a gate whose bucket cost is a quantity of the op) gates afresh."""
    ops = [_reserve("acct-prepaid", "g-1", "video.render"), _reserve("acct-free", "g-2", "video.render"),
           _reserve("acct-free", "g-3", "video.render"), _reserve("acct-free", "g-4", "image.generate"),
           _reserve("acct-prepaid", "g-5", "image.generate"), _reserve("acct-free", "g-6", "llm.chat"),
           _reserve("acct-free", "g-7", "llm.chat"), _reserve("acct-free", "g-8", "")]
    data = pb.BatchRequest(ops=ops).SerializeToString()
    (slow, slow_ops, _), (fast, fast_ops, _) = run_both(config, snapshot, data)
    assert fast == slow
    assert strict_equal([op for op, _ in fast_ops], [op for op, _ in slow_ops])
    assert [op[9] for op, _ in fast_ops] == [True, False, False, True, True, True, True, True]
    assert [len(op[10]) for op, _ in fast_ops] == [0, 1, 1, 1, 0, 2, 2, 1]


def test_a_plan_change_between_batches_is_seen(config, snapshot):
    """Goal: what one Batch remembered of an account's gate is not used by the next one, so an
    upsert that moved the account to another plan in between is seen."""
    dp, engine = dataplane_on(snapshot, config)
    loop = asyncio.new_event_loop()
    try:
        for n in range(2):
            data = pb.BatchRequest(ops=[_reserve("acct-prepaid", f"p-{n}", "video.render")]).SerializeToString()
            loop.run_until_complete(run_batch_wire(dp, data, MAX_BATCH_OPS))
            if n == 0:
                with dp.accounts.changing("acct-prepaid"):
                    engine.ledger.apply([(C.OP_UPSERT, "acct-prepaid", "free", 0, None, None, None)], NOW_NS)
    finally:
        loop.close()
    assert [op[9] for op, _ in engine.submitted] == [True, False]


@pytest.mark.parametrize("data", [
    b"\x0a\x05\x0a\x03\x0a\x01",  # truncated inside an op
    field_bytes(1, 2, field_bytes(1, 2, field_bytes(1, 2, b"\xff\xfe"))),  # bad UTF-8 in a reserve
    field_bytes(1, 2, field_bytes(6, 2, field_bytes(1, 2, b"\xc0\x80"))),  # bad UTF-8 in a read
    field_bytes(1, 0, 5),  # ops with the wrong wire type: an unknown field
    b"\x0b\x0c",  # a group
])
def test_whole_request_failures_are_the_python_paths(config, snapshot, data):
    """Goal: what the generated deserializer refuses, the fast path refuses with the same error."""
    (slow, _, _), (fast, _, _) = run_both(config, snapshot, data)
    assert fast == slow


def test_too_many_ops_is_refused_as_a_whole(config, snapshot):
    """Goal: more ops than the server allows fails the whole batch with INVALID_ARGUMENT, on
    both paths, before anything is submitted."""
    op = pb.BatchOp(release=pb.ReleaseRequest(account_id="acct-prepaid", reservation_id="x"))
    data = pb.BatchRequest(ops=[op] * 4).SerializeToString()
    (slow, slow_ops, _), (fast, fast_ops, _) = run_both(config, snapshot, data, max_ops=3)
    assert fast == slow == ("QuotaError", "a batch holds at most 3 ops", "INVALID_ARGUMENT")
    assert fast_ops == slow_ops == []
    (slow, _, _), (fast, _, _) = run_both(config, snapshot, b"", max_ops=3)
    assert fast == slow == pb.BatchResponse()


def test_an_all_fast_batch_is_derived_as_a_group(config, snapshot):
    """Goal: a batch whose every op is on the fast path goes to the engine as one group (one
    derive_into call, not a derive per op) and derives the same usage rows as the Python path."""
    ops = [pb.BatchOp(charge=pb.ChargeRequest(account_id="acct-free", charge_id=f"g-{i}", action="image.generate"))
           for i in range(5)]
    data = pb.BatchRequest(ops=ops).SerializeToString()
    (slow, _, slow_engine), (fast, fast_ops, fast_engine) = run_both(config, snapshot, data)
    assert fast == slow
    assert [d for _, d in fast_ops] == ["group"] * 5
    assert len(fast_engine.usage) == 5 and fast_engine.usage == slow_engine.usage


def test_usage_chunks_of_consecutive_batches_do_not_mix(config, snapshot):
    """Goal: the group deriver keeps its usage buffers from one Batch to the next; a big Batch
    on two accounts followed by a small one on one account derives, Batch by Batch, exactly the
    rows the Python path derives (nothing of the first Batch's chunks left over in the second)."""
    def charges(account_id, prefix, n, label):
        return [pb.BatchOp(charge=pb.ChargeRequest(account_id=account_id, charge_id=f"{prefix}-{i}",
                                                   action="image.generate", labels={"k": label}))
                for i in range(n)]

    batches = [
        pb.BatchRequest(ops=charges("acct-free", "a", 6, "x" * 40) + charges("acct-payg", "b", 4, "y" * 30)),
        pb.BatchRequest(ops=charges("acct-payg", "c", 1, "z")),
        pb.BatchRequest(ops=charges("acct-free", "d", 2, "w")),
    ]
    rows = []
    for fast in (False, True):
        dp, engine = dataplane_on(snapshot, config)
        loop = asyncio.new_event_loop()
        per_batch = []
        try:
            for request in batches:
                before = len(engine.usage)
                if fast:
                    loop.run_until_complete(run_batch_wire(dp, request.SerializeToString(), MAX_BATCH_OPS))
                else:
                    loop.run_until_complete(run_batch(dp, request))
                per_batch.append(engine.usage[before:])
        finally:
            loop.close()
        rows.append(per_batch)
    slow, fast = rows
    assert len(fast[0]) >= 8 and all(fast), [len(b) for b in fast]  # most ops charged, in every Batch
    assert fast == slow

"""The fast path's decoding of one request equals the Python path's, or hands the request over.

For every request (valid, invalid, oddly encoded, corrupt), `WireCodec.decode` either returns
exactly the op the Python path builds (same tuple, same types, same fingerprint, same meta
bytes) or None, and then the Python path judges it. It must never accept what the Python path
refuses. The common shapes must not be handed over.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from quota.v1 import quota_service_pb2 as pb

from _fastledger import codes as C

from .support import (
    NOW_NS,
    dataplane_on,
    encoded_requests,
    field_bytes,
    python_outcome,
    strict_equal,
    varint,
)

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_same_op(dp, kind: int, data: bytes) -> tuple | None:
    """Decode `data` on both paths; assert the fast one, if it accepts, agrees. Returns it."""
    fast = dp.wire.decode(kind, data)
    python = python_outcome(dp, kind, data)
    if fast is None:
        return None
    assert python[0] == "op", f"fast path accepted what the Python path refuses: {python}"
    assert strict_equal(fast[0], python[1]), f"\nfast:   {fast[0]}\npython: {python[1]}"
    assert (fast[1] is None) == (python[2] is None)
    return fast


@pytest.mark.parametrize("kind", [1, 2, 3, 4, 5])
def test_random_requests_decode_like_the_python_path(config, snapshot, kind):
    """Goal: for random requests of each kind, with edge ids, amounts 0/1/1e15/1e15+1/negative,
    bad TTLs, maps (empty keys, long keys, non-ASCII, 60+ entries), unknown fields, repeated
    fields, overlong varints, truncation and corruption: the fast path agrees or hands over."""
    dp, _ = dataplane_on(snapshot, config)

    @given(encoded_requests(kind))
    @SETTINGS
    def run(data):
        check_same_op(dp, kind, data)

    run()


COMMON = [
    (1, pb.ReserveRequest(account_id="acct-prepaid", reservation_id="r-1", amount=10)),
    (1, pb.ReserveRequest(account_id="acct-prepaid", reservation_id="r-1", action="image.generate")),
    (1, pb.ReserveRequest(account_id="acct-free", reservation_id="r-1", action="llm.chat",
                          quantities={"input_tokens": 1200, "output_tokens": 300}, labels={"model": "m"})),
    (1, pb.ReserveRequest(account_id="acct-free", reservation_id="r-1", amount=3, action="video.render",
                          ttl_ms=1000, allow_partial=True, min_amount=1, on_expire=2)),
    (1, pb.ReserveRequest(account_id="acct-missing", reservation_id="r-1", amount=10)),
    (1, pb.ReserveRequest(account_id="acct-gone-plan", reservation_id="r-1", action="doc.summarize")),
    (2, pb.CommitRequest(account_id="acct-prepaid", reservation_id="res-plain", amount=0)),
    (2, pb.CommitRequest(account_id="acct-prepaid", reservation_id="res-plain")),
    (2, pb.CommitRequest(account_id="acct-prepaid", reservation_id="res-llm", amount=7, labels={"a": "b"})),
    (3, pb.ReleaseRequest(account_id="acct-prepaid", reservation_id="res-plain")),
    (4, pb.ExtendRequest(account_id="acct-prepaid", reservation_id="res-plain", hold_total=50, ttl_ms=5000)),
    (4, pb.ExtendRequest(account_id="acct-prepaid", reservation_id="res-plain")),
    (5, pb.ChargeRequest(account_id="acct-payg", charge_id="c-1", amount=10**15)),
    (5, pb.ChargeRequest(account_id="acct-free", charge_id="c-1", action="llm.chat",
                         quantities={"input_tokens": 10**6}, labels={"k": "v", "a": "é"})),
]


@pytest.mark.parametrize(("kind", "request_"), COMMON, ids=[f"{k}-{i}" for i, (k, _) in enumerate(COMMON)])
def test_common_requests_take_the_fast_path(config, snapshot, kind, request_):
    """Goal: amount-only ops, priced actions, metered actions with quantities, labels, plans with
    limits and feature lists, and unknown accounts are all decoded by the fast path."""
    dp, _ = dataplane_on(snapshot, config)
    assert check_same_op(dp, kind, request_.SerializeToString()) is not None


HANDED_OVER = [
    (1, pb.ReserveRequest(account_id="bad id", reservation_id="r", amount=1)),
    (1, pb.ReserveRequest(account_id="a", reservation_id="r", amount=10**15 + 1)),
    (1, pb.ReserveRequest(account_id="a", reservation_id="r", amount=-1)),
    (1, pb.ReserveRequest(account_id="a", reservation_id="r")),
    (1, pb.ReserveRequest(account_id="a", reservation_id="r", action="unknown.act")),
    (1, pb.ReserveRequest(account_id="a", reservation_id="r", amount=1, ttl_ms=-1)),
    (1, pb.ReserveRequest(account_id="a", reservation_id="r", amount=1, on_expire=3)),
    (1, pb.ReserveRequest(account_id="a", reservation_id="r", amount=1, quantities={"q": -1})),
    (1, pb.ReserveRequest(account_id="a", reservation_id="r", amount=1, labels={"": "v"})),
    (2, pb.CommitRequest(account_id="a", reservation_id="res-llm", quantities={"input_tokens": 1})),
    (4, pb.ExtendRequest(account_id="acct-suspended", reservation_id="res-plain")),
    (5, pb.ChargeRequest(account_id="a", charge_id="c", action="llm.chat", quantities={"output_tokens": 10**15 + 1})),
]


@pytest.mark.parametrize(("kind", "request_"), HANDED_OVER, ids=[f"{k}-{i}" for i, (k, _) in enumerate(HANDED_OVER)])
def test_invalid_or_special_requests_are_handed_over(config, snapshot, kind, request_):
    """Goal: errors and the cases that need the ledger (commit by quantities, extend on a
    suspended account) are left to the Python path, which gives the error or the answer."""
    dp, _ = dataplane_on(snapshot, config)
    assert dp.wire.decode(kind, request_.SerializeToString()) is None


def test_wire_type_mismatch_and_repeats_follow_protobuf_rules(config, snapshot):
    """Goal: a known field sent with another wire type is an unknown field to protobuf (the fast
    path hands it over); a repeated scalar keeps the last value; repeated map entries keep the
    last value per key; an explicit zero `amount` on Commit is present."""
    dp, _ = dataplane_on(snapshot, config)
    base = pb.ReserveRequest(account_id="acct-prepaid", reservation_id="r", amount=5).SerializeToString()
    assert dp.wire.decode(1, base + field_bytes(3, 5, b"\x01\x00\x00\x00")) is None
    assert check_same_op(dp, 1, base + field_bytes(3, 0, 9))[0][4] == 9
    entry = field_bytes(1, 2, b"k") + field_bytes(2, 2, b"v1")
    entry2 = field_bytes(1, 2, b"k") + field_bytes(2, 2, b"v2")
    op = check_same_op(dp, 1, base + field_bytes(10, 2, entry) + field_bytes(10, 2, entry2))[0]
    assert op[11] == b'{"a":"","l":{"k":"v2"}}'
    commit = field_bytes(1, 2, b"acct-prepaid") + field_bytes(2, 2, b"res-plain") + field_bytes(3, 0, 0)
    assert check_same_op(dp, 2, commit)[0][4] == 0
    assert check_same_op(dp, 2, commit[:-2])[0][4] == -1
    assert check_same_op(dp, 1, base + varint(15 << 3 | 2) + varint(3) + b"abc") is not None
    # Every occurrence of a string is UTF-8 checked by protobuf, not only the last one.
    for bad in (field_bytes(1, 2, b"\x80") + field_bytes(1, 2, b"k") + field_bytes(2, 2, b"v"),
                field_bytes(1, 2, b"k") + field_bytes(2, 2, b"\xff") + field_bytes(2, 2, b"v")):
        assert dp.wire.decode(1, base + field_bytes(10, 2, bad)) is None
        assert python_outcome(dp, 1, base + field_bytes(10, 2, bad))[0] == "decode-error"
    assert dp.wire.decode(1, field_bytes(2, 2, b"\x80") + base) is None


def test_buckets_with_quantity_costs_and_static_ones(config, snapshot):
    """Goal: the plan's limits become the same bucket specs: "requests" limits cost 1, quantity
    limits cost the request's quantity (0 when absent), in config order; cached per action."""
    dp, _ = dataplane_on(snapshot, config)
    for quantities in ({"input_tokens": 4000}, {}, {"output_tokens": 5}):
        request = pb.ReserveRequest(account_id="acct-free", reservation_id="r", action="llm.chat",
                                    quantities=quantities)
        op = check_same_op(dp, 1, request.SerializeToString())[0]
        assert [b[0] for b in op[10]] == ["requests_per_minute", "input_tokens_per_minute"]
        assert op[10][1][4] == quantities.get("input_tokens", 0)
    op = check_same_op(dp, 1, pb.ReserveRequest(account_id="acct-free", reservation_id="r",
                                                action="video.render").SerializeToString())[0]
    assert op[9] is False  # video.render is not in the free plan's features


def test_plan_change_is_seen_by_both_paths(config, snapshot):
    """Goal: the account index follows an upsert that changes the plan: after it, both paths
    gate with the new plan (the index drops the account while the upsert is in flight)."""
    dp, engine = dataplane_on(snapshot, config)
    request = pb.ReserveRequest(account_id="acct-prepaid", reservation_id="r", action="video.render")
    assert check_same_op(dp, 1, request.SerializeToString())[0][9] is True
    with dp.accounts.changing("acct-prepaid"):
        engine.ledger.apply([(C.OP_UPSERT, "acct-prepaid", "free", 0, None, None, None)], NOW_NS)
        assert check_same_op(dp, 1, request.SerializeToString())[0][9] is False
        assert "acct-prepaid" not in dp.accounts.entries
    assert check_same_op(dp, 1, request.SerializeToString())[0][9] is False
    assert dp.accounts.entries["acct-prepaid"] == ("free", C.ACCOUNT_ACTIVE)


@given(st.binary(max_size=64))
@settings(max_examples=300, deadline=None)
def test_garbage_never_decodes_to_something_else(config, snapshot, data):
    """Goal: arbitrary bytes never give an op the Python path would not give."""
    dp, _ = dataplane_on(snapshot, config)
    for kind in range(1, 6):
        check_same_op(dp, kind, data)


UTF8_EDGES = [b"", b"\xc0\x80", b"\xc1\xbf", b"\xc2\x80", b"\xdf\xbf", b"\xe0\x80\x80", b"\xe0\xa0\x80", b"\xed\x9f\xbf",
              b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xee\x80\x80", b"\xef\xbf\xbf", b"\xf0\x8f\xbf\xbf",
              b"\xf0\x90\x80\x80", b"\xf4\x8f\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xff", b"\xe2\x82",
              b"\xe2\x82\xac", b"a\x80", b"\x7f", b"\x00", b'"\\/', b"\xf0\x9f\x98\x80"]
map_strings = st.one_of(st.binary(max_size=8), st.text(max_size=6).map(lambda t: t.encode()),
                        st.lists(st.sampled_from(UTF8_EDGES), max_size=3).map(b"".join))


@given(map_strings, map_strings, st.sampled_from([1, 2, 5]))
@settings(max_examples=500, deadline=None)
def test_map_strings_are_checked_and_escaped_like_protobuf_and_json(config, snapshot, key, value, kind):
    """Goal: map keys and label values are UTF-8 checked exactly as protobuf does (overlong
    forms, surrogates, > U+10FFFF, truncation are refused by both) and JSON-escaped into the
    hold's meta exactly as json.dumps does."""
    dp, _ = dataplane_on(snapshot, config)
    label = field_bytes(1, 2, key) + field_bytes(2, 2, value)
    quantity = field_bytes(1, 2, key) + field_bytes(2, 0, 7)
    head = {1: pb.ReserveRequest(account_id="acct-free", reservation_id="r", action="llm.chat"),
            2: pb.CommitRequest(account_id="acct-free", reservation_id="res-llm", amount=1),
            5: pb.ChargeRequest(account_id="acct-free", charge_id="c", action="llm.chat")}[kind]
    label_field, quantity_field = {1: (10, 5), 2: (5, 4), 5: (6, 5)}[kind]
    check_same_op(dp, kind, head.SerializeToString() + field_bytes(label_field, 2, label))
    check_same_op(dp, kind, head.SerializeToString() + field_bytes(quantity_field, 2, quantity))

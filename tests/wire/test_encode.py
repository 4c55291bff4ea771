"""The fast path's response bytes parse to the Python path's response messages.

For random core result tuples of each kind (any int64 values, denials, every error status), the
bytes `WireCodec.encode` writes parse to exactly the message the Python `*_response` builds, or
both raise the same QuotaError. The usage rows and events (`derive`) are the same bytes too.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from quota.v1 import quota_service_pb2 as pb

from _fastledger import codes as C
from quota_server.dataplane import DataPlane
from quota_server.errors import QuotaError

from .support import KINDS, REQUEST_TYPES, dataplane_on, error_tuple, strict_equal

INT64 = st.integers(-(2**63), 2**63 - 1)
statuses = st.one_of(st.just(C.OK), st.just(C.OK), st.sampled_from(sorted(C.STATUS_NAMES)), st.integers(1, 99))
decisions = st.one_of(st.integers(1, 6), st.just(0))
texts = st.one_of(st.just(""), st.none(), st.text(max_size=20))
wide = st.one_of(INT64, st.integers(-5, 5), st.sampled_from([10**6 - 1, 10**6, 10**6 + 1, -(10**6) - 1]))
late = st.one_of(st.booleans(), st.integers(0, 1))

RESULTS = {
    1: st.tuples(statuses, decisions, wide, wide, wide, wide, texts),
    2: st.tuples(statuses, wide, wide, wide, wide, late),
    3: st.tuples(statuses, wide, wide),
    4: st.tuples(statuses, decisions, wide, wide, wide),
    5: st.tuples(statuses, decisions, wide, wide, wide, texts),
}
RESPONSE_TYPES = {1: pb.ReserveResponse, 2: pb.CommitResponse, 3: pb.ReleaseResponse, 4: pb.ExtendResponse,
                  5: pb.ChargeResponse}
REQUESTS = {
    1: pb.ReserveRequest(account_id="acct-prepaid", reservation_id="res-echo:1", amount=5),
    2: pb.CommitRequest(account_id="acct-prepaid", reservation_id="res-plain", amount=5),
    3: pb.ReleaseRequest(account_id="acct-prepaid", reservation_id="res-plain"),
    4: pb.ExtendRequest(account_id="acct-prepaid", reservation_id="res-plain"),
    5: pb.ChargeRequest(account_id="acct-prepaid", charge_id="c-1", amount=5),
}


def python_response(dp: DataPlane, kind: int, request, result: tuple):
    prepared = getattr(dp, "prepare_" + KINDS[kind])(request)
    return prepared.respond(result)


@pytest.mark.parametrize("kind", [1, 2, 3, 4, 5])
def test_random_results_encode_like_the_python_path(config, snapshot, kind):
    """Goal: every result tuple gives the same response message (proto3 defaults omitted,
    negative int64, ms rounding of ns times) or the same error (code, reason, message)."""
    dp, _ = dataplane_on(snapshot, config)
    request = REQUESTS[kind]
    op, _ = dp.wire.decode(kind, request.SerializeToString())
    response_type = RESPONSE_TYPES[kind]

    @given(RESULTS[kind])
    @settings(max_examples=300, deadline=None)
    def run(result):
        try:
            expected = python_response(dp, kind, request, result)
        except QuotaError as exc:
            with pytest.raises(QuotaError) as info:
                dp.wire.encode(kind, op, result)
            assert error_tuple(info.value) == error_tuple(exc)
            return
        except ValueError:  # a value protobuf refuses (e.g. limit_name None is fine, others not)
            return
        data = dp.wire.encode(kind, op, result)
        assert response_type.FromString(data) == expected
        assert data == expected.SerializeToString()  # same field order and encodings, too

    run()


@pytest.mark.parametrize("kind", [2, 5])
def test_usage_rows_and_events_are_the_same_bytes(config, snapshot, kind):
    """Goal: a commit's or charge's derive gives the same usage rows (payload bytes included,
    maps sorted, JSON escapes of any text) and events on both paths, fresh or not, for any result."""
    dp, engine = dataplane_on(snapshot, config)
    text = st.text(max_size=8)

    @given(st.dictionaries(st.text(min_size=1, max_size=5), text, max_size=4),
           st.dictionaries(st.sampled_from(["input_tokens", "output_tokens", "x", "é"]), st.integers(0, 10**6),
                           max_size=3),
           st.sampled_from(["res-plain", "res-llm", "res-img"]), st.sampled_from(["acct-prepaid", "acct-free"]),
           st.tuples(st.just(C.OK), st.integers(-5, 10**6), st.integers(-5, 10**6), st.integers(-5, 10**6),
                     st.integers(-(10**6), 10**6), late) if kind == 2 else
           st.tuples(st.just(C.OK), st.integers(1, 3), st.integers(0, 10**6), st.integers(-(10**6), 10**6),
                     st.integers(0, 10**9), st.sampled_from(["", "requests_per_minute"])),
           st.booleans())
    @settings(max_examples=200, deadline=None)
    def run(labels, quantities, item_id, account_id, result, fresh):
        if kind == 2:
            request = pb.CommitRequest(account_id=account_id, reservation_id=item_id, amount=3, labels=labels)
        else:
            request = pb.ChargeRequest(account_id=account_id, charge_id=item_id, action="llm.chat",
                                       quantities=quantities, labels=labels)
        fast_op, fast_derive = dp.wire.decode(kind, request.SerializeToString())
        prepared = getattr(dp, "prepare_" + KINDS[kind])(request)
        assert strict_equal(fast_op, prepared.op)
        expected = prepared.derive(prepared.op, result, fresh, 1_749_556_800_123)
        actual = fast_derive(fast_op, result, fresh, 1_749_556_800_123)
        assert [list(x) for x in actual] == [list(x) for x in expected]

    run()


def test_request_types_cover_every_kind():
    assert set(REQUEST_TYPES) == set(KINDS) == set(RESULTS) == set(REQUESTS)

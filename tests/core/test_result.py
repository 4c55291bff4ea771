"""`Result`: what `Ledger.apply` answers for each op, a tuple-like value with its items in C."""
from __future__ import annotations

import pickle
import sys

import pytest

import _fastledger
from _fastledger import Result
from _fastledger import codes as C

NOW = 10**15
SECOND = 10**9


def reserve(rid, amount=100, buckets=()):
    return (C.OP_RESERVE, "a", rid, 7, amount, False, 0, 60 * SECOND, C.EXPIRE_RELEASE, True, buckets, b"")


@pytest.fixture
def led():
    led = _fastledger.Ledger()
    assert led.apply([(C.OP_UPSERT, "a", "free", 0, None, None, None),
                      (C.OP_GRANT, "a", "g", 1, 1000, C.LOT_PURCHASED, 0, 0)], NOW) == [(C.OK, True), (C.OK, 1000)]
    return led


def test_every_result_is_a_result_equal_to_its_tuple(led):
    """Goal: results of every shape (error, reserve, commit, release, charge, check) compare,
    hash, print and unpack like the README's tuples, in both directions of ==."""
    got = led.apply([
        reserve("r1"),
        (C.OP_COMMIT, "a", "r1", 7, 60, ()),
        reserve("r2"),
        (C.OP_RELEASE, "a", "r2"),
        (C.OP_CHARGE, "a", "c1", 3, 5, True, ()),
        (C.OP_CHECK, "a", 10**6, True, ()),
        (C.OP_COMMIT, "nobody", "r1", 7, 60, ()),
    ], NOW)
    want = [
        (C.OK, C.DECISION_OK, 100, 900, NOW + 60 * SECOND, 0, ""),
        (C.OK, 60, 40, 0, 940, False),
        (C.OK, C.DECISION_OK, 100, 840, NOW + 60 * SECOND, 0, ""),
        (C.OK, 100, 940),
        (C.OK, C.DECISION_OK, 5, 935, 0, ""),
        (C.OK, C.DECISION_INSUFFICIENT_CREDITS, 935, 0, ""),
        (C.ACCOUNT_NOT_FOUND,),
    ]
    assert all(type(r) is Result for r in got)
    assert got == want and want == got
    for r, t in zip(got, want):
        assert tuple(r) == t and list(r) == list(t) and len(r) == len(t)
        assert hash(r) == hash(t) and repr(r) == repr(t)
        assert [type(x) for x in r] == [type(x) for x in t]  # bools stay bools, ints ints
        assert not r != t and r != t + (0,) and r != list(t)
        assert r[-1] == t[-1] and r[1:3] == t[1:3] and r[::-1] == t[::-1]
    status, decision, *rest = got[0]
    assert (status, decision, rest[-1]) == (C.OK, C.DECISION_OK, "")
    with pytest.raises(IndexError):
        got[6][1]
    with pytest.raises(IndexError):
        got[1][-7]


def test_a_rate_limit_denial_holds_its_bucket_name_without_leaking_it(led):
    """Goal: the str item is owned by the result (kept alive by it, released when it goes)."""
    name = "".join(["per", "_minute"])  # a str object of its own
    spec = ((name, 1, 1, 60 * SECOND, 1),)
    assert led.apply([reserve("r1", buckets=spec)], NOW)[0][1] == C.DECISION_OK
    before = sys.getrefcount(name)
    denials = [led.apply([reserve(f"x{i}", buckets=spec)], NOW)[0] for i in range(100)]
    assert all(d[1] == C.DECISION_RATE_LIMITED and d[6] == name and d[6] is name for d in denials)
    assert sys.getrefcount(name) == before + 100
    del denials
    assert sys.getrefcount(name) == before


def test_results_made_from_tuples_check_their_items():
    """Goal: Result(items) takes ints (int64), bools and one str or None, and refuses the rest."""
    r = Result((0, 1, True, "x", -(2**63), 2**63 - 1))
    assert r == (0, 1, True, "x", -(2**63), 2**63 - 1) and type(r[2]) is bool
    assert Result() == () and len(Result()) == 0 and not Result()
    assert Result((0, None)) == (0, None)
    assert pickle.loads(pickle.dumps(r)) == r
    with pytest.raises(OverflowError):
        Result((2**63,))
    with pytest.raises(ValueError, match="at most one str"):
        Result((0, "a", "b"))
    with pytest.raises(ValueError, match="at most 7"):
        Result(tuple(range(8)))
    with pytest.raises(TypeError):
        Result((0, 1.5))
    with pytest.raises(TypeError):
        Result((0, b"x"))


def test_results_outlive_their_ledger_and_many_batches(led):
    """Goal: results are independent values: kept after the ledger is gone, unchanged by later
    batches that reuse the memory of freed results."""
    kept = led.apply([reserve(f"r{i}") for i in range(5)], NOW)
    for round_ in range(20):
        led.apply([(C.OP_CHECK, "a", 1, True, ()) for _ in range(500)], NOW + round_)
    del led
    assert [r[2] for r in kept] == [100] * 5 and [r[3] for r in kept] == [900, 800, 700, 600, 500]

"""Token buckets: refill over periods, retry_after, the reserve's all-or-nothing take, true-ups."""

from __future__ import annotations

from _fastledger import codes as C

from .helpers import SECOND, bucket, charge, check, commit, grant, reserve

RPM = ("rpm", 3, 1, 10 * SECOND)      # capacity 3, one token every 10 s


def rpm(cost=1):
    return (RPM + (cost,),)


def test_bucket_created_full_then_refills(d):
    assert d(bucket(spec=RPM, delta=2)) == (C.OK, 1)
    assert d.buckets() == [{"name": "rpm", "tokens": 1, "capacity": 3, "reset_after_ns": 20 * SECOND}]
    d.advance(15 * SECOND)
    assert d.buckets() == [{"name": "rpm", "tokens": 2, "capacity": 3, "reset_after_ns": 5 * SECOND}]
    d.advance(5 * SECOND)
    assert d.buckets()[0]["tokens"] == 3 and d.buckets()[0]["reset_after_ns"] == 0
    assert d(bucket(spec=RPM, delta=-5)) == (C.OK, 3)                 # a refund is capped


def test_rate_limited_reserve_changes_nothing(d):
    d(grant(amount=100))
    assert d(reserve(rid="r1", buckets=rpm(2)))[1] == C.DECISION_OK
    assert d(reserve(rid="r2", buckets=rpm(2))) == (
        C.OK, C.DECISION_RATE_LIMITED, 0, 90, 0, 10 * SECOND, "rpm")
    assert d.res("r2") is None and d.account()["held"] == 10
    d.advance(4 * SECOND)
    assert d(check(buckets=rpm(2))) == (C.OK, C.DECISION_RATE_LIMITED, 90, 6 * SECOND, "rpm")
    d.advance(6 * SECOND)
    assert d(reserve(rid="r2", buckets=rpm(2)))[1] == C.DECISION_OK
    assert d.buckets()[0]["tokens"] == 0


def test_first_limiting_bucket_in_order_is_reported(d):
    d(grant(amount=100))
    specs = (("tpm", 100, 50, 30 * SECOND, 101), ("rpm", 3, 1, 10 * SECOND, 4))
    assert d(charge(buckets=specs)) == (C.OK, C.DECISION_RATE_LIMITED, 0, 100, 0, "tpm")
    specs = (("tpm", 100, 50, 30 * SECOND, 60), ("rpm", 3, 1, 10 * SECOND, 1))
    assert d(charge(cid="c1", buckets=specs))[1] == C.DECISION_OK
    specs = (("rpm", 3, 1, 10 * SECOND, 1), ("tpm", 100, 50, 30 * SECOND, 60))
    assert d(charge(cid="c2", buckets=specs)) == (C.OK, C.DECISION_RATE_LIMITED, 0, 90, 30 * SECOND, "tpm")
    assert [b["tokens"] for b in d.buckets()] == [2, 40]               # the denial took nothing


def test_commit_true_up_takes_extra_or_refunds_capped(d):
    d(grant(amount=100))
    tpm = (("tpm", 100, 50, 30 * SECOND, 40),)
    d(reserve(rid="r1", buckets=tpm))
    assert d(commit(rid="r1", bucket_costs=(("tpm", 150),))) == (C.OK, 10, 0, 0, 90, False)
    assert d.buckets()[0]["tokens"] == -50                             # may go negative
    d.advance(60 * SECOND)
    assert d.buckets()[0]["tokens"] == 50
    d(reserve(rid="r2", buckets=(("tpm", 100, 50, 30 * SECOND, 50),)))
    assert d.buckets()[0]["tokens"] == 0
    d(commit(rid="r2", bucket_costs=(("tpm", 0), ("nope", 5))))
    assert d.buckets()[0]["tokens"] == 50
    d.advance(30 * SECOND)
    d(reserve(rid="r3", buckets=(("tpm", 100, 50, 30 * SECOND, 10),)))
    assert d(bucket(spec=("tpm", 100, 50, 30 * SECOND), delta=-5)) == (C.OK, 95)
    d(commit(rid="r3", bucket_costs=(("tpm", 0),)))
    assert d.buckets()[0]["tokens"] == 100                             # the refund is capped


def test_cost_above_capacity_never_passes(d):
    d(grant(amount=100))
    assert d(reserve(buckets=rpm(4))) == (C.OK, C.DECISION_RATE_LIMITED, 0, 100, 0, 0, "rpm")


def test_bucket_table_is_limited(d):
    for i in range(C.BUCKETS_PER_ACCOUNT_MAX):
        assert d(bucket(spec=(f"b{i}", 3, 1, SECOND), delta=0)) == (C.OK, 3)
    assert d(bucket(spec=("one-more", 3, 1, SECOND), delta=0)) == (C.LIMIT_EXCEEDED,)
    d(grant(amount=100))
    assert d(reserve(buckets=(("one-more", 3, 1, SECOND, 1),))) == (C.LIMIT_EXCEEDED,)
    assert d(check(buckets=(("b0", 3, 1, SECOND, 1),))) == (C.OK, 1, 100, 0, "")


def test_spec_change_applies_to_the_stored_bucket(d):
    d(bucket(spec=("rpm", 10, 1, SECOND), delta=0))
    assert d(bucket(spec=("rpm", 4, 2, SECOND), delta=1)) == (C.OK, 3)    # tokens capped to 4 first
    d.advance(SECOND)
    assert d.buckets() == [{"name": "rpm", "tokens": 4, "capacity": 4, "reset_after_ns": 0}]


def test_huge_period_retry_after_is_capped(d):
    spec = ("slow", 2, 1, C.TTL_NS_MAX)
    d(bucket(spec=spec, delta=2))
    assert d(check(buckets=(spec + (2,),))) == (C.OK, C.DECISION_RATE_LIMITED, 0, C.TTL_NS_MAX, "slow")

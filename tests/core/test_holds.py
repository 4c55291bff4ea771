"""Reserve, commit, release and extend: every decision and status."""

from __future__ import annotations

from _fastledger import codes as C

from .helpers import SECOND, charge, commit, extend, grant, release, reserve, upsert

TTL = 60 * SECOND


def test_reserve_holds_and_replays(d):
    d(grant(amount=100))
    first = d(reserve(rid="r1", amount=30))
    assert first == (C.OK, C.DECISION_OK, 30, 70, TTL, 0, "")
    assert d.res() == {"reservation_id": "r1", "state": C.RES_HELD, "amount_held": 30,
                       "expires_ns": TTL, "on_expire": C.EXPIRE_RELEASE, "backed": True, "meta": b""}
    d.advance(SECOND)
    assert d(reserve(rid="r1", amount=30)) == first                 # same fp: the stored result
    assert d(reserve(rid="r1", amount=30, fp=9)) == (C.IDEMPOTENCY_KEY_REUSED,)
    assert d.account()["held"] == 30 and d.account()["open_holds"] == 1
    assert d.lots()[0]["earmarked"] == 30


def test_reserve_keeps_meta(d):
    d(grant(amount=100))
    d(reserve(meta=b"\x00labels"))
    assert d.res()["meta"] == b"\x00labels"


def test_insufficient_credits_is_not_remembered(d):
    d(grant(amount=10))
    assert d(reserve(amount=11)) == (C.OK, C.DECISION_INSUFFICIENT_CREDITS, 0, 10, 0, 0, "")
    assert d.res() is None
    d(grant(gid="g2", amount=5))
    assert d(reserve(amount=11)) == (C.OK, C.DECISION_OK, 11, 4, TTL, 0, "")


def test_partial_reserve(d):
    d(grant(amount=40))
    assert d(reserve(rid="r1", amount=100, allow_partial=True, min_amount=50)) == (
        C.OK, C.DECISION_INSUFFICIENT_CREDITS, 0, 40, 0, 0, "")
    assert d(reserve(rid="r1", amount=100, allow_partial=True, min_amount=40)) == (
        C.OK, C.DECISION_OK, 40, 0, TTL, 0, "")
    assert d(reserve(rid="r2", amount=5, allow_partial=True)) == (
        C.OK, C.DECISION_INSUFFICIENT_CREDITS, 0, 0, 0, 0, "")       # min_amount 0 means 1


def test_zero_amount_hold(d):
    assert d(reserve(amount=0)) == (C.OK, C.DECISION_OK, 0, 0, TTL, 0, "")
    assert d(commit()) == (C.OK, 0, 0, 0, 0, False)


def test_overdraft_backs_the_rest(d):
    d.many([upsert(credit_limit=100), grant(amount=30)])
    assert d(reserve(amount=80)) == (C.OK, 1, 80, 50, TTL, 0, "")
    assert d(commit(amount=70)) == (C.OK, 70, 10, 0, 60, False)
    view = d.account()
    assert (view["debt"], view["consumed"], view["balance"], view["available"]) == (40, 30, -40, 60)


def test_concurrency_limit(d):
    d.many([grant(amount=100), upsert(max_open_holds=2)])
    assert d(reserve(rid="r1"))[1] == C.DECISION_OK
    assert d(reserve(rid="r2"))[1] == C.DECISION_OK
    assert d(reserve(rid="r3")) == (C.OK, C.DECISION_CONCURRENCY_LIMITED, 0, 80, 0, 0, "")
    assert d(charge(amount=5))[1] == C.DECISION_OK                   # a charge holds nothing
    assert d(release(rid="r1")) == (C.OK, 10, 85)
    assert d(reserve(rid="r3"))[1] == C.DECISION_OK


def test_commit_less_than_held_releases_the_rest(d):
    d(grant(amount=100))
    d(reserve(amount=30))
    assert d(commit(amount=20)) == (C.OK, 20, 10, 0, 80, False)
    assert d.res()["state"] == C.RES_COMMITTED
    assert d(commit(amount=20)) == (C.OK, 20, 10, 0, 80, False)      # replay
    assert d(commit(amount=20, fp=2)) == (C.IDEMPOTENCY_KEY_REUSED,)
    assert d(release()) == (C.RESERVATION_COMMITTED,)
    assert d(extend(hold_total=50)) == (C.RESERVATION_COMMITTED,)


def test_commit_more_than_held_charges_available_then_uncharged(d):
    d.many([grant(amount=100), upsert(credit_limit=10)])
    d(reserve(amount=30))
    assert d(commit(amount=50)) == (C.OK, 50, 0, 0, 60, False)
    d(reserve(rid="r2", amount=10))
    assert d(commit(rid="r2", amount=200)) == (C.OK, 60, 0, 140, 0, False)
    view = d.account()
    assert (view["uncollected"], view["debt"], view["consumed"]) == (140, 10, 100)


def test_commit_whole_hold(d):
    d(grant(amount=100))
    d(reserve(amount=30))
    assert d(commit(amount=-1)) == (C.OK, 30, 0, 0, 70, False)


def test_commit_unknown_and_after_release(d):
    d(grant(amount=100))
    assert d(commit(rid="nope")) == (C.RESERVATION_NOT_FOUND,)
    d(reserve())
    assert d(release()) == (C.OK, 10, 100)
    assert d(release()) == (C.OK, 10, 100)                           # replay
    assert d(commit()) == (C.RESERVATION_RELEASED,)
    assert d(extend(ttl_ns=SECOND)) == (C.RESERVATION_RELEASED,)
    assert d(release(rid="nope")) == (C.RESERVATION_NOT_FOUND,)
    assert d(release("nobody")) == (C.ACCOUNT_NOT_FOUND,)


def test_expired_hold_late_commit(d):
    """A hold released by expiry can still be committed late, from the available balance."""
    d(grant(amount=100))
    d(reserve(amount=30, ttl_ns=10 * SECOND))
    d.advance(10 * SECOND)
    assert d(extend(hold_total=40)) == (C.RESERVATION_EXPIRED,)      # expires it first
    assert d.res()["state"] == C.RES_EXPIRED
    assert d.account()["held"] == 0
    assert d(commit(amount=120)) == (C.OK, 100, 0, 20, 0, True)
    assert d(commit(amount=120)) == (C.OK, 100, 0, 20, 0, True)
    assert d(commit(amount=120, fp=3)) == (C.IDEMPOTENCY_KEY_REUSED,)
    assert d.account()["uncollected"] == 20


def test_expired_hold_release_then_commit(d):
    d(grant(amount=100))
    d(reserve(amount=30, ttl_ns=10 * SECOND))
    d.advance(11 * SECOND)
    assert d(release()) == (C.OK, 0, 100)
    assert d.res()["state"] == C.RES_RELEASED
    assert d(commit()) == (C.RESERVATION_RELEASED,)


def test_auto_commit_at_expiry(d):
    """A hold with on_expire commit is committed in full at expiry; any commit gets that result."""
    d(grant(amount=100))
    d(reserve(amount=30, ttl_ns=10 * SECOND, on_expire=C.EXPIRE_COMMIT))
    d.advance(10 * SECOND)
    assert d((C.OP_EXPIRE, 10)) == (C.OK, 1)
    assert d.res()["state"] == C.RES_COMMITTED
    assert d(commit(amount=5, fp=77)) == (C.OK, 30, 0, 0, 70, True)
    assert d(release()) == (C.RESERVATION_COMMITTED,)
    assert d.account()["consumed"] == 30


def test_extend_raises_the_hold_and_ttl(d):
    d(grant(amount=100))
    d(reserve(amount=30))
    d.advance(SECOND)
    assert d(extend(hold_total=50, ttl_ns=120 * SECOND)) == (C.OK, 1, 50, 121 * SECOND, 50)
    assert d(extend(hold_total=50, ttl_ns=120 * SECOND)) == (C.OK, 1, 50, 121 * SECOND, 50)
    assert d(extend()) == (C.OK, 1, 50, 121 * SECOND, 50)
    assert d(extend(hold_total=40)) == (C.INVALID_AMOUNT,)
    assert d(reserve(amount=30)) == (C.OK, 1, 30, 70, TTL, 0, "")   # replay: the original result
    assert d(commit()) == (C.OK, 50, 0, 0, 50, False)


def test_extend_denial_leaves_the_hold_unchanged(d):
    d(grant(amount=100))
    d(reserve(amount=30))
    assert d(extend(hold_total=101, ttl_ns=300 * SECOND)) == (
        C.OK, C.DECISION_INSUFFICIENT_CREDITS, 30, TTL, 70)
    assert d.res()["amount_held"] == 30 and d.res()["expires_ns"] == TTL
    assert d(extend(hold_total=100)) == (C.OK, C.DECISION_OK, 100, TTL, 0)


def test_extend_of_unbacked_hold_needs_no_credit(d):
    d(upsert(unlimited=True))
    d(reserve(amount=30))
    assert d(extend(hold_total=10 ** 12)) == (C.OK, 1, 10 ** 12, TTL, 0)


def test_release_frees_the_earmarks(d):
    d.many([grant(gid="g1", amount=20), grant(gid="g2", amount=20)])
    d(reserve(amount=30))
    assert [lot["earmarked"] for lot in d.lots()] == [20, 10]
    assert d(release()) == (C.OK, 30, 40)
    assert [lot["earmarked"] for lot in d.lots()] == [0, 0]


def test_replayed_indices_name_the_ops_answered_from_stored_results(d):
    """The engine derives usage and events only from first executions, never from replays."""
    assert d.led.replayed_indices() == []
    ops = [grant(amount=100), reserve(rid="r1"), commit(rid="r1"), charge(cid="c1")]
    d.many(ops)
    assert d.led.replayed_indices() == []
    d.many(ops + [reserve(rid="r1", fp=2), release(rid="r1"), charge(cid="c1", fp=9)])
    assert d.led.replayed_indices() == [0, 1, 2, 3]              # REUSED and errors are not replays
    d.many([reserve(rid="r2"), release(rid="r2"), release(rid="r2"), reserve(rid="r2")])
    assert d.led.replayed_indices() == [2, 3]
    d(reserve(rid="auto", ttl_ns=SECOND, on_expire=C.EXPIRE_COMMIT))
    d(reserve(rid="late", ttl_ns=SECOND))
    d.advance(SECOND)
    d.many([commit(rid="auto", fp=5), commit(rid="late"), commit(rid="late"), release(rid="late")])
    assert d.led.replayed_indices() == [0, 2]                    # the late commit's first run is not

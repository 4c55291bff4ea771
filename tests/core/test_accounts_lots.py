"""Accounts, grants and lots: creation, debt, consumption order, expiry and conservation."""

from __future__ import annotations

from _fastledger import codes as C

from .helpers import RETENTION_NS, SECOND, charge, check, expire, grant, release, reserve, upsert


def test_upsert_creates_then_updates_only_given_fields(d):
    assert d(upsert("a", plan="pro", status=2, credit_limit=50, max_open_holds=3, unlimited=True)) == (C.OK, False)
    view = d.account()
    assert (view["plan_id"], view["status"], view["credit_limit"], view["max_open_holds"], view["unlimited"]) == (
        "pro", C.ACCOUNT_SUSPENDED, 50, 3, True)
    assert d(upsert("a", plan=None)) == (C.OK, False)
    assert d.account() == view
    assert d(upsert("b", status=0)) == (C.OK, True)
    assert d.account("b") == {
        "account_id": "b", "plan_id": "free", "status": C.ACCOUNT_ACTIVE, "credit_limit": 0,
        "max_open_holds": 0, "unlimited": False, "balance": 0, "held": 0, "available": 0, "debt": 0,
        "granted": 0, "consumed": 0, "expired": 0, "uncollected": 0, "open_holds": 0,
    }
    assert d.account("nobody") is None
    assert d.lots("nobody") == [] and d.buckets("nobody") == []


def test_grant_creates_a_lot_and_replays(d):
    assert d(grant(gid="g1", amount=100)) == (C.OK, 100)
    assert d(charge(amount=30)) == (C.OK, C.DECISION_OK, 30, 70, 0, "")
    assert d(grant(gid="g1", amount=100)) == (C.OK, 100)            # the stored result
    assert d(grant(gid="g1", amount=100, fp=2)) == (C.IDEMPOTENCY_KEY_REUSED,)
    assert d.lots() == [{"lot_id": "g1", "category": 1, "remaining": 70, "earmarked": 0,
                         "priority": 0, "expires_ns": 0, "expired": False}]
    assert d.led.has_grant("a", "g1") and not d.led.has_grant("a", "g2")
    assert not d.led.has_grant("nobody", "g1") and not d.led.has_grant("a", "bad id")


def test_grant_record_lives_until_its_lot_would_expire_even_when_spent(d):
    """A grant with an expiry beyond the retention keeps its idempotency record until a
    retention past that expiry, though its lot is spent (or it paid a debt and made none): a
    retry before then is a replay, never a second lot. Then the record goes like any other."""
    end = d.now + 3 * RETENTION_NS
    assert d(grant(gid="inc", amount=10, expires_ns=end)) == (C.OK, 10)
    assert d(charge(cid="c1", amount=10)) == (C.OK, C.DECISION_OK, 10, 0, 0, "")
    assert d.lots() == []
    d.advance(2 * RETENTION_NS)
    assert d(expire()) == (C.OK, 1)                 # the charge's record, not the grant's
    assert d.led.has_grant("a", "inc")
    assert d(grant(gid="inc", amount=10, expires_ns=end)) == (C.OK, 10)  # the stored result
    assert d.lots() == [] and d.account()["granted"] == 10
    assert d.led.grant_remaining("a", "inc") == 0  # spent: the record is there, the lot is not
    d.advance(end - d.now)
    assert d(expire()) == (C.OK, 0)
    assert d.led.grant_expired("a", "inc") == 0     # spent: nothing expired unused
    d.advance(RETENTION_NS)
    assert d(expire()) == (C.OK, 1)
    assert not d.led.has_grant("a", "inc") and d.led.grant_expired("a", "inc") is None


def test_grant_record_notes_what_of_its_lot_expired_unused(d):
    """At its lot's expiry, a grant's record notes the lot's free part (what expired unused);
    the part earmarked by an open hold is not in it, nor is what expires later with that hold."""
    assert d(grant(gid="inc", amount=100, expires_ns=10 * SECOND)) == (C.OK, 100)
    assert d(charge(cid="c1", amount=30)) == (C.OK, C.DECISION_OK, 30, 70, 0, "")
    assert d(reserve(rid="r1", amount=20))[1] == C.DECISION_OK
    assert d.led.grant_expired("a", "inc") == 0
    assert d.led.grant_expired("a", "nope") is None and d.led.grant_expired("nobody", "inc") is None
    assert d.led.grant_remaining("a", "inc") == 70  # earmarks included
    assert d.led.grant_remaining("a", "nope") is None and d.led.grant_remaining("nobody", "inc") is None
    d.advance(10 * SECOND)
    assert d(check(amount=1))[1] == C.DECISION_INSUFFICIENT_CREDITS  # the lot expired on touch
    assert d.led.grant_expired("a", "inc") == 50
    assert d(release(rid="r1"))[0] == C.OK                         # the earmark expires now
    assert d.led.grant_expired("a", "inc") == 50 and d.account()["expired"] == 70
    restored = type(d.led).from_snapshot(d.led.snapshot(), retention_ns=RETENTION_NS)
    assert restored.grant_expired("a", "inc") == 50


def test_lots_that_expire_unused_are_reported_once(d):
    """take_expired_lots: each lot that expired with a free part, as (account, grant id, that
    part), once, whether time passed by an op of the account, the sweep or a view; a spent lot
    and the part earmarked by a hold are not in it."""
    assert d(grant(gid="p", amount=100, expires_ns=10 * SECOND)) == (C.OK, 100)
    assert d(grant(gid="s", amount=5, priority=-1, expires_ns=10 * SECOND)) == (C.OK, 105)
    assert d(upsert("b")) == (C.OK, True)
    assert d(grant("b", gid="q", amount=7, expires_ns=20 * SECOND)) == (C.OK, 7)
    assert d(grant("b", gid="v", amount=3, expires_ns=30 * SECOND)) == (C.OK, 10)
    assert d(charge(cid="c1", amount=35)) == (C.OK, C.DECISION_OK, 35, 70, 0, "")  # s spent, p 70
    assert d(reserve(rid="r1", amount=20))[1] == C.DECISION_OK
    assert d.led.take_expired_lots() == []
    d.advance(10 * SECOND)
    assert d(check(amount=1))[1] == C.DECISION_INSUFFICIENT_CREDITS      # an op of the account
    assert d.led.take_expired_lots() == [("a", "p", 50)]
    d.advance(10 * SECOND)
    assert d(expire()) == (C.OK, 1)                                      # the sweep
    d.advance(10 * SECOND)
    d.led.account_view("b", d.now)                                       # a view
    assert d.led.take_expired_lots() == [("b", "q", 7), ("b", "v", 3)]
    assert d(release(rid="r1"))[0] == C.OK                               # the earmark: not listed
    assert d.led.take_expired_lots() == []


def test_grant_pays_debt_first(d):
    assert d(upsert(credit_limit=100)) == (C.OK, False)
    assert d(charge(amount=80)) == (C.OK, C.DECISION_OK, 80, 20, 0, "")
    assert d.account()["debt"] == 80
    assert d(grant(gid="g1", amount=50)) == (C.OK, 70)              # all of it pays debt: no lot
    assert d.lots() == []
    assert d(grant(gid="g2", amount=50)) == (C.OK, 120)             # 30 pays the rest, 20 is a lot
    assert [lot["remaining"] for lot in d.lots()] == [20]
    view = d.account()
    assert (view["debt"], view["granted"], view["consumed"], view["balance"]) == (0, 100, 80, 20)


def test_lot_consumption_order(d):
    """Lower priority first, then earliest expiry (never-expiring last), then oldest."""
    d.many([
        grant(gid="late-never", amount=10, priority=0),
        grant(gid="exp-200", amount=10, priority=0, expires_ns=200 * SECOND),
        grant(gid="exp-100", amount=10, priority=0, expires_ns=100 * SECOND),
        grant(gid="prio-1", amount=10, priority=1, expires_ns=50 * SECOND),
        grant(gid="prio-neg", amount=10, priority=-1),
        grant(gid="old-never", amount=10, priority=0),
    ])
    assert [lot["lot_id"] for lot in d.lots()] == [
        "prio-neg", "exp-100", "exp-200", "late-never", "old-never", "prio-1"]
    assert d(charge(amount=25)) == (C.OK, C.DECISION_OK, 25, 35, 0, "")
    assert [(lot["lot_id"], lot["remaining"]) for lot in d.lots()] == [
        ("exp-200", 5), ("late-never", 10), ("old-never", 10), ("prio-1", 10)]


def test_lot_expiry_moves_the_free_part_to_expired(d):
    d.many([grant(gid="g1", amount=100, expires_ns=10 * SECOND), grant(gid="g2", amount=5)])
    d.advance(10 * SECOND)
    view = d.account()
    assert (view["balance"], view["expired"], view["granted"]) == (5, 100, 105)
    assert [lot["lot_id"] for lot in d.lots()] == ["g2"]


def test_earmark_survives_lot_expiry_and_expires_on_release(d):
    """The earmarked part of an expired lot stays until its hold settles; released, it expires."""
    d(grant(gid="g1", amount=100, expires_ns=10 * SECOND))
    assert d(reserve(rid="r1", amount=40, ttl_ns=60 * SECOND)) == (C.OK, 1, 40, 60, 60 * SECOND, 0, "")
    d.advance(10 * SECOND)
    assert d.lots() == [{"lot_id": "g1", "category": 1, "remaining": 40, "earmarked": 40,
                         "priority": 0, "expires_ns": 10 * SECOND, "expired": True}]
    view = d.account()
    assert (view["balance"], view["held"], view["available"], view["expired"]) == (40, 40, 0, 60)
    assert d((C.OP_COMMIT, "a", "r1", 1, 15, ())) == (C.OK, 15, 25, 0, 0, False)
    view = d.account()
    assert (view["consumed"], view["expired"], view["balance"]) == (15, 85, 0)
    assert d.lots() == []


def test_check_changes_nothing_but_expires_lots(d):
    d.many([grant(gid="g1", amount=10, expires_ns=5), grant(gid="g2", amount=20)])
    assert d(check(amount=25)) == (C.OK, C.DECISION_OK, 30, 0, "")
    d.advance(5)
    assert d(check(amount=25)) == (C.OK, C.DECISION_INSUFFICIENT_CREDITS, 20, 0, "")
    assert d.account()["expired"] == 10


def test_credit_limit_cut_below_debt_makes_available_negative(d):
    d(upsert(credit_limit=1000))
    assert d(charge(amount=900)) == (C.OK, C.DECISION_OK, 900, 100, 0, "")
    assert d(upsert(credit_limit=500)) == (C.OK, False)
    view = d.account()
    assert (view["balance"], view["available"], view["debt"]) == (-900, -400, 900)
    assert d(charge(cid="c2", amount=1)) == (C.OK, C.DECISION_INSUFFICIENT_CREDITS, 0, -400, 0, "")
    assert d(grant(gid="g1", amount=600)) == (C.OK, 200)
    assert d(charge(cid="c3", amount=200)) == (C.OK, C.DECISION_OK, 200, 0, 0, "")
    assert d.account()["debt"] == 500


def test_unlimited_account_moves_no_money(d):
    d(upsert(unlimited=True))
    assert d(charge(amount=10 ** 12)) == (C.OK, C.DECISION_OK, 10 ** 12, 0, 0, "")
    assert d(reserve(amount=500)) == (C.OK, 1, 500, 0, 60 * SECOND, 0, "")
    assert d.res()["backed"] is False
    assert d.account()["held"] == 0 and d.account()["open_holds"] == 1
    assert d((C.OP_COMMIT, "a", "r1", 1, 700, ())) == (C.OK, 700, 0, 0, 0, False)
    view = d.account()
    assert (view["consumed"], view["debt"], view["uncollected"], view["open_holds"]) == (0, 0, 0, 0)


def test_suspended_account_is_denied(d):
    d.many([grant(amount=100), upsert(status=C.ACCOUNT_SUSPENDED)])
    assert d(reserve()) == (C.OK, C.DECISION_ACCOUNT_SUSPENDED, 0, 100, 0, 0, "")
    assert d(charge()) == (C.OK, C.DECISION_ACCOUNT_SUSPENDED, 0, 100, 0, "")
    assert d(check()) == (C.OK, C.DECISION_ACCOUNT_SUSPENDED, 100, 0, "")
    assert d(upsert(status=C.ACCOUNT_ACTIVE)) == (C.OK, False)
    assert d(reserve())[1] == C.DECISION_OK


def test_feature_not_in_plan(d):
    d(grant(amount=100))
    assert d(reserve(feature_allowed=False)) == (C.OK, C.DECISION_FEATURE_NOT_IN_PLAN, 0, 100, 0, 0, "")
    assert d.res() is None

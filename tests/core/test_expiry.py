"""The expiry sweep: due holds, then due lots, then idempotency records past retention."""

from __future__ import annotations

from _fastledger import codes as C

from .helpers import RETENTION_NS, SECOND, charge, commit, expire, extend, grant, release, reserve, upsert


def test_sweep_order_and_budget(d):
    d.many([
        upsert("b"),
        grant("b", "gb", amount=100, expires_ns=5 * SECOND),
        grant(gid="g2", amount=100),
        reserve(rid="r1", amount=10, ttl_ns=2 * SECOND),
        reserve(rid="r2", amount=10, ttl_ns=1 * SECOND, on_expire=C.EXPIRE_COMMIT),
    ])
    d.advance(10 * SECOND)
    assert d(expire(1)) == (C.OK, 1)                 # r2 first: the earliest hold
    assert d.res("r2")["state"] == C.RES_COMMITTED
    assert d.res("r1")["state"] == C.RES_HELD
    assert d(expire(0)) == (C.OK, 0)
    assert d(expire(5)) == (C.OK, 2)                 # r1, then lot gb (b is touched by nobody)
    assert d.res("r1")["state"] == C.RES_EXPIRED
    assert d.account("b")["expired"] == 100
    assert d(expire(5)) == (C.OK, 0)
    d.advance(RETENTION_NS)
    assert d(expire(2)) == (C.OK, 2)                 # grants gb, g2: made first, looked at first
    assert not d.led.has_grant("b", "gb")            # its lot is gone: purged
    assert d.led.has_grant("a", "g2")                # lives as long as its lot (queued again)
    assert d(expire(10)) == (C.OK, 2)                # the two reservations
    assert d.res("r1") is None and d.res("r2") is None
    assert d(commit(rid="r1")) == (C.RESERVATION_NOT_FOUND,)


def test_touching_an_account_expires_its_lots_before_the_sweep(d):
    d.many([grant(gid="g1", amount=100, expires_ns=5 * SECOND), reserve(rid="r1", ttl_ns=SECOND)])
    d.advance(10 * SECOND)
    assert d(expire(1)) == (C.OK, 1)                 # r1; its account's lots expire with it
    assert d(expire(5)) == (C.OK, 0)                 # so the lot's queue entry is stale
    assert d.account()["expired"] == 100


def test_stale_queue_entries_do_not_count(d):
    d.many([grant(gid="g1", amount=50, expires_ns=5 * SECOND), reserve(rid="r1", amount=50, ttl_ns=SECOND)])
    d(charge(amount=0))
    assert d(commit(rid="r1")) == (C.OK, 50, 0, 0, 0, False)     # lot g1 is consumed and dropped
    d.advance(10 * SECOND)
    assert d(expire(10)) == (C.OK, 0)


def test_extended_hold_moves_in_the_queue(d):
    d(grant(amount=100))
    d(reserve(rid="r1", ttl_ns=SECOND))
    d(reserve(rid="r2", ttl_ns=2 * SECOND))
    assert d(extend(rid="r1", ttl_ns=5 * SECOND)) == (C.OK, 1, 10, 5 * SECOND, 80)
    d.advance(3 * SECOND)
    assert d(expire()) == (C.OK, 1)
    assert d.res("r1")["state"] == C.RES_HELD and d.res("r2")["state"] == C.RES_EXPIRED


def test_idempotency_records_are_purged_after_retention(d):
    d.many([grant(amount=100), charge(cid="c1", amount=10), reserve(rid="r1")])
    assert d(release(rid="r1")) == (C.OK, 10, 90)
    d.advance(RETENTION_NS - 1)
    assert d(expire()) == (C.OK, 0)
    d.advance(1)
    assert d(expire()) == (C.OK, 3)
    assert not d.led.has_charge("a", "c1")
    assert d(charge(cid="c1", amount=10, fp=2)) == (C.OK, 1, 10, 80, 0, "")   # a new charge
    assert d(reserve(rid="r1", fp=2))[1] == C.DECISION_OK


def test_late_commit_keeps_the_purge_time_of_expiry(d):
    d(grant(amount=100))
    d(reserve(ttl_ns=SECOND))
    d.advance(SECOND)
    d(expire())
    d.advance(RETENTION_NS - 1)
    assert d(commit(amount=5)) == (C.OK, 5, 0, 0, 95, True)
    d.advance(1)
    assert d(expire()) == (C.OK, 2)                 # the grant (made at 0) and the reservation


def test_grant_record_lives_as_long_as_its_lot(d):
    """A grant id can never make a second lot: its record is kept while its lot exists."""
    assert d(grant(gid="g1", amount=10)) == (C.OK, 10)
    d.advance(RETENTION_NS)
    assert d(expire()) == (C.OK, 1)                  # looked at, kept, queued again
    assert d(grant(gid="g1", amount=10)) == (C.OK, 10)
    assert d(grant(gid="g1", amount=10, fp=2)) == (C.IDEMPOTENCY_KEY_REUSED,)
    assert d(charge(amount=10)) == (C.OK, 1, 10, 0, 0, "")   # the lot is used up and dropped
    d.advance(RETENTION_NS)
    assert d(expire()) == (C.OK, 2)                  # the grant record and the charge record
    assert not d.led.has_grant("a", "g1")
    assert d(grant(gid="g1", amount=10, fp=2)) == (C.OK, 10)
    assert [lot["lot_id"] for lot in d.lots()] == ["g1"]

"""Edge amounts, overflow-checked counters and full tables: statuses with nothing changed."""

from __future__ import annotations

from _fastledger import codes as C

from .helpers import SECOND, charge, commit, grant, reserve, upsert

MAX = C.AMOUNT_MAX


def test_edge_amounts(d):
    assert d(grant(gid="g1", amount=1)) == (C.OK, 1)
    assert d(grant(gid="g2", amount=MAX)) == (C.OK, MAX + 1)
    assert d(reserve(rid="r1", amount=MAX)) == (C.OK, 1, MAX, 1, 60 * SECOND, 0, "")
    assert d(reserve(rid="r2", amount=1)) == (C.OK, 1, 1, 0, 60 * SECOND, 0, "")
    assert d(reserve(rid="r3", amount=0)) == (C.OK, 1, 0, 0, 60 * SECOND, 0, "")
    assert d(commit(rid="r1", amount=MAX)) == (C.OK, MAX, 0, 0, 0, False)
    assert d(charge(amount=0)) == (C.OK, 1, 0, 0, 0, "")


def test_extreme_fingerprints(d):
    d(grant(amount=10))
    assert d(charge(cid="c1", amount=1, fp=C.INT64_MIN)) == (C.OK, 1, 1, 9, 0, "")
    assert d(charge(cid="c1", amount=1, fp=C.INT64_MIN)) == (C.OK, 1, 1, 9, 0, "")
    assert d(charge(cid="c1", amount=1, fp=C.INT64_MAX)) == (C.IDEMPOTENCY_KEY_REUSED,)


def test_granted_overflow_near_2_63(d):
    """Grants that would push `granted` past int64 are OVERFLOW and change nothing."""
    rounds = C.INT64_MAX // MAX          # 9223 grants of AMOUNT_MAX fit
    ops = []
    for i in range(rounds):
        ops += [grant(gid=f"g{i}", amount=MAX), charge(cid=f"c{i}", amount=MAX)]
    results = d.many(ops)
    assert all(r[0] == C.OK for r in results)
    before = (d.account(), d.lots())
    assert d.account()["granted"] == rounds * MAX
    assert d(grant(gid="one-more", amount=MAX)) == (C.OVERFLOW,)
    assert (d.account(), d.lots()) == before
    assert not d.led.has_grant("a", "one-more")
    left = C.INT64_MAX - rounds * MAX
    assert d(grant(gid="exact", amount=left)) == (C.OK, left)
    assert d.account()["granted"] == C.INT64_MAX
    assert d(grant(gid="plus-one", amount=1)) == (C.OVERFLOW,)


def test_uncollected_overflow_leaves_the_hold_open(d):
    rounds = C.INT64_MAX // MAX
    ops = []
    for i in range(rounds):
        ops += [reserve(rid=f"r{i}", amount=0), commit(rid=f"r{i}", amount=MAX)]
    assert all(r[0] == C.OK for r in d.many(ops))
    assert d.account()["uncollected"] == rounds * MAX
    d(reserve(rid="last", amount=0))
    assert d(commit(rid="last", amount=MAX)) == (C.OVERFLOW,)
    assert d.res("last")["state"] == C.RES_HELD
    assert d(commit(rid="last", amount=0)) == (C.OK, 0, 0, 0, 0, False)


def test_lot_table_is_limited(d):
    for i in range(C.LOTS_PER_ACCOUNT_MAX):
        assert d(grant(gid=f"g{i}", amount=1)) == (C.OK, i + 1)
    before = d.account()
    assert d(grant(gid="g256", amount=1)) == (C.LIMIT_EXCEEDED,)
    assert d.account() == before and not d.led.has_grant("a", "g256")
    d(upsert(credit_limit=10))
    assert d(charge(amount=C.LOTS_PER_ACCOUNT_MAX + 5)) == (C.OK, 1, 261, 5, 0, "")
    assert d(grant(gid="pays-debt", amount=5)) == (C.OK, 10)            # no lot: allowed


def test_open_hold_table_is_limited(d):
    ops = [reserve(rid=f"r{i}", amount=0, ttl_ns=3600 * SECOND) for i in range(C.HOLDS_PER_ACCOUNT_MAX)]
    assert all(r[1] == C.DECISION_OK for r in d.led.apply(ops, d.now))
    assert d(reserve(rid="one-more", amount=0)) == (C.LIMIT_EXCEEDED,)
    assert d.res("one-more") is None
    assert d(commit(rid="r0", amount=0))[0] == C.OK
    assert d(reserve(rid="one-more", amount=0))[1] == C.DECISION_OK
    assert d.account()["open_holds"] == C.HOLDS_PER_ACCOUNT_MAX

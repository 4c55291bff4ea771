"""Op-tuple builders and a tiny driver for the core tests (time is an int the test passes)."""

from __future__ import annotations

from _fastledger import codes as C

SECOND = 1_000_000_000
RETENTION_NS = 3600 * SECOND


def upsert(aid="a", plan="free", status=0, credit_limit=None, max_open_holds=None, unlimited=None):
    return (C.OP_UPSERT, aid, plan, status, credit_limit, max_open_holds, unlimited)


def grant(aid="a", gid="g1", amount=100, *, fp=1, category=C.LOT_PURCHASED, priority=0, expires_ns=0):
    return (C.OP_GRANT, aid, gid, fp, amount, category, priority, expires_ns)


def reserve(aid="a", rid="r1", amount=10, *, fp=1, allow_partial=False, min_amount=0,
            ttl_ns=60 * SECOND, on_expire=C.EXPIRE_RELEASE, feature_allowed=True, buckets=(), meta=b""):
    return (C.OP_RESERVE, aid, rid, fp, amount, allow_partial, min_amount, ttl_ns, on_expire,
            feature_allowed, buckets, meta)


def commit(aid="a", rid="r1", amount=-1, *, fp=1, bucket_costs=()):
    return (C.OP_COMMIT, aid, rid, fp, amount, bucket_costs)


def release(aid="a", rid="r1"):
    return (C.OP_RELEASE, aid, rid)


def extend(aid="a", rid="r1", hold_total=0, ttl_ns=0):
    return (C.OP_EXTEND, aid, rid, hold_total, ttl_ns)


def charge(aid="a", cid="c1", amount=10, *, fp=1, feature_allowed=True, buckets=()):
    return (C.OP_CHARGE, aid, cid, fp, amount, feature_allowed, buckets)


def check(aid="a", amount=10, *, feature_allowed=True, buckets=()):
    return (C.OP_CHECK, aid, amount, feature_allowed, buckets)


def bucket(aid="a", spec=("rpm", 3, 1, 10 * SECOND), delta=1):
    return (C.OP_BUCKET, aid, spec, delta)


def expire(max_items=1000):
    return (C.OP_EXPIRE, max_items)


class Driver:
    """Applies single ops at the driver's clock and checks invariants after each."""

    def __init__(self, ledger, now=0):
        self.led = ledger
        self.now = now

    def __call__(self, op):
        (result,) = self.led.apply([op], self.now)
        self.led.check_invariants()
        return result

    def many(self, ops):
        results = self.led.apply(ops, self.now)
        self.led.check_invariants()
        return results

    def advance(self, dt):
        self.now += dt

    def account(self, aid="a"):
        return self.led.account_view(aid, self.now)

    def lots(self, aid="a"):
        return self.led.lots_view(aid, self.now)

    def res(self, rid="r1", aid="a"):
        return self.led.reservation_view(aid, rid)

    def buckets(self, aid="a"):
        return self.led.buckets_view(aid, self.now)

    def available(self, aid="a"):
        return self.account(aid)["available"]

"""A deterministic random-ish workload touching every op, for the journal and benchmark tests."""

from __future__ import annotations

import random

from _fastledger import codes as C

from .helpers import SECOND, bucket, charge, check, commit, expire, extend, grant, release, reserve, upsert

ACCOUNTS = ["acct-a", "acct-b", "acct-c", "acct-d"]
RIDS = [f"r{i}" for i in range(12)]
SPECS = [("rpm", 5, 1, 10 * SECOND), ("tpm", 100, 50, 30 * SECOND)]


def random_op(rng: random.Random) -> tuple:
    a = rng.choice(ACCOUNTS)
    kind = rng.randrange(13)
    buckets = tuple(s + (rng.randrange(0, 4),) for s in rng.sample(SPECS, rng.randrange(0, 3)))
    if kind == 0:
        return upsert(a, plan=rng.choice([None, "free"]), status=rng.choice([0, 0, 0, 1, 2]),
                      credit_limit=rng.choice([None, 0, 50, 500]), max_open_holds=rng.choice([None, 0, 4]),
                      unlimited=rng.choice([None, None, False, True]))
    if kind == 1:
        return grant(a, f"g{rng.randrange(30)}", rng.randrange(1, 300), fp=rng.randrange(2),
                     priority=rng.choice([0, 0, 1, -1]),
                     expires_ns=rng.choice([0, 0, rng.randrange(1, 200) * SECOND + 10 ** 15]))
    if kind in (2, 3, 4):
        return reserve(a, rng.choice(RIDS), rng.randrange(0, 120), fp=rng.randrange(2),
                       allow_partial=rng.random() < 0.3, min_amount=rng.choice([0, 5]),
                       ttl_ns=rng.choice([SECOND, 10 * SECOND, 100 * SECOND]),
                       on_expire=rng.choice([1, 1, 2]), buckets=buckets,
                       meta=rng.choice([b"", b"m", b"labels=x"]))
    if kind in (5, 6):
        return commit(a, rng.choice(RIDS), rng.choice([-1, rng.randrange(0, 150)]), fp=rng.randrange(2),
                      bucket_costs=rng.choice([(), (("rpm", 0),), (("tpm", 7),)]))
    if kind == 7:
        return release(a, rng.choice(RIDS))
    if kind == 8:
        return extend(a, rng.choice(RIDS), rng.choice([0, rng.randrange(0, 200)]),
                      rng.choice([0, SECOND, 50 * SECOND]))
    if kind == 9:
        return charge(a, f"c{rng.randrange(20)}", rng.randrange(0, 60), fp=rng.randrange(2), buckets=buckets)
    if kind == 10:
        return check(a, rng.randrange(0, 100), buckets=buckets)
    if kind == 11:
        return bucket(a, rng.choice(SPECS), rng.randrange(-3, 4))
    return expire(rng.choice([0, 1, 3, 100]))


def batches(seed: int, n_batches: int, start_ns: int = 10 ** 15):
    """Yield (now_ns, ops) batches; the clock jumps now and then, past TTLs and retention."""
    rng = random.Random(seed)
    now = start_ns
    for _ in range(n_batches):
        now += rng.choice([0, 1, SECOND, 7 * SECOND, 61 * SECOND, 400 * SECOND])
        ops = [random_op(rng) for _ in range(rng.randrange(1, 12))]
        if rng.random() < 0.05:
            ops.insert(0, upsert(rng.choice(ACCOUNTS), plan="free"))
        yield now, ops


def views(ledger, now_ns: int) -> dict:
    out = {}
    for a in ACCOUNTS:
        out[a] = (
            ledger.account_view(a, now_ns),
            ledger.lots_view(a, now_ns),
            ledger.buckets_view(a, now_ns),
            [ledger.reservation_view(a, r) for r in RIDS],
            [ledger.has_charge(a, f"c{i}") for i in range(20)],
            [ledger.has_grant(a, f"g{i}") for i in range(30)],
            [ledger.grant_expired(a, f"g{i}") for i in range(30)],
        )
    return out


def setup_ops() -> list[tuple]:
    return [upsert(a, plan="free", credit_limit=100) for a in ACCOUNTS] + [
        grant(a, "seed", 500) for a in ACCOUNTS
    ]


__all__ = ["ACCOUNTS", "RIDS", "batches", "views", "setup_ops", "C"]

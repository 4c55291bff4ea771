"""The purge queue (purge.pxi): records made now + retention go to a FIFO ring, the rest (a clock
that went back, grants kept past their lot's expiry, replayed records) to a heap; together they
purge in exactly the reference model's order, and snapshot/replay keep both parts."""

from __future__ import annotations

import random

import pytest

import _fastledger
from _fastledger import codes as C

from .test_differential import load_model

SECOND = 1_000_000_000
RETENTION = 100 * SECOND
T0 = 10**15


def charge(aid, cid, amount=1):
    return (C.OP_CHARGE, aid, cid, 1, amount, True, ())


def reserve(aid, rid):
    return (C.OP_RESERVE, aid, rid, 1, 2, False, 0, 30 * SECOND, C.EXPIRE_RELEASE, True, (), b"")


def remembered(led, ids):
    """Which charge / grant / reservation ids the ledger still remembers."""
    out = []
    for aid, kind, rid in ids:
        if kind == "c":
            out.append(led.has_charge(aid, rid))
        elif kind == "g":
            out.append(led.has_grant(aid, rid))
        else:
            out.append(led.reservation_view(aid, rid) is not None)
    return out


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_purges_follow_the_model_with_a_clock_that_goes_back(seed):
    """Goal: charges, settled holds and grants (some with expiries, some made while the clock
    stood earlier than before) are forgotten exactly when the model forgets them, sweep by
    sweep, with small sweeps so the queue's two parts interleave; invariants hold throughout
    (the debug build also checks the ring's order and positions after every batch)."""
    rng = random.Random(seed)
    model = load_model().Ledger(retention_ns=RETENTION)
    core = _fastledger.Ledger(retention_ns=RETENTION)
    setup = [(C.OP_UPSERT, a, "p", 0, 10**12, None, None) for a in ("a", "b")]
    setup += [(C.OP_GRANT, a, "seed", 1, 10**12, C.LOT_PURCHASED, 0, 0) for a in ("a", "b")]
    assert core.apply(setup, T0) == model.apply(setup, T0)
    ids = []
    now = T0
    most_in_heap = 0
    for step in range(400):
        # Mostly forward, sometimes back (a clock step), sometimes far forward (purges due).
        now += rng.choice([SECOND, SECOND, 7 * SECOND, -20 * SECOND, -3 * SECOND, 60 * SECOND])
        now = max(now, T0)
        aid = rng.choice("ab")
        ops = [(C.OP_EXPIRE, rng.choice([0, 1, 2, 5, 50]))]
        kind = rng.random()
        n = len(ids)
        if kind < 0.4:
            ops.append(charge(aid, f"c{n}"))
            ids.append((aid, "c", f"c{n}"))
        elif kind < 0.7:
            rid = f"r{n}"
            ops += [reserve(aid, rid), (C.OP_COMMIT, aid, rid, 1, 1, ()) if rng.random() < 0.5
                    else (C.OP_RELEASE, aid, rid)]
            ids.append((aid, "r", rid))
        else:
            expires = 0 if rng.random() < 0.5 else now + rng.choice([5, 50, 500]) * SECOND
            ops.append((C.OP_GRANT, aid, f"g{n}", 1, rng.choice([1, 3]), C.LOT_PURCHASED, 0, expires))
            ids.append((aid, "g", f"g{n}"))
        assert core.apply(ops, now) == model.apply(ops, now), (step, ops)
        core.take_journal()
        assert remembered(core, ids) == remembered(model, ids), step
        most_in_heap = max(most_in_heap, core.stats()["purge_queue_heap"])
        if step % 50 == 0:
            core.check_invariants()
    assert most_in_heap > 0  # both parts of the queue were in use
    # Everything due goes, in the model's order, and a restored copy forgets the same things.
    blob = core.snapshot()
    copy = _fastledger.Ledger.from_snapshot(blob, retention_ns=RETENTION)
    for _ in range(40):
        now += 30 * SECOND
        assert core.apply([(C.OP_EXPIRE, 3)], now) == copy.apply([(C.OP_EXPIRE, 3)], now) \
            == model.apply([(C.OP_EXPIRE, 3)], now)
        assert remembered(core, ids) == remembered(model, ids) == remembered(copy, ids)
        copy.take_journal()
        core.take_journal()
    core.check_invariants()
    copy.check_invariants()
    assert core.stats()["purge_queue"] == copy.stats()["purge_queue"]


def test_a_long_steady_run_keeps_the_queue_bounded_and_in_order():
    """Goal: records purged as fast as they are made (the ring's head chasing its tail across
    many growths and wrap-arounds) leave exactly a retention's worth queued."""
    core = _fastledger.Ledger(retention_ns=10 * SECOND)
    core.apply([(C.OP_UPSERT, "a", "p", 0, None, None, None),
                (C.OP_GRANT, "a", "g", 1, 10**12, C.LOT_PURCHASED, 0, 0)], T0)
    now = T0
    for batch in range(300):
        now += SECOND
        ops = [(C.OP_EXPIRE, 1000)] + [charge("a", f"c{batch}-{i}") for i in range(100)]
        results = core.apply(ops, now)
        assert all(r[0] == C.OK for r in results)
        core.take_journal()
    stats = core.stats()
    # Charges made in the last 10 s (11 batches, the one due this instant included) plus the grant.
    assert stats["purge_queue"] == 10 * 100 + 1 and stats["purge_queue_heap"] == 0
    assert not core.has_charge("a", "c289-99") and core.has_charge("a", "c290-0")
    core.check_invariants()


def test_restored_and_replayed_purge_entries_settle_into_the_ring():
    """Goal: a snapshot's and replayed records' purge entries (which replay queues in the heap)
    are moved into the ring by from_snapshot and settle_purge_queue, except a grant's beyond the
    horizon, and purging then goes exactly as in the ledger they were copied from."""
    core = _fastledger.Ledger(retention_ns=RETENTION)
    setup = [(C.OP_UPSERT, "a", "p", 0, None, None, None),
             (C.OP_GRANT, "a", "seed", 1, 10**12, C.LOT_PURCHASED, 0, 0),
             # Kept a retention past its lot's expiry: beyond the ring's horizon.
             (C.OP_GRANT, "a", "late", 1, 5, C.LOT_PURCHASED, 0, T0 + 10_000 * SECOND)]
    core.apply(setup, T0)
    core.take_journal()
    now = T0
    ids = [("a", "g", "seed"), ("a", "g", "late")]

    def step(i):
        nonlocal now
        now += SECOND
        ops = [(C.OP_EXPIRE, 7), charge("a", f"c{i}"), reserve("a", f"r{i}"), (C.OP_COMMIT, "a", f"r{i}", 1, 1, ())]
        ids.extend([("a", "c", f"c{i}"), ("a", "r", f"r{i}")])
        results = core.apply(ops, now)
        return results, core.take_journal()

    for i in range(150):
        step(i)
    blob = core.snapshot()
    restored = _fastledger.Ledger.from_snapshot(blob, retention_ns=RETENTION)
    assert restored.stats()["purge_queue"] == core.stats()["purge_queue"]
    assert restored.stats()["purge_queue_heap"] == 1  # the "late" grant only
    records = [step(i)[1] for i in range(150, 300)]
    for record in records:
        restored.replay(record)
    assert restored.stats()["purge_queue_heap"] > 1   # replayed entries wait in the heap ...
    restored.settle_purge_queue()
    assert restored.stats()["purge_queue_heap"] == 1  # ... until settled
    assert restored.stats()["purge_queue"] == core.stats()["purge_queue"]
    restored.check_invariants()
    for _ in range(30):
        now += 7 * SECOND
        assert restored.apply([(C.OP_EXPIRE, 13)], now) == core.apply([(C.OP_EXPIRE, 13)], now)
        assert remembered(restored, ids) == remembered(core, ids)
        restored.take_journal()
        core.take_journal()
    restored.settle_purge_queue()  # on a live queue: changes nothing a view or result shows
    now += 10_000 * SECOND
    assert restored.apply([(C.OP_EXPIRE, 10**6)], now) == core.apply([(C.OP_EXPIRE, 10**6)], now)
    assert remembered(restored, ids) == remembered(core, ids)
    restored.check_invariants()

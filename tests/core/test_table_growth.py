"""The record table grows without moving every record at once: after a doubling the old slots
are drained into the new ones a few clusters per insert, while lookups, removals (purges),
snapshots and replays go on. Checked against the reference model, the invariant sweep (which
also checks that every record is reachable by probing from its home slot), and snapshots.

The other core suites keep a few dozen records, below the first doubling (at 512); these keep
thousands, with purges of old records landing in the middle of a drain."""

from __future__ import annotations

import random

import pytest

import _fastledger

from .helpers import SECOND, commit, expire, grant, release, reserve, upsert
from .test_differential import load_model

RETENTION = 30 * SECOND
ACCOUNTS = [f"acct-{i}" for i in range(7)]


def _workload(seed: int, rounds: int):
    """(now, ops) batches: new reservations every batch (the table keeps growing), commits and
    releases of recent ones, retries of old ids, and a clock that passes the retention so old
    records are purged while the table drains."""
    rng = random.Random(seed)
    now = 10**15
    made: list[tuple[str, str]] = []
    k = 0
    for _ in range(rounds):
        now += rng.choice([0, SECOND // 10, SECOND, 3 * SECOND])
        ops = []
        for _ in range(rng.randrange(5, 60)):
            roll = rng.random()
            if roll < 0.6 or not made:
                a = rng.choice(ACCOUNTS)
                rid = f"r{k}"
                k += 1
                made.append((a, rid))
                ops.append(reserve(a, rid, rng.randrange(0, 20), ttl_ns=rng.choice([SECOND, 20 * SECOND])))
            elif roll < 0.8:
                a, rid = made[-rng.randrange(1, min(len(made), 80) + 1)]
                ops.append(commit(a, rid, rng.choice([-1, rng.randrange(0, 25)])))
            elif roll < 0.9:
                a, rid = made[-rng.randrange(1, min(len(made), 80) + 1)]
                ops.append(release(a, rid))
            else:                   # an old id: an idempotent replay, a conflict, or purged already
                a, rid = rng.choice(made)
                ops.append(reserve(a, rid, rng.randrange(0, 20)))
        yield now, ops


def _setup():
    ops = [upsert(a, plan="free", credit_limit=10**9) for a in ACCOUNTS]
    ops += [grant(a, "seed", 10**12) for a in ACCOUNTS]
    return ops


@pytest.mark.parametrize("seed", [1, 2])
def test_growth_drains_while_the_core_keeps_matching_the_model(seed):
    model = load_model().Ledger(retention_ns=RETENTION)
    core = _fastledger.Ledger(retention_ns=RETENTION)
    now = 10**15
    assert core.apply(_setup(), now) == model.apply(_setup(), now)
    draining_batches = 0
    slots_seen = set()
    for i, (now, ops) in enumerate(_workload(seed, 700)):
        assert core.apply(ops, now) == model.apply(ops, now), (i, ops)
        core.take_journal()
        stats = core.stats()
        slots_seen.add(stats["record_slots"])
        if stats["record_slots_draining"]:
            draining_batches += 1
            core.check_invariants()     # mid-drain: every record reachable, counts right
        elif i % 50 == 0:
            core.check_invariants()
    core.check_invariants()
    assert draining_batches >= 10, "the workload drained across many batches"
    assert len(slots_seen) >= 4, "the table doubled several times"
    for a in ACCOUNTS:
        assert core.account_view(a, now) == model.account_view(a, now)


def test_snapshot_and_replay_in_the_middle_of_a_drain():
    """A snapshot taken mid-drain holds every record once; a ledger restored from it, and one
    rebuilt by replaying the journal, end in the same state as the original."""
    core = _fastledger.Ledger(retention_ns=RETENTION)
    now = 10**15
    core.apply(_setup(), now)
    base = core.snapshot()
    core.take_journal()
    records: list[bytes] = []
    mid_drain = []
    for now, ops in _workload(7, 400):
        core.apply(ops, now)
        records.append(core.take_journal())
        if core.stats()["record_slots_draining"]:
            snap = core.snapshot()
            restored = _fastledger.Ledger.from_snapshot(snap, retention_ns=RETENTION)
            assert restored.snapshot() == snap
            assert restored.stats()["records"] == core.stats()["records"]
            restored.check_invariants()
            mid_drain.append(snap)
    assert len(mid_drain) >= 5
    replayed = _fastledger.Ledger.from_snapshot(base, retention_ns=RETENTION)
    for record in records:
        if record:
            replayed.replay(record)
    replayed.check_invariants()
    assert replayed.snapshot() == core.snapshot()


def test_a_drained_record_is_still_found_and_purged():
    """Records made before a doubling are answered from the old slots, or the new ones once
    drained, and each is purged exactly once when its retention ends."""
    core = _fastledger.Ledger(retention_ns=RETENTION)
    now = 10**15
    core.apply([upsert("a", plan="free"), grant("a", "g", 10**12)], now)
    first = [reserve("a", f"old{i}", 1) for i in range(511)]    # just below the first doubling
    assert all(r[0] == 0 for r in core.apply(first, now))
    assert core.stats()["record_slots"] == 1024 and not core.stats()["record_slots_draining"]
    assert core.apply([reserve("a", "new0", 1)], now)[0][0] == 0
    assert core.stats()["record_slots_draining"] == 1024         # growing: nothing moved yet
    # Every old reservation is still there, idempotently (same request, same answer).
    again = core.apply(first, now)
    assert core.replayed_indices() == list(range(511))
    assert all(r[0] == 0 for r in again)
    for i in range(1, 200):
        core.apply([reserve("a", f"new{i}", 1)], now)
    assert not core.stats()["record_slots_draining"]               # drained within 128 inserts
    assert core.stats()["record_slots"] == 2048 and core.stats()["records"] == 712
    core.check_invariants()
    # Release them all, pass the retention: each is purged once, none is left behind.
    core.apply([release("a", f"old{i}") for i in range(511)] + [release("a", f"new{i}") for i in range(200)],
               now + SECOND)
    core.apply([expire(10_000)], now + RETENTION + 2 * SECOND)
    core.check_invariants()
    assert core.stats()["records"] == 1                              # the grant's record


def test_slot_arrays_of_megabytes_grow_drain_restore_and_shrink_back():
    """Slot arrays of 2 MiB and more are mapped on their own (huge pages asked for): a table
    grown past that (300,000 records, 1 Mi slots, 8 MiB), drained, snapshotted and restored,
    then purged back to a few records, keeps every record findable and every invariant."""
    core = _fastledger.Ledger(retention_ns=RETENTION)
    now = 10**15
    core.apply([upsert("a", plan="free"), grant("a", "g", 10**12)], now)
    for b in range(300):  # settled at once: an account keeps at most 65,535 open holds
        ops = [reserve("a", f"r{b}-{i}", 1) for i in range(1000)] + [release("a", f"r{b}-{i}") for i in range(1000)]
        assert all(r[0] == 0 for r in core.apply(ops, now))
        core.take_journal()
    stats = core.stats()
    assert stats["records"] == 300_001 and stats["record_slots"] == 1 << 20
    core.check_invariants()
    copy = _fastledger.Ledger.from_snapshot(core.snapshot(), retention_ns=RETENTION)
    probe = [reserve("a", f"r{b}-{i}", 1) for b in (0, 150, 299) for i in (0, 999)]
    assert copy.apply(probe, now) == core.apply(probe, now)
    assert copy.replayed_indices() == core.replayed_indices() == list(range(len(probe)))
    for led in (core, copy):
        led.apply([expire(1_000_000)], now + RETENTION + 2 * SECOND)
        led.check_invariants()
        assert led.stats()["records"] == 1
    del core, copy  # frees the mapped arrays (a crash here would be a bad unmap)

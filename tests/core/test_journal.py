"""Journal records, snapshots and replay: restore + replay is the same ledger; bad input is refused."""

from __future__ import annotations

import struct

import pytest

import _fastledger
from _fastledger import codes as C

from .helpers import RETENTION_NS, SECOND, charge, commit, grant, reserve, upsert
from .workload import batches, setup_ops, views

RETENTION = 600 * SECOND


def fresh(retention=RETENTION):
    return _fastledger.Ledger(retention_ns=retention)


def checksum(data: bytes) -> int:
    """The record checksum, re-implemented from its description in util.pxi: four lanes of
    Fletcher-style sums over little-endian 64-bit words (a zero-padded last block), then mixed."""
    mask = (1 << 64) - 1
    a = [0x243F6A8885A308D3, 0x13198A2E03707344, 0xA4093822299F31D0, 0x082EFA98EC4E6C89]
    b = [len(data), 0, 0, 0]
    full = len(data) - len(data) % 32
    blocks = [data[i:i + 32] for i in range(0, full, 32)] + [data[full:].ljust(32, b"\0")]
    for block in blocks:
        for k, (w,) in enumerate(struct.iter_unpack("<Q", block)):
            a[k] = (a[k] + w) & mask
            b[k] = (b[k] + a[k]) & mask
    h = len(data)
    for k in range(4):
        h ^= (a[k] + b[k] * 0x9E3779B97F4A7C15) & mask
        h ^= h >> 33
        h = (h * 0xFF51AFD7ED558CCD) & mask
        h ^= h >> 33
    return h


def reseal(body: bytes) -> bytes:
    """A record with a correct checksum over `body` (header + entries + count)."""
    return body + struct.pack("<Q", checksum(body))


def run_workload(seed=7, n=300):
    led = fresh()
    now = 10 ** 15
    led.apply(setup_ops(), now)
    records = [led.take_journal()]
    for now, ops in batches(seed, n, now):
        led.apply(ops, now)
        led.check_invariants()
        records.append(led.take_journal())
    return led, records, now


def test_nothing_changed_is_an_empty_record(led):
    assert led.take_journal() == b""
    led.apply([upsert("a"), grant("a", "g1", 5, expires_ns=10)], 0)
    record = led.take_journal()
    assert record[:4] == b"FLDG" and record[4] == 1 and record[5] == 1
    assert led.take_journal() == b""
    led.apply([(C.OP_CHECK, "a", 1, True, ())], 5)
    assert led.take_journal() == b""
    led.account_view("a", 10)                    # time passing expires the lot: journaled
    assert led.take_journal() != b""


def test_checksum_matches_the_documented_algorithm(led):
    led.apply([upsert("a"), grant("a", "g1", 5)], 0)
    record = led.take_journal()
    assert struct.unpack("<Q", record[-8:])[0] == checksum(record[:-8])


def test_replay_from_the_beginning_rebuilds_the_ledger():
    led, records, now = run_workload(seed=1)
    other = fresh()
    for record in records:
        other.replay(record)
    other.check_invariants()
    assert views(other, now) == views(led, now)
    assert other.snapshot() == led.snapshot()


@pytest.mark.parametrize("seed", [3, 11, 2024])
def test_snapshot_plus_records_is_indistinguishable(seed):
    """Restore a mid-run snapshot, replay the records after it: same views, same future."""
    led = fresh()
    now = 10 ** 15
    led.apply(setup_ops(), now)
    led.take_journal()
    snapshot, records = None, []
    for i, (now, ops) in enumerate(batches(seed, 400, now)):
        led.apply(ops, now)
        record = led.take_journal()
        if i == 150:
            snapshot, records = led.snapshot(), []
        elif record:
            records.append(record)
    restored = _fastledger.Ledger.from_snapshot(snapshot, retention_ns=RETENTION)
    for record in records:
        restored.replay(record)
    restored.check_invariants()
    assert restored.snapshot() == led.snapshot()
    assert views(restored, now) == views(led, now)
    led.take_journal(), restored.take_journal()
    for now2, ops in batches(seed + 1, 200, now):
        assert restored.apply(ops, now2) == led.apply(ops, now2)
        assert restored.take_journal() == led.take_journal()
    assert views(restored, now2) == views(led, now2)


def test_snapshot_of_an_empty_ledger():
    blob = fresh().snapshot()
    restored = _fastledger.Ledger.from_snapshot(blob, retention_ns=RETENTION)
    assert restored.account_ids() == [] and restored.snapshot() == blob


def test_a_snapshot_lists_records_in_creation_order():
    """Records follow the accounts in seq order, whatever their order in the table (enough
    records that their seqs span several digits of the snapshot's radix sort)."""
    import random

    rng = random.Random(5)
    led = fresh()
    led.apply([upsert(f"a{i}") for i in range(10)] + [grant(f"a{i}", "g", 10**9) for i in range(10)], 0)
    ids = [f"c{rng.randrange(10**9):09d}.{n}" for n in range(5000)]
    for n in range(0, len(ids), 1000):
        led.apply([charge(f"a{rng.randrange(10)}", cid, 1) for cid in ids[n:n + 1000]], 0)
    blob = led.snapshot()
    positions = [blob.index(cid.encode()) for cid in ids]
    assert positions == sorted(positions)
    assert _fastledger.Ledger.from_snapshot(blob, retention_ns=RETENTION).snapshot() == blob


def test_replay_is_a_state_overwrite_not_a_rerun():
    """Replaying a record twice, or onto a ledger that already has it, changes nothing more."""
    led = fresh()
    led.apply([upsert("a"), grant("a", "g1", 100), reserve("a", "r1", 30)], 0)
    record = led.take_journal()
    other = fresh()
    other.replay(record)
    other.replay(record)
    led.replay(record)
    assert other.snapshot() == led.snapshot()
    assert other.account_view("a", 0)["held"] == 30


def test_records_and_snapshots_are_not_interchangeable(led):
    led.apply([upsert("a")], 0)
    record, blob = led.take_journal(), led.snapshot()
    with pytest.raises(ValueError):
        led.replay(blob)
    with pytest.raises(ValueError):
        _fastledger.Ledger.from_snapshot(record, retention_ns=RETENTION)
    with pytest.raises(TypeError):
        led.replay("text")
    led.replay(b"")                               # an empty record is nothing to do


def test_corrupt_or_truncated_records_raise_and_change_nothing():
    led, records, now = run_workload(seed=5, n=60)
    record = max(records, key=len)
    target = fresh()
    for r in records[:3]:
        target.replay(r)
    before = target.snapshot()
    for cut in range(1, len(record)):
        with pytest.raises(ValueError):
            target.replay(record[:cut])
    for i in range(0, len(record), max(1, len(record) // 400)):
        for bit in (0x01, 0x80):
            bad = bytearray(record)
            bad[i] ^= bit
            with pytest.raises(ValueError):
                target.replay(bytes(bad))
    with pytest.raises(ValueError):
        target.replay(record + b"\0")
    assert target.snapshot() == before


def test_sealed_but_malformed_records_raise_and_change_nothing(led):
    led.apply([upsert("a"), grant("a", "g1", 100)], 0)
    record = led.take_journal()
    body = record[:-8]
    target = fresh()
    before = target.snapshot()
    cases = [
        body[:4] + b"\x02" + body[5:],           # another version
        b"XXXX" + body[4:],                        # another magic
        body[:16] + b"\x09" + body[17:],           # an unknown entry tag
        body[:-4] + struct.pack("<I", 99),         # more entries promised than present
        body[:16] + body[17 + 1 + 1:],             # an entry cut short
    ]
    for case in cases:
        with pytest.raises(ValueError):
            target.replay(reseal(case))
    assert target.snapshot() == before
    target.replay(reseal(body))                   # the unmodified body, resealed, is fine
    assert target.account_view("a", 0)["granted"] == 100


def test_a_commit_whose_stored_release_does_not_follow_is_refused(led):
    """A settled hold keeps charged and uncharged, not amount_released (the core recomputes it
    from the hold: hold_released). A record whose stored amount_released disagrees is refused,
    before anything of it is applied; the true one replays and answers the same result."""
    led.apply([upsert("a"), grant("a", "g1", 100), reserve("a", "r1", 40)], 0)
    base = led.take_journal()
    result = led.apply([commit("a", "r1", 15, fp=4242)], 1)[0]
    assert result[:3] == (C.OK, 15, 25)
    body = led.take_journal()[:-8]
    settled = struct.pack("<qqq", 4242, 15, 25)   # commit_fp, charged, released
    assert body.count(settled) == 1
    target = fresh()
    target.replay(base)
    before = target.snapshot()
    for wrong in (24, 26, 0):
        with pytest.raises(ValueError, match="amount_released"):
            target.replay(reseal(body.replace(settled, struct.pack("<qqq", 4242, 15, wrong))))
        assert target.snapshot() == before
    target.replay(reseal(body))
    assert target.snapshot() == led.snapshot()
    assert target.apply([commit("a", "r1", 15, fp=4242)], 2)[0] == result


def test_a_record_naming_an_unknown_account_is_refused():
    led = fresh()
    led.apply([upsert("a"), grant("a", "g1", 100)], 0)
    led.take_journal()
    led.apply([grant("a", "g2", 5)], 0)
    led.take_journal()
    led.apply([(C.OP_EXPIRE, 10)], RETENTION)     # purges both grant records: tombstones only
    record = led.take_journal()
    target = fresh()
    with pytest.raises(ValueError):
        target.replay(record)
    assert target.snapshot() == fresh().snapshot()


def test_a_snapshot_that_breaks_an_invariant_is_caught():
    """A sealed snapshot whose account says held=7 with no hold: LedgerCorrupt (at once in debug)."""
    led = fresh()
    led.apply([upsert("a"), grant("a", "g1", 100)], 0)
    blob = bytearray(led.snapshot())
    # account entry: tag, "a", "free", 3 bytes, 2 x i32, then 8 x i64 (held is the 7th)
    held_at = 16 + 1 + 2 + 5 + 3 + 8 + 6 * 8
    assert struct.unpack_from("<q", blob, held_at)[0] == 0
    struct.pack_into("<q", blob, held_at, 7)
    sealed = reseal(bytes(blob[:-8]))
    if _fastledger.DEBUG:
        with pytest.raises(_fastledger.LedgerCorrupt):
            _fastledger.Ledger.from_snapshot(sealed, retention_ns=RETENTION)
        return
    broken = _fastledger.Ledger.from_snapshot(sealed, retention_ns=RETENTION)
    with pytest.raises(_fastledger.LedgerCorrupt, match="held"):
        broken.check_invariants()


def test_pending_changes_survive_a_snapshot(led):
    """snapshot() does not consume the journal."""
    led.apply([upsert("a"), grant("a", "g1", 100)], 0)
    led.snapshot()
    assert led.take_journal() != b""


def test_retention_is_a_constructor_argument():
    with pytest.raises(ValueError):
        _fastledger.Ledger(retention_ns=-1)
    with pytest.raises(TypeError):
        _fastledger.Ledger(RETENTION_NS)
    led = _fastledger.Ledger()
    assert led.retention_ns == 86_400 * 10 ** 9


def _record(entries: bytes, count: int, seq: int = 0, kind: int = 1) -> bytes:
    return reseal(b"FLDG" + bytes([1, kind, 0, 0]) + struct.pack("<q", seq) + entries + struct.pack("<I", count))


def test_a_lot_always_keeps_its_grant_record():
    """Records that would leave a lot without its grant record are refused, ledger unchanged."""
    led = fresh()
    led.apply([upsert("a"), grant("a", "g1", 100)], 0)
    record = led.take_journal()
    grant_entry = 1 + 2 + 3 + 5 * 8                    # tag, "a", "g1", five i64
    body = record[16:-12]
    without_grant = _record(body[:-grant_entry], 2 - 1, seq=2)
    target = fresh()
    with pytest.raises(ValueError, match="grant record"):
        target.replay(without_grant)
    assert target.account_ids() == []
    target.replay(record)
    before = target.snapshot()
    tombstone = bytes([6, 3, 1]) + b"a" + bytes([2]) + b"g1"
    with pytest.raises(ValueError, match="grant record"):
        target.replay(_record(tombstone, 1, seq=2))
    account = body[:-grant_entry]                       # the account, its lot still named g1
    with pytest.raises(ValueError, match="grant record"):
        target.replay(_record(account + tombstone, 2, seq=2))
    with pytest.raises(ValueError, match="grant record"):
        _fastledger.Ledger.from_snapshot(_record(body + tombstone, 3, kind=2), retention_ns=RETENTION)
    target.replay(_record(account + tombstone + body[-grant_entry:], 3, seq=2))   # deleted, re-written
    target.check_invariants()
    assert target.snapshot() == before


def test_a_grant_id_used_again_in_one_record_keeps_its_lot_on_the_new_record():
    """One record deletes a grant record (purged: its lot was used up) and writes a new one with
    the same id, other records allocated in between: the replayed lot names the new record."""
    led = fresh()
    led.apply([upsert("a", credit_limit=1000), grant("a", "g1", 100), charge("a", "c1", 100)], 0)
    target = fresh()
    target.replay(led.take_journal())
    led.apply([(C.OP_EXPIRE, 10), charge("a", "c8", 5), charge("a", "c9", 5), grant("a", "g1", 50, fp=2)],
              RETENTION + 10)
    target.replay(led.take_journal())
    target.check_invariants()
    assert target.lots_view("a", RETENTION + 10) == led.lots_view("a", RETENTION + 10)
    assert target.snapshot() == led.snapshot()


def test_an_account_written_twice_in_one_record_is_refused():
    led = fresh()
    led.apply([upsert("a"), grant("a", "g1", 100)], 0)
    record = led.take_journal()
    account = record[16:record.index(b"\x05\x01a")]     # up to the grant entry
    body = record[16:-12]
    for kind, target in ((1, fresh()), (2, None)):
        twice = _record(account + body, 3, seq=2, kind=kind)
        with pytest.raises(ValueError, match="twice"):
            if target is None:
                _fastledger.Ledger.from_snapshot(twice, retention_ns=RETENTION)
            else:
                target.replay(twice)


# Offsets in the snapshot of: upsert "a" (plan "free") + grant "g1" 100 (see _fastledger/README.md).
ACCOUNT_FIELD = {"open_holds": (31, "<i"), "debt": (43, "<q"), "granted": (67, "<q"), "held": (83, "<q")}
LOT_FIELD = {"remaining": (118, "<q"), "earmarked": (126, "<q")}


@pytest.mark.parametrize("field, value, message", [
    ("granted", 101, "conservation"),
    ("open_holds", 1, "open_holds"),
    ("debt", 5, "credit limit"),
    ("held", 7, "held"),
    ("earmarked", 1, "earmarks"),
    ("remaining", 0, None),
])
def test_each_broken_invariant_is_named(field, value, message):
    led = fresh()
    led.apply([upsert("a"), grant("a", "g1", 100)], 0)
    blob = bytearray(led.snapshot())
    offset, fmt = {**ACCOUNT_FIELD, **LOT_FIELD}[field]
    struct.pack_into(fmt, blob, offset, value)
    sealed = reseal(bytes(blob[:-8]))
    if field == "remaining":                 # a lot of 0 is refused by the reader already
        with pytest.raises(ValueError):
            _fastledger.Ledger.from_snapshot(sealed, retention_ns=RETENTION)
        return
    if _fastledger.DEBUG:
        with pytest.raises(_fastledger.LedgerCorrupt, match=message):
            _fastledger.Ledger.from_snapshot(sealed, retention_ns=RETENTION)
        return
    broken = _fastledger.Ledger.from_snapshot(sealed, retention_ns=RETENTION)
    with pytest.raises(_fastledger.LedgerCorrupt, match=message):
        broken.check_invariants()


def test_an_older_record_is_refused():
    """Replaying records out of order would roll state back: the ledger's seq says which is older."""
    led = fresh()
    led.apply([upsert("a"), grant("a", "g1", 100)], 0)
    first = led.take_journal()
    led.apply([grant("a", "g2", 5)], 0)
    second = led.take_journal()
    other = fresh()
    other.replay(first)
    other.replay(second)
    before = other.snapshot()
    with pytest.raises(ValueError, match="older"):
        other.replay(first)
    assert other.snapshot() == before

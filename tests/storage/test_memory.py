"""`memory://` keeps the storage contract in one process (the benchmarks' memory-only baseline)."""

from __future__ import annotations

import pytest

from quota_server.storage import storage_from_url
from quota_server.storage.base import EventRow, Fenced, LeaseHeld, SequenceError, StorageError, UsageRow


async def test_memory_storage_round_trip():
    """Sequencing, retries, snapshots, usage paging, events and fencing behave like the durable
    backends; the journal is not kept, so a used store refuses to be recovered."""
    store = storage_from_url("memory://")
    assert (await store.load()).last_seq == 0  # a new store: nothing to recover
    epoch = await store.acquire_lease("a", 1000)
    with pytest.raises(LeaseHeld):
        await store.acquire_lease("b", 1000)
    usage = [UsageRow(account_id="x", at_ms=t, payload=b"%d" % t) for t in (5, 3, 9)]
    await store.append(epoch, 1, b"r1", usage, [EventRow(event_id=10, account_id="x", type="t", at_ms=1, payload=b"")])
    await store.append(epoch, 1, b"r1", [], [])  # idempotent retry
    with pytest.raises(SequenceError):
        await store.append(epoch, 1, b"other", [], [])
    await store.append(epoch, 2, b"r2", [], [EventRow(event_id=20, account_id="y", type="t", at_ms=2, payload=b"")])
    await store.append(epoch, 2, b"r2", [], [])  # a retry of the last append
    with pytest.raises(SequenceError):
        await store.append(epoch, 1, b"r1", [], [])  # an older record is not kept to compare
    with pytest.raises(SequenceError):
        await store.append(epoch, 4, b"r4", [], [])
    await store.write_snapshot(epoch, 1, b"snap")
    with pytest.raises(StorageError, match="keeps no journal"):
        await store.load()
    await store.write_snapshot(epoch, 2, b"snap2")
    recovered = await store.load()
    assert (recovered.snapshot, recovered.snapshot_seq, recovered.records) == (b"snap2", 2, [])
    page, cursor = await store.list_usage("x", 0, 0, 2, None)
    assert [r.at_ms for r in page] == [3, 5] and cursor is not None
    page, cursor = await store.list_usage("x", 0, 0, 2, cursor)
    assert [r.at_ms for r in page] == [9] and cursor is None
    assert [r.at_ms for r in (await store.list_usage("x", 4, 9, 10, None))[0]] == [5]
    assert [e.event_id for e in await store.read_events(10, 10)] == [20]
    assert [e.event_id for e in await store.read_events(0, 10, "x")] == [10]
    await store.release_lease(epoch)
    new_epoch = await store.acquire_lease("b", 1000)
    assert new_epoch > epoch
    with pytest.raises(Fenced):
        await store.append(epoch, 3, b"r3", [], [])


async def test_memory_usage_pages_match_sqlite(tmp_path):
    """memory:// keeps usage as packed chunks, unpacked when read: every page, cursor and bound
    answers exactly what SQLite answers for the same appends (multi-row chunks, time going
    backwards, cursors inside a chunk)."""
    import random

    from quota_server.storage.base import pack_payloads

    rng = random.Random(7)
    stores = [storage_from_url("memory://"), storage_from_url(f"sqlite:///{tmp_path / 'q.db'}")]
    epochs = []
    for store in stores:
        await store.open()
        epochs.append(await store.acquire_lease("a", 1000))
    for seq in range(1, 41):
        at = rng.choice([10, 20, 20, 30, 5, 40])
        usage = [UsageRow(account_id=rng.choice("xy"), at_ms=at, payload=b"u%d-%d" % (seq, i))
                 for i in range(rng.randint(0, 3))]
        rows = [b"p%d-%d" % (seq, i) for i in range(rng.randint(1, 5))]
        packed = [(rng.choice("xy"), at, len(rows), pack_payloads(rows))] if seq % 2 else []
        for store, epoch in zip(stores, epochs):
            await store.append(epoch, seq, b"r%d" % seq, usage, [], packed)
    for account in "xyz":
        for from_ms, to_ms in [(0, 0), (10, 30), (20, 21), (31, 0), (0, 5)]:
            for limit in (1, 2, 3, 7, 100):
                pages = []
                for store in stores:
                    cursor, seen = None, []
                    while True:
                        page, cursor = await store.list_usage(account, from_ms, to_ms, limit, cursor)
                        seen.append(([(r.at_ms, r.payload) for r in page], cursor is None))
                        if cursor is None:
                            break
                    pages.append(seen)
                assert pages[0] == pages[1], (account, from_ms, to_ms, limit)
    for store in stores:
        await store.close()

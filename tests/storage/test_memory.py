"""`memory://` keeps the storage contract in one process (the benchmarks' memory-only baseline)."""

from __future__ import annotations

import pytest

from quota_server.storage import storage_from_url
from quota_server.storage.base import EventRow, Fenced, LeaseHeld, SequenceError, UsageRow


async def test_memory_storage_round_trip():
    """Journal, snapshot, usage paging, events and fencing behave like the durable backends."""
    store = storage_from_url("memory://")
    epoch = await store.acquire_lease("a", 1000)
    with pytest.raises(LeaseHeld):
        await store.acquire_lease("b", 1000)
    usage = [UsageRow(account_id="x", at_ms=t, payload=b"%d" % t) for t in (5, 3, 9)]
    await store.append(epoch, 1, b"r1", usage, [EventRow(event_id=10, account_id="x", type="t", at_ms=1, payload=b"")])
    await store.append(epoch, 1, b"r1", [], [])  # idempotent retry
    with pytest.raises(SequenceError):
        await store.append(epoch, 1, b"other", [], [])
    await store.append(epoch, 2, b"r2", [], [EventRow(event_id=20, account_id="y", type="t", at_ms=2, payload=b"")])
    await store.write_snapshot(epoch, 1, b"snap")
    recovered = await store.load()
    assert (recovered.snapshot, recovered.snapshot_seq, recovered.records) == (b"snap", 1, [(2, b"r2")])
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

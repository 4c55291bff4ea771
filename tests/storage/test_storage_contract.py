"""The storage contract: one suite, run against every backend on a real file or server."""
from __future__ import annotations

import pytest

from quota_server.storage import (
    EventRow,
    Fenced,
    InvalidCursor,
    LeaseHeld,
    Recovered,
    SequenceError,
    Storage,
    StorageError,
    UsageRow,
)

from .conftest import Backend

T0 = 1_700_000_000_000


def rec(seq: int, tag: str = "") -> bytes:
    return f"record-{seq}{tag}".encode() * 3


def usage(account: str, at_ms: int, n: int = 0) -> UsageRow:
    return UsageRow(account, at_ms, f"{account}@{at_ms}#{n}".encode())


def event(event_id: int, account: str = "acct-1", type_: str = "threshold") -> EventRow:
    return EventRow(event_id, account, type_, T0 + event_id, f"ev{event_id}".encode())


async def append_n(store: Storage, epoch: int, first: int, last: int) -> None:
    for seq in range(first, last + 1):
        await store.append(epoch, seq, rec(seq), [], [])


async def all_usage(store: Storage, account: str) -> list[UsageRow]:
    return [row async for row in store.iter_usage(account, 0, 0)]


# -- recovery ----------------------------------------------------------------------------------


async def test_fresh_store_loads_nothing(store: Storage) -> None:
    """A store that was never written recovers to the empty state."""
    assert await store.load() == Recovered(snapshot=None, snapshot_seq=0, records=[])


async def test_load_returns_records_in_order(backend: Backend, store: Storage) -> None:
    """Without a snapshot, recovery is every record from seq 1, in order."""
    epoch = await store.acquire_lease("a", backend.lease_ttl_ms)
    await append_n(store, epoch, 1, 5)
    loaded = await store.load()
    assert loaded == Recovered(None, 0, [(s, rec(s)) for s in range(1, 6)])
    assert loaded.last_seq == 5


async def test_load_returns_snapshot_and_records_after_it(backend: Backend, store: Storage) -> None:
    """Recovery is the latest snapshot plus exactly the records after its seq."""
    epoch = await store.acquire_lease("a", backend.lease_ttl_ms)
    await append_n(store, epoch, 1, 5)
    await store.write_snapshot(epoch, 3, b"state@3")
    assert await store.load() == Recovered(b"state@3", 3, [(4, rec(4)), (5, rec(5))])
    await store.write_snapshot(epoch, 5, b"state@5")
    await append_n(store, epoch, 6, 7)
    assert await store.load() == Recovered(b"state@5", 5, [(6, rec(6)), (7, rec(7))])


async def test_snapshot_trims_the_journal(backend: Backend, store: Storage) -> None:
    """Records up to the snapshot's seq are gone: a re-append of one is refused, not compared."""
    epoch = await store.acquire_lease("a", backend.lease_ttl_ms)
    await append_n(store, epoch, 1, 4)
    await store.write_snapshot(epoch, 4, b"s4")
    assert await store.load() == Recovered(b"s4", 4, [])
    with pytest.raises(SequenceError, match="snapshot"):
        await store.append(epoch, 3, rec(3), [], [])
    with pytest.raises(SequenceError, match="snapshot"):
        await store.append(epoch, 4, rec(4), [], [])
    await store.append(epoch, 5, rec(5), [], [])  # the seq continues after an emptied journal
    assert await store.load() == Recovered(b"s4", 4, [(5, rec(5))])


async def test_snapshot_seq_must_lie_between_current_snapshot_and_last_seq(
    backend: Backend, store: Storage
) -> None:
    """A snapshot cannot claim records not yet written, nor go back behind the current one."""
    epoch = await store.acquire_lease("a", backend.lease_ttl_ms)
    await append_n(store, epoch, 1, 3)
    with pytest.raises(SequenceError):
        await store.write_snapshot(epoch, 4, b"future")
    await store.write_snapshot(epoch, 2, b"s2")
    with pytest.raises(SequenceError):
        await store.write_snapshot(epoch, 1, b"older")
    await store.write_snapshot(epoch, 2, b"s2-again")  # the retry of the same snapshot
    assert await store.load() == Recovered(b"s2-again", 2, [(3, rec(3))])


async def test_load_refuses_a_journal_with_a_gap(backend: Backend, store: Storage) -> None:
    """A missing record means damaged data: recovery must fail, not skip it."""
    epoch = await store.acquire_lease("a", backend.lease_ttl_ms)
    await append_n(store, epoch, 1, 3)
    await backend.delete_record(2)
    with pytest.raises(StorageError, match="gap"):
        await store.load()


async def test_load_refuses_a_journal_missing_its_tail(backend: Backend, store: Storage) -> None:
    """Losing the last acknowledged record is detected too (last_seq is kept apart)."""
    epoch = await store.acquire_lease("a", backend.lease_ttl_ms)
    await append_n(store, epoch, 1, 3)
    await backend.delete_record(3)
    with pytest.raises(StorageError, match="acknowledged"):
        await store.load()


# -- lease and fencing -------------------------------------------------------------------------


async def test_second_owner_is_refused_until_the_lease_expires(backend: Backend, store: Storage) -> None:
    """Exclusivity: another owner gets LeaseHeld while the lease lives, then a larger epoch."""
    first = await store.acquire_lease("a", backend.lease_ttl_ms)
    assert first >= 1
    with pytest.raises(LeaseHeld):
        await store.acquire_lease("b", backend.lease_ttl_ms)
    second = await backend.acquire_after_expiry(store, "b")
    assert second > first


async def test_release_lets_another_owner_in_at_once(backend: Backend, store: Storage) -> None:
    """After release the next acquire succeeds immediately, with a larger epoch."""
    first = await store.acquire_lease("a", backend.lease_ttl_ms)
    await store.release_lease(first)
    second = await store.acquire_lease("b", backend.lease_ttl_ms)
    assert second > first


async def test_epochs_never_repeat(backend: Backend, store: Storage) -> None:
    """Every acquire issues a strictly larger epoch, across releases and re-acquires."""
    epochs = []
    for i in range(4):
        epoch = await store.acquire_lease(f"owner-{i}", backend.lease_ttl_ms)
        epochs.append(epoch)
        await store.release_lease(epoch)
    assert epochs == sorted(set(epochs))


async def test_same_owner_reacquire_fences_its_previous_epoch(backend: Backend, store: Storage) -> None:
    """Re-acquiring as the same owner (a retried acquire) issues a new epoch; the old one is dead."""
    first = await store.acquire_lease("a", backend.lease_ttl_ms)
    second = await store.acquire_lease("a", backend.lease_ttl_ms)
    assert second > first
    with pytest.raises(Fenced):
        await store.append(first, 1, rec(1), [], [])
    await store.append(second, 1, rec(1), [], [])


async def test_append_with_an_old_epoch_is_fenced_and_writes_nothing(
    backend: Backend, store: Storage
) -> None:
    """A process that lost its lease can never write: not the record, not its usage or events."""
    old = await store.acquire_lease("a", backend.lease_ttl_ms)
    await store.append(old, 1, rec(1), [usage("acct-1", T0)], [event(1)])
    new = await backend.acquire_after_expiry(store, "b")
    with pytest.raises(Fenced):
        await store.append(old, 2, rec(2), [usage("acct-1", T0 + 1)], [event(2)])
    with pytest.raises(Fenced):
        await store.write_snapshot(old, 1, b"stale")
    assert await store.load() == Recovered(None, 0, [(1, rec(1))])
    assert await all_usage(store, "acct-1") == [usage("acct-1", T0)]
    assert await store.read_events(0, 10) == [event(1)]
    await store.append(new, 2, rec(2), [], [event(2)])  # the new owner continues the sequence
    assert (await store.load()).last_seq == 2


async def test_append_after_release_is_fenced(backend: Backend, store: Storage) -> None:
    """Releasing the lease retires its epoch."""
    epoch = await store.acquire_lease("a", backend.lease_ttl_ms)
    await store.release_lease(epoch)
    with pytest.raises(Fenced):
        await store.append(epoch, 1, rec(1), [], [])
    with pytest.raises(Fenced):
        await store.renew_lease(epoch, backend.lease_ttl_ms)


async def test_renew_keeps_other_owners_out(backend: Backend, store: Storage) -> None:
    """A renewed lease outlives its first TTL."""
    short_ms = backend.lease_ttl_ms
    epoch = await store.acquire_lease("a", short_ms)
    await store.renew_lease(epoch, 60_000)
    await backend.let_lease_time_pass(short_ms + 50)
    with pytest.raises(LeaseHeld):
        await store.acquire_lease("b", short_ms)
    await store.append(epoch, 1, rec(1), [], [])


async def test_expired_lease_nobody_took_can_be_renewed(backend: Backend, store: Storage) -> None:
    """Expiry alone does not fence: the epoch stays current until someone else acquires."""
    epoch = await store.acquire_lease("a", backend.lease_ttl_ms)
    await backend.let_lease_time_pass(backend.lease_ttl_ms + 50)
    await store.append(epoch, 1, rec(1), [], [])
    await store.renew_lease(epoch, 60_000)
    with pytest.raises(LeaseHeld):
        await store.acquire_lease("b", backend.lease_ttl_ms)


async def test_renew_after_takeover_is_fenced(backend: Backend, store: Storage) -> None:
    """The old owner learns it lost the lease from renew, and its release changes nothing."""
    old = await store.acquire_lease("a", backend.lease_ttl_ms)
    new = await backend.acquire_after_expiry(store, "b")
    with pytest.raises(Fenced):
        await store.renew_lease(old, backend.lease_ttl_ms)
    await store.release_lease(old)  # a no-op: the lease belongs to "b"
    await store.append(new, 1, rec(1), [], [])
    await store.renew_lease(new, 60_000)
    with pytest.raises(LeaseHeld):
        await store.acquire_lease("c", backend.lease_ttl_ms)


# -- sequence and idempotency ------------------------------------------------------------------


async def test_seq_must_be_last_plus_one(backend: Backend, store: Storage) -> None:
    """Records are numbered 1, 2, 3, ...: a gap or a jump is refused and writes nothing."""
    epoch = await store.acquire_lease("a", backend.lease_ttl_ms)
    with pytest.raises(SequenceError):
        await store.append(epoch, 2, rec(2), [], [])
    await store.append(epoch, 1, rec(1), [], [])
    with pytest.raises(SequenceError):
        await store.append(epoch, 3, rec(3), [usage("acct-1", T0)], [event(1)])
    assert await store.load() == Recovered(None, 0, [(1, rec(1))])
    assert await all_usage(store, "acct-1") == []
    assert await store.read_events(0, 10) == []


async def test_reappend_of_identical_record_is_a_success_that_writes_nothing(
    backend: Backend, store: Storage
) -> None:
    """The retry of an ambiguous append succeeds without duplicating its usage or events."""
    epoch = await store.acquire_lease("a", backend.lease_ttl_ms)
    rows, events = [usage("acct-1", T0)], [event(1)]
    await store.append(epoch, 1, rec(1), rows, events)
    await store.append(epoch, 1, rec(1), rows, events)
    await store.append(epoch, 2, rec(2), [], [])
    await store.append(epoch, 1, rec(1), rows, events)  # an older one, still in the journal
    assert await store.load() == Recovered(None, 0, [(1, rec(1)), (2, rec(2))])
    assert await all_usage(store, "acct-1") == rows
    assert await store.read_events(0, 10) == events


async def test_reappend_with_different_bytes_is_refused(backend: Backend, store: Storage) -> None:
    """Two different records under one seq is a bug, never silently accepted."""
    epoch = await store.acquire_lease("a", backend.lease_ttl_ms)
    await store.append(epoch, 1, rec(1), [], [])
    with pytest.raises(SequenceError, match="different"):
        await store.append(epoch, 1, rec(1, "-other"), [], [])
    assert await store.load() == Recovered(None, 0, [(1, rec(1))])


async def test_event_ids_must_keep_increasing(backend: Backend, store: Storage) -> None:
    """An event id at or below the last one refuses the whole batch (atomically)."""
    epoch = await store.acquire_lease("a", backend.lease_ttl_ms)
    await store.append(epoch, 1, rec(1), [], [event(1), event(2)])
    with pytest.raises(SequenceError):
        await store.append(epoch, 2, rec(2), [usage("acct-1", T0)], [event(2)])
    with pytest.raises(SequenceError):
        await store.append(epoch, 2, rec(2), [], [event(5), event(4)])
    assert (await store.load()).last_seq == 1
    assert await all_usage(store, "acct-1") == []
    await store.append(epoch, 2, rec(2), [], [event(7)])  # gaps in event ids are fine
    assert [e.event_id for e in await store.read_events(0, 10)] == [1, 2, 7]


async def test_append_writes_record_usage_and_events_together(backend: Backend, store: Storage) -> None:
    """One append persists the journal record, its usage rows and its events, exactly."""
    epoch = await store.acquire_lease("a", backend.lease_ttl_ms)
    rows = [usage("acct-1", T0, 0), usage("acct-2", T0, 0), usage("acct-1", T0 + 5, 1)]
    events = [event(1, "acct-1"), event(2, "acct-2", "low_balance")]
    await store.append(epoch, 1, rec(1), rows, events)
    assert await store.load() == Recovered(None, 0, [(1, rec(1))])
    assert await all_usage(store, "acct-1") == [rows[0], rows[2]]
    assert await all_usage(store, "acct-2") == [rows[1]]
    assert await store.read_events(0, 10) == events


async def test_binary_payloads_round_trip(backend: Backend, store: Storage) -> None:
    """Records, snapshots and payloads are opaque bytes: every byte value survives."""
    epoch = await store.acquire_lease("a", backend.lease_ttl_ms)
    blob = bytes(range(256)) * 16
    await store.append(epoch, 1, blob, [UsageRow("a/b:c@d.e-f", 0, blob)], [EventRow(1, "x", "t", 0, blob)])
    await store.write_snapshot(epoch, 1, blob + b"\x00")
    await store.append(epoch, 2, b"", [], [])
    assert await store.load() == Recovered(blob + b"\x00", 1, [(2, b"")])
    assert await all_usage(store, "a/b:c@d.e-f") == [UsageRow("a/b:c@d.e-f", 0, blob)]
    assert await store.read_events(0, 1) == [EventRow(1, "x", "t", 0, blob)]


# -- usage -------------------------------------------------------------------------------------


async def test_list_usage_pages_in_time_then_insertion_order(backend: Backend, store: Storage) -> None:
    """Pages follow (at_ms, insertion order); the cursor ends at None after the last page."""
    epoch = await store.acquire_lease("a", backend.lease_ttl_ms)
    expected: list[UsageRow] = []
    for seq in range(1, 6):
        rows = [usage("acct-1", T0 + seq * 10, n) for n in range(5)]  # five rows share an at_ms
        expected += rows
        await store.append(epoch, seq, rec(seq), rows + [usage("other", T0 + seq * 10)], [])
    got: list[UsageRow] = []
    cursor = None
    pages = 0
    while True:
        page, cursor = await store.list_usage("acct-1", 0, 0, 7, cursor)
        got += page
        pages += 1
        if cursor is None:
            break
        assert len(page) == 7
    assert got == expected
    assert pages == 4  # 25 rows: 7 + 7 + 7 + 4


async def test_list_usage_exact_last_page_has_no_cursor(backend: Backend, store: Storage) -> None:
    """When the rows end exactly at a page boundary, that page carries no cursor."""
    epoch = await store.acquire_lease("a", backend.lease_ttl_ms)
    rows = [usage("acct-1", T0 + i) for i in range(4)]
    await store.append(epoch, 1, rec(1), rows, [])
    page, cursor = await store.list_usage("acct-1", 0, 0, 4, None)
    assert (page, cursor) == (rows, None)
    page, cursor = await store.list_usage("acct-1", 0, 0, 2, None)
    assert page == rows[:2] and cursor is not None
    assert await store.list_usage("acct-1", 0, 0, 2, cursor) == (rows[2:], None)


async def test_list_usage_time_window(backend: Backend, store: Storage) -> None:
    """from_ms is inclusive, to_ms exclusive, to_ms 0 means no upper bound."""
    epoch = await store.acquire_lease("a", backend.lease_ttl_ms)
    rows = [usage("acct-1", T0 + i * 100) for i in range(10)]  # T0, T0+100, ..., T0+900
    await store.append(epoch, 1, rec(1), rows, [])
    page, cursor = await store.list_usage("acct-1", T0 + 200, T0 + 500, 100, None)
    assert (page, cursor) == (rows[2:5], None)
    page, cursor = await store.list_usage("acct-1", T0 + 250, 0, 100, None)
    assert (page, cursor) == (rows[3:], None)
    page, cursor = await store.list_usage("acct-1", T0 + 100, T0 + 800, 3, None)
    assert page == rows[1:4]
    page, cursor = await store.list_usage("acct-1", T0 + 100, T0 + 800, 3, cursor)
    assert page == rows[4:7]
    assert await store.list_usage("acct-1", T0 + 100, T0 + 800, 3, cursor) == ([rows[7]], None)
    assert await store.list_usage("acct-1", T0 + 1000, 0, 10, None) == ([], None)
    assert await store.list_usage("nobody", 0, 0, 10, None) == ([], None)


async def test_list_usage_rejects_a_foreign_cursor(store: Storage) -> None:
    """A cursor this store did not make is InvalidCursor (a ValueError: the caller's fault)."""
    with pytest.raises(InvalidCursor):
        await store.list_usage("acct-1", 0, 0, 10, "not-a-cursor")
    with pytest.raises(ValueError):
        await store.list_usage("acct-1", 0, 0, 10, "garbage")
    with pytest.raises(ValueError):
        await store.list_usage("acct-1", 0, 0, 0, None)


async def test_iter_usage_yields_every_row_of_the_window(backend: Backend, store: Storage) -> None:
    """iter_usage walks all pages (more rows than one internal page)."""
    epoch = await store.acquire_lease("a", backend.lease_ttl_ms)
    rows = [usage("acct-1", T0 + i // 3, i) for i in range(2_500)]
    await store.append(epoch, 1, rec(1), rows[:1_200], [])
    await store.append(epoch, 2, rec(2), rows[1_200:], [])
    assert [r async for r in store.iter_usage("acct-1", 0, 0)] == rows
    window = [r async for r in store.iter_usage("acct-1", T0 + 10, T0 + 20)]
    assert window == [r for r in rows if T0 + 10 <= r.at_ms < T0 + 20]


# -- events ------------------------------------------------------------------------------------


async def test_read_events_after_id_with_limit_and_account_filter(backend: Backend, store: Storage) -> None:
    """Events come back in id order, strictly after the given id, optionally for one account."""
    epoch = await store.acquire_lease("a", backend.lease_ttl_ms)
    events = [event(i, f"acct-{i % 3}") for i in range(1, 31)]
    await store.append(epoch, 1, rec(1), [], events[:10])
    await store.append(epoch, 2, rec(2), [], events[10:])
    assert await store.read_events(0, 100) == events
    assert await store.read_events(5, 3) == events[5:8]
    assert await store.read_events(30, 10) == []
    acct1 = [e for e in events if e.account_id == "acct-1"]
    assert await store.read_events(0, 100, "acct-1") == acct1
    assert await store.read_events(acct1[2].event_id, 2, "acct-1") == acct1[3:5]
    assert await store.read_events(0, 10, "nobody") == []


# -- reopen and restart ------------------------------------------------------------------------


async def test_reopen_after_close_and_server_restart_loads_the_same_data(
    backend: Backend, store: Storage
) -> None:
    """Everything acknowledged is there after close, a crash of the server, and reopen."""
    epoch = await store.acquire_lease("a", backend.lease_ttl_ms)
    await append_n(store, epoch, 1, 3)
    await store.write_snapshot(epoch, 2, b"s2")
    rows = [usage("acct-1", T0), usage("acct-1", T0 + 1)]
    await store.append(epoch, 4, rec(4), rows, [event(1), event(2)])
    before = await store.load()
    await store.close()
    await backend.restart_server()

    again = await backend.open()
    assert await again.load() == before == Recovered(b"s2", 2, [(3, rec(3)), (4, rec(4))])
    assert await all_usage(again, "acct-1") == rows
    assert await again.read_events(0, 10) == [event(1), event(2)]
    # The lease state survives too: a new owner gets a larger epoch, the old one is fenced.
    new = await backend.acquire_after_expiry(again, "b")
    assert new > epoch
    with pytest.raises(Fenced):
        await again.append(epoch, 5, rec(5), [], [])
    await again.append(new, 5, rec(5), [], [event(3)])
    assert (await again.load()).last_seq == 5


async def test_durability_check_accepts_the_test_configuration(store: Storage) -> None:
    """A file with WAL + FULL, and Redis with AOF always, raise no durability warning."""
    assert await store.check_durability() is None


async def test_a_flush_of_many_rows_pages_row_by_row(backend: Backend, store: Storage) -> None:
    """A flush's rows are stored together per account (one chunk), yet pages cut anywhere inside
    it and the cursor resumes on the next row; other accounts' rows stay out."""
    epoch = await store.acquire_lease("a", backend.lease_ttl_ms)
    first = [usage("acct-1", T0, n) for n in range(25)]
    mixed = [usage("acct-1" if n % 3 else "acct-2", T0 + 7, n) for n in range(30)]
    await store.append(epoch, 1, rec(1), first, [])
    await store.append(epoch, 2, rec(2), mixed, [])
    want = first + [row for row in mixed if row.account_id == "acct-1"]
    got: list[UsageRow] = []
    cursor = None
    for _ in range(10):
        page, cursor = await store.list_usage("acct-1", 0, 0, 6, cursor)
        got += page
        assert len(page) == 6 or cursor is None
        if cursor is None:
            break
    assert got == want
    assert await all_usage(store, "acct-2") == [row for row in mixed if row.account_id == "acct-2"]
    page, _ = await store.list_usage("acct-1", T0 + 1, 0, 100, None)
    assert page == want[25:]


async def test_large_records_and_snapshots_round_trip_exactly(backend: Backend, store: Storage) -> None:
    """Blobs big enough to be stored compressed (journal records, snapshots) come back from
    load() as the exact bytes given; re-appending a big record is still the idempotent retry,
    and a different big record under the same seq is still refused."""
    epoch = await store.acquire_lease("a", backend.lease_ttl_ms)
    big = [bytes(f"record {seq} ", "ascii") * 20_000 for seq in range(1, 4)]  # ~200 KB each
    for seq, record in enumerate(big, 1):
        await store.append(epoch, seq, record, [usage("acct-1", T0 + seq)], [])
    await store.append(epoch, 2, big[1], [usage("acct-1", T0 + 2)], [])
    with pytest.raises(SequenceError):
        await store.append(epoch, 2, big[1] + b"x", [], [])
    assert await store.load() == Recovered(None, 0, [(1, big[0]), (2, big[1]), (3, big[2])])
    snapshot = b"".join(i.to_bytes(4, "little") for i in range(300_000))  # 1.2 MB, compressible
    await store.write_snapshot(epoch, 2, snapshot)
    assert await store.load() == Recovered(snapshot, 2, [(3, big[2])])
    assert len(await all_usage(store, "acct-1")) == 3


async def test_prepacked_usage_chunks_are_rows_like_any_other(backend: Backend, store: Storage) -> None:
    """`packed` chunks (what the engine's Batch fast path builds) are stored after the flush's
    plain usage rows and read back row by row; a chunk's rows keep their order."""
    from quota_server.storage.base import pack_payloads

    epoch = await store.acquire_lease("a", backend.lease_ttl_ms)
    plain = [usage("acct-1", T0, 0)]
    many = [f"packed-{i}".encode() for i in range(7)]
    packed = [("acct-1", T0, 7, pack_payloads(many)), ("acct-2", T0, 1, b"single")]
    await store.append(epoch, 1, rec(1), plain, [], packed)
    assert await all_usage(store, "acct-1") == plain + [UsageRow("acct-1", T0, p) for p in many]
    assert await all_usage(store, "acct-2") == [UsageRow("acct-2", T0, b"single")]
    with pytest.raises(ValueError):
        await store.append(epoch, 2, rec(2), [], [], [("", T0, 1, b"x")])
    with pytest.raises(ValueError):
        await store.append(epoch, 2, rec(2), [], [], [("acct-1", T0, 0, b"")])
    assert (await store.load()).last_seq == 1

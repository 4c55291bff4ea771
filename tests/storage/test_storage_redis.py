"""Redis-only behaviour on a real redis-server: outages, script cache, durability check, keys."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from quota_server.storage import Fenced, LeaseHeld, Recovered, SequenceError, StorageUnavailable, UsageRow
from quota_server.storage.redis import RedisStorage

from .conftest import acquire_when_free, require_redis_server
from .redis_proc import RedisProcess

T0 = 1_700_000_000_000
TTL_MS = 400
OUTAGE_TIMEOUT_MS = 300


async def _stores(server: RedisProcess, thread_appends: bool):
    stores: list[RedisStorage] = []

    async def make(**options) -> RedisStorage:
        options.setdefault("op_timeout_ms", OUTAGE_TIMEOUT_MS)
        options.setdefault("thread_appends", thread_appends)
        store = RedisStorage(server.url, **options)
        await store.open()
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


@pytest.fixture(params=["thread", "loop"])
async def opened(redis_server: RedisProcess, request: pytest.FixtureRequest):
    """Stores on `redis_server`, with appends on the C writer thread (the default) or on the
    event loop's connection (the path of a store the thread cannot serve)."""
    async for make in _stores(redis_server, request.param == "thread"):
        yield make


@pytest.fixture
async def threaded(redis_server: RedisProcess):
    """Stores on `redis_server` with appends on the C writer thread."""
    async for make in _stores(redis_server, True):
        yield make


async def test_killed_server_is_unavailable_then_writes_resume_after_restart(
    redis_server: RedisProcess, opened
) -> None:
    """A dead Redis is StorageUnavailable for every call; after a restart the retried append
    lands, and nothing acknowledged before the crash is missing."""
    store = await opened()
    epoch = await store.acquire_lease("a", 60_000)
    await store.append(epoch, 1, b"r1", [], [])
    redis_server.stop(kill=True)
    for call in (
        store.append(epoch, 2, b"r2", [], []),
        store.load(),
        store.acquire_lease("b", TTL_MS),
        store.renew_lease(epoch, 60_000),
        store.list_usage("x", 0, 0, 10, None),
        store.read_events(0, 10),
        store.check_durability(),
    ):
        with pytest.raises(StorageUnavailable):
            await call
    redis_server.start()  # same port and directory; its script cache is empty now
    await store.append(epoch, 2, b"r2", [], [])
    assert await store.load() == Recovered(None, 0, [(1, b"r1"), (2, b"r2")])


async def test_frozen_server_times_out_and_the_retry_is_idempotent(
    redis_server: RedisProcess, opened
) -> None:
    """A server that stops answering (SIGSTOP) is StorageUnavailable after op_timeout_ms. The
    write may still land once it wakes up; retrying the same append then succeeds, once."""
    store = await opened()
    epoch = await store.acquire_lease("a", 60_000)
    await store.append(epoch, 1, b"r1", [UsageRow("u", T0, b"p1")], [])
    redis_server.pause()
    try:
        with pytest.raises(StorageUnavailable):
            await store.append(epoch, 2, b"r2", [UsageRow("u", T0 + 1, b"p2")], [])
    finally:
        redis_server.resume()
    await store.append(epoch, 2, b"r2", [UsageRow("u", T0 + 1, b"p2")], [])
    assert await store.load() == Recovered(None, 0, [(1, b"r1"), (2, b"r2")])
    assert [r.payload async for r in store.iter_usage("u", 0, 0)] == [b"p1", b"p2"]


async def test_a_late_reply_is_never_taken_for_the_next_calls(redis_server: RedisProcess, opened) -> None:
    """A write that timed out may still be answered once the server wakes up; that reply must not
    be read as the answer to the next write on the same connection (the append has a connection
    of its own): the next call, a conflicting record for the same seq, is refused."""
    store = await opened()
    epoch = await store.acquire_lease("a", 60_000)
    await store.append(epoch, 1, b"r1", [], [])
    redis_server.pause()
    try:
        with pytest.raises(StorageUnavailable):
            await store.append(epoch, 2, b"r2", [], [])
    finally:
        redis_server.resume()
    with pytest.raises(SequenceError):
        await store.append(epoch, 2, b"other", [], [])
    await store.append(epoch, 3, b"r3", [], [])
    assert await store.load() == Recovered(None, 0, [(1, b"r1"), (2, b"r2"), (3, b"r3")])


async def test_overlapping_appends_do_not_share_a_connection(opened) -> None:
    """The engine never has two appends in flight, but if it did, the second would not read the
    first one's reply off the append's own connection: the same record three times lands once
    (the others are duplicates), and of two different records for one seq, exactly the one that
    landed is answered with success (which one goes first is up to the scheduling)."""
    store = await opened()
    epoch = await store.acquire_lease("a", 60_000)
    await store.append(epoch, 1, b"r1", [], [])
    await asyncio.gather(*(store.append(epoch, 2, b"r2", [], []) for _ in range(3)))
    outcomes = await asyncio.gather(store.append(epoch, 3, b"r3", [], []),
                                    store.append(epoch, 3, b"other", [], []), return_exceptions=True)
    landed = [record for record, outcome in zip((b"r3", b"other"), outcomes) if outcome is None]
    assert len(landed) == 1 and sum(isinstance(o, SequenceError) for o in outcomes) == 1, outcomes
    assert await store.load() == Recovered(None, 0, [(1, b"r1"), (2, b"r2"), (3, landed[0])])


async def test_open_is_unavailable_when_nothing_listens(tmp_path: Path) -> None:
    """Opening against a dead address fails fast with StorageUnavailable."""
    require_redis_server()
    server = RedisProcess(tmp_path)  # picks a free port, never started
    store = RedisStorage(server.url, op_timeout_ms=OUTAGE_TIMEOUT_MS)
    with pytest.raises(StorageUnavailable):
        await store.open()


async def test_flushed_script_cache_is_reloaded(opened) -> None:
    """EVALSHA falls back to loading the script when the server forgot it (NOSCRIPT)."""
    store = await opened()
    epoch = await store.acquire_lease("a", 60_000)
    await store.client.script_flush()
    await store.append(epoch, 1, b"r1", [], [])
    assert (await store.load()).last_seq == 1


async def test_commands_are_packed_in_one_go(opened) -> None:
    """The store's connections pack commands with _wire.resp_command (tests/storage/
    test_resp_packing.py checks the bytes), and Redis understands them."""
    from quota_server.storage.redis import _Connection

    store = await opened()
    assert store.client.connection_pool.connection_class is _Connection
    epoch = await store.acquire_lease("a", 60_000)
    await store.append(epoch, 1, b"r\x00\r\n1", [UsageRow("acct-é", 5, b"u1")], [])
    recovered = await store.load()
    assert recovered.records == [(1, b"r\x00\r\n1")]
    assert [r.payload for r in (await store.list_usage("acct-é", 0, 10**15, 10, None))[0]] == [b"u1"]


async def test_second_process_gets_the_lease_only_after_expiry(opened) -> None:
    """Two clients: the second is refused until the PX expires, then the first is fenced."""
    first, second = await opened(), await opened()
    old = await first.acquire_lease("first", TTL_MS)
    with pytest.raises(LeaseHeld, match="first"):
        await second.acquire_lease("second", TTL_MS)
    new = await acquire_when_free(second, "second", TTL_MS)
    assert new > old
    with pytest.raises(Fenced):
        await first.append(old, 1, b"r1", [], [])
    with pytest.raises(Fenced):
        await first.renew_lease(old, TTL_MS)
    await second.append(new, 1, b"r1", [], [])


async def test_all_keys_share_one_hash_tag(redis_server: RedisProcess, opened) -> None:
    """Every key the backend writes carries the same {tag}, so scripts stay cluster-safe."""
    store = await opened(key_prefix="svc:", hash_tag="shard-7")
    epoch = await store.acquire_lease("a", 60_000)
    await store.append(epoch, 1, b"r1", [UsageRow("acct-1", T0, b"p")], [])
    await store.append(epoch, 2, b"r2", [UsageRow("acct-2", T0, b"p")], [])
    await store.write_snapshot(epoch, 1, b"s1")
    keys = sorted(k.decode() for k in await store.client.keys("*"))
    assert keys == [
        "svc:{shard-7}:epoch",
        "svc:{shard-7}:holder",
        "svc:{shard-7}:journal",
        "svc:{shard-7}:lease",
        "svc:{shard-7}:meta",
        "svc:{shard-7}:snapshot",
        "svc:{shard-7}:usage:acct-1",
        "svc:{shard-7}:usage:acct-2",
        "svc:{shard-7}:usage_top",
    ]


async def test_usage_with_a_clock_that_steps_back_is_still_found(opened) -> None:
    """Usage ids follow at_ms; a row whose at_ms went backwards is kept (under the highest id
    time seen) and still returned by a window that contains its at_ms."""
    store = await opened()
    epoch = await store.acquire_lease("a", 60_000)
    late, early = UsageRow("u", T0 + 1_000, b"late"), UsageRow("u", T0 + 500, b"early")
    await store.append(epoch, 1, b"r1", [late], [])
    await store.append(epoch, 2, b"r2", [early], [])
    assert await store.list_usage("u", T0 + 400, T0 + 600, 10, None) == ([early], None)
    assert await store.list_usage("u", T0 + 900, T0 + 1_100, 10, None) == ([late], None)
    assert await store.list_usage("u", 0, 0, 10, None) == ([late, early], None)  # insertion order


async def test_durability_warnings(redis_server: RedisProcess, opened) -> None:
    """check_durability names each configuration that would lose acknowledged writes."""
    store = await opened()
    assert await store.check_durability() is None
    await store.client.config_set("appendonly", "no")
    warning = await store.check_durability()
    assert warning is not None and "keeps nothing on disk" in warning
    await store.client.config_set("save", "3600 1")
    warning = await store.check_durability()
    assert warning is not None and "only RDB snapshots" in warning
    await store.client.config_set("appendonly", "yes")
    await store.client.config_set("maxmemory-policy", "allkeys-lru")
    warning = await store.check_durability()
    assert warning is not None and "evict" in warning and "RDB" not in warning


async def test_durability_check_without_config_command(tmp_path: Path) -> None:
    """With CONFIG disabled (managed Redis), the check falls back to INFO persistence."""
    require_redis_server()
    for appendonly, expect_warning in ((True, False), (False, True)):
        server = RedisProcess(
            tmp_path / f"aof-{appendonly}",
            appendonly=appendonly,
            extra_args=("--rename-command", "CONFIG", ""),
        )
        with server:
            store = RedisStorage(server.url, op_timeout_ms=OUTAGE_TIMEOUT_MS)
            await store.open()
            try:
                warning = await store.check_durability()
            finally:
                await store.close()
        assert (warning is not None) == expect_warning, warning
        if warning:
            assert "AOF disabled" in warning


async def test_an_acl_user_without_config_or_info_opens_with_a_warning(tmp_path: Path) -> None:
    """Goal: a Redis user that may run neither CONFIG nor INFO (both @dangerous) can still be
    the server's user: the durability check warns that it cannot tell, instead of failing the
    start with NOPERM; appends work."""
    import redis as sync_redis

    require_redis_server()
    with RedisProcess(tmp_path / "acl") as server:
        admin = sync_redis.Redis.from_url(server.url)
        admin.acl_setuser("limited", enabled=True, passwords=["+limitedpassword1"], keys=["quota:*"],
                          commands=["+@all", "-@dangerous"])
        admin.close()
        url = f"redis://limited:limitedpassword1@127.0.0.1:{server.port}/0"
        store = RedisStorage(url, op_timeout_ms=OUTAGE_TIMEOUT_MS)
        await store.open()
        try:
            warning = await store.check_durability()
            assert warning is not None and "cannot check how Redis" in warning, warning
            epoch = await store.acquire_lease("acl:1:x", 10_000)
            await store.append(epoch, 1, b"record-1", [], [])
            assert (await store.load()).records == [(1, b"record-1")]
        finally:
            await store.close()


async def test_lost_usage_top_does_not_break_appends(opened) -> None:
    """If the usage_top hash is deleted, new usage ids still follow the stream's last id
    (an XADD failing half-way through the script would leave a partial batch)."""
    store = await opened()
    epoch = await store.acquire_lease("a", 60_000)
    await store.append(epoch, 1, b"r1", [UsageRow("u", T0 + 1_000, b"late")], [])
    await store.client.delete(store.k_usage_top)
    await store.append(epoch, 2, b"r2", [UsageRow("u", T0, b"early")], [])
    assert [r.payload async for r in store.iter_usage("u", 0, 0)] == [b"late", b"early"]
    assert (await store.load()).last_seq == 2


async def test_append_script_refuses_a_damaged_usage_chunk_before_writing(opened) -> None:
    """The append script checks every packed chunk before its first write: a chunk whose lengths
    do not add up is refused and nothing of the flush (record, usage) is written."""
    from quota_server.storage.redis import _SCRIPTS

    store = await opened()
    epoch = await store.acquire_lease("a", TTL_MS * 10)
    keys = [store.k_holder, store.k_meta, store.k_journal, store.k_events, store.k_usage_top, store.usage_key("x")]
    damaged = (3).to_bytes(4, "little") + b"abc" + (9).to_bytes(4, "little") + b"short"
    reply = await store._eval(_SCRIPTS["append"], keys, [epoch, 1, b"rec", 0, 1, 0, 6, "x", T0, 2, damaged, 0])
    assert reply[0] == b"BADCHUNK"
    assert await store.load() == Recovered(None, 0, [])
    assert await store.list_usage("x", 0, 0, 10, None) == ([], None)
    good = (3).to_bytes(4, "little") + b"abc" + (5).to_bytes(4, "little") + b"short"
    reply = await store._eval(_SCRIPTS["append"], keys, [epoch, 1, b"rec", 0, 1, 0, 6, "x", T0, 2, good, 0])
    assert reply[0] == b"OK"
    assert [r.payload for r in (await store.list_usage("x", 0, 0, 10, None))[0]] == [b"abc", b"short"]


async def test_a_large_usage_chunk_is_stored_compressed_and_read_back_exactly(opened) -> None:
    """A flush's usage chunk from PACK_MIN_BYTES on is one stream entry with field codec 2
    (zstd); list_usage (also paging inside it) and an outside reader (usage_entry_payloads)
    get the same rows as written; a small chunk stays as it is."""
    from quota_server.storage.redis import PACK_MIN_BYTES, usage_entry_payloads

    store = await opened()
    epoch = await store.acquire_lease("a", TTL_MS * 10)
    rows = [UsageRow("big", T0, b'{"reservation_id":"r%05d","amount_charged":1}' % i) for i in range(2000)]
    assert sum(len(r.payload) + 4 for r in rows) >= PACK_MIN_BYTES
    small = [UsageRow("big", T0 + 1, b'{"reservation_id":"s%d"}' % i) for i in range(3)]
    await store.append(epoch, 1, b"rec1", rows, [])
    await store.append(epoch, 2, b"rec2", small, [])
    (_, first), (_, second) = await store.client.xrange(store.usage_key("big"))
    assert first[b"codec"] == b"2" and int(first[b"n"]) == 2000
    assert len(first[b"payloads"]) < sum(len(r.payload) for r in rows) // 10
    assert b"codec" not in second
    assert usage_entry_payloads(first) == [r.payload for r in rows]
    assert usage_entry_payloads(second) == [r.payload for r in small]
    got, cursor = [], None
    while True:
        page, cursor = await store.list_usage("big", 0, 0, 700, cursor)
        got += page
        if cursor is None:
            break
    assert got == rows + small


async def test_format_1_data_is_read_and_marked_current(opened) -> None:
    """Data written before compression (format 1: records and snapshot as they are, no codec)
    loads unchanged; opening it marks the data with the current format (3), so an older server
    refuses it from then on rather than misread a compressed record."""
    store = await opened()
    client = store.client
    await client.hset(store.k_meta, mapping={"format": 1, "snapshot_seq": 1, "last_seq": 2})
    await client.set(store.k_snapshot, b"old snapshot " * 200)
    await client.xadd(store.k_journal, {"record": b"old record " * 200}, id="2-0")
    again = await opened()
    assert int(await client.hget(store.k_meta, "format")) == 3
    assert await again.load() == Recovered(b"old snapshot " * 200, 1, [(2, b"old record " * 200)])


async def test_format_2_zlib_data_is_read_and_marked_format_3(opened) -> None:
    """Format 2 compressed with zlib (codec 1): its snapshot and records load exactly, the data is
    marked 3, and new records are zstd (codec 2) beside the old ones."""
    import zlib

    store = await opened()
    client = store.client
    snapshot, record = b"old snapshot " * 300, b"old record " * 300
    await client.hset(store.k_meta, mapping={"format": 2, "snapshot_seq": 1, "last_seq": 2, "snapshot_codec": 1})
    await client.set(store.k_snapshot, zlib.compress(snapshot))
    await client.xadd(store.k_journal, {"record": zlib.compress(record), "codec": 1}, id="2-0")
    again = await opened()
    assert int(await client.hget(store.k_meta, "format")) == 3
    assert await again.load() == Recovered(snapshot, 1, [(2, record)])
    epoch = await again.acquire_lease("b", TTL_MS * 10)
    await again.append(epoch, 3, record * 300, [], [])
    assert (await again.load()).records == [(2, record), (3, record * 300)]
    codecs = [fields.get(b"codec") for _, fields in await client.xrange(store.k_journal)]
    assert codecs == [b"1", b"2"]


async def test_big_records_and_snapshots_are_stored_compressed(opened) -> None:
    """A journal record or snapshot from PACK_MIN_BYTES on is stored zstd-compressed with
    its codec beside it (what outside readers of the journal stream need to decode it)."""
    store = await opened()
    epoch = await store.acquire_lease("a", TTL_MS * 10)
    record = b"journal record " * 10_000
    await store.append(epoch, 1, record, [], [])
    await store.append(epoch, 2, b"small", [], [])
    (_, first), (_, second) = await store.client.xrange(store.k_journal)
    assert first[b"codec"] == b"2" and len(first[b"record"]) < len(record) // 10
    assert b"codec" not in second and second[b"record"] == b"small"
    await store.write_snapshot(epoch, 2, record * 10)
    assert int(await store.client.hget(store.k_meta, "snapshot_codec")) == 2
    assert len(await store.client.get(store.k_snapshot)) < len(record)
    assert await store.load() == Recovered(record * 10, 2, [])


# -- the C writer thread (quota_server/_rediswriter.pyx): appends without the GIL ----------------


def _loop_path_refused(store: RedisStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the event loop's append path fail, so an append that lands went out on the thread."""
    real = store._eval

    async def no_hot_eval(script, keys, args, *, hot=False):
        assert not hot, "the append took the event loop's path"
        return await real(script, keys, args)

    monkeypatch.setattr(store, "_eval", no_hot_eval)


async def test_appends_leave_from_the_writer_thread_compressed_as_the_loop_would(
        threaded, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the thread available, appends go out on it: a big record and a big usage chunk are
    stored zstd-compressed (codec 2), small ones as they are, single rows as a payload field,
    events as they are; everything reads back exactly, also through the loop path's decoders."""
    from quota_server.storage import EventRow
    from quota_server.storage.redis import PACK_MIN_BYTES, usage_entry_payloads

    store = await threaded()
    assert store._thread_writer is not None
    _loop_path_refused(store, monkeypatch)
    epoch = await store.acquire_lease("a", 60_000)
    record = b"journal record " * 10_000
    rows = [UsageRow("big", T0, b'{"reservation_id":"r%05d","amount_charged":1}' % i) for i in range(2000)]
    assert len(record) >= PACK_MIN_BYTES and sum(len(r.payload) + 4 for r in rows) >= PACK_MIN_BYTES
    events = [EventRow(1, "big", "credit_low", T0, b'{"available":1}')]
    await store.append(epoch, 1, record, rows + [UsageRow("one", T0, b"single")], events)
    await store.append(epoch, 2, b"small", [UsageRow("big", T0 + 1, b"a"), UsageRow("big", T0 + 1, b"b")], [])
    (_, first), (_, second) = await store.client.xrange(store.k_journal)
    assert first[b"codec"] == b"2" and len(first[b"record"]) < len(record) // 10
    assert b"codec" not in second and second[b"record"] == b"small"
    (_, big), (_, small) = await store.client.xrange(store.usage_key("big"))
    assert big[b"codec"] == b"2" and usage_entry_payloads(big) == [r.payload for r in rows]
    assert b"codec" not in small and usage_entry_payloads(small) == [b"a", b"b"]
    ((_, one),) = await store.client.xrange(store.usage_key("one"))
    assert one[b"payload"] == b"single"
    assert await store.load() == Recovered(None, 0, [(1, record), (2, b"small")])
    assert await store.read_events(0, 10) == events
    # The same record again is a retry (DUP), a different one for that seq is refused.
    await store.append(epoch, 2, b"small", [UsageRow("big", T0 + 1, b"a"), UsageRow("big", T0 + 1, b"b")], [])
    with pytest.raises(SequenceError):
        await store.append(epoch, 2, b"other", [], [])


async def test_start_append_hands_the_write_to_the_thread_before_it_is_awaited(
        redis_server: RedisProcess, threaded, monkeypatch: pytest.MonkeyPatch) -> None:
    """start_append sends on the thread at once (the engine's next write leaves without waiting
    for the loop to come back): the thread is busy before anything is awaited, on_landed is
    called once Redis holds the record, before the append is awaited; awaiting it then finishes
    the append. With the thread busy, start_append sends nothing: the append runs when awaited
    (on the loop path), and its on_landed is not called; nor is a refused append's."""
    store = await threaded()
    epoch = await store.acquire_lease("a", 60_000)
    await store.append(epoch, 1, b"r1", [], [])  # the thread's connection is made
    landed: list[int] = []
    started = store.start_append(epoch, 2, b"r2", [UsageRow("u", T0, b"p2")], [], on_landed=lambda: landed.append(2))
    assert store._thread_writer.busy, "handed to the thread, nothing awaited yet"
    for _ in range(500):
        if landed:
            break
        await asyncio.sleep(0.01)
    assert landed == [2], "on_landed: called from the loop, before the append is awaited"
    assert await store.client.xlen(store.k_journal) == 2
    await started
    assert not store._thread_writer.busy and landed == [2]
    redis_server.pause()  # the thread's next job stays in flight
    try:
        stuck = store.start_append(epoch, 3, b"r3", [], [], on_landed=lambda: landed.append(3))
        assert store._thread_writer.busy
        # The same append again (a retry): the thread is busy, nothing is sent until awaited,
        # and its on_landed is never called.
        waiting = store.start_append(epoch, 3, b"r3", [], [], on_landed=lambda: landed.append(-3))
        assert store._thread_writer.busy
    finally:
        redis_server.resume()
    await stuck
    await waiting  # sent now, on the loop path: DUP
    assert landed == [2, 3]
    assert await store.load() == Recovered(None, 0, [(1, b"r1"), (2, b"r2"), (3, b"r3")])
    # An append the script refuses (a gap) is not reported landed.
    refused = store.start_append(epoch, 9, b"r9", [], [], on_landed=lambda: landed.append(9))
    with pytest.raises(SequenceError):
        await refused
    assert landed == [2, 3]


async def test_poll_reports_a_landed_append_without_the_loop_turning(threaded) -> None:
    """poll() (called by the engine between its long steps) delivers a finished job at once:
    on_landed runs inside the poll call, with no await in between; the loop's own eventfd
    callback later finds nothing left to deliver, and the append's awaitable still finishes."""
    import time

    store = await threaded()
    epoch = await store.acquire_lease("a", 60_000)
    await store.append(epoch, 1, b"r1", [], [])  # the thread's connection is made
    landed: list[int] = []
    started = store.start_append(epoch, 2, b"r2", [], [], on_landed=lambda: landed.append(2))
    deadline = time.monotonic() + 10
    while not landed and time.monotonic() < deadline:  # the loop never runs meanwhile
        time.sleep(0.001)
        store.poll()
    assert landed == [2]
    await started
    await asyncio.sleep(0.01)  # the eventfd's callback runs: nothing more
    assert landed == [2] and not store._thread_writer.busy
    assert await store.load() == Recovered(None, 0, [(1, b"r1"), (2, b"r2")])


async def test_the_thread_reconnects_after_a_redis_restart_and_reloads_the_script(
        redis_server: RedisProcess, threaded, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed under the thread: StorageUnavailable; restarted (its script cache empty): the next
    append connects again, loads the script (NOSCRIPT) and lands, still from the thread."""
    store = await threaded()
    _loop_path_refused(store, monkeypatch)
    epoch = await store.acquire_lease("a", 60_000)
    await store.append(epoch, 1, b"r1", [], [])
    redis_server.stop(kill=True)
    with pytest.raises(StorageUnavailable):
        await store.append(epoch, 2, b"r2", [], [])
    redis_server.start()
    await store.append(epoch, 2, b"r2", [], [])
    assert await store.load() == Recovered(None, 0, [(1, b"r1"), (2, b"r2")])


async def test_a_caller_that_gives_up_leaves_the_write_to_land_once(
        redis_server: RedisProcess, threaded) -> None:
    """An append whose caller is cancelled while Redis is frozen keeps running on the thread
    (meanwhile appends take the loop path); once Redis wakes up it lands, and the caller's
    retry of the same append is answered as a duplicate: the record is there once."""
    store = await threaded(op_timeout_ms=5_000)
    epoch = await store.acquire_lease("a", 60_000)
    await store.append(epoch, 1, b"r1", [UsageRow("u", T0, b"p1")], [])
    redis_server.pause()
    try:
        task = asyncio.ensure_future(store.append(epoch, 2, b"r2", [UsageRow("u", T0 + 1, b"p2")], []))
        await asyncio.sleep(0.2)
        assert store._thread_writer.busy
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert store._thread_writer.busy  # the job still runs
    finally:
        redis_server.resume()
    for _ in range(200):
        if not store._thread_writer.busy:
            break
        await asyncio.sleep(0.01)
    assert not store._thread_writer.busy
    await store.append(epoch, 2, b"r2", [UsageRow("u", T0 + 1, b"p2")], [])
    assert await store.load() == Recovered(None, 0, [(1, b"r1"), (2, b"r2")])
    assert [r.payload async for r in store.iter_usage("u", 0, 0)] == [b"p1", b"p2"]


async def test_the_thread_authenticates_and_selects_the_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The thread's own connection sends AUTH (user and password from the URL) and SELECT: its
    appends land in the URL's database; a wrong password fails the start, never an append."""
    import redis as sync_redis

    require_redis_server()
    with RedisProcess(tmp_path / "auth") as server:
        admin = sync_redis.Redis(port=server.port)
        admin.config_set("requirepass", "s3cret-pass")
        admin.close()
        url = f"redis://default:s3cret-pass@127.0.0.1:{server.port}/3"
        store = RedisStorage(url, op_timeout_ms=OUTAGE_TIMEOUT_MS)
        await store.open()
        try:
            _loop_path_refused(store, monkeypatch)
            epoch = await store.acquire_lease("a", 10_000)
            await store.append(epoch, 1, b"record-1" * 20_000, [], [])
            db3 = sync_redis.Redis(port=server.port, password="s3cret-pass", db=3)
            db0 = sync_redis.Redis(port=server.port, password="s3cret-pass", db=0)
            assert db3.xlen(store.k_journal) == 1 and not db0.exists(store.k_journal)
            db3.close()
            db0.close()
        finally:
            await store.close()
        wrong = RedisStorage(f"redis://default:wrong@127.0.0.1:{server.port}/3", op_timeout_ms=OUTAGE_TIMEOUT_MS)
        with pytest.raises(Exception) as caught:
            await wrong.open()
        assert not isinstance(caught.value, StorageUnavailable)

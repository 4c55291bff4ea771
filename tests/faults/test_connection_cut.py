"""The connection between quota-server and Redis breaks in the middle of a write.

A TCP proxy owned by the test sits between the two. It cuts the connection half-way through an
append (the one EVALSHA of a batch), loses the reply of an append that Redis applied, and
black-holes or mutes the link for longer than the storage timeout. Redis never applies part of
a batch, and every cut batch is retried until it lands, exactly once.
"""
from __future__ import annotations

import asyncio
import os
import random

import grpc
import pytest
import redis.asyncio as aioredis
from quota_client import NO_RETRY, AsyncQuotaClient, QuotaError

from quota_server.storage.redis import _SCRIPTS, RedisStorage

from .conftest import NOT_SERVING, SERVING, wait_health
from .proxy import BLACKHOLE, MUTE, PASS, TcpProxy, parse_command
from .redis_state import check_against_books, persisted
from .workload import ACCOUNTS, CHARGE, PRICE, Book, Load, server_balances, settle, setup_accounts

WORKERS = 16
STORAGE_TIMEOUT_MS = 1_000
CUTS_MID_REQUEST = 5
LOST_REPLIES = 3
PARTITION_S = 2.5  # longer than the storage timeout: the outage is noticed
APPEND_SHA = _SCRIPTS["append"].sha.encode()


def append_of(chunk: bytes) -> tuple[int, bytes] | None:
    """(seq, record) of the append command a chunk carries in full, else None."""
    args = parse_command(chunk)
    if args is None or args[0].upper() != b"EVALSHA" or args[1] != APPEND_SHA:
        return None
    argv = args[3 + int(args[2]):]
    return int(argv[1]), argv[2]


@pytest.mark.slow
async def test_cut_connection_never_applies_a_partial_batch(redis_server, spawn):
    """Goal: under load from 16 clients, the proxy (1) forwards only a random prefix of an
    append command and resets the connection, CUTS_MID_REQUEST times; (2) lets an append
    through and drops its reply, LOST_REPLIES times; (3) black-holes, then (4) mutes (requests
    pass, replies are dropped) the link for longer than [storage] timeout_ms, during which the
    server reports NOT_SERVING, refuses a new charge with UNAVAILABLE, and comes back to SERVING by itself. Proof, read from Redis
    directly: load() recovers without a gap, every journal record replays into a fresh core,
    journal and usage streams agree id by id (so no batch was applied in part), each cut batch
    whose command was seen whole sits in the journal once with exactly the bytes that were cut,
    and the books settle exactly after every attempted id is replayed."""
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    proxy = await TcpProxy(redis_server.port).start()
    try:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        server = spawn(url, timeout_ms=STORAGE_TIMEOUT_MS, snapshot_every_records=10**9)
        await server.start()
        async with AsyncQuotaClient(server.target, retry=NO_RETRY) as client:
            await setup_accounts(client)
        book = Book("cut")
        load = Load(server.target, book, workers=WORKERS, timeout_s=5.0, seed=seed).start()
        await load.wait_acked(100)

        for i in range(CUTS_MID_REQUEST):
            cut = await asyncio.wait_for(proxy.cut_request(APPEND_SHA, lambda n: rng.randint(1, n - 1)), 10)
            assert 0 < cut.forwarded < cut.chunk_len
            await load.wait_acked(50, what=f"after cut {i} (seed {seed})")
        for i in range(LOST_REPLIES):
            await asyncio.wait_for(proxy.lose_reply(APPEND_SHA), 10)
            await load.wait_acked(50, what=f"after lost reply {i} (seed {seed})")
        for mode in (BLACKHOLE, MUTE):
            proxy.mode = mode
            await wait_health(server.target, NOT_SERVING, timeout_s=STORAGE_TIMEOUT_MS / 1000 + 5, what=mode)
            async with AsyncQuotaClient(server.target, retry=NO_RETRY) as client:
                attempt = book.new(CHARGE, ACCOUNTS[0])
                with pytest.raises(QuotaError) as refused:
                    await client.charge(attempt.account, charge_id=attempt.op_id, amount=PRICE, timeout=5.0)
                assert (refused.value.code, refused.value.reason) == (
                    grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE"), refused.value
            await asyncio.sleep(PARTITION_S - STORAGE_TIMEOUT_MS / 1000)  # keep the link down a while longer
            proxy.mode = PASS
            await wait_health(server.target, SERVING, timeout_s=30, what=f"after {mode}")
            await load.wait_acked(50, what=f"after {mode} (seed {seed})")
        await load.stop()
        assert not load.unexpected, load.unexpected
        assert server.starts == 1 and server.proc.poll() is None, server.output()

        await settle(server.target, book)
        state = await persisted(redis_server.url)  # straight to Redis, not through the proxy
        check_against_books(state, book, await server_balances(server.target))
        # Each cut append that the proxy saw whole: in the journal once, byte for byte.
        storage = RedisStorage(redis_server.url)
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            whole = [append_of(c.chunk) for c in proxy.cuts]
            whole = [w for w in whole if w is not None]
            assert whole, "no cut carried a whole append command"
            for seq, record in whole:
                entries = await client.xrange(storage.k_journal, f"{seq}-0", f"{seq}-0")
                assert [fields[b"record"] for _, fields in entries] == [record], seq
        finally:
            await client.aclose()
        print(f"\ncuts: {[(c.kind, c.forwarded, c.chunk_len) for c in proxy.cuts]}, "
              f"{len(whole)} verified in the journal, {state.last_seq} records, errors {dict(book.errors)}")
    finally:
        await proxy.close()

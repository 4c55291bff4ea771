"""kill -9 of quota-server under load, on Redis with appendfsync always, round after round."""
from __future__ import annotations

import asyncio
import os
import random
import signal

import pytest
from quota_client import NO_RETRY, AsyncQuotaClient

from .redis_state import check_against_books, persisted
from .workload import Book, Load, server_balances, settle, setup_accounts

ROUNDS = int(os.environ.get("QUOTA_FAULT_KILL_ROUNDS", "10"))
WORKERS = 16
SNAPSHOT_EVERY = 200  # small, so recovery goes through snapshot + trimmed journal too


@pytest.mark.slow
async def test_kill_9_under_load_loses_nothing_acknowledged_and_doubles_nothing(redis_server, spawn):
    """Goal: in each of ROUNDS (>= 10) rounds, 16 async clients charge and reserve+commit with
    unique ids; quota-server is SIGKILLed after a random number of acknowledged calls (so at a
    random point of the flush cycle) and restarted on the same Redis. After each restart, before
    any retry: every acknowledged charge/commit (of this and every earlier round) is on the
    books, each charged id has exactly one usage record, and each balance is exactly initial -
    price x charged ids. Then every id attempted (acked or not) is replayed with the same
    parameters: acked calls return identical results, and afterwards every id is charged exactly
    once. Finally Redis itself is read from outside: the journal is gap-free, every record
    replays into a fresh core whose balances equal the server's, and journal and usage streams
    agree id by id (no batch landed in part)."""
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    # The lease settings are the defaults, as a user's: a 10 s lease and on_lease_held "fail".
    # The restart, on the same host, takes the killed owner's lease over at once (holder_died_here).
    server = spawn(redis_server.url, snapshot_every_records=SNAPSHOT_EVERY)
    await server.start()
    async with AsyncQuotaClient(server.target, retry=NO_RETRY) as client:
        await setup_accounts(client)
    book = Book("kill")
    in_doubt_total = 0
    for round_no in range(ROUNDS):
        where = f"(seed {seed}, round {round_no})"
        load = Load(server.target, book, workers=WORKERS, stop_on_error=True, seed=rng.getrandbits(32)).start()
        await load.wait_acked(rng.randint(5, 400), what=where)
        await asyncio.sleep(rng.random() * 0.005)  # land anywhere within a flush, not right after an ack
        assert load.stopped_workers == 0, f"a worker failed before the kill {where}: {load.unexpected}\n{server.output()}"
        assert await server.kill(signal.SIGKILL) == -signal.SIGKILL
        await load.stop()
        assert not load.unexpected, (where, load.unexpected)
        in_doubt_total += sum(not a.settled and not a.done_acked for a in book.attempts.values())
        await server.restart()
        settlement = await settle(server.target, book)
        assert settlement.replayed > 0, where
        state = await persisted(redis_server.url)
        check_against_books(state, book, await server_balances(server.target))
    assert len(book.attempts) >= ROUNDS * 5
    # The report of a run: ids whose outcome the clients could not know at the kill.
    print(f"\nkill -9: {ROUNDS} rounds, {len(book.attempts)} ids, {in_doubt_total} in doubt at kills, seed {seed}")

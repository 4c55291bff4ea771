"""kill -9 under load, then restart on the same data: nothing acknowledged is lost, nothing is
charged twice, and retries of every attempted id settle the books exactly."""
from __future__ import annotations

import asyncio
import os
import random
import signal

import pytest
from quota_client import NO_RETRY, AsyncQuotaClient, ChargeResult, QuotaError

from tests.support.wait import wait_until

ROUNDS = 5
WORKERS = 16
PRICE = 3
INITIAL = 10**9
ACCOUNT = "crash"
CALL_TIMEOUT_S = 10.0


class Ledger:
    """What the clients saw: every id they attempted and the result of each acknowledged one."""

    def __init__(self) -> None:
        self.attempted: list[str] = []
        self.acked: dict[str, ChargeResult] = {}
        self.next_id = 0
        self.killed = False
        self.transient_errors: list[str] = []


async def load(client: AsyncQuotaClient, book: Ledger, round_no: int) -> None:
    """Issue charges with unique ids until the server has been killed.

    A failure before the kill (a transient UNAVAILABLE, say) is retried with the same id, as the
    API allows; after the kill the id's fate is unknown (maybe persisted, maybe not).
    """
    while True:
        charge_id = f"r{round_no}-{book.next_id}"
        book.next_id += 1
        book.attempted.append(charge_id)
        while True:
            try:
                result = await client.charge(ACCOUNT, charge_id=charge_id, amount=PRICE, timeout=CALL_TIMEOUT_S)
                break
            except QuotaError as exc:
                if book.killed:
                    return
                book.transient_errors.append(f"{charge_id}: {exc}")
                if len(book.transient_errors) > 100:
                    raise
        assert result.ok, result
        book.acked[charge_id] = result


async def usage_ids(client: AsyncQuotaClient) -> list[str]:
    return [record.charge_id async for record in client.iter_usage(ACCOUNT, page_size=1000)]


@pytest.mark.slow
async def test_kill_9_under_load_loses_no_acknowledged_charge(spawn_server):
    """Goal: in each of 3 rounds, 16 concurrent clients charge unique ids and record every
    acknowledged charge; the server is SIGKILLed at a random moment and restarted on the same data.
    Every acknowledged charge is on the books; the balance is initial - price x (charges on the
    books), with at most the unacknowledged ids in doubt; replaying every attempted id with the same
    parameters returns the original result for the acknowledged ones and afterwards the balance is
    exactly initial - price x (distinct attempted ids): nothing lost, nothing doubled; ListUsage has
    exactly one record per charged id."""
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    server = await spawn_server("crash").start()
    async with AsyncQuotaClient(server.target, retry=NO_RETRY) as client:
        await client.upsert_account(ACCOUNT, plan_id="prepaid")
        await client.grant(ACCOUNT, INITIAL, grant_id="funding")
    book = Ledger()
    for round_no in range(ROUNDS):
        kill_after = rng.randint(50, 400)
        acked_before = len(book.acked)
        async with AsyncQuotaClient(server.target, retry=NO_RETRY) as client:
            workers = [asyncio.ensure_future(load(client, book, round_no)) for _ in range(WORKERS)]
            await wait_until(lambda: len(book.acked) >= acked_before + kill_after or any(w.done() for w in workers),
                             timeout_s=60, what=f"{kill_after} acknowledged charges (seed {seed})")
            if any(w.done() for w in workers):
                await asyncio.gather(*workers)  # re-raise what stopped it
                raise AssertionError(f"a worker stopped before the kill:\n{server.output()}")
            book.killed = True
            assert await server.kill(signal.SIGKILL) == -signal.SIGKILL
            await asyncio.gather(*workers)
        book.killed = False
        await server.restart()
        async with AsyncQuotaClient(server.target, retry=NO_RETRY) as client:
            balance = (await client.get_balance(ACCOUNT)).balance
            charged = INITIAL - balance
            in_doubt = len(book.attempted) - len(book.acked)
            assert charged % PRICE == 0
            assert len(book.acked) * PRICE <= charged <= len(book.attempted) * PRICE, (seed, round_no)
            on_books = await usage_ids(client)
            assert len(on_books) == len(set(on_books)) == charged // PRICE, (seed, round_no)
            assert set(book.acked) <= set(on_books), (seed, round_no)
            assert set(on_books) <= set(book.attempted)
            assert charged // PRICE - len(book.acked) <= in_doubt
            # Retry every id ever attempted, as a client that timed out would.
            for charge_id in book.attempted:
                replay = await client.charge(ACCOUNT, charge_id=charge_id, amount=PRICE, timeout=CALL_TIMEOUT_S)
                assert replay.ok, replay
                if charge_id in book.acked:
                    assert replay == book.acked[charge_id], (seed, round_no, charge_id)
                else:
                    book.acked[charge_id] = replay  # now acknowledged: later rounds check it too
            assert len(set(book.attempted)) == len(book.attempted)
            final = await client.get_balance(ACCOUNT)
            assert (final.balance, final.held) == (INITIAL - PRICE * len(book.attempted), 0), (seed, round_no)
            on_books = await usage_ids(client)
            assert sorted(on_books) == sorted(book.attempted), (seed, round_no)

"""Two quota-servers pointed at one Redis: exactly one serves, and a zombie owner never writes.

The lease (a Redis key with a PX TTL) lets one owner in; the fencing epoch (checked inside every
write script) keeps an owner that lost the lease from writing, even if it wakes up believing it
still owns the data.
"""
from __future__ import annotations

import asyncio
import re
import signal

import pytest
import redis.asyncio as aioredis
from quota_client import NO_RETRY, AsyncQuotaClient, QuotaError

from quota_server.storage.redis import RedisStorage
from tests.support.subproc import health_status

from .conftest import SERVING
from .redis_state import check_against_books, digest, persisted
from .workload import ACCOUNTS, CHARGE, PRICE, Book, Load, server_balances, settle, setup_accounts

LEASE_TTL_MS = 1_000
STANDBY_LEASE_TTL_MS = 2_000  # renewed every TTL/3: a loaded CI machine must not starve it out
WORKERS = 8
ZOMBIE_PROBES = 8


def epoch_of(output: str) -> int:
    """The fencing epoch a server logged when it recovered."""
    found = re.findall(r"recovered seq=\d+ .*epoch=(\d+)", output)
    assert found, output
    return int(found[-1])


async def current_holder_epoch(url: str) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        return int(await client.hget(RedisStorage(url).k_holder, "epoch"))
    finally:
        await client.aclose()


@pytest.mark.slow
async def test_second_server_with_on_lease_held_fail_exits_non_zero(redis_server, spawn):
    """Goal: while one server owns the data, a second one started with on_lease_held = "fail"
    exits non-zero at startup with a message naming the reason, and the first keeps serving."""
    first = await spawn(redis_server.url, "first", lease_ttl_ms=LEASE_TTL_MS).start()
    async with AsyncQuotaClient(first.target, retry=NO_RETRY) as client:
        await setup_accounts(client, ACCOUNTS[:1])
    second = spawn(redis_server.url, "second", lease_ttl_ms=LEASE_TTL_MS, on_lease_held="fail")
    second.spawn()
    assert await second.wait_exit() == 1
    assert "owned by another server" in second.output(), second.output()
    assert await health_status(first.target) == SERVING
    async with AsyncQuotaClient(first.target, retry=NO_RETRY) as client:
        assert (await client.charge(ACCOUNTS[0], charge_id="after-second", amount=PRICE)).ok


@pytest.mark.slow
async def test_standby_with_on_lease_held_wait_takes_over_after_the_owner_stops(redis_server, spawn):
    """Goal: a second server started with on_lease_held = "wait" does not serve (its port is not
    even open) for two lease TTLs while the first owner renews its lease under load; when
    the first stops cleanly (SIGTERM, exit 0, lease released) the standby takes over at once
    with a higher epoch, and everything the first acknowledged is there, unchanged."""
    first = await spawn(redis_server.url, "first", lease_ttl_ms=STANDBY_LEASE_TTL_MS).start()
    async with AsyncQuotaClient(first.target, retry=NO_RETRY) as client:
        await setup_accounts(client)
    book = Book("standby")
    load = Load(first.target, book, workers=WORKERS, timeout_s=5.0, stop_on_error=True).start()
    await load.wait_acked(50)
    standby = spawn(redis_server.url, "standby", lease_ttl_ms=STANDBY_LEASE_TTL_MS, on_lease_held="wait")
    standby.spawn()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2 * STANDBY_LEASE_TTL_MS / 1000
    while loop.time() < deadline:  # two TTLs: the owner's renewals keep the standby out
        assert await health_status(standby.target, timeout_s=0.2) is None
        assert standby.proc.poll() is None, standby.output()
        await asyncio.sleep(0.05)
    assert "lease held by another server; waiting" in standby.output()
    await load.stop()
    assert not load.unexpected and load.stopped_workers == WORKERS
    assert all(a.done_acked for a in book.attempts.values()), "the first owner failed a call"
    assert await first.kill(signal.SIGTERM) == 0
    await standby.wait_serving(timeout_s=10)
    assert epoch_of(standby.output()) > epoch_of(first.output())
    await settle(standby.target, book)
    check_against_books(await persisted(redis_server.url), book, await server_balances(standby.target))


@pytest.mark.slow
async def test_zombie_owner_is_fenced_and_never_writes_again(redis_server, spawn):
    """Goal: the owner is frozen (SIGSTOP) under load past its lease TTL; a standby takes the
    lease over (a higher epoch) and serves. Charges are then sent to the frozen owner. When it
    is resumed (SIGCONT) it finds itself fenced: every one of those charges fails, it logs
    Fenced and exits non-zero, and Redis is byte-for-byte what it was before the zombie woke
    up (apart from the new owner's lease renewals): no write from the old epoch after the
    takeover. The new owner has everything the zombie acknowledged before it froze; replaying
    every attempted id on it settles the books exactly."""
    zombie = await spawn(redis_server.url, "zombie", lease_ttl_ms=LEASE_TTL_MS).start()
    async with AsyncQuotaClient(zombie.target, retry=NO_RETRY) as client:
        await setup_accounts(client)
    book = Book("zombie")
    load = Load(zombie.target, book, workers=WORKERS, timeout_s=1.0).start()
    await load.wait_acked(100)
    zombie.send_signal(signal.SIGSTOP)
    try:
        await load.stop()  # calls caught by the freeze end at their deadline: outcome unknown
        successor = spawn(redis_server.url, "successor", lease_ttl_ms=LEASE_TTL_MS, on_lease_held="wait")
        await successor.start()
        assert await current_holder_epoch(redis_server.url) == epoch_of(successor.output()) > epoch_of(zombie.output())
        before = await digest(redis_server.url)
        async with AsyncQuotaClient(zombie.target, retry=NO_RETRY) as client:
            probes = []
            for i in range(ZOMBIE_PROBES):
                attempt = book.new(CHARGE, ACCOUNTS[i % len(ACCOUNTS)])
                probes.append(asyncio.ensure_future(
                    client.charge(attempt.account, charge_id=attempt.op_id, amount=PRICE, timeout=20.0)))
            await asyncio.sleep(0.2)  # let the probes reach the frozen process's socket buffers
            zombie.send_signal(signal.SIGCONT)
            outcomes = await asyncio.gather(*probes, return_exceptions=True)
    finally:
        zombie.send_signal(signal.SIGCONT)
    assert all(isinstance(o, QuotaError) for o in outcomes), f"the fenced owner acknowledged a charge: {outcomes}"
    code = await zombie.wait_exit()
    assert code not in (0, -signal.SIGKILL), code
    assert "Fenced" in zombie.output(), zombie.output()
    after = await digest(redis_server.url)
    assert after == before, "the fenced owner wrote to Redis after the takeover"
    assert await health_status(successor.target) == SERVING
    await settle(successor.target, book)
    check_against_books(await persisted(redis_server.url), book, await server_balances(successor.target))
    print(f"\nzombie exit {code}, probes {[type(o).__name__ for o in outcomes]}")


@pytest.mark.slow
async def test_a_server_killed_with_sigkill_is_taken_over_at_once_on_its_host(redis_server, spawn):
    """Goal: kill -9 leaves the dead owner's lease in Redis for its whole TTL (60 s here); a
    server restarted on the same host with the default on_lease_held = "fail" sees that the
    holder's process is gone, takes the lease over (a higher epoch) and serves with everything
    acknowledged before the kill. Without the takeover it would exit 1 ("owned by another
    server") until the TTL ran out."""
    server = await spawn(redis_server.url, "owner", lease_ttl_ms=60_000).start()
    async with AsyncQuotaClient(server.target, retry=NO_RETRY) as client:
        await setup_accounts(client, ACCOUNTS[:1])
        assert (await client.charge(ACCOUNTS[0], charge_id="before-kill", amount=PRICE)).ok
        before = (await client.get_balance(ACCOUNTS[0])).available
    dead_epoch = epoch_of(server.output())
    assert await server.kill(signal.SIGKILL) == -signal.SIGKILL
    await server.restart()
    assert "a process of this host that is gone; taking over" in server.output(), server.output()
    assert epoch_of(server.output()) > dead_epoch
    async with AsyncQuotaClient(server.target, retry=NO_RETRY) as client:
        assert (await client.get_balance(ACCOUNTS[0])).available == before
        again = await client.charge(ACCOUNTS[0], charge_id="before-kill", amount=PRICE)
        assert again.ok and (await client.get_balance(ACCOUNTS[0])).available == before  # not charged twice


@pytest.mark.slow
async def test_a_stopped_owner_is_alive_and_not_taken_over(redis_server, spawn):
    """Goal: an owner frozen with SIGSTOP still exists: a second server on the same host with
    on_lease_held = "fail" exits 1 while the lease lasts, and the owner serves on after SIGCONT."""
    first = await spawn(redis_server.url, "first", lease_ttl_ms=60_000).start()
    async with AsyncQuotaClient(first.target, retry=NO_RETRY) as client:
        await setup_accounts(client, ACCOUNTS[:1])
    first.send_signal(signal.SIGSTOP)
    try:
        second = spawn(redis_server.url, "second", lease_ttl_ms=60_000, on_lease_held="fail")
        second.spawn()
        assert await second.wait_exit() == 1
        assert "owned by another server" in second.output(), second.output()
    finally:
        first.send_signal(signal.SIGCONT)
    async with AsyncQuotaClient(first.target, retry=NO_RETRY) as client:
        assert (await client.charge(ACCOUNTS[0], charge_id="after-stop", amount=PRICE)).ok


async def test_a_clean_stop_releases_the_lease(redis_server, spawn):
    """Goal: SIGTERM releases the Redis lease before the process exits (ARCHITECTURE.md:
    persist in-flight work, release the lease, exit 0), so a standby elsewhere takes over at
    once. The process used to exit before its stop reached the release (asyncio.run cancelled
    it once the gRPC server had terminated), leaving the lease to run out: the lease key was
    still there with its whole TTL, and every restart on the host logged a take-over."""
    server = spawn(redis_server.url)
    for _ in range(2):
        await server.start()
        async with AsyncQuotaClient(server.target, retry=NO_RETRY) as client:
            await client.upsert_account("acct", plan_id="prepaid")
        server.send_signal(signal.SIGTERM)
        assert await server.wait_exit() == 0, server.output()
        client_r = aioredis.Redis.from_url(redis_server.url)
        try:
            assert await client_r.exists("quota:{q}:lease") == 0, await client_r.pttl("quota:{q}:lease")
        finally:
            await client_r.aclose()
        assert "taking over" not in server.output(), server.output()

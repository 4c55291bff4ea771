"""Redis crashes (SIGKILL + restart) and stalls (SIGSTOP/SIGCONT) under load.

The server must ride them out by itself: answer UNAVAILABLE at once while storage cannot
persist, report NOT_SERVING, retry the pending batch until it lands, and serve again without a
restart, having lost nothing acknowledged and applied nothing twice.
"""
from __future__ import annotations

import asyncio
import os
import random

import grpc
import pytest
from quota_client import NO_RETRY, AsyncQuotaClient, QuotaError

from quota_server.server import SERVICE_NAMES
from tests.storage.redis_proc import RedisProcess
from tests.support.subproc import health_status

from .conftest import NOT_SERVING, SERVING, require_redis_server, wait_health
from .redis_state import check_against_books, persisted
from .workload import ACCOUNTS, CHARGE, PRICE, Book, Load, server_balances, settle, setup_accounts

WORKERS = 16
OUTAGES = 2
CLIENT_DEADLINE_S = 2.0
STORAGE_TIMEOUT_MS = 5_000  # the default [storage] timeout_ms
FAST_FAIL_BOUND_S = 2.0  # generous: a refused call takes milliseconds
PROBES = 20


async def wait_errors(book: Book, count: int, *, timeout_s: float = 10.0) -> None:
    """Wait (bounded) until the load saw `count` more failed calls than when called."""
    target = sum(book.errors.values()) + count
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while sum(book.errors.values()) < target:
        assert loop.time() < deadline, f"the load saw no failures during the outage: {dict(book.errors)}"
        await asyncio.sleep(0.005)


@pytest.mark.slow
async def test_redis_kill_9_and_restart_under_load(redis_server, spawn):
    """Goal: Redis (appendfsync always) is SIGKILLed twice under load from 16 clients and
    restarted on the same port and data. Meanwhile the server reports NOT_SERVING and refuses
    new mutations with UNAVAILABLE / STORAGE_UNAVAILABLE (no other error); once Redis is back
    it reports SERVING and acknowledges new calls by itself, without a restart of quota-server.
    Afterwards nothing acknowledged is lost and nothing is doubled (same checks as kill -9 of
    the server: books, replay of every attempted id, and Redis read from outside)."""
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    server = spawn(redis_server.url, timeout_ms=1_000)
    await server.start()
    async with AsyncQuotaClient(server.target, retry=NO_RETRY) as client:
        await setup_accounts(client)
    book = Book("rk")
    load = Load(server.target, book, workers=WORKERS, timeout_s=CLIENT_DEADLINE_S, seed=seed).start()
    for outage in range(OUTAGES):
        where = f"(seed {seed}, outage {outage})"
        await load.wait_acked(rng.randint(20, 400), what=where)
        await asyncio.to_thread(redis_server.stop, True)  # SIGKILL
        await wait_health(server.target, NOT_SERVING, timeout_s=10, what=where)
        await wait_errors(book, WORKERS)
        await asyncio.to_thread(redis_server.start)
        await wait_health(server.target, SERVING, timeout_s=30, what=f"after Redis came back {where}")
        await load.wait_acked(100, what=f"after Redis came back {where}")
    await load.stop()
    assert not load.unexpected, load.unexpected
    assert book.reasons["STORAGE_UNAVAILABLE"] > 0, dict(book.reasons)
    assert server.starts == 1 and server.proc.poll() is None, "quota-server must recover without a restart"
    await settle(server.target, book)
    check_against_books(await persisted(redis_server.url), book, await server_balances(server.target))


@pytest.mark.slow
async def test_redis_stalled_past_the_client_deadline(redis_server, spawn):
    """Goal: Redis is frozen with SIGSTOP under load for longer than the clients' deadline.
    Calls caught in flight end with DEADLINE_EXCEEDED (outcome unknown); once the server has
    noticed (its write timed out after [storage] timeout_ms) health says NOT_SERVING for every
    service and each new mutation is refused with UNAVAILABLE / STORAGE_UNAVAILABLE at once
    (each well under FAST_FAIL_BOUND_S, although the call's own deadline and the storage
    timeout are longer), not queued behind the stalled write. After SIGCONT the server is
    SERVING again by itself and, once every attempted id (the refused probes included) is
    replayed, nothing acknowledged is lost and nothing is doubled."""
    seed = int.from_bytes(os.urandom(4), "little")
    server = spawn(redis_server.url, timeout_ms=STORAGE_TIMEOUT_MS)
    await server.start()
    async with AsyncQuotaClient(server.target, retry=NO_RETRY) as client:
        await setup_accounts(client)
    book = Book("stall")
    load = Load(server.target, book, workers=WORKERS, timeout_s=CLIENT_DEADLINE_S, seed=seed).start()
    await load.wait_acked(200)
    loop = asyncio.get_running_loop()
    paused_at = loop.time()
    redis_server.pause()
    try:
        detected_s = await wait_health(server.target, NOT_SERVING, timeout_s=STORAGE_TIMEOUT_MS / 1000 + 10)
        for service in SERVICE_NAMES:
            assert await health_status(server.target, service) == NOT_SERVING, service
        latencies = []
        async with AsyncQuotaClient(server.target, retry=NO_RETRY) as client:
            for i in range(PROBES):
                attempt = book.new(CHARGE, ACCOUNTS[i % len(ACCOUNTS)])
                started = loop.time()
                with pytest.raises(QuotaError) as refused:
                    await client.charge(attempt.account, charge_id=attempt.op_id, amount=PRICE,
                                        timeout=STORAGE_TIMEOUT_MS / 1000 * 2)
                latencies.append(loop.time() - started)
                assert (refused.value.code, refused.value.reason) == (grpc.StatusCode.UNAVAILABLE,
                                                                       "STORAGE_UNAVAILABLE"), refused.value
        assert max(latencies) < FAST_FAIL_BOUND_S, latencies
        stalled_s = loop.time() - paused_at
        assert stalled_s > CLIENT_DEADLINE_S
    finally:
        redis_server.resume()
    recovered_s = await wait_health(server.target, SERVING, timeout_s=30, what="after SIGCONT")
    await load.wait_acked(100, what="after SIGCONT")
    await load.stop()
    assert not load.unexpected, load.unexpected
    assert book.errors["DEADLINE_EXCEEDED"] > 0, f"no call outlived its deadline: {dict(book.errors)}"
    assert server.starts == 1 and server.proc.poll() is None
    await settle(server.target, book)
    check_against_books(await persisted(redis_server.url), book, await server_balances(server.target))
    print(f"\nstall: NOT_SERVING after {detected_s:.2f}s, refusals max {max(latencies) * 1000:.1f} ms, "
          f"stalled {stalled_s:.2f}s, SERVING {recovered_s:.2f}s after SIGCONT, errors {dict(book.errors)}")


@pytest.mark.slow
async def test_idle_server_notices_a_redis_outage_without_traffic(redis_server, spawn):
    """Goal (regression: an idle server kept reporting SERVING while Redis was dead, until a
    client's mutation timed out on it): with no calls at all, a SIGKILLed Redis makes health
    NOT_SERVING within a lease renewal interval, a new charge is then refused at once with
    UNAVAILABLE, and a restarted Redis makes the server SERVING again by itself, with the
    refused id replayable afterwards."""
    server = spawn(redis_server.url, lease_ttl_ms=1_500, timeout_ms=1_000)
    await server.start()
    async with AsyncQuotaClient(server.target, retry=NO_RETRY) as client:
        await setup_accounts(client, ACCOUNTS[:1])
    book = Book("idle")
    await asyncio.to_thread(redis_server.stop, True)
    await wait_health(server.target, NOT_SERVING, timeout_s=5, what="with Redis dead and no traffic")
    async with AsyncQuotaClient(server.target, retry=NO_RETRY) as client:
        attempt = book.new(CHARGE, ACCOUNTS[0])
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(QuotaError) as refused:
            await client.charge(attempt.account, charge_id=attempt.op_id, amount=PRICE, timeout=10.0)
        assert loop.time() - started < FAST_FAIL_BOUND_S
        assert (refused.value.code, refused.value.reason) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE")
    await asyncio.to_thread(redis_server.start)
    await wait_health(server.target, SERVING, timeout_s=10, what="after Redis came back")
    for account in ACCOUNTS[1:]:  # settle() checks every account of the workload
        async with AsyncQuotaClient(server.target, retry=NO_RETRY) as client:
            await setup_accounts(client, [account])
    await settle(server.target, book)


async def test_a_call_in_flight_when_redis_stalls_is_answered_unavailable(redis_server, spawn):
    """Goal: a charge whose write is caught by a Redis stall, sent with a long deadline, is
    answered UNAVAILABLE / STORAGE_UNAVAILABLE once the write has timed out ([storage]
    timeout_ms), while Redis is still frozen (it used to wait for Redis to come back, for ever
    without a deadline). The write is retried meanwhile: after SIGCONT, the retry with the same
    id gets the original result and the account is charged once."""
    server = spawn(redis_server.url, lease_ttl_ms=30_000, timeout_ms=1_000)  # renewal every 10 s
    await server.start()
    async with AsyncQuotaClient(server.target, retry=NO_RETRY) as client:
        before = await _fund_one(client)
        redis_server.pause()
        try:
            with pytest.raises(QuotaError) as refused:
                await asyncio.wait_for(client.charge(ACCOUNTS[0], charge_id="in-flight", amount=PRICE, timeout=60.0),
                                       20)
            assert (refused.value.code, refused.value.reason) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE")
        finally:
            redis_server.resume()
        await wait_health(server.target, SERVING, timeout_s=30, what="after SIGCONT")
        retried = await client.charge(ACCOUNTS[0], charge_id="in-flight", amount=PRICE, timeout=30.0)
        again = await client.charge(ACCOUNTS[0], charge_id="in-flight", amount=PRICE, timeout=30.0)
        assert retried.ok and again == retried
        assert (await client.get_balance(ACCOUNTS[0])).available == before - PRICE


async def test_new_calls_behind_a_stalled_write_are_refused_before_the_storage_timeout(redis_server, spawn):
    """Goal: with a long [storage] timeout_ms (20 s), Redis frozen under a charge in flight is not
    known down for 20 s; a new charge meanwhile (its deadline 10 s) must not queue behind the
    frozen write until its deadline runs out: once the write has been in flight for a second,
    new mutations are refused at once with UNAVAILABLE / STORAGE_UNAVAILABLE (safe to retry).
    After SIGCONT the charge in flight lands, the refused one is retried, each charged once."""
    server = spawn(redis_server.url, lease_ttl_ms=60_000, timeout_ms=20_000)
    await server.start()
    async with AsyncQuotaClient(server.target, retry=NO_RETRY) as client:
        before = await _fund_one(client)
        redis_server.pause()
        try:
            caught = asyncio.ensure_future(client.charge(ACCOUNTS[0], charge_id="caught", amount=PRICE, timeout=60.0))
            await asyncio.sleep(1.5)  # past the stall (1 s), far from the storage timeout (20 s)
            assert not caught.done()
            with pytest.raises(QuotaError) as refused:
                await client.charge(ACCOUNTS[0], charge_id="behind", amount=PRICE, timeout=10.0)
            assert (refused.value.code, refused.value.reason) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE")
        finally:
            redis_server.resume()
        assert (await asyncio.wait_for(caught, 30)).ok
        assert (await client.charge(ACCOUNTS[0], charge_id="behind", amount=PRICE, timeout=30.0)).ok
        assert (await client.get_balance(ACCOUNTS[0])).available == before - 2 * PRICE


async def test_usage_and_event_reads_during_an_outage_are_unavailable(redis_server, spawn):
    """Goal (regression: UNKNOWN with the storage's exception text, which the client took as a
    non-retryable internal error): while Redis is down, ListUsage, GetUsageSummary and
    WatchEvents (a new stream and one already open) fail with UNAVAILABLE /
    STORAGE_UNAVAILABLE, naming no address; they work again once Redis is back."""
    server = spawn(redis_server.url, lease_ttl_ms=30_000, timeout_ms=1_000)
    await server.start()
    async with AsyncQuotaClient(server.target, retry=NO_RETRY) as client:
        await setup_accounts(client, ACCOUNTS[:1])
        await client.charge(ACCOUNTS[0], charge_id="before", amount=PRICE)
        stream = client.watch_events(account_id=ACCOUNTS[0], after_event_id="0")
        await stream.__anext__()                                      # open and delivering
        await asyncio.to_thread(redis_server.stop, True)
        try:
            for read in (lambda: client.list_usage(ACCOUNTS[0]), lambda: client.get_usage_summary(ACCOUNTS[0])):
                with pytest.raises(QuotaError) as refused:
                    await asyncio.wait_for(read(), 20)
                assert (refused.value.code, refused.value.reason) == (grpc.StatusCode.UNAVAILABLE,
                                                                      "STORAGE_UNAVAILABLE")
                assert "127.0.0.1" not in str(refused.value)
            with pytest.raises(QuotaError) as dropped:
                await asyncio.wait_for(_drain(stream), 20)
            assert (dropped.value.code, dropped.value.reason) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE")
            with pytest.raises(QuotaError) as refused_stream:
                await asyncio.wait_for(_drain(client.watch_events(after_event_id="0")), 20)
            assert refused_stream.value.code == grpc.StatusCode.UNAVAILABLE
        finally:
            await asyncio.to_thread(redis_server.start)
        await wait_health(server.target, SERVING, timeout_s=30, what="after Redis came back")
        assert [u.charge_id for u in (await client.list_usage(ACCOUNTS[0])).records] == ["before"]


async def test_rate_limit_only_calls_fail_open_when_configured_and_credit_never(redis_server, spawn):
    """Goal: with [storage] fail_open_rate_limits, while Redis is down a charge on an account whose
    plan is unlimited (rate limits only) is still judged and answered (its rate limit applies in
    memory), and is persisted once Redis is back: its usage record is there and a retry gets the
    original result; a charge on a prepaid account (credit) is refused UNAVAILABLE all the same,
    and so are a commit and a release of a hold that credit backs on an account that has moved
    to the unlimited plan since (settling it moves credit; a black-box audit found it answered)."""
    server = spawn(redis_server.url, lease_ttl_ms=30_000, timeout_ms=1_000, fail_open_rate_limits=True)
    await server.start()
    async with AsyncQuotaClient(server.target, retry=NO_RETRY) as client:
        await setup_accounts(client, ACCOUNTS[:2])
        await client.upsert_account("sub", plan_id="unlimited")
        backed = await client.reserve(ACCOUNTS[1], reservation_id="backed", amount=PRICE)
        await client.upsert_account(ACCOUNTS[1], plan_id="unlimited")  # the hold keeps its credit
        await asyncio.to_thread(redis_server.stop, True)
        try:
            await wait_health(server.target, NOT_SERVING, timeout_s=20, what="with Redis dead")
            with pytest.raises(QuotaError) as refused:
                await client.charge(ACCOUNTS[0], charge_id="credit", amount=PRICE, timeout=10.0)
            assert (refused.value.code, refused.value.reason) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE")
            for settle in (client.commit(ACCOUNTS[1], "backed", amount=100 * PRICE, timeout=10.0),
                           client.release(ACCOUNTS[1], "backed", timeout=10.0)):
                with pytest.raises(QuotaError) as refused:
                    await settle
                assert (refused.value.code, refused.value.reason) == (grpc.StatusCode.UNAVAILABLE,
                                                                      "STORAGE_UNAVAILABLE")
            answered = [await client.charge("sub", charge_id=f"open-{i}", amount=1, timeout=10.0) for i in range(4)]
            assert [r.decision.name for r in answered] == ["OK", "OK", "OK", "RATE_LIMITED"]  # 3 per second
        finally:
            await asyncio.to_thread(redis_server.start)
        await wait_health(server.target, SERVING, timeout_s=30, what="after Redis came back")
        assert (await client.charge("sub", charge_id="open-0", amount=1)) == answered[0]   # the stored result
        assert sorted(u.charge_id for u in (await client.list_usage("sub")).records) == ["open-0", "open-1", "open-2"]
        balance = await client.get_balance(ACCOUNTS[1])
        assert (balance.held, backed.amount_held) == (PRICE, PRICE)  # untouched by the outage


async def _fund_one(client: AsyncQuotaClient) -> int:
    """Set up ACCOUNTS[0] (prepaid, funded); its available balance."""
    await setup_accounts(client, ACCOUNTS[:1])
    return (await client.get_balance(ACCOUNTS[0])).available


async def _drain(stream) -> None:
    async for _ in stream:
        pass


@pytest.mark.slow
async def test_server_stops_when_redis_comes_back_without_its_data(tmp_path, spawn):
    """Goal: a Redis that keeps nothing on disk is SIGKILLed and restarted empty. The server
    must not carry on writing its later batches into a store that lost the earlier ones (and
    the lease epoch): its next write is refused as Fenced, the pending call fails, and the
    process exits non-zero instead of returning to SERVING."""
    require_redis_server()
    redis_server = RedisProcess(tmp_path / "redis", appendonly=False)
    redis_server.start()
    try:
        server = spawn(redis_server.url, timeout_ms=1_000)
        await server.start()
        async with AsyncQuotaClient(server.target, retry=NO_RETRY) as client:
            await setup_accounts(client, ACCOUNTS[:1])
            await asyncio.to_thread(redis_server.restart, True)  # SIGKILL, start again: empty
            with pytest.raises(QuotaError) as failed:
                await client.charge(ACCOUNTS[0], charge_id="after-data-loss", amount=PRICE, timeout=10.0)
            assert failed.value.code == grpc.StatusCode.UNAVAILABLE, failed.value
        assert await server.wait_exit() == 2
        assert "Fenced" in server.output(), server.output()
    finally:
        redis_server.stop(kill=True)

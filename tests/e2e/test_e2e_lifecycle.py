"""The server process's life: graceful SIGTERM, refusing a bad config, refusing to share its data
with a second live server, and taking the data over at once when the owner died."""
from __future__ import annotations

import asyncio
import signal

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from quota_client import NO_RETRY, AsyncQuotaClient, QuotaError

from tests.support.subproc import run_once

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_sigterm_drains_reports_not_serving_and_exits_zero(spawn_server):
    """Goal: on SIGTERM the server turns health NOT_SERVING (seen by a Watch stream), finishes and
    persists the calls in flight, and exits 0; every acknowledged charge is there after a restart."""
    server = await spawn_server(server={"grace_period_ms": 5_000}).start()
    async with AsyncQuotaClient(server.target, retry=NO_RETRY) as client:
        await client.upsert_account("acct", plan_id="prepaid")
        await client.grant("acct", 10_000, grant_id="g")
    channel = grpc.aio.insecure_channel(server.target)
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
    try:
        first = await asyncio.wait_for(watch.read(), 10)
        assert first.status == SERVING
        async with AsyncQuotaClient(server.target, retry=NO_RETRY, timeout=10) as client:
            calls = [asyncio.ensure_future(client.charge("acct", charge_id=f"c{i}", amount=1)) for i in range(20)]
            await asyncio.sleep(0)  # let the calls go out before the signal
            server.send_signal(signal.SIGTERM)
            statuses = []
            while not statuses or statuses[-1] != NOT_SERVING:
                message = await asyncio.wait_for(watch.read(), 10)
                assert message is not grpc.aio.EOF, "the health stream ended before NOT_SERVING"
                statuses.append(message.status)
            assert statuses[-1] == NOT_SERVING
            watch.cancel()
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
        acknowledged = {o.charge_id for o in outcomes if not isinstance(o, BaseException) and o.ok}
    finally:
        watch.cancel()
        await channel.close()
    assert await server.wait_exit() == 0, server.output()
    await server.restart()
    async with AsyncQuotaClient(server.target, retry=NO_RETRY) as client:
        records = (await client.list_usage("acct", page_size=1000)).records
        on_books = {r.charge_id for r in records}
        assert acknowledged <= on_books
        balance = await client.get_balance("acct")
        assert balance.balance == 10_000 - len(on_books)


async def test_sigterm_drain_shows_not_serving_and_refuses_new_calls_with_shutting_down(spawn_server):
    """Goal (regression: health checks after SIGTERM failed at once, NOT_SERVING could not be
    seen by polling, and calls on their way were cut off with CANCELLED): during
    shutdown_drain_ms the server still listens, a health Check answers NOT_SERVING, a new
    mutation is refused UNAVAILABLE / SHUTTING_DOWN (retryable elsewhere, not applied), and then
    it exits 0."""
    server = await spawn_server(server={"shutdown_drain_ms": 3_000}).start()
    async with AsyncQuotaClient(server.target, retry=NO_RETRY, timeout=10) as client:
        await client.upsert_account("acct", plan_id="prepaid")
        await client.grant("acct", 100, grant_id="g")
        server.send_signal(signal.SIGTERM)
        async with grpc.aio.insecure_channel(server.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while (await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)).status != NOT_SERVING:
                assert loop.time() < deadline, "health never said NOT_SERVING"
                await asyncio.sleep(0.02)
        with pytest.raises(QuotaError) as refused:
            await client.charge("acct", charge_id="late", amount=1)
        assert (refused.value.code, refused.value.reason) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
    assert await server.wait_exit() == 0, server.output()
    await server.restart()
    async with AsyncQuotaClient(server.target, retry=NO_RETRY) as client:
        assert (await client.get_balance("acct")).available == 100  # "late" was not applied


async def test_sigterm_ends_open_watch_streams_with_shutting_down(spawn_server):
    """Goal: a WatchEvents stream open at SIGTERM ends with UNAVAILABLE / SHUTTING_DOWN, and the
    server exits 0 without waiting out its grace period for the stream (60 s here; it used to
    hold the shutdown until the grace period ran out, longer than wait_exit waits)."""
    from quota.v1 import admin_service_pb2 as apb
    from quota.v1 import admin_service_pb2_grpc as apb_grpc

    from tests.support.status import failure_of

    server = await spawn_server(server={"grace_period_ms": 60_000}).start()
    async with AsyncQuotaClient(server.target, retry=NO_RETRY) as client:
        await client.upsert_account("acct", plan_id="prepaid")
    channel = grpc.aio.insecure_channel(server.target)
    try:
        stream = apb_grpc.AdminServiceStub(channel).WatchEvents(apb.WatchEventsRequest(after_event_id="0"))
        first = await asyncio.wait_for(stream.read(), 10)  # account.created: the stream is open
        assert first.event.type == "account.created"
        server.send_signal(signal.SIGTERM)
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while True:
                message = await asyncio.wait_for(stream.read(), 30)
                assert message is not grpc.aio.EOF, "the stream ended without a status"
        failure = failure_of(ended.value)
        assert (failure.code, failure.reason) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN"), failure
    finally:
        await channel.close()
    assert await server.wait_exit() == 0, server.output()


@pytest.mark.parametrize("text,key", [
    ("[plans.free]\n[[plans.free.limits]]\nname = \"rpm\"\ncapacity = 0\nrefill_period_ms = 1000\n",
     "plans.free.limits[0].capacity"),
    ("[sever]\nlisten = \"127.0.0.1:0\"\n", "sever"),
    ("[storage]\nurl = \"postgres://x\"\n", "storage.url"),
    ("[defaults]\nhold_ttl_ms = -5\n", "defaults.hold_ttl_ms"),
    ("[prices.\"llm.chat\"]\nper_1000 = { input_tokens = 2.5 }\n", "prices.\"llm.chat\".per_1000.input_tokens"),
])
def test_bad_config_exits_non_zero_with_a_message_naming_the_key(tmp_path, text, key):
    """Goal: a config file with a bad value or an unknown key stops quota-server with a non-zero exit
    status and a message that names the offending dotted key (and never starts serving)."""
    result = run_once(tmp_path, text)
    assert result.returncode != 0
    assert key in result.stderr, result.stderr


@pytest.mark.parametrize("url", ["redis://127.0.0.1:{port}/0", "sqlite:////proc/no-such-dir/quota.db"])
def test_storage_that_cannot_be_opened_exits_1_with_one_line(tmp_path, url):
    """Goal: storage that cannot be opened at startup (nothing listening at the Redis address, an
    SQLite path that cannot be created) stops quota-server with exit 1 and one message naming
    storage.url, not a Python traceback."""
    from tests.storage.redis_proc import free_port

    result = run_once(tmp_path, f'[storage]\nurl = "{url.format(port=free_port())}"\n')
    assert result.returncode == 1, result.stderr
    assert "quota-server: cannot start: storage.url: cannot open the storage" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_unreadable_config_file_exits_non_zero(tmp_path):
    """Goal: a config path that does not exist is refused with a non-zero exit and a message."""
    import subprocess

    from tests.support.subproc import server_command

    result = subprocess.run([*server_command(), "--config", str(tmp_path / "missing.toml")],
                            capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert result.returncode != 0
    assert "missing.toml" in result.stderr


async def test_second_server_on_the_same_data_refuses_to_start(spawn_server):
    """Goal: while one server owns an SQLite file, a second one pointed at it exits non-zero with a
    message, and the first keeps serving; once the owner is killed -9, a new server takes the data
    over at once and sees everything the first acknowledged."""
    first = await spawn_server("first").start()
    async with AsyncQuotaClient(first.target, retry=NO_RETRY) as client:
        await client.upsert_account("acct", plan_id="prepaid")
        await client.grant("acct", 100, grant_id="g")
        await client.charge("acct", charge_id="c1", amount=30)
    second = spawn_server("second")
    second.spawn()
    code = await second.wait_exit()
    assert code != 0
    assert "owned by another server" in second.output(), second.output()
    async with AsyncQuotaClient(first.target, retry=NO_RETRY) as client:
        assert (await client.get_balance("acct")).available == 70
    assert await first.kill(signal.SIGKILL) == -signal.SIGKILL
    await second.restart()
    async with AsyncQuotaClient(second.target, retry=NO_RETRY) as client:
        assert (await client.get_balance("acct")).available == 70

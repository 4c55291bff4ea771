"""What operators and outside systems see of the Redis backend: the startup durability warning,
and usage and events readable as Redis streams with consumer groups."""
from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from quota_client import NO_RETRY, AsyncQuotaClient

from quota_server.storage.redis import RedisStorage, usage_entry_payloads
from tests.storage.redis_proc import RedisProcess
from tests.support.config import config_data, to_toml
from tests.support.subproc import free_port, server_command

from .conftest import SERVING, require_redis_server, wait_health
from .workload import PRICE

EVENTS_KEY = "quota:{q}:events"  # documented in docs/operations.md: outside consumers rely on these
USAGE_PREFIX = "quota:{q}:usage:"
GROUP = "billing"


async def run_and_stop(workdir: Path, url: str) -> tuple[int, str]:
    """Start quota-server on `url` with stderr captured apart, wait for SERVING, SIGTERM it."""
    port = free_port()
    config = workdir / "warn.toml"
    config.write_text(to_toml(config_data(workdir / "unused.db", listen=f"127.0.0.1:{port}", storage={"url": url})))
    stderr_path = workdir / "warn.stderr"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen([*server_command(), "--config", str(config)], cwd=workdir,
                                stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    try:
        await wait_health(f"127.0.0.1:{port}", SERVING, timeout_s=30)
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, stderr_path.read_text(errors="replace")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("appendonly", "extra_args", "expected"),
    [
        (False, (), 'keeps nothing on disk (appendonly no, save "")'),
        (False, ("--save", "3600 1"), "keeps only RDB snapshots"),
        (True, (), None),
    ],
    ids=["nothing-on-disk", "rdb-only", "aof-always"],
)
async def test_startup_warns_when_redis_would_lose_acknowledged_writes(tmp_path, appendonly, extra_args, expected):
    """Goal: started on a Redis that keeps nothing on disk (--save "" --appendonly no), the
    server logs a WARNING on stderr saying so (and still serves); on an RDB-only Redis it warns
    about RDB; on appendonly yes / appendfsync always it logs no durability warning at all."""
    require_redis_server()
    redis_server = RedisProcess(tmp_path / "redis", appendonly=appendonly, extra_args=extra_args)
    redis_server.start()
    try:
        code, stderr = await run_and_stop(tmp_path, redis_server.url)
    finally:
        redis_server.stop(kill=True)
    assert code == 0, stderr
    warnings = [line for line in stderr.splitlines() if " WARNING quota.server: " in line]
    if expected is None:
        assert warnings == [], warnings
    else:
        assert len(warnings) == 1 and expected in warnings[0], stderr
        assert f"127.0.0.1:{redis_server.port}" in warnings[0]


async def read_group(client: aioredis.Redis, key: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """Everything new for consumer c1 of GROUP on `key`, acknowledged once read."""
    reply = await client.xreadgroup(GROUP, "c1", {key: ">"}, count=10_000)
    entries = reply[0][1] if reply else []
    if entries:
        await client.xack(key, GROUP, *[entry_id for entry_id, _ in entries])
    return entries


def usage_ids(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[str]:
    out = []
    for _, fields in entries:  # one record (payload) or several (n, payloads) per entry
        for raw in usage_entry_payloads(fields):
            payload = json.loads(raw)
            out.append(payload["charge_id"] or payload["reservation_id"])
    return out


@pytest.mark.slow
async def test_usage_and_events_are_consumable_as_redis_streams(redis_server, spawn):
    """Goal: an outside consumer reads an account's usage records and the event stream with a
    consumer group (XGROUP CREATE + XREADGROUP + XACK) on the documented keys: it gets one
    entry per charged id, in order, then exactly the new entries on the next read; events
    carry account_id, type and at_ms (account.created, credits.granted, balance.depleted).
    The server keeps writing to those streams, and after a kill -9 and restart the group's
    position survives: only entries written after the last read are delivered, none twice."""
    storage = RedisStorage(redis_server.url)
    assert storage.k_events == EVENTS_KEY and storage.usage_key("a") == USAGE_PREFIX + "a"
    server = await spawn(redis_server.url, lease_ttl_ms=1_000, on_lease_held="wait").start()
    consumer = aioredis.Redis.from_url(redis_server.url)
    try:
        async with AsyncQuotaClient(server.target, retry=NO_RETRY) as client:
            await client.upsert_account("rich", plan_id="prepaid")
            await client.grant("rich", 10**9, grant_id="g1")
            await client.upsert_account("poor", plan_id="prepaid")
            await client.grant("poor", PRICE, grant_id="g1")
            first = [f"c-{i}" for i in range(5)]
            for charge_id in first:
                assert (await client.charge("rich", charge_id=charge_id, amount=PRICE)).ok
            assert (await client.reserve("rich", reservation_id="r-0", amount=PRICE)).ok
            await client.commit("rich", "r-0")
            assert (await client.charge("poor", charge_id="all-of-it", amount=PRICE)).available_after == 0
        usage_key = USAGE_PREFIX + "rich"
        for key in (usage_key, EVENTS_KEY):
            await consumer.xgroup_create(key, GROUP, id="0")
        assert usage_ids(await read_group(consumer, usage_key)) == [*first, "r-0"]
        events = await read_group(consumer, EVENTS_KEY)
        seen = [(f[b"type"].decode(), f[b"account_id"].decode()) for _, f in events]
        assert seen == [("account.created", "rich"), ("credits.granted", "rich"), ("account.created", "poor"),
                        ("credits.granted", "poor"), ("balance.depleted", "poor")], seen
        assert all(int(f[b"at_ms"]) > 0 and f[b"payload"] for _, f in events)
        ids = [int(entry_id.split(b"-")[0]) for entry_id, _ in events]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)

        async with AsyncQuotaClient(server.target, retry=NO_RETRY) as client:
            assert (await client.charge("rich", charge_id="c-5", amount=PRICE)).ok
        assert usage_ids(await read_group(consumer, usage_key)) == ["c-5"]
        assert await read_group(consumer, EVENTS_KEY) == []

        assert await server.kill(signal.SIGKILL) == -signal.SIGKILL
        await server.restart()
        async with AsyncQuotaClient(server.target, retry=NO_RETRY) as client:
            assert (await client.charge("rich", charge_id="c-6", amount=PRICE)).ok
            assert (await client.charge("rich", charge_id="c-5", amount=PRICE)).ok  # a replay: no new usage
            await client.grant("poor", 1, grant_id="g2")
        assert usage_ids(await read_group(consumer, usage_key)) == ["c-6"]
        assert [f[b"type"] for _, f in await read_group(consumer, EVENTS_KEY)] == [b"credits.granted"]
        pending = await consumer.xpending(usage_key, GROUP)
        assert pending["pending"] == 0
    finally:
        await consumer.aclose()

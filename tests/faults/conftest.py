"""Fixtures of the fault suite: a throwaway redis-server and quota-server subprocesses on it.

Nothing here touches a system Redis: every redis-server is started by the test on a free
loopback port with its own data directory (appendonly yes, appendfsync always by default).
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2

from tests.storage.redis_proc import RedisProcess, redis_server_path
from tests.support.config import config_data
from tests.support.subproc import ServerProcess, health_status

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def require_redis_server() -> None:
    if redis_server_path() is None:
        pytest.skip("redis-server is not on PATH: install it (apt-get install redis-server) to run the fault tests")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server that persists every write before it replies (appendfsync always)."""
    require_redis_server()
    server = RedisProcess(tmp_path / "redis", appendfsync="always")
    server.start()
    try:
        yield server
    finally:
        server.stop(kill=True)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Make (not start) quota-server processes on a Redis url; all are killed at teardown.

    `storage` keys go to `[storage]` (e.g. lease_ttl_ms, on_lease_held, timeout_ms).
    """
    made: list[ServerProcess] = []

    def make(url: str, name: str = "server", **storage: Any) -> ServerProcess:
        data = config_data(tmp_path / "unused.db", storage={"url": url, **storage})
        proc = ServerProcess(tmp_path, data, name=name)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.cleanup()


async def wait_health(target: str, status: int, *, timeout_s: float = 30.0, what: str = "") -> float:
    """Poll gRPC health (bounded) until it reports `status`; returns the seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while await health_status(target, timeout_s=0.5) != status:
        if loop.time() - start > timeout_s:
            name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
            raise AssertionError(f"health never became {name} within {timeout_s}s {what}")
        await asyncio.sleep(0.01)
    return loop.time() - start

"""Fixtures for the storage contract suite: every backend on a real server or file."""
from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from quota_server.storage import LeaseHeld, Storage
from quota_server.storage.redis import RedisStorage
from quota_server.storage.sqlite import SqliteStorage

from .redis_proc import RedisProcess, redis_server_path

EPOCH_START_MS = 1_700_000_000_000
REDIS_LEASE_TTL_MS = 400
"""Redis expires a lease on its own clock (PX), so Redis tests use a short real TTL."""
SQLITE_LEASE_TTL_MS = 30_000
"""SQLite reads the injected manual clock, so its TTL can be realistic."""
LEASE_POLL_DEADLINE_S = 5.0


def require_redis_server() -> None:
    if redis_server_path() is None:
        pytest.skip("redis-server is not on PATH: install it (apt-get install redis-server) to run the Redis tests")


async def acquire_when_free(storage: Storage, owner: str, ttl_ms: int) -> int:
    """Poll (bounded) until a lease held on a real clock has expired and ours is taken."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LEASE_POLL_DEADLINE_S
    while True:
        try:
            return await storage.acquire_lease(owner, ttl_ms)
        except LeaseHeld:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.02)


class ManualClock:
    """A wall clock that only moves when a test says so (milliseconds)."""

    def __init__(self, now_ms: int = EPOCH_START_MS) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> None:
        self.now_ms += ms


class Backend:
    """What the contract tests need from a backend, beyond the Storage interface itself."""

    kind: str
    lease_ttl_ms: int

    def __init__(self) -> None:
        self._opened: list[Storage] = []

    def make(self, **options: Any) -> Storage:
        raise NotImplementedError

    async def open(self, **options: Any) -> Storage:
        storage = self.make(**options)
        await storage.open()
        self._opened.append(storage)
        return storage

    async def let_lease_time_pass(self, ms: int) -> None:
        raise NotImplementedError

    async def acquire_after_expiry(self, storage: Storage, owner: str) -> int:
        """Acquire as ``owner`` once the current lease has run out."""
        raise NotImplementedError

    async def restart_server(self) -> None:
        """Crash and restart the server (Redis); nothing to do for an embedded file."""

    async def delete_record(self, seq: int) -> None:
        """Damage the data: drop one journal record behind the backend's back."""
        raise NotImplementedError

    async def aclose(self) -> None:
        for storage in self._opened:
            try:
                await storage.close()
            except Exception:  # noqa: BLE001 - best-effort cleanup after a failed test
                pass


class SqliteBackend(Backend):
    kind = "sqlite"
    lease_ttl_ms = SQLITE_LEASE_TTL_MS

    def __init__(self, tmp_path: Path, *, fast_appends: bool = True) -> None:
        super().__init__()
        self.path = tmp_path / "data" / "quota.db"
        self.clock = ManualClock()
        self.fast_appends = fast_appends

    def make(self, **options: Any) -> Storage:
        options.setdefault("clock_ms", self.clock)
        options.setdefault("fast_appends", self.fast_appends)
        return SqliteStorage(str(self.path), **options)

    async def let_lease_time_pass(self, ms: int) -> None:
        self.clock.advance(ms)

    async def acquire_after_expiry(self, storage: Storage, owner: str) -> int:
        self.clock.advance(self.lease_ttl_ms + 1)
        return await storage.acquire_lease(owner, self.lease_ttl_ms)

    async def delete_record(self, seq: int) -> None:
        with sqlite3.connect(self.path) as conn:
            conn.execute("DELETE FROM journal WHERE seq = ?", (seq,))
        conn.close()


class RedisBackend(Backend):
    kind = "redis"
    lease_ttl_ms = REDIS_LEASE_TTL_MS

    def __init__(self, tmp_path: Path, *, thread_appends: bool = True) -> None:
        super().__init__()
        self.server = RedisProcess(tmp_path / "redis")
        self.server.start()
        self.thread_appends = thread_appends

    def make(self, **options: Any) -> Storage:
        options.setdefault("op_timeout_ms", 1_000)
        options.setdefault("thread_appends", self.thread_appends)
        return RedisStorage(self.server.url, **options)

    async def let_lease_time_pass(self, ms: int) -> None:
        await asyncio.sleep(ms / 1000)  # PX runs on the Redis server's own clock

    async def acquire_after_expiry(self, storage: Storage, owner: str) -> int:
        return await acquire_when_free(storage, owner, self.lease_ttl_ms)

    async def restart_server(self) -> None:
        self.server.restart(kill=True)

    async def delete_record(self, seq: int) -> None:
        storage = self.make()
        assert isinstance(storage, RedisStorage)
        await storage.open()
        try:
            await storage.client.xdel(storage.k_journal, f"{seq}-0")
        finally:
            await storage.close()

    async def aclose(self) -> None:
        await super().aclose()
        self.server.stop(kill=True)


@pytest.fixture(params=["sqlite", "sqlite-thread", "redis", "redis-loop"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Every backend, each with both of its append paths: SQLite's C writer thread (the
    default) and its worker thread through Python's sqlite3 (`fast_appends=False`, the
    fallback); Redis's C writer thread (the default) and the event loop's connection
    (`thread_appends=False`: the path of a store the thread cannot serve, TLS say)."""
    if request.param.startswith("redis"):
        require_redis_server()
        b: Backend = RedisBackend(tmp_path, thread_appends=request.param == "redis")
    else:
        b = SqliteBackend(tmp_path, fast_appends=request.param == "sqlite")
    try:
        yield b
    finally:
        await b.aclose()


@pytest.fixture
async def store(backend: Backend) -> Storage:
    return await backend.open()


@pytest.fixture
def redis_server(tmp_path: Path) -> Any:
    require_redis_server()
    server = RedisProcess(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop(kill=True)

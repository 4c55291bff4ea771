"""Bounded waiting for a condition that another task or process makes true (never for time)."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

POLL_S = 0.005


async def wait_until(predicate: Callable[[], bool], *, timeout_s: float = 10.0, what: str = "condition") -> None:
    """Yield to the loop until `predicate()` holds; AssertionError after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(POLL_S)


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout_s: float = 10.0, what: str = "condition") -> None:
    """Like wait_until, for a check that must itself await (e.g. an RPC)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(POLL_S)

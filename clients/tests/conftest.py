"""Fixtures: a scripted server per test, and clients whose sleeps are recorded, not slept."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator

import pytest

# The root suite runs with --import-mode=importlib, which does not put test folders on sys.path;
# the scripted server is a plain module beside this file.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scripted import ScriptedServer  # noqa: E402

from quota_client import AsyncQuotaClient, QuotaClient, RetryPolicy

#: Backoff of the test clients: 0.1 s, then 0.2 s, ... capped at 1 s, times rand() = 0.5.
RETRY = RetryPolicy(max_attempts=3, initial_backoff_s=0.1, max_backoff_s=1.0, multiplier=2.0)


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    scripted = ScriptedServer()
    scripted.start()
    yield scripted
    scripted.stop()


@pytest.fixture
def sleeps() -> list[float]:
    """Every backoff the client asked to sleep, in seconds."""
    return []


@pytest.fixture
def client(server: ScriptedServer, sleeps: list[float]) -> Iterator[QuotaClient]:
    with QuotaClient(
        server.target, api_key="k-123", retry=RETRY, sleep=sleeps.append, rand=lambda: 0.5
    ) as quota:
        yield quota


@pytest.fixture
async def aclient(server: ScriptedServer, sleeps: list[float]) -> AsyncIterator[AsyncQuotaClient]:
    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async with AsyncQuotaClient(
        server.target, api_key="k-123", retry=RETRY, sleep=fake_sleep, rand=lambda: 0.5
    ) as quota:
        yield quota

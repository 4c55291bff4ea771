"""Fixtures of the in-process server suite: one fresh server per test on its own SQLite file."""
from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.clock import ManualClock
from tests.support.config import config_data
from tests.support.inproc import InProcessServer, running


@pytest.fixture
def server_config_data(tmp_path: Path) -> dict[str, Any]:
    return config_data(tmp_path / "quota.db")


@pytest.fixture
async def server(server_config_data: dict[str, Any], manual_clock: ManualClock) -> AsyncIterator[InProcessServer]:
    async with running(server_config_data, manual_clock) as srv:
        yield srv

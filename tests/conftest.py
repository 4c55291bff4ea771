"""Fixtures shared by the server and end-to-end suites (helpers live in tests/support)."""
from __future__ import annotations

import pytest

from tests.support.clock import ManualClock


@pytest.fixture
def manual_clock() -> ManualClock:
    """A clock that moves only when the test advances it (starts 2025-06-10T12:00:00Z)."""
    return ManualClock()

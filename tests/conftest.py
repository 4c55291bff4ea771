"""Fixtures shared by the server and end-to-end suites (helpers live in tests/support)."""
from __future__ import annotations

import os

# Before anything imports gRPC (in-process servers fork snapshot children; see
# quota_server/__init__.py): the test process and the servers it starts inherit this.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

import pytest  # noqa: E402

from tests.support.clock import ManualClock


@pytest.fixture
def manual_clock() -> ManualClock:
    """A clock that moves only when the test advances it (starts 2025-06-10T12:00:00Z)."""
    return ManualClock()

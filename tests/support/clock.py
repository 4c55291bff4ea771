"""A manual clock for the server: time moves only when a test says so."""
from __future__ import annotations

NS_PER_MS = 1_000_000

START_MS = 1_749_556_800_000
"""2025-06-10T12:00:00Z: mid-month, so the monthly period is [2025-06-01, 2025-07-01)."""
PERIOD_START_MS = 1_748_736_000_000  # 2025-06-01T00:00:00Z
PERIOD_END_MS = 1_751_328_000_000  # 2025-07-01T00:00:00Z


class ManualClock:
    """A nanosecond wall clock (`QuotaServer(clock_ns=...)`) advanced explicitly by tests."""

    def __init__(self, start_ms: int = START_MS) -> None:
        self.now_ns = start_ms * NS_PER_MS

    def __call__(self) -> int:
        return self.now_ns

    @property
    def now_ms(self) -> int:
        return self.now_ns // NS_PER_MS

    def advance_ms(self, ms: int) -> None:
        if ms < 0:
            raise ValueError("a manual clock never goes backwards")
        self.now_ns += ms * NS_PER_MS

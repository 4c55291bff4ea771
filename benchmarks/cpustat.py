"""The machine's CPU time from /proc/stat, for the benchmarks: how busy it is with its own work,
and how much of it a hypervisor gave to other guests (steal), printed next to every figure."""
from __future__ import annotations

from pathlib import Path


def cpu_ticks() -> tuple[int, int, int]:
    """(busy, total, steal) jiffies of all CPUs since boot (Linux /proc/stat); zeros elsewhere.
    Busy is this machine's own work: not idle, iowait, nor steal (time the hypervisor gave to
    other guests, which no wait here would end)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    steal = fields[7] if len(fields) > 7 else 0
    return sum(fields) - idle - steal, sum(fields), steal


def steal_percent(before: tuple[int, int, int], after: tuple[int, int, int]) -> float:
    """Share of the CPUs' time between two cpu_ticks() readings that the hypervisor took."""
    total = after[1] - before[1]
    return 100.0 * (after[2] - before[2]) / total if total > 0 else 0.0

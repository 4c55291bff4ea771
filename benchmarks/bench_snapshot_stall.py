"""How long a snapshot stops the event loop: in place (`Ledger.snapshot()`) vs in a forked child
(`quota_server.snapshotter`, the server's default).

Builds a ledger of N accounts, each with one lot and one open hold, then for each round:
times `Ledger.snapshot()` (which an event loop calling it would spend blocked), and, with a
1 ms ticker running on the loop, starts `fork_snapshot`, awaits its bytes, and reports how long
the `fork()` call took, how long until the bytes were back, and the ticker's worst lateness
(the loop's longest stall meanwhile). The child's bytes are checked equal to the parent's.

    python benchmarks/bench_snapshot_stall.py            # 1,000,000 accounts, 3 rounds
    python benchmarks/bench_snapshot_stall.py --small    # 10,000 accounts (CI)
"""
from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import time

import _fastledger
from _fastledger import codes as C

from quota_server import snapshotter

NOW = 1_700_000_000 * 10**9


def build(accounts: int) -> _fastledger.Ledger:
    ledger = _fastledger.Ledger()
    for start in range(0, accounts, 5000):
        ops = []
        for i in range(start, min(accounts, start + 5000)):
            account = f"account-{i:08d}"
            ops.append((C.OP_UPSERT, account, "default", 0, None, None, None))
            ops.append((C.OP_GRANT, account, f"g{i}", 1, 1000, C.LOT_PURCHASED, 0, 0))
            ops.append((C.OP_RESERVE, account, f"r{i}", 7, 10, False, 0, 3600 * 10**9, C.EXPIRE_RELEASE,
                        True, (), b"m"))
        results = ledger.apply(ops, NOW)
        if any(r[0] != C.OK for r in results):
            raise RuntimeError("building the ledger failed")
        ledger.take_journal()
    return ledger


async def one_round(ledger) -> tuple[float, float, float, float, int]:
    started = time.perf_counter()
    blob = ledger.snapshot()
    in_place = time.perf_counter() - started
    lags: list[float] = []

    async def ticker() -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - t0 - 0.001)

    tick = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    job = snapshotter.fork_snapshot(ledger)
    fork_call = time.perf_counter() - started
    data = await job.result()
    total = time.perf_counter() - started
    tick.cancel()
    if data != blob:
        raise RuntimeError("the child's snapshot differs from the parent's")
    return in_place, fork_call, total, max(lags), len(blob)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="10,000 accounts, 1 round (CI)")
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    accounts, rounds = (10_000, 1) if args.small else (args.accounts, args.rounds)
    if not snapshotter.fork_allowed():
        print("this platform cannot fork (or GRPC_ENABLE_FORK_SUPPORT is on): nothing to measure")
        return
    ledger = build(accounts)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"{accounts:,} accounts (a lot and an open hold each), peak RSS {rss_mb} MB, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(" round  snapshot MB  in place s  fork() ms  child done s  worst loop stall ms")
    figures = []
    for n in range(rounds):
        in_place, fork_call, total, stall, size = await one_round(ledger)
        figures.append((in_place, fork_call, stall))
        print(f"{n + 1:6d} {size / 1e6:12.0f} {in_place:11.2f} {fork_call * 1e3:10.1f} {total:13.2f} {stall * 1e3:20.1f}")
    print(f"median: in place {statistics.median(f[0] for f in figures):.2f} s, "
          f"worst loop stall with the fork {statistics.median(f[2] for f in figures) * 1e3:.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())

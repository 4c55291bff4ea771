"""How long one batch takes when the core's reservation table has to grow, against the batches
around it: a latency spike every caller queued behind that batch sees.

Every reservation stays in the core for the idempotency retention (24 h by default), so a busy
server's table of reservations keeps growing, doubling its capacity now and then. Builds a
ledger of --accounts accounts and applies rounds of B reserves + B commits (the engine's two
flushes, journal taken after each) until --records reservations are kept; prints, per round that
crossed a table doubling, the round's time next to the median round of the same run, then the
worst round, the median, the 99.9th percentile and the number of doublings.

    python benchmarks/bench_resize_stall.py                 # 4,200,000 reservations (~1 GB, a minute or two)
    python benchmarks/bench_resize_stall.py --small         # 300,000 (CI)
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import _fastledger
from _fastledger import codes as C

NOW = 1_700_000_000 * 10**9
SECOND = 10**9


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=4_200_000, help="reservations kept at the end")
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--small", action="store_true", help="300,000 reservations, for CI")
    args = parser.parse_args(argv)
    records = 300_000 if args.small else args.records
    led = _fastledger.Ledger(retention_ns=86_400 * SECOND)
    ids = [f"acct-{i:07d}" for i in range(args.accounts)]
    for i in range(0, len(ids), 500):
        part = ids[i:i + 500]
        ops = [(C.OP_UPSERT, a, "free", 0, None, None, None) for a in part]
        ops += [(C.OP_GRANT, a, "signup", 1, C.AMOUNT_MAX, C.LOT_PURCHASED, 0, 0) for a in part]
        assert all(r[0] == C.OK for r in led.apply(ops, NOW))
        led.take_journal()
    print(f"_fastledger {'debug' if _fastledger.DEBUG else 'release'} build, {os.cpu_count()} CPUs, "
          f"{args.accounts} accounts, batch {args.batch}, load average {os.getloadavg()[0]:.2f}")
    rounds: list[float] = []
    crossings: list[tuple[int, float]] = []
    capacity = led.stats().get("record_slots")
    k = 0
    while led.stats()["records"] < records:
        reserves, commits = [], []
        for i in range(args.batch):
            a = ids[k % len(ids)]
            rid = f"r{k}"
            k += 1
            reserves.append((C.OP_RESERVE, a, rid, 7, 100, False, 0, 60 * SECOND, C.EXPIRE_RELEASE, True, (), b""))
            commits.append((C.OP_COMMIT, a, rid, 7, 60, ()))
        start = time.perf_counter()
        res = led.apply(reserves, NOW)
        led.take_journal()
        com = led.apply(commits, NOW)
        led.take_journal()
        elapsed = time.perf_counter() - start
        assert res[-1][1] == C.DECISION_OK and com[-1][0] == C.OK, (res[-1], com[-1])
        rounds.append(elapsed)
        now_capacity = led.stats().get("record_slots")
        if now_capacity != capacity:
            crossings.append((led.stats()["records"], elapsed))
            capacity = now_capacity
    median = statistics.median(rounds)
    ordered = sorted(rounds)
    p999 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.999))]
    print(f"{'records':>10} {'round ms':>9} {'vs median':>10}   (rounds in which the table's capacity doubled)")
    for count, elapsed in crossings:
        print(f"{count:>10,} {elapsed * 1000:>9.2f} {elapsed / median:>9.1f}x")
    print(f"{len(rounds)} rounds of {args.batch} reserves + {args.batch} commits: median {median * 1000:.2f} ms, "
          f"p99.9 {p999 * 1000:.2f} ms, worst {ordered[-1] * 1000:.2f} ms ({ordered[-1] / median:.1f}x the median), "
          f"{len(crossings)} doublings, {led.stats()['records']:,} reservations kept, "
          f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

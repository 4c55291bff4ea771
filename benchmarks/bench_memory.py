"""Memory of the core: bytes per account (one lot), per open hold and per settled hold.

Builds N accounts (default 1,000,000), each with one grant (so one lot and one grant
idempotency record), then opens one hold per account, then commits every hold (a settled
hold stays for the idempotency retention, so that a retried commit gets its original result:
what a busy server accumulates). Every apply is followed by take_journal, as in the engine. Reports the
growth of traced Python memory (tracemalloc: every PyMem/PyObject allocation, which is all the
core uses but for its record and account tables' slot arrays of 2 MiB and more, mapped on their
own and added from the ledger's `stats()["mapped_bytes"]`; the ids are counted, the benchmark's
own op tuples are not kept) and of RSS.

    python benchmarks/bench_memory.py            # 1,000,000 accounts (a minute or two)
    python benchmarks/bench_memory.py --small    # 10,000 accounts, for CI

Run it against the installed package (``pip install .``).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tracemalloc

import _fastledger
from _fastledger import codes as C

SECOND = 1_000_000_000
RETENTION_NS = 3600 * SECOND
CHUNK = 8192


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def apply_chunks(led, make_op, n: int, now: int) -> None:
    for start in range(0, n, CHUNK):
        ops = [make_op(i) for i in range(start, min(n, start + CHUNK))]
        results = led.apply(ops, now)
        assert results[-1][0] == C.OK, results[-1]
        led.take_journal()
        del ops, results


class Meter:
    """Growth of traced memory (when tracemalloc runs; plus the ledger's mapped slot arrays) and
    of RSS since creation."""

    def __init__(self, led) -> None:
        gc.collect()
        self.led = led
        self.traced = self.traced_now()
        self.rss = rss_bytes()

    def traced_now(self) -> int:
        if not tracemalloc.is_tracing():
            return 0
        return tracemalloc.get_traced_memory()[0] + self.led.stats()["mapped_bytes"]

    def delta(self) -> tuple[int | None, int]:
        gc.collect()
        traced = self.traced_now() - self.traced if tracemalloc.is_tracing() else None
        return traced, rss_bytes() - self.rss


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="10,000 accounts, for CI")
    parser.add_argument("--accounts", type=int, default=None)
    parser.add_argument("--rss", action="store_true",
                        help="RSS only, without tracemalloc (whose own bookkeeping inflates RSS)")
    args = parser.parse_args(argv)
    n = args.accounts or (10_000 if args.small else 1_000_000)
    if not args.rss:
        tracemalloc.start()
    now = 10**15
    acct = lambda i: f"acct-{i:07d}"  # noqa: E731

    led = _fastledger.Ledger(retention_ns=RETENTION_NS)
    base = Meter(led)
    apply_chunks(led, lambda i: (C.OP_UPSERT, acct(i), "free", 0, None, None, None), n, now)
    bare = base.delta()
    apply_chunks(led, lambda i: (C.OP_GRANT, acct(i), f"grant-{i:07d}", 1, 1000,
                                 C.LOT_PURCHASED, 0, 0), n, now)
    with_lot = base.delta()
    assert led.stats()["records"] == n

    holds = Meter(led)
    apply_chunks(led, lambda i: (C.OP_RESERVE, acct(i), f"res-{i:07d}", 1, 10, False, 0,
                                 600 * SECOND, C.EXPIRE_RELEASE, True, (), b""), n, now)
    hold = holds.delta()
    assert led.stats()["open_holds"] == n
    apply_chunks(led, lambda i: (C.OP_COMMIT, acct(i), f"res-{i:07d}", 1, 7, ()), n, now)
    settled = holds.delta()
    assert led.stats()["open_holds"] == 0 and led.stats()["records"] == 2 * n
    led.check_invariants()
    del led

    # A grant record on its own: a grant that only pays debt makes a record and no lot.
    other = _fastledger.Ledger(retention_ns=RETENTION_NS)
    apply_chunks(other, lambda i: (C.OP_UPSERT, acct(i), "free", 0, 10, None, None), n, now)
    apply_chunks(other, lambda i: (C.OP_CHARGE, acct(i), "c", 1, 5, True, ()), n, now)
    records = Meter(other)
    apply_chunks(other, lambda i: (C.OP_GRANT, acct(i), f"grant-{i:07d}", 1, 5,
                                   C.LOT_PURCHASED, 0, 0), n, now)
    record = records.delta()
    assert other.stats()["records"] == 2 * n and other.lots_view(acct(0), now) == []

    print(f"_fastledger {'debug' if _fastledger.DEBUG else 'release'} build, Python {sys.version.split()[0]}, "
          f"{n:,} accounts, {'RSS only' if args.rss else 'tracemalloc'}")
    print(f"{'bytes per item':<58} {'traced':>7} {'RSS':>6}")
    rows = [
        ("account, no lot", bare),
        ("account + one lot (and its grant record: same lifetime)", with_lot),
        ("grant idempotency record alone (a grant with no lot)", record),
        ("open hold (one per account)", hold),
        ("settled hold (committed, kept for the retention)", settled),
    ]
    for what, (traced, rss) in rows:
        traced_text = f"{traced / n:>7.0f}" if traced is not None else f"{'-':>7}"
        print(f"{what:<58} {traced_text} {rss / n:>6.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

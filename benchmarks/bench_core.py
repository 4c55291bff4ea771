"""Reserve+commit pairs per second: the Cython core vs the plain-Python reference model.

One round at batch size B is what the engine does for two flushes: apply a batch of B reserves
(distinct accounts) and take the journal, then apply the B commits and take the journal. The
model has no journal, so its rounds are the two applies only. Op tuples are built before the
clock starts. Both run in the same process, in the same run; the table reports the median of
``--repeats`` repeats and the core/model ratio.

That first table is a fresh ledger at a standing clock: nothing is ever purged, and the record
table grows all the time. A second table is the steady state of a server that has run for
longer than its retention: every apply starts with the engine's EXPIRE sweep, the clock moves
1 ms per apply, and the retention keeps about ``--steady-live`` settled reservations, so each
round purges as many records as it makes (the ledger is filled to that point before the clock
starts). The core alone (the model would take minutes to fill).

    python benchmarks/bench_core.py              # full run (a minute or so)
    python benchmarks/bench_core.py --small      # a few seconds, for CI
    pytest benchmarks/bench_core.py --benchmark-enable   # the same rounds under pytest-benchmark

Run it against the installed package (``pip install .``); the repo root is not put on sys.path.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

import _fastledger
from _fastledger import codes as C

ROOT = Path(__file__).resolve().parents[1]
SECOND = 1_000_000_000
MS = 1_000_000
BATCHES = (1, 64, 1024)
STEADY_BATCHES = (64, 1024)
SWEEP_MAX_ITEMS = 1_000  # the engine's default sweep_max_items
NOW = 10**15


def load_model():
    """The reference model, imported by path (tests/ is not a package on sys.path here)."""
    spec = importlib.util.spec_from_file_location("quota_reference_model", ROOT / "tests/model/reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module         # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class Workload:
    """Accounts with plenty of credit and pre-built reserve/commit batches with fresh ids
    (`prefix` + round + index), each batch led by `lead` ops (the engine's sweep, say)."""

    def __init__(self, accounts: int, batch: int, rounds: int, prefix: str = "r", lead: tuple = ()) -> None:
        self.ids = [f"acct-{i:07d}" for i in range(accounts)]
        self.setup = [(C.OP_UPSERT, a, "free", 0, None, None, None) for a in self.ids] + [
            (C.OP_GRANT, a, "signup", 1, C.AMOUNT_MAX, C.LOT_PURCHASED, 0, 0) for a in self.ids
        ]
        self.rounds = []
        k = 0
        for r in range(rounds):
            reserves, commits = list(lead), list(lead)
            for i in range(batch):
                a = self.ids[k % accounts]
                k += 1
                rid = f"{prefix}{r}-{i}"
                reserves.append((C.OP_RESERVE, a, rid, 7, 100, False, 0, 60 * SECOND,
                                 C.EXPIRE_RELEASE, True, (), b""))
                commits.append((C.OP_COMMIT, a, rid, 7, 60, ()))
            self.rounds.append((reserves, commits))


def new_ledger(kind: str, model):
    if kind == "core":
        return _fastledger.Ledger(retention_ns=86_400 * SECOND)
    return model.Ledger(retention_ns=86_400 * SECOND)


def prepare(led, work: Workload, kind: str) -> None:
    for i in range(0, len(work.setup), C.BATCH_OPS_MAX):
        led.apply(work.setup[i:i + C.BATCH_OPS_MAX], NOW)
        if kind == "core":
            led.take_journal()


def run_rounds(led, rounds, journal: bool, now: int = NOW, step: int = 0) -> tuple[float, int]:
    """Seconds to run every (reserves, commits) round from clock `now`, moving it `step` ns per
    apply, and the clock after; checks every result is OK."""
    apply = led.apply
    take = led.take_journal if journal else None
    start = time.perf_counter()
    for reserves, commits in rounds:
        res = apply(reserves, now)
        if take is not None:
            take()
        now += step
        com = apply(commits, now)
        if take is not None:
            take()
        now += step
    elapsed = time.perf_counter() - start
    assert res[-1][1] == C.DECISION_OK and com[-1][0] == C.OK, (res[-1], com[-1])
    return elapsed, now


def measure_steady(batch: int, pairs: int, accounts: int, repeats: int, live: int) -> tuple[float, float]:
    """Median pairs/s in the steady state (see the module docstring), and the records purged
    per pair in the measured rounds (about 1: each pair's reservation, a retention later)."""
    fill_rounds = max(1, live // batch)
    rounds = max(1, pairs // batch)
    sweep = (C.OP_EXPIRE, SWEEP_MAX_ITEMS)
    rates, purged = [], []
    for _ in range(repeats):
        fill = Workload(accounts, batch, fill_rounds, prefix="f", lead=(sweep,))
        work = Workload(accounts, batch, rounds, prefix="r", lead=(sweep,))
        # 2 ms a round: the reservations of the last `fill_rounds` rounds are kept.
        led = _fastledger.Ledger(retention_ns=fill_rounds * 2 * MS)
        prepare(led, work, "core")
        _, now = run_rounds(led, fill.rounds, True, NOW, MS)
        made = led.stats()["records"]
        elapsed, now = run_rounds(led, work.rounds, True, now, MS)
        purged.append((made + rounds * batch - led.stats()["records"]) / (rounds * batch))
        rates.append(rounds * batch / elapsed)
    return statistics.median(rates), statistics.median(purged)


def measure(kind: str, batch: int, pairs: int, accounts: int, repeats: int, model) -> float:
    """Median pairs/s over `repeats` fresh ledgers."""
    rounds = max(1, pairs // batch)
    rates = []
    for _ in range(repeats):
        work = Workload(accounts, batch, rounds)
        led = new_ledger(kind, model)
        prepare(led, work, kind)
        elapsed, _ = run_rounds(led, work.rounds, journal=(kind == "core"))
        rates.append(rounds * batch / elapsed)
    return statistics.median(rates)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a few seconds, for CI")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--steady-live", type=int, default=None,
                        help="settled reservations the steady state keeps (default 400,000; --small 20,000)")
    args = parser.parse_args(argv)
    live = args.steady_live or (20_000 if args.small else 400_000)
    core_pairs = 20_000 if args.small else 400_000
    model_pairs = 2_000 if args.small else 30_000
    repeats = args.repeats or (3 if args.small else 5)
    model = load_model()
    print(f"_fastledger {'debug' if _fastledger.DEBUG else 'release'} build, Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs, {args.accounts} accounts, median of {repeats}, "
          f"load average {os.getloadavg()[0]:.2f}")
    from cpustat import cpu_ticks, steal_percent  # benchmarks/ is sys.path[0] when run as a script

    print(f"{'batch':>6} {'core pairs/s':>14} {'model pairs/s':>14} {'ratio':>7} {'CPU steal':>10}")
    for batch in BATCHES:
        before = cpu_ticks()
        core = measure("core", batch, core_pairs, args.accounts, repeats, model)
        ref = measure("model", batch, min(model_pairs, core_pairs), args.accounts, repeats, model)
        steal = steal_percent(before, cpu_ticks())
        print(f"{batch:>6} {core:>14,.0f} {ref:>14,.0f} {core / ref:>6.1f}x {steal:>9.0f}%")
    print(f"steady state: about {live:,} settled reservations kept, EXPIRE sweep ({SWEEP_MAX_ITEMS}) "
          "first in every apply, clock +1 ms per apply")
    print(f"{'batch':>6} {'core pairs/s':>14} {'purged/pair':>12} {'CPU steal':>10}")
    for batch in STEADY_BATCHES:
        before = cpu_ticks()
        core, purged = measure_steady(batch, core_pairs, args.accounts, repeats, live)
        steal = steal_percent(before, cpu_ticks())
        print(f"{batch:>6} {core:>14,.0f} {purged:>12.2f} {steal:>9.0f}%")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


# ---------------------------------------------------------------- pytest-benchmark

def _bench(benchmark, kind: str, batch: int) -> None:
    model = load_model()
    pairs = 4096 if kind == "core" else 512
    work = Workload(2048, batch, max(1, pairs // batch))
    state = {}

    def setup():
        led = new_ledger(kind, model)
        prepare(led, work, kind)
        state["led"] = led
        return (), {}

    def run():
        run_rounds(state["led"], work.rounds, journal=(kind == "core"))

    benchmark.extra_info["pairs_per_round"] = len(work.rounds) * batch
    benchmark.pedantic(run, setup=setup, rounds=5, iterations=1)


try:
    import pytest

    @pytest.mark.parametrize("batch", BATCHES)
    def test_core_reserve_commit(benchmark, batch):
        _bench(benchmark, "core", batch)

    @pytest.mark.parametrize("batch", BATCHES)
    def test_model_reserve_commit(benchmark, batch):
        _bench(benchmark, "model", batch)
except ImportError:  # running as a script without pytest installed
    pass


if __name__ == "__main__":
    raise SystemExit(main())

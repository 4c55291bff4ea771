"""Recovery time: `Engine.start()` on a large data set, Redis and SQLite, in the same run.

For each backend the script builds, directly through the core and the storage API (what the
engine itself would have written, without the gRPC layer):

- ``--accounts`` accounts (1,000,000; 10,000 with ``--small``), each with one credit lot and
  ``--holds`` open holds, applied in chunks whose journal records are appended as records
  1..K, then a snapshot at K (which trims them), as the engine's periodic snapshot does;
- a journal tail after the snapshot: ``--tail-records`` records (the engine snapshots every
  ``[storage] snapshot_every_records`` = 10,000 records by default, so 10,000 is the worst
  case), each a flush of ``--tail-ops`` operations (charges, new holds, commits of them).

Then a fresh process (so nothing is warm in memory) runs exactly what a restarting server runs,
`Engine.start()`: take the lease, `load()` (read snapshot + tail), `Ledger.from_snapshot`,
replay every tail record. It reports the total and each part, checks the recovered ledger has
every account and hold, and prints a table. The table also shows what writing that snapshot cost
the builder: `Ledger.snapshot()` (the engine runs it on its event loop) and
`write_snapshot()` (one call, which a server gives `[storage] timeout_ms`). Redis is a redis-server started by this script on
a free loopback port (appendonly yes, appendfsync everysec); SQLite a fresh file (WAL,
synchronous=FULL). The storage timeout is the server's default ([storage] timeout_ms = 5000).

Target (the issue): recovery of 1,000,000 accounts in at most 10 s.

    python benchmarks/bench_recovery.py            # 1,000,000 accounts (several minutes to build)
    python benchmarks/bench_recovery.py --small    # 10,000 accounts, for CI
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _fastledger
from _fastledger import codes as C

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # for tests.storage.redis_proc; installed packages stay first

SECOND_NS = 1_000_000_000
HOLD_TTL_NS = 7 * 86_400 * SECOND_NS  # holds stay open through the benchmark
GRANT = 10**12
CHUNK_ACCOUNTS = 10_000  # accounts per build record (4 ops each: < BATCH_OPS_MAX)
SERVER_TIMEOUT_MS = 5_000  # [storage] timeout_ms default: what a real server would use
BUILD_TIMEOUT_MS = 300_000  # the builder writes a snapshot of hundreds of MB in one call
TARGET_S = 10.0


def storage_for(url: str, timeout_ms: int):
    from quota_server.storage import storage_from_url

    if url.startswith("redis"):
        return storage_from_url(url, op_timeout_ms=timeout_ms)
    return storage_from_url(url)


def account_id(i: int) -> str:
    return f"acct-{i:07d}"


def build_chunks(accounts: int, holds: int, now_ns: int):
    """Op lists that create the accounts: upsert, one lot, `holds` open holds each."""
    for base in range(0, accounts, CHUNK_ACCOUNTS):
        ops = []
        for i in range(base, min(accounts, base + CHUNK_ACCOUNTS)):
            a = account_id(i)
            ops.append((C.OP_UPSERT, a, "bench", 0, None, None, None))
            ops.append((C.OP_GRANT, a, "funding", 1, GRANT, C.LOT_PURCHASED, 0, 0))
            for h in range(holds):
                ops.append((C.OP_RESERVE, a, f"hold-{h}", 7, 100, False, 0, HOLD_TTL_NS,
                            C.EXPIRE_RELEASE, True, (), b""))
        yield ops


def tail_flush(rng: random.Random, accounts: int, flush_no: int, ops_per_flush: int, open_tail: list) -> list:
    """One flush of the tail: a mix of charges, new holds and commits of earlier tail holds."""
    ops = []
    for k in range(ops_per_flush):
        a = account_id(rng.randrange(accounts))
        roll = rng.random()
        if roll < 0.5:
            ops.append((C.OP_CHARGE, a, f"t{flush_no}.{k}", 7, 3, True, ()))
        elif roll < 0.75 or not open_tail:
            rid = f"t{flush_no}.{k}"
            ops.append((C.OP_RESERVE, a, rid, 7, 10, False, 0, HOLD_TTL_NS, C.EXPIRE_RELEASE, True, (), b""))
            open_tail.append((a, rid))
        else:
            a, rid = open_tail.pop(rng.randrange(len(open_tail)))
            ops.append((C.OP_COMMIT, a, rid, 7, 10, ()))
    return ops


async def build(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Write the data set to the store at `url`; returns what a recovery must find."""
    rng = random.Random(args.seed)
    storage = storage_for(url, BUILD_TIMEOUT_MS)
    await storage.open()
    ledger = _fastledger.Ledger()
    now_ns = time.time_ns()
    started = time.perf_counter()
    try:
        epoch = await storage.acquire_lease("bench-builder", 3_600_000)
        seq = 0
        for ops in build_chunks(args.accounts, args.holds, now_ns):
            results = ledger.apply(ops, now_ns)
            bad = [r for r in results if r[0] != C.OK]
            assert not bad, bad[:3]
            seq += 1
            await storage.append(epoch, seq, ledger.take_journal(), [], [])
        t = time.perf_counter()
        blob = ledger.snapshot()  # the engine takes it on its event loop, synchronously
        take_s = time.perf_counter() - t
        t = time.perf_counter()
        await storage.write_snapshot(epoch, seq, blob)  # the engine's write has timeout_ms for it
        write_s = time.perf_counter() - t
        snapshot_seq = seq
        open_tail: list = []
        for flush_no in range(args.tail_records):
            ops = tail_flush(rng, args.accounts, flush_no, args.tail_ops, open_tail)
            results = ledger.apply(ops, now_ns)
            bad = [r for r in results if r[0] != C.OK]
            assert not bad, bad[:3]
            seq += 1
            await storage.append(epoch, seq, ledger.take_journal(), [], [])
        await storage.release_lease(epoch)
    finally:
        await storage.close()
    stats = ledger.stats()
    probe = account_id(args.accounts - 1)
    return {
        "build_s": time.perf_counter() - started,
        "snapshot_bytes": len(blob),
        "snapshot_take_s": take_s,
        "snapshot_write_s": write_s,
        "snapshot_seq": snapshot_seq,
        "last_seq": seq,
        "accounts": stats["accounts"],
        "open_holds": stats["open_holds"],
        "probe": [probe, ledger.account_view(probe, now_ns)["balance"]],
    }


async def measure(url: str, probe: str) -> dict[str, Any]:
    """What a restarting server does: Engine.start() (lease, load, from_snapshot, replay)."""
    import quota_server.engine as engine_mod
    from quota_server.engine import Engine, EngineOptions

    storage = storage_for(url, SERVER_TIMEOUT_MS)
    await storage.open()
    timings: dict[str, float] = {}
    real_load = storage.load

    async def timed_load():
        t = time.perf_counter()
        recovered = await real_load()
        timings["load_s"] = time.perf_counter() - t
        timings["records"] = len(recovered.records)
        return recovered

    storage.load = timed_load  # type: ignore[method-assign]

    class TimedLedger:
        """Stands in for _fastledger.Ledger inside the engine to time from_snapshot."""

        def __new__(cls, **kwargs):
            return _fastledger.Ledger(**kwargs)

        @staticmethod
        def from_snapshot(blob, **kwargs):
            t = time.perf_counter()
            ledger = _fastledger.Ledger.from_snapshot(blob, **kwargs)
            timings["from_snapshot_s"] = time.perf_counter() - t
            return ledger

    class Shim:
        Ledger = TimedLedger

    engine_mod._fastledger = Shim  # type: ignore[assignment]
    engine = Engine(storage=storage, owner=f"bench-recovery:{os.getpid()}", options=EngineOptions())
    t = time.perf_counter()
    await engine.start()
    total = time.perf_counter() - t
    stats = engine.ledger.stats()
    out = {
        "start_s": total,
        **timings,
        "replay_s": total - timings["load_s"] - timings.get("from_snapshot_s", 0.0),
        "accounts": stats["accounts"],
        "open_holds": stats["open_holds"],
        "seq": engine.seq,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    probe_account, _, probe_balance = probe.rpartition(":")
    view = engine.ledger.account_view(probe_account, time.time_ns())
    assert view is not None and view["balance"] == int(probe_balance), (probe, view)
    await engine.stop()
    await storage.close()
    return out


def measure_in_child(url: str, probe: list) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--measure", url, "--probe", f"{probe[0]}:{probe[1]}"],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"recovery failed on {url}:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="10,000 accounts, 1,000 tail records: for CI")
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--holds", type=int, default=2, help="open holds per account")
    parser.add_argument("--tail-records", type=int, default=10_000, help="journal records after the snapshot")
    parser.add_argument("--tail-ops", type=int, default=64, help="operations per tail record (one flush)")
    parser.add_argument("--repeats", type=int, default=3, help="recoveries measured per backend (median)")
    parser.add_argument("--backends", default="redis,sqlite", help="comma-separated subset of redis,sqlite")
    parser.add_argument("--redis-appendfsync", default="everysec", choices=["always", "everysec", "no"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json-out", metavar="FILE")
    parser.add_argument("--measure", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # ACCOUNT:BALANCE the recovery must find
    args = parser.parse_args(argv)
    if args.small:
        args.accounts, args.tail_records, args.tail_ops = 10_000, 1_000, 16
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.measure:
        result = asyncio.run(measure(args.measure, args.probe))
        print(json.dumps(result))
        return 0
    from tests.storage.redis_proc import RedisProcess, redis_server_path

    backends = [b for b in args.backends.split(",") if b]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp:
        workdir = Path(tmp)
        for backend in backends:
            redis = None
            if backend == "redis":
                if redis_server_path() is None:
                    print("redis-server is not on PATH: skipping Redis", file=sys.stderr)
                    continue
                redis = RedisProcess(workdir / "redis", appendfsync=args.redis_appendfsync)
                redis.start()
                url = redis.url
            else:
                url = f"sqlite:///{workdir / 'sqlite' / 'quota.db'}"
            try:
                print(f"== {backend}: building {args.accounts:,} accounts + {args.tail_records:,} tail records",
                      file=sys.stderr, flush=True)
                built = asyncio.run(build(url, args))
                print(f"   built in {built['build_s']:.1f} s, snapshot {built['snapshot_bytes'] / 1e6:.1f} MB",
                      file=sys.stderr, flush=True)
                runs = []
                for _ in range(args.repeats):
                    run = measure_in_child(url, built["probe"])
                    assert run["accounts"] == built["accounts"], (run, built)
                    assert run["open_holds"] == built["open_holds"], (run, built)
                    assert run["seq"] == built["last_seq"] and run["records"] == built["last_seq"] - built["snapshot_seq"]
                    runs.append(run)
                    print(f"   Engine.start() {run['start_s']:.2f} s", file=sys.stderr, flush=True)
                rows.append((backend, built, runs))
            finally:
                if redis is not None:
                    redis.stop()
    print(render(rows, args))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps([{"backend": b, "built": bu, "runs": r} for b, bu, r in rows],
                                                  indent=2))
    return 0


def render(rows: list, args: argparse.Namespace) -> str:
    def med(runs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    lines = [
        f"- data: {args.accounts:,} accounts, each 1 lot + {args.holds} open holds; journal tail "
        f"{args.tail_records:,} records x {args.tail_ops} ops after the snapshot",
        f"- {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"{'debug' if _fastledger.DEBUG else 'release'} build of the core; medians of {args.repeats} recoveries, "
        f"each in a fresh process; Redis: appendfsync {args.redis_appendfsync}, loopback",
        f"- 1-minute load average at the end: {os.getloadavg()[0]:.2f}",
        "",
        "| storage | snapshot MB | Engine.start() s | load() s | from_snapshot s | replay tail s | peak RSS MB "
        "| target <= 10 s | snapshot() s | write_snapshot s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for backend, built, runs in rows:
        start = med(runs, "start_s")
        lines.append(
            f"| {backend} | {built['snapshot_bytes'] / 1e6:.0f} | {start:.2f} | {med(runs, 'load_s'):.2f} "
            f"| {med(runs, 'from_snapshot_s'):.2f} | {med(runs, 'replay_s'):.2f} | {med(runs, 'max_rss_mb'):.0f} "
            f"| {'met' if start <= TARGET_S else 'MISSED'} | {built['snapshot_take_s']:.2f} "
            f"| {built['snapshot_write_s']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

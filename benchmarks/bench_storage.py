"""Appends per second of 4 KiB journal records, SQLite vs Redis, with one harness.

Each append is one flush as the engine does it (one record, plus ``--usage`` usage rows),
awaited before the next (at most one flush in flight). SQLite runs with WAL +
synchronous=FULL; Redis is a redis-server this script starts on a free loopback port with
``appendonly yes`` and ``--appendfsync`` (everysec by default). Reports the median of
``--repeats`` runs per backend.

    python benchmarks/bench_storage.py            # full run
    python benchmarks/bench_storage.py --small    # a few seconds, for CI
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # for tests.*; installed packages come first

from quota_server.storage import Storage, UsageRow  # noqa: E402
from quota_server.storage.redis import RedisStorage  # noqa: E402
from quota_server.storage.sqlite import SqliteStorage  # noqa: E402
from tests.storage.redis_proc import RedisProcess, redis_server_path  # noqa: E402


def engine_flushes(ops: int, count: int = 20) -> list[tuple[bytes, list[UsageRow]]]:
    """What the engine writes at Batch(`ops`): the core's own journal records of alternating
    flushes of `ops` Reserves and of their `ops` Commits (fresh ids), one account; a commit
    flush also carries one usage row per commit, shaped like the server's."""
    import _fastledger
    from _fastledger import codes as C

    second = 10**9
    now = 1_700_000_000 * second
    ledger = _fastledger.Ledger(retention_ns=86_400 * second)
    ledger.apply([(C.OP_UPSERT, "acct-1", "default", 0, None, None, None),
                  (C.OP_GRANT, "acct-1", "g", 1, 10**15, C.LOT_PURCHASED, 0, 0)], now)
    ledger.take_journal()
    flushes = []
    for r in range(count // 2):
        ids = [f"bench-{r}-{i:06d}" for i in range(ops)]
        ledger.apply([(C.OP_RESERVE, "acct-1", rid, 1000 + i, 1, False, 0, 60 * second, C.EXPIRE_RELEASE, True, (),
                       b'{"a":"llm.chat"}') for i, rid in enumerate(ids)], now)
        flushes.append((ledger.take_journal(), []))
        ledger.apply([(C.OP_COMMIT, "acct-1", rid, 2000 + i, 1, ()) for i, rid in enumerate(ids)], now)
        rows = [UsageRow("acct-1", now // 1_000_000, (
            '{"reservation_id":"%s","charge_id":"","action":"llm.chat","quantities":{},"amount_charged":1,'
            '"amount_uncharged":0,"labels":{},"late":false}' % rid).encode()) for rid in ids]
        flushes.append((ledger.take_journal(), rows))
    return flushes


async def run_once(make: Callable[[], Storage], appends: int, size: int, usage: int, flush_ops: int) -> float:
    """Append ``appends`` records to a fresh store; return appends per second."""
    store = make()
    await store.open()
    try:
        epoch = await store.acquire_lease("bench", 60_000)
        if flush_ops:
            flushes = engine_flushes(flush_ops)
        else:
            record = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
            rows = [UsageRow(f"acct-{i}", 1_700_000_000_000 + i, b"u" * 64) for i in range(usage)]
            flushes = [(record, rows)]
        start = time.perf_counter()
        for seq in range(1, appends + 1):
            record, rows = flushes[seq % len(flushes)]
            await store.append(epoch, seq, record, rows, [])
        elapsed = time.perf_counter() - start
    finally:
        await store.close()
    return appends / elapsed


async def measure(
    name: str, make_fresh: Callable[[int], Awaitable[Callable[[], Storage]]], args: argparse.Namespace
) -> dict[str, Any]:
    rates = []
    for repeat in range(args.repeats):
        make = await make_fresh(repeat)
        rates.append(await run_once(make, args.appends, args.size, args.usage, args.flush_ops))
    return {
        "backend": name,
        "appends": args.appends,
        "record_bytes": args.size,
        "usage_rows": args.usage,
        "flush_ops": args.flush_ops,
        "median_appends_per_s": round(statistics.median(rates)),
        "runs": [round(r) for r in rates],
    }


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="short run for CI")
    parser.add_argument("--appends", type=int, default=3_000, help="appends per run")
    parser.add_argument("--repeats", type=int, default=5, help="runs per backend (median reported)")
    parser.add_argument("--size", type=int, default=4096, help="record size in bytes")
    parser.add_argument("--usage", type=int, default=0, help="usage rows per append")
    parser.add_argument("--flush-ops", type=int, default=0, metavar="N",
                        help="instead of --size/--usage: the core's real journal records of flushes of N "
                             "Reserves, then N Commits with N usage rows, alternating (what Batch(N) writes)")
    parser.add_argument("--appendfsync", default="everysec", choices=["always", "everysec", "no"])
    parser.add_argument("--backends", default="sqlite,redis", help="comma-separated subset")
    parser.add_argument("--json", action="store_true", help="print JSON lines only")
    args = parser.parse_args(argv)
    if args.small:
        args.appends, args.repeats = min(args.appends, 300), min(args.repeats, 3)

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        tmp_path = Path(tmp)
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        if "sqlite" in backends:

            async def fresh_sqlite(repeat: int) -> Callable[[], Storage]:
                path = tmp_path / f"sqlite-{repeat}" / "quota.db"
                return lambda: SqliteStorage(str(path))

            results.append(await measure("sqlite (WAL, synchronous=FULL)", fresh_sqlite, args))
        if "redis" in backends:
            if redis_server_path() is None:
                print("redis-server not on PATH: skipping Redis", file=sys.stderr)
            else:
                server = RedisProcess(tmp_path / "redis", appendfsync=args.appendfsync)
                server.start()
                try:

                    async def fresh_redis(repeat: int) -> Callable[[], Storage]:
                        prefix = f"bench{repeat}:"
                        return lambda: RedisStorage(server.url, key_prefix=prefix)

                    results.append(
                        await measure(f"redis (appendfsync {args.appendfsync})", fresh_redis, args)
                    )
                finally:
                    server.stop()
                    shutil.rmtree(tmp_path / "redis", ignore_errors=True)

    for result in results:
        if args.json:
            print(json.dumps(result))
        else:
            print(
                f"{result['backend']:<34} {result['median_appends_per_s']:>8} appends/s "
                f"(median of {len(result['runs'])}: {result['runs']}; "
                + (f"{result['appends']} flushes of {result['flush_ops']} ops, reserves and commits alternating)"
                   if result["flush_ops"] else
                   f"{result['appends']} x {result['record_bytes']} B, {result['usage_rows']} usage rows)")
            )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

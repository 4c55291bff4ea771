"""Instructions per op of the server's Batch path, counted by callgrind (repeatable, unlike time).

A started `QuotaServer` (in this process; SQLite on a temporary file by default) is fed
serialized Batch(1000) requests through `run_batch_wire`, the handler's own entry point: one
Batch of reserves, then one Batch of commits of them, per round. No gRPC and no client: what
is counted is decoding, the engine, the core, deriving the usage records, encoding the
responses and the storage writes (every thread of the process). The script runs itself under
`valgrind --tool=callgrind` twice, for two round counts, and reports the difference divided by
the ops in between, so start-up and imports cancel out; with `--top N`, the functions whose
inclusive cost per op is largest. Valgrind runs the process about 50 times slower: the default
(20 and 60 rounds) takes about a minute.

    python benchmarks/callgrind_batch.py                   # marginal instructions per op
    python benchmarks/callgrind_batch.py --top 30          # and where they go
    python benchmarks/callgrind_batch.py --storage memory://
    python benchmarks/callgrind_batch.py --storage redis://127.0.0.1:6390/0   # emptied before each run

Needs valgrind (Debian's package) and the installed server (`pip install ./clients .`).
Instruction counts are not times: they leave out cache misses and waiting, and they are the
same on a busy machine as on a quiet one, which is what makes them useful for comparing two
builds of the same code.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH = 1000
ACCOUNT = "acct-cg"


async def drive(rounds: int, built: int, storage_url: str) -> None:
    """The measured work: `rounds` x (Batch of reserves, Batch of commits of them). The requests
    of `built` rounds are encoded first, whatever `rounds` is, so that encoding them (the
    harness's own work) is the same in both runs and cancels out of the difference."""
    sys.path.append(str(Path(__file__).resolve().parent))
    from bench_e2e import BatchEncoder
    from quota_client import AsyncQuotaClient

    from quota_server.config import parse_config
    from quota_server.dataplane import DataPlane, run_batch_wire
    from quota_server.server import QuotaServer, tune_gc

    config = parse_config({"server": {"listen": "127.0.0.1:0"}, "storage": {"url": storage_url},
                           "plans": {"bench": {}}}, source="callgrind_batch")
    server = QuotaServer(config)
    await server.start()
    tune_gc()  # as quota-server does once started
    try:
        async with AsyncQuotaClient(f"127.0.0.1:{server.port}") as client:
            await client.upsert_account(ACCOUNT, plan_id="bench")
            await client.grant(ACCOUNT, 10**15, grant_id="cg-grant")
        dataplane = DataPlane(engine=server.engine, config=config)
        encoder = BatchEncoder(ACCOUNT, "cg", BATCH)
        requests = [(encoder.encode(1, encoder.ids(n)), encoder.encode(2, encoder.ids(n))) for n in range(built)]
        for reserves, commits in requests[:rounds]:
            await run_batch_wire(dataplane, reserves, BATCH)
            await run_batch_wire(dataplane, commits, BATCH)
    finally:
        await server.stop()


OURS = ("_fastledger", "quota_server", "zstd", "sqlite")  # the objects --top lists functions of


def count(out_file: Path, inclusive: bool) -> dict[str, int]:
    """Instructions per function (and PROGRAM TOTALS) from callgrind_annotate; with
    `inclusive`, only the functions of OURS (the interpreter's frames include everything)."""
    text = subprocess.run(
        ["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}", "--threshold=100", str(out_file)],
        capture_output=True, text=True, check=True,
    ).stdout
    totals: dict[str, int] = {}
    for line in text.splitlines():
        match = re.match(r"\s*([\d,]+) \([\s\d.]+%\)\s+(.*)", line)
        if match:
            if inclusive and match[2] != "PROGRAM TOTALS" and not any(o in match[2] for o in OURS):
                continue
            name = match[2].split(" [")[0]
            name = name.rsplit(":", 1)[-1] if ":" in name else name
            totals[name] = totals.get(name, 0) + int(match[1].replace(",", ""))
    return totals


def empty_redis(storage: str) -> None:
    """Both runs start on empty storage: with a Redis URL, its database is emptied first (else
    the second run would begin by recovering, replaying the first run's records, and count it)."""
    if storage.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(storage)
        try:
            client.flushdb()
        finally:
            client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, nargs=2, default=(20, 60), metavar=("FEW", "MANY"))
    parser.add_argument("--storage", default=None, help="storage URL (default: SQLite on a temporary file)")
    parser.add_argument("--top", type=int, default=0, help="list the N functions with the most instructions per op")
    parser.add_argument("--drive", type=int, nargs=2, default=None, help=argparse.SUPPRESS)  # the child's role
    args = parser.parse_args(argv)
    if args.drive is not None:
        asyncio.run(drive(*args.drive, args.storage))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    few, many = args.rounds
    if not 0 < few < many:
        parser.error("--rounds FEW MANY needs 0 < FEW < MANY")
    with tempfile.TemporaryDirectory(prefix="callgrind-batch-") as tmp:
        outputs = []
        for rounds in (few, many):
            storage = args.storage or f"sqlite:///{tmp}/quota-{rounds}.db"
            empty_redis(storage)
            out = Path(tmp) / f"callgrind.{rounds}.out"
            started = time.monotonic()
            subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                 str(Path(__file__).resolve()), "--drive", str(rounds), str(many), "--storage", storage],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp,
                env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
            )
            print(f"   {rounds} rounds under callgrind: {time.monotonic() - started:.0f} s", file=sys.stderr)
            outputs.append(out)
        ops = (many - few) * 2 * BATCH
        low, high = (count(out, inclusive=bool(args.top)) for out in outputs)
        per_op = (high["PROGRAM TOTALS"] - low["PROGRAM TOTALS"]) / ops
        print(f"Batch({BATCH}) reserves then commits on {args.storage or 'sqlite (temporary file)'}: "
              f"{per_op:,.0f} instructions per op (rounds {few} -> {many}, every thread)")
        if args.top:
            rows = sorted(((high.get(k, 0) - low.get(k, 0)) / ops, k) for k in high if k != "PROGRAM TOTALS")
            print(f"\n{'per op':>9}  function (inclusive: callees counted in their callers too)")
            for value, name in rows[::-1][:args.top]:
                print(f"{value:>9,.0f}  {name[:110]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Per-op cost of a Batch(1000) request on the server side, Python path vs wire fast path.

Measures decode + validate + build the core ops + encode the response (serialized BatchRequest in,
serialized BatchResponse out), with the engine replaced by a stub that hands back result tuples
computed once beforehand, so the core's apply and storage are not in the figures. Both paths run
in the same process on the same requests, and their responses are checked equal first. The
`derive` columns time the usage rows of the commits and charges, which the engine builds after
apply. A second table times the same work for one unary call (what a handler does around
`engine.submit`; the Python path includes the generated deserializer and serializer). Times are
process CPU time, so other load on the machine disturbs them less (but still does).

    python benchmarks/bench_wire.py            # full run
    python benchmarks/bench_wire.py --small    # a few seconds, for CI
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # for tests.support; installed packages come first

import _fastledger  # noqa: E402
from _fastledger import codes as C  # noqa: E402
from quota.v1 import quota_service_pb2 as pb  # noqa: E402

from quota_server.dataplane import DataPlane, run_batch, run_batch_wire  # noqa: E402
from tests.support.config import build_config, config_data  # noqa: E402

BATCH = 1000
ACCOUNTS = 100
NOW_NS = 1_750_000_000_000_000_000


class StubEngine:
    """The engine's surface the data plane uses; submit_many returns canned results."""

    def __init__(self, ledger: Any) -> None:
        self.ledger = ledger
        self.canned: list[tuple] | None = None
        self.last_items: list = []
        self.last_group: tuple | None = None

    def now_ns(self) -> int:
        return NOW_NS

    def poll(self) -> None:
        """(Engine.poll: no storage here, nothing to report.)"""

    async def submit_many(self, items: list) -> list[tuple]:
        self.last_items = items
        if self.canned is None:
            return self.ledger.apply([op for op, _ in items], NOW_NS)
        return self.canned

    async def submit_group(self, ops: list, deriver: Any) -> list[tuple]:
        """The fast path's Batch: ops with one deriver for them all (Engine.submit_group)."""
        self.last_group = (ops, deriver)
        if self.canned is None:
            return self.ledger.apply(ops, NOW_NS)
        return self.canned


def workloads() -> dict[str, list[pb.BatchOp]]:
    """Batches of the common shapes: amounts, priced actions, labels and quantities."""
    def acct(i: int) -> str:
        return f"acct-{i % ACCOUNTS:04d}"

    reserve_commit = []
    for i in range(BATCH // 2):
        reserve_commit.append(pb.BatchOp(reserve=pb.ReserveRequest(
            account_id=acct(i), reservation_id=f"res-{i:08d}", amount=10)))
    for i in range(BATCH // 2):
        reserve_commit.append(pb.BatchOp(commit=pb.CommitRequest(
            account_id=acct(i), reservation_id=f"res-{i:08d}", amount=7)))
    charge_priced = [
        pb.BatchOp(charge=pb.ChargeRequest(account_id=acct(i), charge_id=f"chg-{i:08d}", action="image.generate"))
        for i in range(BATCH)
    ]
    metered_labels = [
        pb.BatchOp(reserve=pb.ReserveRequest(
            account_id=acct(i), reservation_id=f"llm-{i:08d}", action="llm.chat",
            quantities={"input_tokens": 1200 + i, "output_tokens": 400}, labels={"model": "m-1", "team": "core"}))
        for i in range(BATCH)
    ]
    return {"reserve+commit amounts": reserve_commit, "charge priced action": charge_priced,
            "reserve metered+labels": metered_labels}


def setup(plan: str) -> tuple[DataPlane, StubEngine]:
    tmp = tempfile.mkdtemp(prefix="bench-wire-")
    config = build_config(config_data(Path(tmp) / "unused.db"))
    ledger = _fastledger.Ledger()
    ops = []
    for i in range(ACCOUNTS):
        account_id = f"acct-{i:04d}"
        ops.append((C.OP_UPSERT, account_id, plan, 1, 0, 0, False))
        ops.append((C.OP_GRANT, account_id, "seed", 1, 10**14, C.LOT_PURCHASED, 0, 0))
    ledger.apply(ops, NOW_NS)
    engine = StubEngine(ledger)
    return DataPlane(engine=engine, config=config), engine


def per_op_us(fn, data: bytes, rounds: int, loop: asyncio.AbstractEventLoop) -> float:
    samples = []
    for _ in range(rounds):
        start = time.process_time()
        loop.run_until_complete(fn(data))
        samples.append((time.process_time() - start) / BATCH * 1e6)
    return statistics.median(samples)


def derive_us(engine: StubEngine, results: list[tuple], rounds: int) -> float | None:
    items = [(op, derive) for op, derive in engine.last_items if derive is not None]
    if not items:
        return None
    pairs = [(op, derive, r) for (op, derive), r in zip(engine.last_items, results) if derive is not None]
    samples = []
    for _ in range(rounds):
        start = time.process_time()
        for op, derive, r in pairs:
            derive(op, r, True, NOW_NS // 1_000_000)
        samples.append((time.process_time() - start) / len(pairs) * 1e6)
    return statistics.median(samples)


def derive_group_us(engine: StubEngine, results: list[tuple], rounds: int) -> float | None:
    """The fast path's usage derivation per op that derives anything: one derive_into call
    writing every record into its account's packed chunk."""
    if engine.last_group is None:
        return None
    ops, deriver = engine.last_group
    deriving = sum(1 for op in ops if op[0] in (C.OP_COMMIT, C.OP_CHARGE))
    if not deriving:
        return None
    samples = []
    for _ in range(rounds):
        start = time.process_time()
        deriver.derive_into(results, 0, set(), NOW_NS // 1_000_000, [], [], [])
        samples.append((time.process_time() - start) / deriving * 1e6)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="a few rounds, for CI")
    parser.add_argument("--rounds", type=int, default=0, help="batches timed per path (median reported)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    rounds = args.rounds or (5 if args.small else 40)
    loop = asyncio.new_event_loop()
    rows = []
    for name, ops in workloads().items():
        dp, engine = setup("free" if "metered" in name else "prepaid")
        data = pb.BatchRequest(ops=ops).SerializeToString()
        engine.canned = None
        slow_out = loop.run_until_complete(_python_path(dp, data))  # applies once: the canned results
        engine.canned = loop.run_until_complete(engine.submit_many(engine.last_items))  # replays: same results
        slow_out = loop.run_until_complete(_python_path(dp, data))
        slow_derive = derive_us(engine, engine.canned, rounds)
        engine.last_group = None
        fast_out = loop.run_until_complete(run_batch_wire(dp, data, BATCH))
        fast_derive = (derive_group_us(engine, engine.canned, rounds) if engine.last_group is not None
                       else derive_us(engine, engine.canned, rounds))
        if pb.BatchResponse.FromString(fast_out) != pb.BatchResponse.FromString(slow_out):
            print(f"{name}: the two paths answered differently", file=sys.stderr)
            return 1
        errors = sum(1 for r in pb.BatchResponse.FromString(fast_out).results if r.WhichOneof("result") == "error")
        python_us = per_op_us(lambda d: _python_path(dp, d), data, rounds, loop)
        fast_us = per_op_us(lambda d: run_batch_wire(dp, d, BATCH), data, rounds, loop)
        rows.append({
            "workload": name, "python_us_per_op": round(python_us, 3), "fast_us_per_op": round(fast_us, 3),
            "speedup": round(python_us / fast_us, 1), "error_results": errors,
            "derive_python_us": None if slow_derive is None else round(slow_derive, 3),
            "derive_fast_us": None if fast_derive is None else round(fast_derive, 3),
        })
    unary = unary_rows(rounds, loop)
    if args.json:
        print(json.dumps({"batch": rows, "unary": unary}, indent=2))
        return 0
    print(f"Batch({BATCH}) decode + validate + ops + encode, server side, per op (median of {rounds}):")
    print(f"{'workload':26} {'python µs':>10} {'fast µs':>9} {'speedup':>8}   {'derive py µs':>12} {'derive fast µs':>14}")
    for row in rows:
        dpy = "-" if row["derive_python_us"] is None else f"{row['derive_python_us']:.3f}"
        dfa = "-" if row["derive_fast_us"] is None else f"{row['derive_fast_us']:.3f}"
        print(f"{row['workload']:26} {row['python_us_per_op']:10.3f} {row['fast_us_per_op']:9.3f} "
              f"{row['speedup']:7.1f}x   {dpy:>12} {dfa:>14}")
    print()
    print("Unary, per call: request bytes -> op -> response bytes (no gRPC, no engine):")
    print(f"{'rpc':26} {'python µs':>10} {'fast µs':>9} {'speedup':>8}")
    for row in unary:
        print(f"{row['rpc']:26} {row['python_us_per_call']:10.3f} {row['fast_us_per_call']:9.3f} "
              f"{row['speedup']:7.1f}x")
    return 0


UNARY = {
    "Reserve amount": (1, pb.ReserveRequest(account_id="acct-0001", reservation_id="res-unary", amount=10)),
    "Commit amount": (2, pb.CommitRequest(account_id="acct-0001", reservation_id="res-unary", amount=7)),
    "Charge priced action": (5, pb.ChargeRequest(account_id="acct-0001", charge_id="chg-unary",
                                                 action="image.generate")),
}
REQUEST_TYPES = {1: pb.ReserveRequest, 2: pb.CommitRequest, 5: pb.ChargeRequest}
PREPARE = {1: "prepare_reserve", 2: "prepare_commit", 5: "prepare_charge"}


def unary_rows(rounds: int, loop: asyncio.AbstractEventLoop) -> list[dict[str, Any]]:
    """What a unary handler does around engine.submit, on both paths (the generated handler's
    deserialize and serialize included on the Python path)."""
    dp, engine = setup("prepaid")
    rows = []
    calls = 2000
    for name, (kind, request) in UNARY.items():
        data = request.SerializeToString()
        prepared = getattr(dp, PREPARE[kind])(REQUEST_TYPES[kind].FromString(data))
        result = loop.run_until_complete(engine.submit_many([(prepared.op, prepared.derive)]))[0]

        def python_call():
            p = getattr(dp, PREPARE[kind])(REQUEST_TYPES[kind].FromString(data))
            return p.respond(result).SerializeToString()

        def fast_call():
            op, _ = dp.wire.decode(kind, data)
            return dp.wire.encode(kind, op, result)

        assert python_call() == fast_call()
        timings = {}
        for label, fn in (("python", python_call), ("fast", fast_call)):
            samples = []
            for _ in range(rounds):
                start = time.process_time()
                for _ in range(calls):
                    fn()
                samples.append((time.process_time() - start) / calls * 1e6)
            timings[label] = statistics.median(samples)
        rows.append({"rpc": name, "python_us_per_call": round(timings["python"], 3),
                     "fast_us_per_call": round(timings["fast"], 3),
                     "speedup": round(timings["python"] / timings["fast"], 1)})
    return rows


async def _python_path(dp: DataPlane, data: bytes) -> bytes:
    """What the generated handler does: deserialize, run_batch, serialize."""
    return (await run_batch(dp, pb.BatchRequest.FromString(data))).SerializeToString()


if __name__ == "__main__":
    sys.exit(main())

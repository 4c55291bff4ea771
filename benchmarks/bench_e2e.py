"""End-to-end gRPC load: the real `quota-server` against a do-nothing floor, in the same run.

Targets (each a separate server process, started and stopped by this script):

- ``floor``: an identical grpc.aio server (same loop: uvloop when installed, same server
  options, health service, QuotaService registered as raw-bytes handlers as quota-server
  registers it, the same garbage-collector tuning) whose handlers return at once: an empty
  ReserveResponse / CommitResponse, and for Batch one empty result of the op's kind per op.
  It is what gRPC + Python cost on this machine with no work at all.
- ``sqlite``: the installed ``quota-server`` on a fresh SQLite file (the default: WAL,
  synchronous=FULL, sync durability: every reply waits for its batch to be on disk).
- optional: ``memory`` (``--memory``: ``memory://`` storage, nothing persisted, if the server
  has it), ``redis`` (``--redis``: a throwaway redis-server with appendfsync always) and any
  ``--storage-url URL``.

Workloads (client load runs in ``--client-procs`` separate processes, each one grpc.aio channel
with many calls in flight; the server and the clients share the machine's cores):

- ``unary``: ``--callers`` concurrent callers in total, each looping Reserve(amount 1, a new
  reservation id) then Commit(amount 1) of that reservation. Reported: pairs/s, ops/s
  (2 per pair), p50/p99 latency of each Reserve and each Commit call.
- ``batch``: ``--batch-callers`` concurrent callers in total, each looping one Batch of
  ``--batch-size`` Reserves (new ids, amount 1) then one Batch of ``--batch-size`` Commits of
  exactly those reservations. Every op counts one (a reserve batch plus its commit batch is
  2 x batch-size ops). Reported: ops/s, p50/p99 latency per Batch call (both kinds).

Each caller has its own account (granted 10**15 units, so no denial is expected). Every unary
result is checked; every Batch's result count is checked, and every result of one Batch in
``--check-every`` (4) per caller (its kind, decision OK, amount charged 1). RPC errors, per-op
errors and denials are counted and reported. Requests of the batch workload are encoded
straight to the protobuf wire format from a per-caller template (checked against the generated
classes at start-up), to keep the clients' CPU, which competes with the server's, low.

Measurement: all targets run side by side (idle when not loaded). For each workload there are
``--runs`` paired repetitions; in each, every target in turn (the order alternating between
repetitions) gets, once the machine is quiet (below 0.3 busy cores: the previous target's
leftover work, a snapshot child say, is not measured against this one; the wait is reported),
``--warmup`` seconds of load, then ``--seconds`` measured (a call counts if it
completed inside the measured window). The table shows the median over the repetitions of each
figure (throughput, p50, p99), the CPU the server and the clients used (mean, 100 % = one core),
and ``vs floor`` as the median of the per-repetition ratios: pairing the repetitions keeps the
ratio meaningful when other work on the machine comes and goes during the run.

    python benchmarks/bench_e2e.py              # full: 5 repetitions of 5 s per target and workload
    python benchmarks/bench_e2e.py --small      # CI: 1 repetition of 1 s, fewer callers
    python benchmarks/bench_e2e.py --memory --redis
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cpustat import cpu_ticks, steal_percent  # benchmarks/ is sys.path[0] when run as a script

ROOT = Path(__file__).resolve().parents[1]

TARGET_UNARY_RATIO = 0.80  # the issue: unary throughput at least 80 % of the floor
TARGET_BATCH_OPS = 400_000  # the issue: Batch(1000) at least 400,000 ops/s on SQLite sync
GRANT = 10**15
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # the server's default max_message_bytes


def _run_loop(coro: Any) -> Any:
    """Run `coro` the way quota-server does: uvloop when installed, else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------ the floor server


def serve_floor(listen: str) -> int:
    """A QuotaService whose handlers do nothing (run in its own process).

    It is registered the way quota-server registers its own (dataplane.add_quota_service):
    Reserve, Commit and Batch take and return raw bytes (no protobuf objects in Python), and it
    tunes the garbage collector as quota-server does (server.tune_gc). Reserve and Commit return
    an empty message; Batch parses the request (upb, in C) only to count its ops and returns one
    pre-serialized empty result of the op's kind per op.
    """
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from quota.v1 import quota_service_pb2 as pb
    from quota_server.server import tune_gc

    entry = {  # one `results` entry of a BatchResponse, serialized, per op kind
        kind: pb.BatchResponse(results=[pb.BatchResult(**{kind: message()})]).SerializeToString()
        for kind, message in [
            ("reserve", pb.ReserveResponse), ("commit", pb.CommitResponse), ("release", pb.ReleaseResponse),
            ("extend", pb.ExtendResponse), ("charge", pb.ChargeResponse), ("check", pb.CheckResponse),
            ("quote", pb.QuoteResponse), ("get_balance", pb.GetBalanceResponse),
        ]
    }

    async def empty(request: bytes, context) -> bytes:
        return b""

    async def batch(request: bytes, context) -> bytes:
        return b"".join([entry[op.WhichOneof("op")] for op in pb.BatchRequest.FromString(request).ops])

    def raw(method):
        return grpc.unary_unary_rpc_method_handler(method, request_deserializer=None, response_serializer=None)

    async def main() -> None:
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ])
        handlers = {"Reserve": raw(empty), "Commit": raw(empty), "Batch": raw(batch)}
        name = pb.DESCRIPTOR.services_by_name["QuotaService"].full_name
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
        server.add_registered_method_handlers(name, handlers)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        server.add_insecure_port(listen)
        await server.start()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        tune_gc()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop(1)

    _run_loop(main())
    return 0


# ------------------------------------------------------------------ server processes


def server_command() -> list[str]:
    """The installed console script; `python -m quota_server.main` only if it is not installed."""
    script = shutil.which("quota-server")
    return [script] if script else [sys.executable, "-m", "quota_server.main"]


def supports_memory_storage() -> bool:
    try:
        from quota_server.config import parse_storage_url

        parse_storage_url("memory://")
    except Exception:
        return False
    return True


class Target:
    """One server under test: started as a subprocess, stopped with SIGTERM."""

    def __init__(self, name: str, storage_url: str | None, workdir: Path, server_cmd: list[str]) -> None:
        self.name = name
        self.storage_url = storage_url  # None: the floor
        self.workdir = workdir
        self.server_cmd = server_cmd
        self.listen = f"127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / f"{name}.log"

    @property
    def is_floor(self) -> bool:
        return self.storage_url is None

    def describe(self) -> str:
        if self.is_floor:
            return "empty grpc.aio handlers (raw bytes, as quota-server registers them)"
        return f"storage {self.storage_url}"

    def start(self) -> None:
        if self.is_floor:
            argv = [sys.executable, str(Path(__file__).resolve()), "--serve-floor", self.listen]
        else:
            config = self.workdir / f"{self.name}.toml"
            config.write_text(
                f'[server]\nlisten = "{self.listen}"\n\n[storage]\nurl = "{self.storage_url}"\n\n[plans.bench]\n'
            )
            argv = [*self.server_cmd, "--config", str(config), "--log-level", "WARNING"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT)
        self._wait_serving()

    def _wait_serving(self) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + START_TIMEOUT_S
        with grpc.insecure_channel(self.listen) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not serving after {START_TIMEOUT_S} s:\n{self.log()}")
                time.sleep(0.05)

    def setup_accounts(self, accounts: list[str]) -> None:
        if self.is_floor:
            return
        from quota_client import QuotaClient

        with QuotaClient(self.listen, timeout=30) as client:
            for account in accounts:
                client.upsert_account(account, plan_id="bench")
                client.grant(account, GRANT, grant_id="bench-grant")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux /proc)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, AttributeError):
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


# ------------------------------------------------------------------ wire encoding (client side)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_batch(kind: int, account_id: str, reservation_ids: list[str], amount: int = 1) -> bytes:
    """A BatchRequest of Reserve (kind 1) or Commit (kind 2) ops, each (account, id, amount)."""
    account = _field(1, account_id.encode())
    tail = _varint(3 << 3 | 0) + _varint(amount)
    return b"".join(
        _field(1, _field(kind, account + _field(2, rid.encode()) + tail)) for rid in reservation_ids
    )


class BatchEncoder:
    """Cheap wire bytes of the benchmark's batches: every id of a batch has the same length, so
    every op is the same head + id + tail and a whole batch is one bytes.join."""

    def __init__(self, account_id: str, prefix: str, size: int, amount: int = 1,
                 random_ids: bool = False) -> None:
        self.account = _field(1, account_id.encode())
        self.amount = _varint(3 << 3 | 0) + _varint(amount)
        self.prefix = prefix.encode()
        self.size = size
        self.random_ids = random_ids
        width = len(str(size - 1))
        self.suffixes = [b".%0*d" % (width, i) for i in range(size)]
        self.heads: dict[tuple[int, int], bytes] = {}

    def ids(self, n: int) -> list[bytes]:
        if self.random_ids:  # 128 random bits as 32 hex digits each, like a UUID's
            digits = os.urandom(16 * self.size).hex().encode()
            return [self.prefix + b"." + digits[i:i + 32] for i in range(0, 32 * self.size, 32)]
        base = self.prefix + b".%09d" % n
        return [base + suffix for suffix in self.suffixes]

    def encode(self, kind: int, ids: list[bytes]) -> bytes:
        id_len = len(ids[0])
        head = self.heads.get((kind, id_len))
        if head is None:
            inner_len = len(self.account) + 1 + len(_varint(id_len)) + id_len + len(self.amount)
            op = _varint(kind << 3 | 2) + _varint(inner_len) + self.account + b"\x12" + _varint(id_len)
            head = self.heads[(kind, id_len)] = b"\x0a" + _varint(len(op) + id_len + len(self.amount)) + op
        return head + (self.amount + head).join(ids) + self.amount


def check_encoding() -> None:
    """The hand-made wire bytes decode to exactly what the generated classes would build."""
    from quota.v1 import quota_service_pb2 as pb

    ids = ["r-1", "r-" + "x" * 200]
    reserve = pb.BatchRequest(ops=[pb.BatchOp(reserve=pb.ReserveRequest(account_id="a", reservation_id=i, amount=1))
                                   for i in ids])
    commit = pb.BatchRequest(ops=[pb.BatchOp(commit=pb.CommitRequest(account_id="a", reservation_id=i, amount=1))
                                  for i in ids])
    assert pb.BatchRequest.FromString(encode_batch(1, "a", ids)) == reserve
    assert pb.BatchRequest.FromString(encode_batch(2, "a", ids)) == commit
    assert pb.BatchRequest.FromString(encode_batch(2, "a", ids)).ops[0].commit.HasField("amount")
    encoder = BatchEncoder("acct-1", "b0.1", 1000)
    fast_ids = encoder.ids(7)
    for kind in (1, 2):
        assert encoder.encode(kind, fast_ids) == encode_batch(kind, "acct-1", [i.decode() for i in fast_ids])


# ------------------------------------------------------------------ client processes


class Windows:
    """Counts and latencies per measurement window, by completion time."""

    def __init__(self, start: float, seconds: float, count: int) -> None:
        self.start = start
        self.seconds = seconds
        self.count = count
        self.ops = [0] * count
        self.calls = [0] * count
        self.lat: dict[str, list[list[float]]] = {}

    def index(self, t: float) -> int:
        i = int((t - self.start) // self.seconds)
        return i if 0 <= i < self.count and t >= self.start else -1

    def add(self, kind: str, t0: float, t1: float, ops: int) -> None:
        i = self.index(t1)
        if i < 0:
            return
        self.ops[i] += ops
        self.calls[i] += 1
        self.lat.setdefault(kind, [[] for _ in range(self.count)])[i].append(t1 - t0)


async def _unary_caller(stub, pb, account: str, prefix: str, end: float, win: Windows, tally: dict,
                        check: bool, random_ids: bool) -> None:
    import grpc

    n = 0
    while time.monotonic() < end:
        rid = f"{prefix}.{os.urandom(16).hex()}" if random_ids else f"{prefix}.{n}"
        n += 1
        try:
            t0 = time.monotonic()
            r = await stub.Reserve(pb.ReserveRequest(account_id=account, reservation_id=rid, amount=1))
            t1 = time.monotonic()
            if check and r.decision != 1:
                tally["denied"] += 1
                continue
            win.add("reserve", t0, t1, 1)
            c = await stub.Commit(pb.CommitRequest(account_id=account, reservation_id=rid, amount=1))
            t2 = time.monotonic()
            if check and c.amount_charged != 1:
                tally["bad"] += 1
            win.add("commit", t1, t2, 1)
            if win.index(t2) >= 0:
                tally["pairs"][win.index(t2)] += 1
        except grpc.aio.AioRpcError as exc:
            tally["rpc_errors"] += 1
            tally["last_error"] = f"{exc.code().name}: {exc.details()}"
            await asyncio.sleep(0.01)


async def _batch_caller(channel, pb, account: str, prefix: str, size: int, end: float, win: Windows,
                        tally: dict, check: bool, check_every: int, random_ids: bool) -> None:
    import grpc

    call = channel.unary_unary("/quota.v1.QuotaService/Batch", request_serializer=None,
                               response_deserializer=pb.BatchResponse.FromString)
    encoder = BatchEncoder(account, prefix, size, random_ids=random_ids)
    n = 0
    while time.monotonic() < end:
        ids = encoder.ids(n)
        full_check = n % check_every == 0
        n += 1
        try:
            for kind, name in ((1, "reserve"), (2, "commit")):
                request = encoder.encode(kind, ids)
                t0 = time.monotonic()
                response = await call(request)
                t1 = time.monotonic()
                bad = size if len(response.results) != size else 0
                if full_check:
                    for result in response.results:
                        which = result.WhichOneof("result")
                        if which != name:
                            bad += 1
                        elif check and name == "reserve" and result.reserve.decision != 1:
                            bad += 1
                        elif check and name == "commit" and result.commit.amount_charged != 1:
                            bad += 1
                    tally["checked"] += size
                tally["bad"] += bad
                win.add("batch", t0, t1, size)
        except grpc.aio.AioRpcError as exc:
            tally["rpc_errors"] += 1
            tally["last_error"] = f"{exc.code().name}: {exc.details()}"
            await asyncio.sleep(0.01)


def client_process(spec: dict, ready, go, start_at, queue) -> None:
    """One client process: connect, report ready, wait for the common start, run, report."""

    async def main() -> None:
        import grpc
        from quota.v1 import quota_service_pb2 as pb
        from quota.v1 import quota_service_pb2_grpc as pb_grpc

        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
        async with grpc.aio.insecure_channel(spec["target"], options=options) as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            stub = pb_grpc.QuotaServiceStub(channel)
            ready.release()
            while not go.is_set():
                await asyncio.sleep(0.005)
            start = start_at.value
            measure_start = start + spec["warmup"]
            end = measure_start + spec["runs"] * spec["seconds"]
            win = Windows(measure_start, spec["seconds"], spec["runs"])
            tally = {"rpc_errors": 0, "denied": 0, "bad": 0, "checked": 0, "last_error": "",
                     "pairs": [0] * spec["runs"]}
            while time.monotonic() < start:
                await asyncio.sleep(0.001)
            tasks = []
            for caller, account in enumerate(spec["accounts"]):
                prefix = f"{spec.get('tag', '')}{spec['workload'][0]}{spec['proc']}.{caller}"
                if spec["workload"] == "unary":
                    tasks.append(_unary_caller(stub, pb, account, prefix, end, win, tally, spec["check"],
                                               spec["random_ids"]))
                else:
                    tasks.append(_batch_caller(channel, pb, account, prefix, spec["batch_size"], end, win, tally,
                                               spec["check"], spec.get("check_every", 1), spec["random_ids"]))
            cpu_at: list[float] = []

            async def cpu_marks() -> None:
                await asyncio.sleep(max(0.0, measure_start - time.monotonic()))
                cpu_at.append(time.process_time())
                await asyncio.sleep(max(0.0, end - time.monotonic()))
                cpu_at.append(time.process_time())

            await asyncio.gather(cpu_marks(), *tasks)
        queue.put({
            "ops": win.ops, "calls": win.calls, "lat": win.lat, "tally": tally,
            "cpu_s": cpu_at[1] - cpu_at[0] if len(cpu_at) == 2 else float("nan"),
        })

    _run_loop(main())


QUIET_BUSY_CORES = 0.3  # the machine counts as quiet below this many busy cores...
QUIET_SAMPLE_S = 0.25   # ...over one sample of this long
QUIET_MAX_WAIT_S = 60.0


def wait_quiet() -> float:
    """Wait until the machine is quiet (another target's leftover work, such as a snapshot child
    or a checkpoint, would otherwise run inside this target's window); returns the seconds
    waited (at most QUIET_MAX_WAIT_S; the result records it)."""
    start = time.monotonic()
    cores = os.cpu_count() or 1
    while time.monotonic() - start < QUIET_MAX_WAIT_S:
        busy0, total0, _ = cpu_ticks()
        time.sleep(QUIET_SAMPLE_S)
        busy1, total1, _ = cpu_ticks()
        if total1 == total0 or (busy1 - busy0) / (total1 - total0) * cores < QUIET_BUSY_CORES:
            break
    return time.monotonic() - start


def run_load(target: Target, workload: str, args: argparse.Namespace, accounts: list[list[str]], *,
             tag: str = "") -> dict:
    """Run one workload against one target; return per-window figures and their medians.

    It starts once the machine is quiet (`wait_quiet`). ``tag`` makes the reservation ids of
    this run unique when the same accounts are loaded again.
    """
    quiet_wait_s = wait_quiet()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Semaphore(0)
    go = ctx.Event()
    start_at = ctx.Value("d", 0.0)
    queue = ctx.Queue()
    procs = []
    for proc_index, proc_accounts in enumerate(accounts):
        spec = {
            "target": target.listen, "workload": workload, "proc": proc_index, "accounts": proc_accounts,
            "batch_size": args.batch_size, "warmup": args.warmup, "seconds": args.seconds, "runs": args.runs,
            "check": not target.is_floor, "check_every": getattr(args, "check_every", 1), "tag": tag,
            "random_ids": getattr(args, "ids", "sequential") == "random",
        }
        p = ctx.Process(target=client_process, args=(spec, ready, go, start_at, queue), daemon=True)
        p.start()
        procs.append(p)
    for _ in procs:
        if not ready.acquire(timeout=START_TIMEOUT_S):
            raise RuntimeError("a client process did not connect")
    start_at.value = time.monotonic() + 0.05
    go.set()
    measure_start = start_at.value + args.warmup
    time.sleep(max(0.0, measure_start - time.monotonic()))
    server_cpu0 = target.cpu_seconds()
    ticks0 = cpu_ticks()
    profiler = start_profiler(target, workload, args, tag)
    time.sleep(max(0.0, measure_start + args.runs * args.seconds - time.monotonic()))
    server_cpu1 = target.cpu_seconds()
    ticks1 = cpu_ticks()
    if profiler is not None:
        profiler.wait(60)
    reports = [queue.get(timeout=START_TIMEOUT_S + args.warmup + args.runs * args.seconds) for _ in procs]
    for p in procs:
        p.join(30)
    result = summarize(workload, args, reports, (server_cpu1 - server_cpu0) / (args.runs * args.seconds),
                       target.rss_mb())
    result["quiet_wait_s"] = round(quiet_wait_s, 2)
    result["steal_pct"] = round(steal_percent(ticks0, ticks1), 1)
    return result


def start_profiler(target: Target, workload: str, args: argparse.Namespace, tag: str = "") -> subprocess.Popen | None:
    """py-spy on the server over the measured windows (--profile DIR), if py-spy is installed."""
    if not args.profile or target.is_floor:
        return None
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        print("   --profile: py-spy is not installed (pip install py-spy); not profiling", file=sys.stderr)
        return None
    out_dir = Path(args.profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    fmt = args.profile_format
    suffix = {"flamegraph": "svg", "raw": "txt", "speedscope": "json"}[fmt]
    output = out_dir / f"{target.name}-{workload}{'-' + tag.rstrip('.') if tag else ''}.{suffix}"
    duration = max(1, int(args.runs * args.seconds))
    return subprocess.Popen(
        [py_spy, "record", "--pid", str(target.proc.pid), "--duration", str(duration), "--rate", "200",
         "--threads", *(["--idle"] if os.environ.get("BENCH_PROFILE_IDLE") else []),
         *(["--native"] if os.environ.get("BENCH_PROFILE_NATIVE") else []), "--format", fmt, "--output", str(output)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))]


def summarize(workload: str, args: argparse.Namespace, reports: list[dict], server_cpu: float, rss_mb: float) -> dict:
    runs, seconds = args.runs, args.seconds
    ops = [sum(r["ops"][i] for r in reports) / seconds for i in range(runs)]
    windows: list[dict] = []
    kinds = sorted({k for r in reports for k in r["lat"]})
    for i in range(runs):
        window = {"ops_per_s": ops[i]}
        if workload == "unary":
            window["pairs_per_s"] = sum(r["tally"]["pairs"][i] for r in reports) / seconds
        for kind in kinds:
            lat = [x for r in reports for x in r["lat"].get(kind, [[]] * runs)[i]]
            window[f"{kind}_p50_ms"] = _percentile(lat, 0.50) * 1000
            window[f"{kind}_p99_ms"] = _percentile(lat, 0.99) * 1000
        windows.append(window)
    median = {key: statistics.median(w[key] for w in windows) for key in windows[0]}
    tally = {key: sum(r["tally"][key] for r in reports) for key in ("rpc_errors", "denied", "bad")}
    errors = [r["tally"]["last_error"] for r in reports if r["tally"]["last_error"]]
    client_cpu = sum(r["cpu_s"] for r in reports) / (runs * seconds)
    return {"workload": workload, "median": median, "windows": windows, "tally": tally,
            "last_error": errors[0] if errors else "", "server_cpu": server_cpu, "client_cpu": client_cpu,
            "server_rss_mb": rss_mb}


def combine(target: str, workload: str, reps: list[dict]) -> dict:
    """One target's figures over paired repetitions: the median of each repetition's figures."""
    keys = reps[0]["median"].keys()
    return {
        "target": target, "workload": workload,
        "median": {key: statistics.median(r["median"][key] for r in reps) for key in keys},
        "reps": [r["median"]["ops_per_s"] for r in reps],
        "windows": [w for r in reps for w in r["windows"]],
        "tally": {key: sum(r["tally"][key] for r in reps) for key in reps[0]["tally"]},
        "last_error": next((r["last_error"] for r in reps if r["last_error"]), ""),
        "server_cpu": statistics.mean(r["server_cpu"] for r in reps),
        "steal_pct": statistics.mean(r.get("steal_pct", 0.0) for r in reps),
        "client_cpu": statistics.mean(r["client_cpu"] for r in reps),
        "server_rss_mb": reps[-1]["server_rss_mb"],
    }


# ------------------------------------------------------------------ report


def _fmt_int(x: float) -> str:
    return f"{x:,.0f}"


def _fmt_ms(p50: float, p99: float) -> str:
    return f"{p50:.2f} / {p99:.2f}"


def render(results: list[dict], args: argparse.Namespace, config_lines: list[str]) -> str:
    floor = {r["workload"]: r for r in results if r["target"] == "floor"}
    lines = ["### Configuration", ""] + [f"- {line}" for line in config_lines] + [""]
    lines += ["### Unary Reserve + Commit pairs", "",
              "| target | pairs/s | ops/s | vs floor | Reserve p50 / p99 ms | Commit p50 / p99 ms "
              "| server CPU | client CPU | CPU steal | errors |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        if r["workload"] != "unary" or "skipped" in r:
            continue
        m = r["median"]
        ratio = _ratio(r, floor.get("unary"))
        lines.append(
            f"| {r['target']} | {_fmt_int(m['pairs_per_s'])} | {_fmt_int(m['ops_per_s'])} | {ratio} "
            f"| {_fmt_ms(m.get('reserve_p50_ms', float('nan')), m.get('reserve_p99_ms', float('nan')))} "
            f"| {_fmt_ms(m.get('commit_p50_ms', float('nan')), m.get('commit_p99_ms', float('nan')))} "
            f"| {r['server_cpu']:.0%} | {r['client_cpu']:.0%} | {r.get('steal_pct', 0.0):.0f}% | {_errors(r)} |")
    lines += ["", f"### Batch({args.batch_size}): a Batch of Reserves, then a Batch of Commits of them", "",
              "| target | ops/s | vs floor | Batch calls/s | Batch p50 / p99 ms | server CPU | client CPU | CPU steal "
              "| errors |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        if r["workload"] != "batch" or "skipped" in r:
            continue
        m = r["median"]
        ratio = _ratio(r, floor.get("batch"))
        lines.append(
            f"| {r['target']} | {_fmt_int(m['ops_per_s'])} | {ratio} | {m['ops_per_s'] / args.batch_size:,.1f} "
            f"| {_fmt_ms(m.get('batch_p50_ms', float('nan')), m.get('batch_p99_ms', float('nan')))} "
            f"| {r['server_cpu']:.0%} | {r['client_cpu']:.0%} | {r.get('steal_pct', 0.0):.0f}% | {_errors(r)} |")
    skipped = [r for r in results if "skipped" in r]
    if skipped:
        lines.append("")
        lines += [f"- {r['target']} ({r['workload']}): skipped: {r['skipped']}" for r in skipped]
    lines += ["", "### Against the targets", ""]
    real = {r["workload"]: r for r in results if r["target"] == "sqlite" and "skipped" not in r}
    if "unary" in real and "unary" in floor:
        ratio = ratio_to_floor(real["unary"], floor["unary"])
        verdict = "met" if ratio >= TARGET_UNARY_RATIO else "MISSED"
        lines.append(f"- unary on SQLite at >= {TARGET_UNARY_RATIO:.0%} of the floor: {ratio:.0%} ({verdict})")
    if "batch" in real:
        ops = real["batch"]["median"]["ops_per_s"]
        verdict = "met" if ops >= TARGET_BATCH_OPS else "MISSED"
        lines.append(f"- Batch({args.batch_size}) on SQLite sync at >= {TARGET_BATCH_OPS:,} ops/s: "
                     f"{_fmt_int(ops)} ops/s ({verdict})")
    return "\n".join(lines)


def ratio_to_floor(result: dict, floor: dict | None) -> float | None:
    """The median over paired repetitions of the target's ops/s over the floor's (the ratio of
    the medians when the runs were not paired); None without a floor."""
    if floor is None or not floor["median"]["ops_per_s"]:
        return None
    mine, theirs = result.get("reps"), floor.get("reps")
    if mine and theirs and len(mine) == len(theirs) and all(theirs):
        return statistics.median(a / b for a, b in zip(mine, theirs))
    return result["median"]["ops_per_s"] / floor["median"]["ops_per_s"]


def _ratio(result: dict, floor: dict | None) -> str:
    ratio = ratio_to_floor(result, floor)
    return "-" if ratio is None else f"{ratio:.0%}"


def _errors(r: dict) -> str:
    t = r["tally"]
    total = t["rpc_errors"] + t["denied"] + t["bad"]
    if not total:
        return "0"
    return f"{total} ({r['last_error'] or 'denied or wrong results'})"


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def machine_lines(args: argparse.Namespace, server_cmd: list[str], targets: list[Target],
                  load_before: str, measurement: str | None = None) -> list[str]:
    import grpc
    import google.protobuf

    try:
        import uvloop

        loop = f"uvloop {uvloop.__version__}"
    except ImportError:
        loop = "asyncio"
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import _fastledger

        core = "Cython core, debug build" if getattr(_fastledger, "DEBUG", False) else "Cython core, release build"
    except ImportError:
        core = "core not importable here"
    return [
        f"date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"machine: {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}; "
        "the server and the client processes share these cores",
        f"Python {platform.python_version()}, grpcio {grpc.__version__}, protobuf {google.protobuf.__version__}, "
        f"{loop} (server and clients); {core}",
        f"server: {' '.join(server_cmd)}; " + "; ".join(f"{t.name} = {t.describe()}" for t in targets),
        f"clients: {args.client_procs} processes; unary: {args.callers} callers in total; "
        f"batch: {args.batch_callers} callers in total, Batch size {args.batch_size}; "
        f"reservation ids: {getattr(args, 'ids', 'sequential')}",
        measurement or (f"measurement: {args.warmup:g} s warm-up, then median of {args.runs} consecutive "
                        f"windows of {args.seconds:g} s per target and workload"),
        f"1-minute load average before / after the run: {load_before} / {load_average()} "
        "(anything else running on the machine competes with the server and the clients)",
    ]


# ------------------------------------------------------------------ main


def start_targets(targets: list[Target], workloads: list[str], results: list[dict]) -> list[Target]:
    """Start every target (they run side by side, idle when not loaded); the floor must start."""
    running = []
    for target in targets:
        print(f"== {target.name}: starting", file=sys.stderr, flush=True)
        try:
            target.start()
        except RuntimeError as exc:
            if target.is_floor:
                raise
            print(f"== {target.name}: could not start, skipped:\n{exc}", file=sys.stderr)
            results += [{"target": target.name, "workload": w, "skipped": "the server did not start"}
                        for w in workloads]
            continue
        running.append(target)
    return running


def args_for_rep(args: argparse.Namespace) -> argparse.Namespace:
    """One repetition of a paired run: a single measured window."""
    return argparse.Namespace(**{**vars(args), "runs": 1})


def split_accounts(prefix: str, total: int, procs: int) -> list[list[str]]:
    """`total` accounts dealt round-robin to `procs` client processes (no process gets none)."""
    procs = max(1, min(procs, total))
    out: list[list[str]] = [[] for _ in range(procs)]
    for i in range(total):
        out[i % procs].append(f"{prefix}-{i}")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="CI: 1 window of ~1 s, fewer callers")
    parser.add_argument("--runs", type=int, default=5, help="paired repetitions (each target once per repetition)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per target and repetition")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each measurement")
    parser.add_argument("--client-procs", type=int, default=2, help="client processes")
    parser.add_argument("--callers", type=int, default=64, help="unary callers in total")
    parser.add_argument("--batch-callers", type=int, default=4, help="batch callers in total")
    parser.add_argument("--batch-size", type=int, default=1000, help="ops per Batch call (server cap: 1000)")
    parser.add_argument("--check-every", type=int, default=4,
                        help="check every result of one Batch in N per caller (all: 1); result counts always")
    parser.add_argument("--workloads", default="unary,batch", help="comma-separated subset of unary,batch")
    parser.add_argument("--ids", choices=["sequential", "random"], default="sequential",
                        help="reservation ids: a counter (default), or 32 random hex digits (UUID-like: "
                             "what compression of stored records and usage sees in production)")
    parser.add_argument("--memory", action="store_true", help="also the server on memory:// (if it has it)")
    parser.add_argument("--redis", action="store_true", help="also the server on a throwaway redis-server")
    parser.add_argument("--redis-appendfsync", default="always", choices=["always", "everysec", "no"])
    parser.add_argument("--storage-url", action="append", default=[], metavar="URL",
                        help="also the server on this storage url (repeatable)")
    parser.add_argument("--no-sqlite", action="store_true", help="skip the default SQLite target")
    parser.add_argument("--server-cmd", help="command that starts quota-server (default: the console script)")
    parser.add_argument("--no-floor", action="store_true", help="skip the floor (no ratios)")
    parser.add_argument("--profile", metavar="DIR", help="py-spy the server during the measured windows")
    parser.add_argument("--profile-format", default="flamegraph", choices=["flamegraph", "raw", "speedscope"])
    parser.add_argument("--json-out", metavar="FILE", help="also write every figure as JSON")
    parser.add_argument("--serve-floor", metavar="HOST:PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.small:
        args.runs, args.seconds, args.warmup = 1, 1.0, 0.3
        args.callers, args.batch_callers = 8, 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_floor:
        return serve_floor(args.serve_floor)
    check_encoding()
    load_before = load_average()
    server_cmd = args.server_cmd.split() if args.server_cmd else server_command()
    workloads = [w for w in args.workloads.split(",") if w]
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        workdir = Path(tmp)
        targets = [] if args.no_floor else [Target("floor", None, workdir, server_cmd)]
        if not args.no_sqlite:
            targets.append(Target("sqlite", f"sqlite:///{workdir / 'sqlite' / 'quota.db'}", workdir, server_cmd))
        if args.memory:
            if supports_memory_storage():
                targets.append(Target("memory", "memory://", workdir, server_cmd))
            else:
                results += [{"target": "memory", "workload": w, "skipped": "this server has no memory:// storage"}
                            for w in workloads]
        redis = None
        if args.redis:
            sys.path.append(str(ROOT))
            from tests.storage.redis_proc import RedisProcess, redis_server_path

            if redis_server_path() is None:
                results += [{"target": "redis", "workload": w, "skipped": "redis-server is not on PATH"}
                            for w in workloads]
            else:
                redis = RedisProcess(workdir / "redis", appendfsync=args.redis_appendfsync)
                redis.start()
                targets.append(Target("redis", redis.url, workdir, server_cmd))
        for i, url in enumerate(args.storage_url):
            targets.append(Target(f"url{i + 1}", url, workdir, server_cmd))
        try:
            running = start_targets(targets, workloads, results)
            unary_accounts = split_accounts("bench-u", args.callers, args.client_procs)
            batch_accounts = split_accounts("bench-b", args.batch_callers, args.client_procs)
            for target in running:
                target.setup_accounts([a for group in unary_accounts + batch_accounts for a in group])
            for workload in workloads:
                accounts = unary_accounts if workload == "unary" else batch_accounts
                reps: dict[str, list[dict]] = {t.name: [] for t in running}
                for rep in range(args.runs):
                    order = running if rep % 2 == 0 else running[::-1]  # no target always goes first
                    for target in order:
                        result = run_load(target, workload, args_for_rep(args), accounts, tag=f"r{rep}.")
                        reps[target.name].append(result)
                        print(f"== {workload} #{rep + 1} {target.name}: {result['median']['ops_per_s']:,.0f} ops/s, "
                              f"server CPU {result['server_cpu']:.0%}, CPU steal {result['steal_pct']:.0f} %, "
                              f"errors {result['tally']}, waited {result['quiet_wait_s']:.1f} s for a quiet machine", file=sys.stderr, flush=True)
                        if target.proc.poll() is not None:
                            raise RuntimeError(f"{target.name} died during the run:\n{target.log()}")
                results += [combine(t.name, workload, reps[t.name]) for t in running]
        finally:
            for target in targets:
                target.stop()
            if redis is not None:
                redis.stop()
        config = machine_lines(args, server_cmd, targets, load_before, measurement=(
            f"measurement: {args.runs} paired repetition{'s' if args.runs != 1 else ''}; in each, every target in turn (the order "
            f"alternating) gets {args.warmup:g} s of warm-up load then {args.seconds:g} s measured; figures are "
            "medians over the repetitions, `vs floor` the median of the per-repetition ratios"))
    print(render(results, args, config))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"config": config, "results": results}, indent=2))
    failed = [r for r in results if "skipped" not in r and any(r["tally"][k] for k in ("rpc_errors", "denied", "bad"))]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

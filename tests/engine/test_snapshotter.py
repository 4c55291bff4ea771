"""Snapshots serialized by a forked child: the same bytes as Ledger.snapshot(), failures
reported, and the engine's snapshots (taken that way by default) recover the same state."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

import _fastledger
from _fastledger import codes as C
from quota_server import snapshotter
from quota_server.engine import Engine, EngineOptions
from quota_server.storage.sqlite import SqliteStorage

pytestmark = pytest.mark.skipif(not snapshotter.CAN_FORK, reason="the platform cannot fork")

NOW = 1_700_000_000 * 10**9


def _ledger(accounts: int) -> _fastledger.Ledger:
    ledger = _fastledger.Ledger()
    ops = []
    for i in range(accounts):
        ops.append((C.OP_UPSERT, f"acct-{i}", "default", 0, None, None, None))
        ops.append((C.OP_GRANT, f"acct-{i}", f"g{i}", 1, 1000 + i, C.LOT_PURCHASED, 0, 0))
        ops.append((C.OP_RESERVE, f"acct-{i}", f"r{i}", 7, 10, False, 0, 60 * 10**9, C.EXPIRE_RELEASE,
                    True, (), b"m"))
    assert all(r[0] == C.OK for r in ledger.apply(ops, NOW))
    ledger.take_journal()
    return ledger


async def test_the_child_writes_the_same_bytes_as_the_parent():
    ledger = _ledger(2_000)
    expected = ledger.snapshot()
    job = snapshotter.fork_snapshot(ledger)
    # the parent may go on changing the ledger: the child has its own copy of that instant
    ledger.apply([(C.OP_UPSERT, "later", "default", 0, None, None, None)], NOW)
    assert await job.result() == expected
    assert _fastledger.Ledger.from_snapshot(expected).account_view("later", NOW) is None


async def test_a_child_that_fails_is_reported():
    class Broken:
        def snapshot(self):
            raise MemoryError("no room")

    with pytest.raises(snapshotter.SnapshotFailed, match="wait status"):
        await snapshotter.fork_snapshot(Broken()).result()


@pytest.mark.parametrize("fork", [True, False])
async def test_engine_snapshots_are_taken_in_a_child_and_recover(tmp_path, monkeypatch, fork):
    """By default in a child; with snapshot_fork off, on the event loop. The same state
    comes back either way."""
    forks = []
    real_fork = snapshotter.fork_snapshot

    def counting_fork(ledger):
        forks.append(1)
        return real_fork(ledger)

    monkeypatch.setattr("quota_server.engine.fork_snapshot", counting_fork)

    async def engine() -> Engine:
        storage = SqliteStorage(str(tmp_path / "q.db"))
        await storage.open()
        eng = Engine(storage=storage, owner="t", options=EngineOptions(
            sweep_interval_ms=3_600_000, snapshot_every_records=4, flush_window_us=0, snapshot_fork=fork))
        await eng.start()
        return eng

    eng = await engine()
    await eng.submit((C.OP_UPSERT, "a", "default", 0, None, None, None))
    await eng.submit((C.OP_GRANT, "a", "g", 1, 100, C.LOT_PURCHASED, 0, 0))
    for i in range(10):
        await eng.submit((C.OP_CHARGE, "a", f"c{i}", 7, 1, True, ()))
    await asyncio.sleep(0.05)
    view = eng.ledger.account_view("a", eng.now_ns())
    await eng.stop()
    recovered = await eng.storage.load()
    await eng.storage.close()
    assert recovered.snapshot_seq > 0, "a snapshot was written"
    assert bool(forks) == fork
    assert recovered.snapshot == _fastledger.Ledger.from_snapshot(recovered.snapshot).snapshot()
    again = await engine()
    assert again.ledger.account_view("a", again.now_ns()) == view
    assert view["available"] == 90
    await again.stop()
    await again.storage.close()


@pytest.mark.parametrize("env,grpc_first,off", [
    (None, False, True),     # unset: the package switches gRPC's fork handlers off
    ("0", False, True),
    ("false", True, True),   # off by the user: gRPC imported first is fine
    ("1", False, False),     # on by the user: no forked snapshots
    (None, True, False),     # unset but gRPC imported first: its default (on) already applies
])
def test_grpc_fork_handlers_are_switched_off_when_the_package_comes_first(env, grpc_first, off):
    """quota_server sets GRPC_ENABLE_FORK_SUPPORT=0 when it is unset and gRPC is not imported
    yet, and says whether gRPC's fork handlers are off (what fork_allowed goes by)."""
    code = ("import os, sys\n" + ("import grpc\n" if grpc_first else "") +
            "import quota_server\n"
            "from quota_server import snapshotter\n"
            "print(quota_server.GRPC_FORK_HANDLERS_OFF, snapshotter.fork_allowed(),"
            " os.environ.get('GRPC_ENABLE_FORK_SUPPORT'))")
    environ = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    if env is not None:
        environ["GRPC_ENABLE_FORK_SUPPORT"] = env
    out = subprocess.run([sys.executable, "-P", "-c", code], env=environ, cwd="/",
                         capture_output=True, text=True, check=True).stdout.split()
    expected_env = env if env is not None else ("0" if not grpc_first else "None")
    assert out == [str(off), str(off and snapshotter.CAN_FORK), expected_env]


async def test_no_fork_when_grpc_fork_support_is_on(tmp_path, monkeypatch):
    """gRPC's fork handlers (GRPC_ENABLE_FORK_SUPPORT) do not go with grpc.aio: then the
    snapshot is taken on the event loop."""
    monkeypatch.setattr("quota_server.GRPC_FORK_HANDLERS_OFF", False)
    assert not snapshotter.fork_allowed()
    forks = []
    monkeypatch.setattr("quota_server.engine.fork_snapshot", lambda ledger: forks.append(1))
    storage = SqliteStorage(str(tmp_path / "q.db"))
    await storage.open()
    eng = Engine(storage=storage, owner="t", options=EngineOptions(
        sweep_interval_ms=3_600_000, snapshot_every_records=2, flush_window_us=0))
    await eng.start()
    for i in range(4):
        await eng.submit((C.OP_UPSERT, f"a{i}", "default", 0, None, None, None))
    await asyncio.sleep(0.05)
    await eng.stop()
    assert not forks and (await storage.load()).snapshot_seq > 0
    await storage.close()
    monkeypatch.setattr("quota_server.GRPC_FORK_HANDLERS_OFF", True)
    assert snapshotter.fork_allowed()

"""Snapshots of a real `quota-server`: written by a forked child that must not crash."""
from __future__ import annotations

import asyncio
import sqlite3

from quota_client import NO_RETRY, AsyncQuotaClient


async def test_forked_snapshots_are_written_and_their_children_do_not_crash(spawn_server, monkeypatch):
    """Goal: with the environment a user gives it (no GRPC_ENABLE_FORK_SUPPORT set), the server
    writes its periodic snapshots from forked children and none of them dies. gRPC's fork
    handlers, on by default in recent grpcio, used to kill the child with SIGSEGV now and then
    (logged as "snapshot at seq N failed ... wait status 11"), leaving the journal untrimmed."""
    monkeypatch.delenv("GRPC_ENABLE_FORK_SUPPORT", raising=False)
    server = await spawn_server(storage={"snapshot_every_records": 4}).start()
    async with AsyncQuotaClient(server.target, retry=NO_RETRY, timeout=10) as client:
        await client.upsert_account("acct", plan_id="prepaid")
        await client.grant("acct", 100_000, grant_id="g")
        for i in range(80):  # one flush each: a snapshot every 4 journal records
            assert (await client.charge("acct", charge_id=f"c{i}", amount=1)).ok
        await asyncio.sleep(1.0)  # the last snapshots finish writing
        assert (await client.get_balance("acct")).balance == 100_000 - 80
    output = server.output()
    assert "snapshot at seq" not in output, output
    db = server.workdir / "quota.db"
    with sqlite3.connect(db) as conn:
        (seq,) = conn.execute("SELECT seq FROM snapshot").fetchone()
    conn.close()
    assert seq >= 60, seq

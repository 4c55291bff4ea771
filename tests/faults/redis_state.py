"""What Redis itself holds, read from outside the server: the proof behind the client's view.

`persisted()` recovers the ledger exactly as a restarting server would (`RedisStorage.load()`:
snapshot + journal, refusing a gap or a missing tail), checks that the journal stream's ids are
consecutive, replays every record into a fresh core (a truncated or corrupt record raises), and
reads the usage streams. `check_against_books()` then shows that every batch landed whole: the
journal and the usage streams (written by the same script) agree id by id, and the recovered
balances equal what the live server reports.
"""
from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import redis.asyncio as aioredis

import _fastledger
from _fastledger import codes as C
from quota_server.storage.redis import RedisStorage, usage_entry_payloads

from .workload import ACCOUNTS, CHARGE, Book



@dataclasses.dataclass
class Persisted:
    ledger: Any
    snapshot_seq: int
    last_seq: int
    records: int
    usage: dict[str, list[str]]  # account -> ids of its usage records in its stream, in stream order


async def persisted(url: str) -> Persisted:
    """Recover from Redis like a restart would, with every check a restart makes and more."""
    storage = RedisStorage(url, op_timeout_ms=10_000)
    await storage.open()
    try:
        recovered = await storage.load()
        client = storage.client
        ids = [entry_id for entry_id, _ in await client.xrange(storage.k_journal, "-", "+")]
        expected = [f"{seq}-0".encode() for seq in range(recovered.snapshot_seq + 1, recovered.last_seq + 1)]
        assert ids == expected, f"journal ids are not snapshot_seq+1..last_seq: {ids[:5]}...{ids[-5:]}"
        meta_last = int(await client.hget(storage.k_meta, "last_seq") or 0)
        assert meta_last == recovered.last_seq
        if recovered.snapshot is not None:
            ledger = _fastledger.Ledger.from_snapshot(recovered.snapshot)
        else:
            ledger = _fastledger.Ledger()
        for _, record in recovered.records:
            ledger.replay(record)  # ValueError on a truncated or corrupt record
        ledger.check_invariants()
        usage: dict[str, list[str]] = {}
        for account in ACCOUNTS:
            entries = await client.xrange(storage.usage_key(account), "-", "+")
            usage[account] = []
            for _, fields in entries:  # one record (payload) or several (n, payloads) per entry
                for raw in usage_entry_payloads(fields):
                    payload = json.loads(raw)
                    usage[account].append(payload["charge_id"] or payload["reservation_id"])
        return Persisted(ledger, recovered.snapshot_seq, recovered.last_seq, len(recovered.records), usage)
    finally:
        await storage.close()


def charged_in_ledger(ledger: Any, account: str, book: Book) -> set[str]:
    """The book's ids that the recovered core has as charged (charge done or hold committed)."""
    done = set()
    for attempt in book.of(account):
        if attempt.kind == CHARGE:
            if ledger.has_charge(account, attempt.op_id):
                done.add(attempt.op_id)
        else:
            view = ledger.reservation_view(account, attempt.op_id)
            if view is not None and view["state"] == C.RES_COMMITTED:
                done.add(attempt.op_id)
    return done


def check_against_books(state: Persisted, book: Book, balances: dict[str, tuple[int, int]]) -> None:
    """Journal, usage streams and the live server agree: no batch landed in part or twice."""
    for account in ACCOUNTS:
        usage = state.usage[account]
        assert len(usage) == len(set(usage)), f"{account}: an id has two usage entries in Redis"
        in_journal = charged_in_ledger(state.ledger, account, book)
        assert set(usage) == in_journal, (
            f"{account}: journal and usage stream disagree (a partial batch?): "
            f"only journal {sorted(in_journal - set(usage))[:5]}, only usage {sorted(set(usage) - in_journal)[:5]}")
        view = state.ledger.account_view(account, time.time_ns())
        assert (view["balance"], view["held"]) == balances[account], (account, view, balances[account])


async def digest(url: str) -> dict[bytes, Any]:
    """Every data key's content except the lease's TTL'd liveness key: equal digests, no write."""
    client = aioredis.Redis.from_url(url)
    try:
        out: dict[bytes, Any] = {}
        for key in sorted(await client.keys("quota:*")):
            if key.endswith(b":lease"):
                continue
            kind = await client.type(key)
            if kind == b"string":
                out[key] = await client.get(key)
            elif kind == b"hash":
                out[key] = sorted((await client.hgetall(key)).items())
            elif kind == b"stream":
                info = await client.xinfo_stream(key)
                out[key] = (info["last-generated-id"], await client.xrange(key, "-", "+"))
            else:
                out[key] = kind
        return out
    finally:
        await client.aclose()

"""Shared pieces of the wire tests: a seeded ledger behind a stub engine, the two request paths
side by side, Hypothesis strategies for requests (valid, invalid and odd encodings), and helpers
that write protobuf wire format by hand."""
from __future__ import annotations

import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError
from hypothesis import strategies as st
from quota.v1 import quota_service_pb2 as pb

import _fastledger
from _fastledger import codes as C
from quota_server.dataplane import DataPlane
from quota_server.errors import QuotaError
from quota_server.storage.base import UsageRow, unpack_payloads
from tests.support.config import HOLD_TTL_MS, build_config, config_data

NOW_NS = 1_749_556_800_000_000_000  # 2025-06-10T12:00:00Z
HOLD_TTL_MAX_MS = 604_800_000
MAX_BATCH_OPS = 1000

# kind = BatchOp field number
KINDS = {1: "reserve", 2: "commit", 3: "release", 4: "extend", 5: "charge"}
REQUEST_TYPES = {1: pb.ReserveRequest, 2: pb.CommitRequest, 3: pb.ReleaseRequest, 4: pb.ExtendRequest,
                 5: pb.ChargeRequest}
RESPONSE_OF = {1: "reserve_response", 2: "commit_response", 3: "release_response", 4: "extend_response",
               5: "charge_response"}

ACCOUNTS = {
    "acct-prepaid": "prepaid",
    "acct-payg": "payg",
    "acct-free": "free",
    "acct-team": "team",
    "acct-unlimited": "unlimited",
    "acct-suspended": "prepaid",
    "acct-gone-plan": "retired",  # a plan no longer in the config
}
# Holds seeded on every account: (reservation_id, ReserveRequest fields)
HOLDS = {
    "res-plain": {"amount": 40},
    "res-llm": {"action": "llm.chat", "quantities": {"input_tokens": 2000, "output_tokens": 500},
                "labels": {"model": "m-1", "team": "core"}},
    "res-img": {"action": "image.generate", "labels": {"z": "last", "a": "first"}},
}


class StubEngine:
    """What DataPlane uses of the engine, over a real ledger; submissions are recorded and applied."""

    def __init__(self, ledger: Any) -> None:
        self.ledger = ledger
        self.submitted: list[tuple] = []  # (op, derive or None); a group's ops as (op, "group")
        self.usage: list = []  # what the derives produced, as the engine collects it
        self.events: list = []

    def now_ns(self) -> int:
        return NOW_NS

    def poll(self) -> None:
        """(Engine.poll: no storage here, nothing to report.)"""

    async def submit(self, op: tuple, derive=None) -> tuple:
        return (await self.submit_many([(op, derive)]))[0]

    async def submit_many(self, items: list) -> list[tuple]:
        self.submitted.extend(items)
        results = self.ledger.apply([op for op, _ in items], NOW_NS)
        for (op, derive), result in zip(items, results):
            if derive is not None and result[0] == C.OK:
                rows, events = derive(op, result, True, NOW_NS // 1_000_000)
                self.usage.extend(rows)
                self.events.extend(events)
        return results

    async def submit_group(self, ops: list, deriver) -> list[tuple]:
        self.submitted.extend((op, "group") for op in ops)
        results = self.ledger.apply(ops, NOW_NS)
        packed: list = []
        deriver.derive_into(results, 0, set(), NOW_NS // 1_000_000, self.usage, self.events, packed)
        for account_id, at_ms, n, blob in packed:  # as rows, to compare with the Python path's
            self.usage.extend(UsageRow(account_id, at_ms, p) for p in unpack_payloads(blob, n))
        return results

    def read(self, op: tuple | None = None) -> tuple | None:
        sweep = (C.OP_EXPIRE, 1_000)  # as Engine.read: due holds expire first
        if op is None:
            self.ledger.apply([sweep], NOW_NS)
            return None
        return self.ledger.apply([sweep, op], NOW_NS)[1]


def make_config(tmp: Path):
    data = config_data(tmp / "unused.db")
    data["defaults"]["hold_ttl_max_ms"] = HOLD_TTL_MAX_MS
    return build_config(data)


def seed_snapshot(config) -> bytes:
    """A ledger with every kind of account and a few holds on each, as a snapshot."""
    ledger = _fastledger.Ledger()
    ops = []
    for account_id, plan in ACCOUNTS.items():
        ops.append((C.OP_UPSERT, account_id, plan, C.ACCOUNT_ACTIVE, 1000 if plan == "payg" else 0,
                    2 if plan == "team" else 0, plan == "unlimited"))
        ops.append((C.OP_GRANT, account_id, "seed", 1, 1_000_000, C.LOT_PURCHASED, 0, 0))
    results = ledger.apply(ops, NOW_NS)
    assert all(r[0] == C.OK for r in results), results
    dp = DataPlane(engine=StubEngine(ledger), config=config)
    holds = []
    for account_id in ACCOUNTS:
        for reservation_id, fields in HOLDS.items():
            prepared = dp.prepare_reserve(pb.ReserveRequest(account_id=account_id, reservation_id=reservation_id,
                                                            **fields))
            holds.append(prepared.op)
    ledger.apply(holds, NOW_NS)  # then suspend one account: its holds stay open
    ledger.apply([(C.OP_UPSERT, "acct-suspended", None, C.ACCOUNT_SUSPENDED, None, None, None)], NOW_NS)
    ledger.take_journal()
    return ledger.snapshot()


def dataplane_on(snapshot: bytes, config) -> tuple[DataPlane, StubEngine]:
    engine = StubEngine(_fastledger.Ledger.from_snapshot(snapshot))
    return DataPlane(engine=engine, config=config), engine


# ------------------------------------------------------------------ comparing the two paths


def strict_equal(a: Any, b: Any) -> bool:
    """Equal values of equal types all the way down (True is not 1 here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(strict_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(strict_equal(a[k], b[k]) for k in a)
    return a == b


def python_outcome(dp: DataPlane, kind: int, data: bytes) -> tuple:
    """What the Python path makes of one serialized request: ("op", op, derive) or an error."""
    try:
        request = REQUEST_TYPES[kind].FromString(data)
    except DecodeError as exc:
        return ("decode-error", str(exc))
    try:
        prepared = getattr(dp, "prepare_" + KINDS[kind])(request)
    except QuotaError as exc:
        return ("error", exc.code, exc.reason, exc.message, exc.metadata)
    return ("op", prepared.op, prepared.derive)


def error_tuple(exc: QuotaError) -> tuple:
    return (exc.code, exc.reason, exc.message, exc.metadata)


# ------------------------------------------------------------------ writing wire format by hand


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field_bytes(number: int, wire_type: int, payload: bytes | int) -> bytes:
    key = varint(number << 3 | wire_type)
    if wire_type == 0:
        return key + varint(int(payload))
    if wire_type == 2:
        return key + varint(len(payload)) + payload
    return key + payload


@st.composite
def unknown_fields(draw, max_field: int = 60) -> bytes:
    """Fields the message may not know, or knows with another wire type."""
    out = b""
    for _ in range(draw(st.integers(1, 3))):
        number = draw(st.one_of(st.integers(1, max_field), st.integers(536_870_900, 536_870_911)))
        wire_type = draw(st.sampled_from([0, 1, 2, 5]))
        if wire_type == 0:
            payload: bytes | int = draw(st.integers(0, 2**64 - 1))
        elif wire_type == 1:
            payload = draw(st.binary(min_size=8, max_size=8))
        elif wire_type == 5:
            payload = draw(st.binary(min_size=4, max_size=4))
        else:
            payload = draw(st.binary(max_size=12))
        out += field_bytes(number, wire_type, payload)
    return out


# ------------------------------------------------------------------ request strategies

ID_ALPHABET = string.ascii_letters + string.digits + "._:@/-"
EDGE_IDS = ["", "a", "a" * 128, "a" * 129, "acct 1", "acct\n", "acct-prepaid\n", "ä", "a\x00b", "é" * 10,
            "x" * 140, ":@/-._", "acct-prepaid/", "\U0001f600"]
valid_ids = st.text(ID_ALPHABET, min_size=1, max_size=128)
account_ids = st.one_of(st.sampled_from(list(ACCOUNTS) + ["acct-missing"]), valid_ids, st.sampled_from(EDGE_IDS),
                        st.text(max_size=20))
reservation_ids = st.one_of(st.sampled_from(list(HOLDS) + ["res-new", "res-other"]), valid_ids,
                            st.sampled_from(EDGE_IDS))
INT64 = st.integers(-(2**63), 2**63 - 1)
amounts = st.one_of(st.sampled_from([0, 1, 2, 7, 10**15, 10**15 + 1, -1, -(10**15), 2**63 - 1, -(2**63)]),
                    st.integers(0, 5000), INT64)
ttls = st.one_of(st.sampled_from([0, 1, HOLD_TTL_MS, HOLD_TTL_MAX_MS, HOLD_TTL_MAX_MS + 1, -1, 2**63 - 1]), INT64)
actions = st.one_of(st.sampled_from(["", "llm.chat", "image.generate", "doc.summarize", "video.render",
                                     "unknown.act", "bad action", "ä", "llm.*", "a" * 129]), valid_ids)
quantity_names = st.one_of(st.sampled_from(["input_tokens", "output_tokens", "requests", "", "x" * 128,
                                            "x" * 129, "é" * 128, "\U0001f600"]), st.text(max_size=12))
quantity_values = st.one_of(st.sampled_from([0, 1, 999, 10**15, 10**15 + 1, -1, 2**63 - 1]), st.integers(0, 10**6),
                            INT64)
quantities = st.one_of(st.just({}), st.dictionaries(quantity_names, quantity_values, max_size=4),
                       st.dictionaries(st.text(ID_ALPHABET, min_size=1, max_size=6), st.integers(0, 9),
                                       min_size=60, max_size=70))
label_text = st.one_of(st.sampled_from(["", "m-1", "x" * 128, "x" * 129, "\"quoted\\", "tab\there", "\x7f\x00",
                                        "é", "\U0001f600", "\u2028", "y" * 1024, "y" * 1025]), st.text(max_size=10))
labels = st.one_of(st.just({}), st.dictionaries(label_text, label_text, max_size=4),
                   st.dictionaries(st.text(ID_ALPHABET, min_size=1, max_size=6), st.just("v"), min_size=60,
                                   max_size=70))
on_expires = st.one_of(st.sampled_from([0, 1, 2, 3, -1]), st.integers(-(2**31), 2**31 - 1))


def reserve_requests() -> st.SearchStrategy[pb.ReserveRequest]:
    return st.builds(
        pb.ReserveRequest, account_id=account_ids, reservation_id=reservation_ids, amount=amounts, action=actions,
        quantities=quantities, ttl_ms=ttls, allow_partial=st.booleans(), min_amount=amounts, on_expire=on_expires,
        labels=labels,
    )


@st.composite
def commit_requests(draw) -> pb.CommitRequest:
    request = pb.CommitRequest(account_id=draw(account_ids), reservation_id=draw(reservation_ids),
                               quantities=draw(quantities), labels=draw(labels))
    if draw(st.booleans()):
        request.amount = draw(amounts)
    return request


def release_requests() -> st.SearchStrategy[pb.ReleaseRequest]:
    return st.builds(pb.ReleaseRequest, account_id=account_ids, reservation_id=reservation_ids)


def extend_requests() -> st.SearchStrategy[pb.ExtendRequest]:
    return st.builds(pb.ExtendRequest, account_id=account_ids, reservation_id=reservation_ids, hold_total=amounts,
                     ttl_ms=ttls)


def charge_requests() -> st.SearchStrategy[pb.ChargeRequest]:
    return st.builds(pb.ChargeRequest, account_id=account_ids, charge_id=reservation_ids, amount=amounts,
                     action=actions, quantities=quantities, labels=labels)


REQUEST_STRATEGIES: dict[int, Callable[[], st.SearchStrategy]] = {
    1: reserve_requests, 2: commit_requests, 3: release_requests, 4: extend_requests, 5: charge_requests,
}


@st.composite
def encoded_requests(draw, kind: int) -> bytes:
    """A serialized request of `kind`, often re-encoded oddly: extra unknown fields, a second
    message merged in (fields repeated), overlong varints, truncation or corruption."""
    data = draw(REQUEST_STRATEGIES[kind]()).SerializeToString()
    how = draw(st.sampled_from(["plain", "plain", "plain", "unknown", "merged", "overlong", "truncated", "flipped",
                                "random"]))
    if how == "unknown":
        extra = draw(unknown_fields())
        data = extra + data if draw(st.booleans()) else data + extra
    elif how == "merged":
        data += draw(REQUEST_STRATEGIES[kind]()).SerializeToString()
    elif how == "overlong":
        data += field_bytes(1, 2, b"acct-prepaid")[:1] + b"\x8c\x80\x00" + b"acct-prepaid"
    elif how == "truncated" and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif how == "flipped" and data:
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:]
    elif how == "random":
        data = draw(st.binary(max_size=40))
    return data


@st.composite
def batch_ops(draw) -> bytes:
    """One serialized BatchOp: mostly one mutation, sometimes a read, none, or two ops merged."""
    how = draw(st.sampled_from(["one"] * 6 + ["read", "none", "two", "unknown"]))
    if how == "read":
        read = draw(st.sampled_from([
            pb.BatchOp(check=pb.CheckRequest(account_id="acct-prepaid", amount=5)),
            pb.BatchOp(get_balance=pb.GetBalanceRequest(account_id="acct-free")),
            pb.BatchOp(quote=pb.QuoteRequest(action="llm.chat", quantities={"input_tokens": 10})),
            pb.BatchOp(check=pb.CheckRequest(account_id="bad id")),
        ]))
        return read.SerializeToString()
    if how == "none":
        return b"" if draw(st.booleans()) else draw(unknown_fields(max_field=12))
    kind = draw(st.integers(1, 5))
    sub = draw(encoded_requests(kind)) if draw(st.integers(0, 3)) == 0 else \
        draw(REQUEST_STRATEGIES[kind]()).SerializeToString()
    data = field_bytes(kind, 2, sub)
    if how == "two":
        other = draw(st.integers(1, 5))
        data += field_bytes(other, 2, draw(REQUEST_STRATEGIES[other]()).SerializeToString())
    elif how == "unknown":
        data += draw(unknown_fields(max_field=20))
    return data


@st.composite
def batch_requests(draw) -> bytes:
    ops = draw(st.lists(batch_ops(), max_size=8))
    data = b"".join(field_bytes(1, 2, op) for op in ops)
    if draw(st.integers(0, 9)) == 0:
        data += draw(unknown_fields(max_field=3))
    return data

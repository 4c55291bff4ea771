"""QuotaService: decode and validate requests, submit ops to the engine, encode results.

Each mutating RPC is split into `prepare_*` (validate, price, build the core op and its
derived-data callback; may raise QuotaError) and `*_response` (result tuple -> proto), so that
the unary RPCs and `Batch` share every line of it.

That Python path is the reference. The wire fast path (`quota_server._wire`, registered by
`add_quota_service`) decodes the mutating requests and Batch straight from their bytes into the
same op tuples and encodes the responses from the result tuples; whatever it does not accept as
certainly valid (every error, every read, unusual encodings) it hands to the Python path, item by
item. Both paths share the idempotency fingerprint (`_wire.fingerprint_*`), the account index,
the hold's meta and the usage rows, byte for byte.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from _fastledger import codes as C
from quota.v1 import quota_service_pb2 as pb
from quota.v1 import quota_service_pb2_grpc as pb_grpc

from . import _wire
from .engine import Engine
from .errors import QuotaError, from_core_status
from .plans import Plan
from .pricing import PriceCatalog, PricingError
from .renewal import included_used
from .rpc import abort_with
from .storage.base import UsageRow
from .validate import (
    check_action,
    check_amount,
    check_id,
    check_labels,
    check_quantities,
    check_ttl_ms,
)

NS_PER_MS = 1_000_000
EXPIRE_ACTIONS = {0: C.EXPIRE_RELEASE, 1: C.EXPIRE_RELEASE, 2: C.EXPIRE_COMMIT}


def _ms(ns: int) -> int:
    return ns // NS_PER_MS if ns > 0 else 0


class Prepared:
    """A validated mutation: the core op, its usage/event callback, and the response builder.

    `op` None means the answer is already known (a denial judged without the core); `respond`
    then gets None.
    """

    __slots__ = ("op", "derive", "respond")

    def __init__(self, op: tuple | None, derive, respond: Callable[[tuple], Any]) -> None:
        self.op = op
        self.derive = derive
        self.respond = respond


class AccountIndex:
    """account_id -> (plan_id, status), read from the ledger once and then kept.

    Every data-plane call needs its account's plan (feature gate, limits) and Extend its status;
    an `account_view` builds a whole dict for that. Only UpsertAccount changes either, and it
    brackets its submission with `changing(account_id)`: meanwhile that account is read from the
    ledger on every lookup and not cached (exactly what an uncached lookup would see, whether or
    not the upsert has been applied yet), and its entry is dropped again once the upsert is done.
    A new ledger (engine restart) empties the index. Unknown accounts are never cached.
    """

    __slots__ = ("entries", "_engine", "_ledger", "_changing")

    def __init__(self, engine: Engine) -> None:
        self.entries: dict[str, tuple[str, int]] = {}
        self._engine = engine
        self._ledger: Any = None
        self._changing: dict[str, int] = {}

    def sync(self) -> None:
        """Forget everything if the engine's ledger is not the one the entries came from."""
        ledger = self._engine.ledger
        if ledger is not self._ledger:
            self.entries.clear()
            self._ledger = ledger

    def lookup(self, account_id: str) -> tuple[str, int] | None:
        """(plan_id, status) of the account, or None if it does not exist."""
        self.sync()
        entry = self.entries.get(account_id)
        if entry is not None:
            return entry
        view = self._engine.ledger.account_view(account_id, self._engine.now_ns())
        if view is None:
            return None
        entry = (view["plan_id"], view["status"])
        if account_id not in self._changing:
            self.entries[account_id] = entry
        return entry

    def plan_of(self, account_id: str, plans: Any) -> Any:
        """The account's plan from `plans` (a PlanCatalog), or None for an unknown account or
        a plan the catalog does not define."""
        entry = self.lookup(account_id)
        return plans.get(entry[0]) if entry is not None else None

    @contextlib.contextmanager
    def changing(self, account_id: str) -> Iterator[None]:
        """Around the submission of an op that may change the account's plan or status."""
        self._changing[account_id] = self._changing.get(account_id, 0) + 1
        self.entries.pop(account_id, None)
        try:
            yield
        finally:
            left = self._changing[account_id] - 1
            if left:
                self._changing[account_id] = left
            else:
                del self._changing[account_id]
            self.entries.pop(account_id, None)


class DataPlane:
    """The request logic of QuotaService, independent of the transport."""

    def __init__(self, *, engine: Engine, config) -> None:
        self.engine = engine
        self.config = config
        self.plans = config.plans
        self.prices: PriceCatalog = config.prices
        self.hold_ttl_ms = config.defaults.hold_ttl_ms
        self.hold_ttl_max_ms = config.defaults.hold_ttl_max_ms
        self.accounts = AccountIndex(engine)
        self.fail_open = config.storage.fail_open_rate_limits
        self.wire = _wire.WireCodec(
            accounts=self.accounts, plans=self.plans, prices=self.prices, engine=engine,
            hold_ttl_ms=self.hold_ttl_ms, hold_ttl_max_ms=self.hold_ttl_max_ms, meta_fn=self._meta,
            decode_meta=_decode_meta, credit_events=self._credit_events,
        )

    # ------------------------------------------------------------------ shared helpers

    async def submit(self, op: tuple, derive=None) -> tuple:
        """Engine.submit for a unary mutation. With `[storage] fail_open_rate_limits`, one that
        cannot move credit (`_leaves_credit_alone`) fails open while storage is down: answered
        once applied, persisted when storage returns. Every other mutation is refused then
        (UNAVAILABLE), as credit must never fail open."""
        engine = self.engine
        if engine.storage_down and self.fail_open and self._leaves_credit_alone(op):
            return await engine.submit(op, derive, fail_open=True)
        return await engine.submit(op, derive)

    def _leaves_credit_alone(self, op: tuple) -> bool:
        """Whether a unary mutation touches rate limits and usage only: a Reserve or Charge on an
        account whose plan is `unlimited` (its holds and charges are backed by no credit), or a
        Commit, Release or Extend of a hold that credit does not back (reserved while the account
        was unlimited), on an account that is still unlimited. A hold reserved before its account
        moved to an unlimited plan keeps its credit: settling or raising it moves credit."""
        plan = self._plan_of(op[1])
        if plan is None or not plan.unlimited:
            return False
        code = op[0]
        if code in (C.OP_RESERVE, C.OP_CHARGE):
            return True
        if code in (C.OP_COMMIT, C.OP_RELEASE, C.OP_EXTEND):
            view = self.engine.ledger.reservation_view(op[1], op[2])
            return view is not None and not view["backed"]
        return False

    def _credit_events(self, account_id: str, available_after: int, uncharged: int) -> list[tuple[str, str, dict]]:
        """The events of a commit's or charge's usage: `usage.uncollected` for a cost it could
        not cover, `balance.depleted` when it left `available_after <= 0`, except on an
        `unlimited` plan, whose `available` limits nothing (usually 0: an event per call)."""
        events = []
        if uncharged:
            events.append(("usage.uncollected", account_id, {"amount_uncharged": str(uncharged)}))
        if available_after <= 0:
            plan = self._plan_of(account_id)
            if plan is None or not plan.unlimited:
                events.append(("balance.depleted", account_id, {"available": str(available_after)}))
        return events

    def _plan_of(self, account_id: str) -> Plan | None:
        return self.accounts.plan_of(account_id, self.plans)

    def _price(self, action: str, amount: int, quantities: dict[str, int], *, field: str = "amount") -> int:
        """The amount of a call: `amount` if given (it overrides the catalog), else the price."""
        if amount:
            return check_amount(amount, field)
        if amount < 0:
            return check_amount(amount, field)
        if not action:
            raise QuotaError("INVALID_AMOUNT", f"{field} must be in 1..{C.AMOUNT_MAX} when no action prices the call",
                             metadata={"field": field})
        try:
            return self.prices.price(action, quantities)
        except PricingError as exc:
            raise QuotaError(exc.reason, str(exc), metadata={"action": action}) from None

    def _gate(self, plan: Plan | None, action: str, quantities: dict[str, int]) -> tuple[bool, tuple]:
        """(feature_allowed, bucket specs) for `action` under `plan`."""
        if plan is None:
            return True, ()
        allowed = not action or plan.allows(action)
        buckets = tuple(
            (lim.name, lim.capacity, lim.refill_amount, lim.refill_period_ms * NS_PER_MS, lim.cost_of(quantities))
            for lim in plan.limits_for(action)
        )
        return allowed, buckets

    @staticmethod
    def _meta(action: str, frozen_price: bytes, labels: dict[str, str]) -> bytes:
        """The hold's meta: action, frozen price and labels (sorted: the same bytes on both paths).
        It is kept with the hold in the core, at most META_BYTES_MAX bytes: a Reserve whose labels
        do not fit is INVALID_ARGUMENT (they would otherwise be missing from its usage record)."""
        meta = {"a": action}
        if frozen_price:
            meta["p"] = frozen_price.hex()
        if not labels:
            return json.dumps(meta, separators=(",", ":")).encode()
        encoded = json.dumps({**meta, "l": _sorted_dict(labels)}, separators=(",", ":")).encode()
        if len(encoded) > C.META_BYTES_MAX:
            raise QuotaError(
                "INVALID_ARGUMENT",
                f"a reservation's labels take at most about {C.META_BYTES_MAX} bytes (as JSON, with the action "
                f"and its price); these take {len(encoded)}: shorten them, or give them to the Commit instead",
                metadata={"field": "labels"},
            )
        return encoded

    # ------------------------------------------------------------------ reserve

    def prepare_reserve(self, req: pb.ReserveRequest) -> Prepared:
        account_id = check_id(req.account_id, "account_id")
        reservation_id = check_id(req.reservation_id, "reservation_id")
        action = check_action(req.action)
        quantities = check_quantities(req.quantities)
        labels = check_labels(req.labels)
        amount = self._price(action, req.amount, quantities)
        ttl_ms = check_ttl_ms(req.ttl_ms, "ttl_ms", default_ms=self.hold_ttl_ms, max_ms=self.hold_ttl_max_ms)
        min_amount = req.min_amount
        if not 0 <= min_amount <= C.AMOUNT_MAX:
            check_amount(min_amount, "min_amount")
        on_expire = EXPIRE_ACTIONS.get(req.on_expire)
        if on_expire is None:
            raise QuotaError("INVALID_ARGUMENT", f"unknown on_expire {req.on_expire}", metadata={"field": "on_expire"})
        plan = self._plan_of(account_id)
        allowed, buckets = self._gate(plan, action, quantities)
        frozen = self.prices.freeze(action) if action and action in self.prices else b""
        fp = _wire.fingerprint_reserve(
            req.amount, action, quantities, req.ttl_ms, req.allow_partial, min_amount, on_expire, labels,
        )
        op = (
            C.OP_RESERVE, account_id, reservation_id, fp, amount, req.allow_partial, min_amount,
            ttl_ms * NS_PER_MS, on_expire, allowed, buckets, self._meta(action, frozen, labels),
        )
        return Prepared(op, None, lambda r: self.reserve_response(reservation_id, r))

    @staticmethod
    def reserve_response(reservation_id: str, r: tuple) -> pb.ReserveResponse:
        if r[0] != C.OK:
            raise from_core_status(r[0])
        return pb.ReserveResponse(
            decision=r[1], reservation_id=reservation_id, amount_held=r[2], available_after=r[3],
            expires_at_ms=_ms(r[4]), retry_after_ms=-(-r[5] // NS_PER_MS), limit_name=r[6],
        )

    # ------------------------------------------------------------------ commit

    def prepare_commit(self, req: pb.CommitRequest) -> Prepared:
        account_id = check_id(req.account_id, "account_id")
        reservation_id = check_id(req.reservation_id, "reservation_id")
        quantities = check_quantities(req.quantities)
        labels = check_labels(req.labels)
        has_amount = req.HasField("amount")
        view = self.engine.ledger.reservation_view(account_id, reservation_id)
        meta = _decode_meta(view["meta"]) if view is not None else {}
        action = meta.get("a", "")
        if has_amount:
            amount = check_amount(req.amount, "amount", allow_zero=True)
        elif quantities:
            if view is None:
                raise from_core_status(C.RESERVATION_NOT_FOUND)
            if "p" not in meta:
                raise QuotaError("INVALID_ARGUMENT",
                                 "commit by quantities needs a reservation priced by an action; give amount",
                                 metadata={"field": "quantities"})
            try:
                amount = PriceCatalog.price_frozen(bytes.fromhex(meta["p"]), quantities)
            except PricingError as exc:  # the quantities price the commit above AMOUNT_MAX
                raise QuotaError(exc.reason, str(exc), metadata={"field": "quantities"}) from None
        else:
            amount = -1
        bucket_costs: tuple = ()
        if quantities and action:
            plan = self._plan_of(account_id)
            if plan is not None:
                bucket_costs = tuple(
                    (lim.name, lim.cost_of(quantities))
                    for lim in plan.limits_for(action) if lim.cost != "requests"
                )
        fp = _wire.fingerprint_commit(req.amount if has_amount else None, quantities, labels)
        op = (C.OP_COMMIT, account_id, reservation_id, fp, amount, bucket_costs)
        usage_labels = {**meta.get("l", {}), **labels}  # the commit's labels merged over the reserve's

        def derive(op, r, fresh, now_ms):
            if not fresh:
                return [], []
            row = _usage_row(account_id, now_ms, reservation_id=reservation_id, action=action,
                             quantities=quantities, charged=r[1], uncharged=r[3], labels=usage_labels, late=r[5])
            return [row], self._credit_events(account_id, r[4], r[3])

        return Prepared(op, derive, self.commit_response)

    @staticmethod
    def commit_response(r: tuple) -> pb.CommitResponse:
        if r[0] != C.OK:
            raise from_core_status(r[0])
        return pb.CommitResponse(
            amount_charged=r[1], amount_released=r[2], amount_uncharged=r[3], available_after=r[4], late=r[5],
        )

    # ------------------------------------------------------------------ release and extend

    def prepare_release(self, req: pb.ReleaseRequest) -> Prepared:
        account_id = check_id(req.account_id, "account_id")
        reservation_id = check_id(req.reservation_id, "reservation_id")
        return Prepared((C.OP_RELEASE, account_id, reservation_id), None, self.release_response)

    @staticmethod
    def release_response(r: tuple) -> pb.ReleaseResponse:
        if r[0] != C.OK:
            raise from_core_status(r[0])
        return pb.ReleaseResponse(amount_released=r[1], available_after=r[2])

    def prepare_extend(self, req: pb.ExtendRequest) -> Prepared:
        account_id = check_id(req.account_id, "account_id")
        reservation_id = check_id(req.reservation_id, "reservation_id")
        if req.hold_total:
            check_amount(req.hold_total, "hold_total")
        elif req.hold_total < 0:
            check_amount(req.hold_total, "hold_total")
        # ttl_ms 0 means [defaults] hold_ttl_ms, as in Reserve (proto ExtendRequest.ttl_ms).
        ttl_ms = check_ttl_ms(req.ttl_ms, "ttl_ms", default_ms=self.hold_ttl_ms, max_ms=self.hold_ttl_max_ms)
        denied = self._extend_suspended(account_id, reservation_id)
        if denied is not None:
            return Prepared(None, None, lambda r: denied)
        op = (C.OP_EXTEND, account_id, reservation_id, req.hold_total, ttl_ms * NS_PER_MS)
        return Prepared(op, None, self.extend_response)

    def _extend_suspended(self, account_id: str, reservation_id: str) -> pb.ExtendResponse | None:
        """The denial of an Extend of an open hold on a suspended account, else None.

        enums.proto: "every reserve, charge and extension is denied with
        DECISION_ACCOUNT_SUSPENDED"; the core's EXTEND has no suspension check, so the data plane
        answers it here and the hold stays exactly as it was. Holds that are not open go to the core
        for their usual error.
        """
        entry = self.accounts.lookup(account_id)
        if entry is None or entry[1] != C.ACCOUNT_SUSPENDED:
            return None
        ledger = self.engine.ledger
        now_ns = self.engine.now_ns()
        view = ledger.account_view(account_id, now_ns)
        if view is None or view["status"] != C.ACCOUNT_SUSPENDED:
            return None
        res = ledger.reservation_view(account_id, reservation_id)
        if res is None or res["state"] != C.RES_HELD or res["expires_ns"] <= now_ns:
            return None
        return pb.ExtendResponse(decision=C.DECISION_ACCOUNT_SUSPENDED, amount_held=res["amount_held"],
                                 expires_at_ms=_ms(res["expires_ns"]), available_after=view["available"])

    @staticmethod
    def extend_response(r: tuple) -> pb.ExtendResponse:
        if r[0] != C.OK:
            if r[0] == C.INVALID_AMOUNT:
                raise QuotaError("INVALID_AMOUNT", "hold_total is below the current hold",
                                 metadata={"field": "hold_total"})
            raise from_core_status(r[0])
        return pb.ExtendResponse(decision=r[1], amount_held=r[2], expires_at_ms=_ms(r[3]), available_after=r[4])

    # ------------------------------------------------------------------ charge

    def prepare_charge(self, req: pb.ChargeRequest) -> Prepared:
        account_id = check_id(req.account_id, "account_id")
        charge_id = check_id(req.charge_id, "charge_id")
        action = check_action(req.action)
        quantities = check_quantities(req.quantities)
        labels = check_labels(req.labels)
        amount = self._price(action, req.amount, quantities)
        allowed, buckets = self._gate(self._plan_of(account_id), action, quantities)
        fp = _wire.fingerprint_charge(req.amount, action, quantities, labels)
        op = (C.OP_CHARGE, account_id, charge_id, fp, amount, allowed, buckets)

        def derive(op, r, fresh, now_ms):
            if not fresh or r[1] != C.DECISION_OK:
                return [], []
            row = _usage_row(account_id, now_ms, charge_id=charge_id, action=action, quantities=quantities,
                             charged=r[2], uncharged=0, labels=labels, late=False)
            return [row], self._credit_events(account_id, r[3], 0)

        return Prepared(op, derive, self.charge_response)

    @staticmethod
    def charge_response(r: tuple) -> pb.ChargeResponse:
        if r[0] != C.OK:
            raise from_core_status(r[0])
        return pb.ChargeResponse(
            decision=r[1], amount_charged=r[2], available_after=r[3],
            retry_after_ms=-(-r[4] // NS_PER_MS), limit_name=r[5],
        )

    # ------------------------------------------------------------------ reads

    def check(self, req: pb.CheckRequest) -> pb.CheckResponse:
        account_id = check_id(req.account_id, "account_id")
        action = check_action(req.action)
        quantities = check_quantities(req.quantities)
        amount = self._price(action, req.amount, quantities)
        allowed, buckets = self._gate(self._plan_of(account_id), action, quantities)
        r = self.engine.read((C.OP_CHECK, account_id, amount, allowed, buckets))
        if r[0] != C.OK:
            raise from_core_status(r[0])
        return pb.CheckResponse(decision=r[1], available=r[2], retry_after_ms=-(-r[3] // NS_PER_MS), limit_name=r[4])

    def quote(self, req: pb.QuoteRequest) -> pb.QuoteResponse:
        if req.account_id:  # routing only (proto): a valid id, not read, need not exist
            check_id(req.account_id, "account_id")
        action = check_action(req.action)
        if not action:
            raise QuotaError("INVALID_ARGUMENT", "action is required", metadata={"field": "action"})
        quantities = check_quantities(req.quantities)
        try:
            quote = self.prices.quote(action, quantities)
        except PricingError as exc:
            raise QuotaError(exc.reason, str(exc), metadata={"action": action}) from None
        price = self.prices.price_of(action)
        lines = []
        for line in quote.lines:
            if line.quantity_name:
                lines.append(pb.QuoteLine(
                    kind=2, quantity_name=line.quantity_name, quantity=line.quantity,
                    per_1000=line.unit_price, margin_percent=price.margin_percent, amount=line.amount,
                ))
            else:
                lines.append(pb.QuoteLine(
                    kind=1, fixed_amount=line.unit_price, quantity=line.quantity,
                    margin_percent=price.margin_percent, amount=line.amount,
                ))
        return pb.QuoteResponse(amount=quote.amount, price_version=quote.price_version, lines=lines)

    def get_balance(self, req: pb.GetBalanceRequest) -> pb.GetBalanceResponse:
        account_id = check_id(req.account_id, "account_id")
        ledger = self.engine.ledger
        self.engine.read()  # due holds expire first: the balance of now
        now_ns = self.engine.now_ns()
        view = ledger.account_view(account_id, now_ns)
        if view is None:
            raise from_core_status(C.ACCOUNT_NOT_FOUND)
        lots = ledger.lots_view(account_id, now_ns)
        resp = pb.GetBalanceResponse(
            available=view["available"], held=view["held"], balance=view["balance"],
            credit_limit=view["credit_limit"], plan_id=view["plan_id"], status=view["status"],
            lots=[
                pb.Lot(lot_id=lot["lot_id"], category=lot["category"], remaining=lot["remaining"],
                       priority=lot["priority"], expires_at_ms=_ms(lot["expires_ns"]))
                for lot in lots
            ],
        )
        plan = self.plans.get(view["plan_id"])
        resp.limits.extend(_limit_states(ledger.buckets_view(account_id, now_ns), plan))
        if plan is not None:
            start_ms, end_ms = plan.period_bounds(now_ns // NS_PER_MS)
            resp.period.CopyFrom(pb.BillingPeriod(
                start_at_ms=start_ms, end_at_ms=end_ms, included=plan.included_credits,
                used=included_used(ledger, account_id, plan, start_ms) or 0,
            ))
        return resp


def _decode_meta(meta: bytes) -> dict:
    if not meta:
        return {}
    try:
        return json.loads(meta)
    except ValueError:
        return {}


def _sorted_dict(mapping: dict) -> dict:
    return dict(sorted(mapping.items())) if len(mapping) > 1 else mapping


def _usage_row(account_id: str, at_ms: int, *, reservation_id: str = "", charge_id: str = "", action: str,
               quantities: dict, charged: int, uncharged: int, labels: dict, late: bool) -> UsageRow:
    """One usage record; its maps are sorted by key, so both request paths write the same bytes."""
    payload = {
        "reservation_id": reservation_id, "charge_id": charge_id, "action": action,
        "quantities": _sorted_dict(quantities), "amount_charged": charged, "amount_uncharged": uncharged,
        "labels": _sorted_dict(labels), "late": late,
    }
    return UsageRow(account_id=account_id, at_ms=at_ms, payload=json.dumps(payload, separators=(",", ":")).encode())


def derive_expired(expired: list[tuple], now_ms: int) -> tuple[list[UsageRow], list[tuple[str, str, dict]]]:
    """Usage rows and events for holds that expired in a flush (`Ledger.take_expired`).

    A hold committed at expiry is a commit like any other: one usage record (late) for what it
    charged. A released one is only an event.
    """
    usage: list[UsageRow] = []
    events: list[tuple[str, str, dict]] = []
    for account_id, reservation_id, on_expire, charged, uncharged, meta in expired:
        if on_expire == C.EXPIRE_COMMIT:
            data = _decode_meta(meta)
            usage.append(_usage_row(account_id, now_ms, reservation_id=reservation_id, action=data.get("a", ""),
                                    quantities={}, charged=charged, uncharged=uncharged,
                                    labels=data.get("l", {}), late=True))
            events.append(("hold.committed_at_expiry", account_id,
                           {"reservation_id": reservation_id, "amount_charged": str(charged)}))
        else:
            events.append(("hold.expired", account_id, {"reservation_id": reservation_id}))
    return usage, events


class QuotaServicer(pb_grpc.QuotaServiceServicer):
    """The gRPC face of DataPlane. Method names are the proto's; the `*_wire` methods are the
    same RPCs on raw request and response bytes (see `add_quota_service`)."""

    def __init__(self, dataplane: DataPlane, *, max_batch_ops: int) -> None:
        self.dp = dataplane
        self.engine = dataplane.engine
        self.wire = dataplane.wire
        self.max_batch_ops = max_batch_ops

    async def _mutate(self, prepare, request, context):
        try:
            prepared = prepare(request)
            result = await self.dp.submit(prepared.op, prepared.derive) if prepared.op is not None else None
            return prepared.respond(result)
        except QuotaError as exc:
            await abort_with(context, exc)

    async def Reserve(self, request, context):
        return await self._mutate(self.dp.prepare_reserve, request, context)

    async def Commit(self, request, context):
        return await self._mutate(self.dp.prepare_commit, request, context)

    async def Release(self, request, context):
        return await self._mutate(self.dp.prepare_release, request, context)

    async def Extend(self, request, context):
        return await self._mutate(self.dp.prepare_extend, request, context)

    async def Charge(self, request, context):
        return await self._mutate(self.dp.prepare_charge, request, context)

    async def _read(self, fn, request, context):
        try:
            return fn(request)
        except QuotaError as exc:
            await abort_with(context, exc)

    async def Check(self, request, context):
        return await self._read(self.dp.check, request, context)

    async def Quote(self, request, context):
        return await self._read(self.dp.quote, request, context)

    async def GetBalance(self, request, context):
        return await self._read(self.dp.get_balance, request, context)

    async def Batch(self, request, context):
        try:
            _check_batch_size(request, self.max_batch_ops)
            return await run_batch(self.dp, request)
        except QuotaError as exc:
            await abort_with(context, exc)

    # ------------------------------------------------------------------ the wire fast path

    async def _mutate_wire(self, kind: int, prepare, request_type, data: bytes, context):
        try:
            decoded = self.wire.decode(kind, data)
            if decoded is None:  # not certainly valid: the Python path judges it (a DecodeError
                # propagates as the deserializer's would: UNKNOWN "Unexpected <DecodeError>: ...")
                prepared = prepare(request_type.FromString(data))
                result = await self.dp.submit(prepared.op, prepared.derive) if prepared.op is not None else None
                return prepared.respond(result).SerializeToString()
            op, derive = decoded
            return self.wire.encode(kind, op, await self.dp.submit(op, derive))
        except QuotaError as exc:
            await abort_with(context, exc)

    async def reserve_wire(self, data: bytes, context):
        return await self._mutate_wire(_KIND_RESERVE, self.dp.prepare_reserve, pb.ReserveRequest, data, context)

    async def commit_wire(self, data: bytes, context):
        return await self._mutate_wire(_KIND_COMMIT, self.dp.prepare_commit, pb.CommitRequest, data, context)

    async def release_wire(self, data: bytes, context):
        return await self._mutate_wire(_KIND_RELEASE, self.dp.prepare_release, pb.ReleaseRequest, data, context)

    async def extend_wire(self, data: bytes, context):
        return await self._mutate_wire(_KIND_EXTEND, self.dp.prepare_extend, pb.ExtendRequest, data, context)

    async def charge_wire(self, data: bytes, context):
        return await self._mutate_wire(_KIND_CHARGE, self.dp.prepare_charge, pb.ChargeRequest, data, context)

    async def batch_wire(self, data: bytes, context):
        try:
            return await run_batch_wire(self.dp, data, self.max_batch_ops)
        except QuotaError as exc:
            await abort_with(context, exc)


# BatchOp / BatchResult field numbers of the mutating kinds (the fast path's `kind`).
_KIND_RESERVE, _KIND_COMMIT, _KIND_RELEASE, _KIND_EXTEND, _KIND_CHARGE = 1, 2, 3, 4, 5


def add_quota_service(server, servicer: QuotaServicer, *, fast_wire: bool = True) -> None:
    """Register QuotaService on `server`.

    With `fast_wire`, the mutating RPCs and Batch take and return raw bytes (no protobuf
    deserializer/serializer: `quota_server._wire` reads and writes the wire format), while
    Check, Quote and GetBalance keep the generated (de)serializers. Clients see the same
    messages either way; reflection reads the descriptors, not the handlers.
    """
    if not fast_wire:
        pb_grpc.add_QuotaServiceServicer_to_server(servicer, server)
        return

    def raw(method):
        return grpc.unary_unary_rpc_method_handler(method, request_deserializer=None, response_serializer=None)

    def typed(method, request_type, response_type):
        return grpc.unary_unary_rpc_method_handler(
            method, request_deserializer=request_type.FromString, response_serializer=response_type.SerializeToString,
        )

    handlers = {
        "Reserve": raw(servicer.reserve_wire),
        "Commit": raw(servicer.commit_wire),
        "Release": raw(servicer.release_wire),
        "Extend": raw(servicer.extend_wire),
        "Charge": raw(servicer.charge_wire),
        "Check": typed(servicer.Check, pb.CheckRequest, pb.CheckResponse),
        "Quote": typed(servicer.Quote, pb.QuoteRequest, pb.QuoteResponse),
        "GetBalance": typed(servicer.GetBalance, pb.GetBalanceRequest, pb.GetBalanceResponse),
        "Batch": raw(servicer.batch_wire),
    }
    name = pb.DESCRIPTOR.services_by_name["QuotaService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)


_BATCH_MUTATIONS = {
    "reserve": "prepare_reserve",
    "commit": "prepare_commit",
    "release": "prepare_release",
    "extend": "prepare_extend",
    "charge": "prepare_charge",
}
_BATCH_READS = {"check": "check", "quote": "quote", "get_balance": "get_balance"}
_ACCOUNT_READS = ("check", "get_balance")  # reads of account state: answered at their place (run_batch)


def _check_batch_size(request: pb.BatchRequest, max_ops: int) -> None:
    if len(request.ops) > max_ops:
        raise QuotaError("INVALID_ARGUMENT", f"a batch holds at most {max_ops} ops", metadata={"field": "ops"})


def _prepare_item(dp: DataPlane, item: pb.BatchOp) -> tuple[tuple[str, Any], tuple | None]:
    """One batch op: its slot (kind, Prepared | request | QuotaError) and its (op, derive) to
    submit, or None when it needs no core op (a read, an error, an answer known already)."""
    kind = item.WhichOneof("op")
    payload = getattr(item, kind) if kind else None
    try:
        if kind in _BATCH_MUTATIONS:
            prepared = getattr(dp, _BATCH_MUTATIONS[kind])(payload)
            # op None: answered without the core (see prepare_extend)
            return (kind, prepared), ((prepared.op, prepared.derive) if prepared.op is not None else None)
        if kind in _BATCH_READS:
            return (kind, payload), None
        raise QuotaError("INVALID_ARGUMENT", "a batch op must set one operation", metadata={"field": "ops"})
    except QuotaError as exc:
        return ("error", exc), None


def _answer_item(dp: DataPlane, slot: tuple[str, Any], result: tuple | None) -> pb.BatchResult:
    """The BatchResult of one op once the batch's mutations are durable (reads run now)."""
    kind, value = slot
    try:
        if kind == "error":
            raise value
        if kind in _BATCH_MUTATIONS:
            return pb.BatchResult(**{kind: value.respond(result)})
        return pb.BatchResult(**{kind: getattr(dp, _BATCH_READS[kind])(value)})
    except QuotaError as exc:
        return pb.BatchResult(error=pb.BatchError(
            code=exc.code.value[0], message=exc.message, reason=exc.reason, metadata=exc.metadata,
        ))


async def run_batch(dp: DataPlane, request: pb.BatchRequest) -> pb.BatchResponse:
    """Validate every op, submit the mutations, then answer each op in order.

    Items are independent: one item's error is that item's result. The ops run in order: a read
    of an account (Check, GetBalance) sees the batch's mutations before it and none after it.
    So the mutations between two such reads are submitted together, and a read is answered once
    the mutations before it are durable, before those after it are submitted. A batch whose
    reads all come after its mutations (or that has no reads) is one submission.
    """
    prepared = [_prepare_item(dp, item) for item in request.ops]
    answers: list[pb.BatchResult | None] = [None] * len(prepared)
    segment: list[int] = []  # indices of the mutations not submitted yet

    async def submit_segment() -> None:
        if segment:
            results = await dp.engine.submit_many([prepared[i][1] for i in segment])
            for i, result in zip(segment, results):
                answers[i] = _answer_item(dp, prepared[i][0], result)
            segment.clear()

    for i, (slot, item_submit) in enumerate(prepared):
        if item_submit is not None:
            segment.append(i)
        elif slot[0] in _ACCOUNT_READS:
            await submit_segment()
            answers[i] = _answer_item(dp, slot, None)
    await submit_segment()
    return pb.BatchResponse(results=[
        answer if answer is not None else _answer_item(dp, slot, None)
        for answer, (slot, _) in zip(answers, prepared)
    ])


def _read_before_a_mutation(n: int, slow: dict[int, pb.BatchOp]) -> bool:
    """Whether a slow op (`slow`: index -> op) of a batch of `n` ops reads an account before a
    later op mutates: such a batch runs on the Python path (run_batch answers the read at its
    place). The fast ops are all mutations."""
    kinds = {i: op.WhichOneof("op") for i, op in slow.items()}
    first_read = next((i for i in sorted(kinds) if kinds[i] in _ACCOUNT_READS), None)
    if first_read is None:
        return False
    return any(j not in kinds or kinds[j] in _BATCH_MUTATIONS for j in range(first_read + 1, n))


async def run_batch_wire(dp: DataPlane, data: bytes, max_ops: int) -> bytes:
    """`run_batch` on the serialized BatchRequest, returning the serialized BatchResponse.

    The fast path decodes the ops it can vouch for; every other op goes through `_prepare_item`
    and `_answer_item` in its place, so the ops are submitted and answered in order exactly as
    `run_batch` does. A request the fast path cannot frame (malformed, too many ops) runs on the
    Python path as a whole, which raises its DecodeError or QuotaError; so does one with a read
    of an account before a mutation (`run_batch` answers such a read at its place).
    """
    dp.engine.poll()  # (Engine.poll: before and after the long steps, decoding and encoding)
    work = dp.wire.decode_batch(data, max_ops)
    if work is not None and work.slow:
        try:
            slow = {i: pb.BatchOp.FromString(work.raw(i)) for i in work.slow}
        except DecodeError:
            work = None
        else:
            if _read_before_a_mutation(work.n, slow):
                work = None
            else:
                for i, item in slow.items():
                    work.set_slow(i, *_prepare_item(dp, item))
    if work is None:
        request = pb.BatchRequest.FromString(data)
        _check_batch_size(request, max_ops)
        return (await run_batch(dp, request)).SerializeToString()
    if not work.slow:  # the usual case: every op on the fast path, derived as a group
        results = await dp.engine.submit_group(work.ops(), work) if work.n else []
        response = work.encode(results, None)
        dp.engine.poll()
        return response
    items = work.submit_items()
    results = await dp.engine.submit_many(items) if items else []
    return work.encode(results, lambda slot, result: _answer_item(dp, slot, result).SerializeToString())


def _limit_states(buckets: list[dict], plan) -> list[pb.LimitState]:
    """GetBalance.limits: every rate limit of the account's plan, sorted by name. A limit whose
    bucket was never used is full (a bucket is created full on first use): remaining =
    capacity, reset_after_ms 0. Without a known plan, the buckets the account has."""
    used = {
        b["name"]: pb.LimitState(name=b["name"], remaining=b["tokens"], capacity=b["capacity"],
                                 reset_after_ms=-(-b["reset_after_ns"] // NS_PER_MS))
        for b in buckets
    }
    if plan is None:
        return [used[name] for name in sorted(used)]
    states = [
        used.get(lim.name) or pb.LimitState(name=lim.name, remaining=lim.capacity, capacity=lim.capacity,
                                            reset_after_ms=0)
        for lim in plan.limits
    ]
    return sorted(states, key=lambda state: state.name)


__all__ = ["AccountIndex", "DataPlane", "QuotaServicer", "add_quota_service", "run_batch",
           "run_batch_wire", "grpc"]


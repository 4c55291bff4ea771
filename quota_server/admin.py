"""AdminService: accounts, grants, usage and events (the control plane)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Iterator

from _fastledger import codes as C
from quota.v1 import admin_service_pb2 as apb
from quota.v1 import admin_service_pb2_grpc as apb_grpc

from . import _wire
from .dataplane import NS_PER_MS, AccountIndex
from .renewal import grant_event as _grant_event
from .renewal import included_grant_id, included_grant_op
from .engine import EVENTS_PER_SEQ, Engine
from .errors import QuotaError, from_core_status
from .rpc import abort_with
from .storage.base import InvalidCursor, StorageError, StorageUnavailable
from .validate import check_amount, check_id

log = logging.getLogger("quota.admin")

PAGE_SIZE_DEFAULT = 100
PAGE_SIZE_MAX = 1000
PAGE_BYTES_SLACK = 1024  # room left in a ListUsage reply for next_page_token and framing
WATCH_POLL_S = 1.0


def _records_that_fit(records: list, budget: int) -> int:
    """How many of `records` (from the first) fit in a reply of `budget` bytes (each costs its
    size plus its field tag and length prefix)."""
    used = 0
    for n, record in enumerate(records):
        used += record.ByteSize() + 6
        if used > budget:
            return n
    return len(records)


def _query_tag(account_id: str, from_ms: int, to_ms: int) -> str:
    """What a ListUsage page token carries of its query, so that a token is refused with
    another account or window (the proto: the other fields stay the same across pages)."""
    return hashlib.sha256(f"{account_id}\0{from_ms}\0{to_ms}".encode()).hexdigest()[:12]


def _page_cursor(token: str, query: str) -> str | None:
    """The storage cursor in a page token of this query (None for the first page). A token
    without a tag (issued before tokens carried one) is the storage cursor itself."""
    if not token:
        return None
    cursor, sep, tag = token.rpartition("~")
    if not sep:
        return token
    if tag != query or not cursor:
        raise QuotaError("INVALID_ARGUMENT", "page_token belongs to another query: keep account_id, from_at_ms "
                         "and to_at_ms as on the first page", metadata={"field": "page_token"})
    return cursor


class AdminServicer(apb_grpc.AdminServiceServicer):
    """The control plane over the same engine as the data plane."""

    def __init__(self, *, engine: Engine, config, accounts: AccountIndex | None = None) -> None:
        """`accounts` is the data plane's index of plans and statuses, told about upserts."""
        self.engine = engine
        self.plans = config.plans
        self.accounts = accounts
        self.max_message_bytes = config.server.max_message_bytes  # a ListUsage page fits in it
        self._closing = False  # set by close_streams: WatchEvents streams end

    def _last_event_position(self) -> int:
        """An event id at or above every event written so far (the last record's last slot)."""
        return (self.engine.seq + 1) * EVENTS_PER_SEQ - 1 if self.engine.seq else 0

    async def close_streams(self) -> None:
        """At shutdown: end every WatchEvents stream with UNAVAILABLE / SHUTTING_DOWN (a client
        resumes elsewhere or later with its last event id) instead of holding the shutdown for
        the whole grace period."""
        self._closing = True
        async with self.engine.events_written:
            self.engine.events_written.notify_all()

    # ------------------------------------------------------------------ accounts

    def _account(self, account_id: str) -> apb.Account:
        view = self.engine.ledger.account_view(account_id, self.engine.now_ns())
        if view is None:
            raise from_core_status(C.ACCOUNT_NOT_FOUND)
        return apb.Account(
            account_id=account_id, plan_id=view["plan_id"], credit_limit=view["credit_limit"], status=view["status"],
        )

    async def UpsertAccount(self, request, context):
        try:
            return await self._upsert(request)
        except QuotaError as exc:
            await abort_with(context, exc)

    async def _upsert(self, req: apb.UpsertAccountRequest) -> apb.UpsertAccountResponse:
        account_id = check_id(req.account_id, "account_id")
        if req.status not in (C.ACCOUNT_KEEP, C.ACCOUNT_ACTIVE, C.ACCOUNT_SUSPENDED):
            raise QuotaError("INVALID_ARGUMENT", f"unknown status {req.status}", metadata={"field": "status"})
        credit_limit = check_amount(req.credit_limit, "credit_limit", allow_zero=True) if req.HasField(
            "credit_limit") else None
        now_ns = self.engine.now_ns()
        existing = self.engine.ledger.account_view(account_id, now_ns)
        plan = None
        if req.plan_id:
            plan = self.plans.get(req.plan_id)
            if plan is None:
                raise QuotaError("PLAN_NOT_FOUND", f"unknown plan_id {req.plan_id!r}", metadata={"field": "plan_id"})
        elif existing is None:
            raise QuotaError("INVALID_ARGUMENT", "creating an account needs a plan_id", metadata={"field": "plan_id"})
        joins = plan is not None and (existing is None or existing["plan_id"] != plan.name)
        if joins and credit_limit is None:
            credit_limit = plan.credit_limit
        op = (
            C.OP_UPSERT, account_id, plan.name if plan else None, req.status, credit_limit,
            plan.max_open_holds if joins else None, plan.unlimited if joins else None,
        )

        def derive(op, r, fresh, now_ms):
            if r[1]:
                return [], [("account.created", account_id, {"plan_id": plan.name})]
            events = []
            if joins:
                events.append(("plan.changed", account_id, {"from": existing["plan_id"], "to": plan.name}))
            if req.status and existing is not None and req.status != existing["status"]:
                kind = "account.suspended" if req.status == C.ACCOUNT_SUSPENDED else "account.activated"
                events.append((kind, account_id, {}))
            return [], events

        items = [(op, derive)]
        if joins and plan.included_credits > 0:
            start_ms, end_ms = plan.period_bounds(now_ns // NS_PER_MS)
            items.append((
                included_grant_op(account_id, plan, start_ms, end_ms),
                _grant_event(account_id, included_grant_id(plan.name, start_ms), plan.included_credits,
                             C.LOT_INCLUDED),
            ))
        changing = self.accounts.changing(account_id) if self.accounts is not None else contextlib.nullcontext()
        with changing:
            results = await self.engine.submit_many(items)
        if results[0][0] != C.OK:
            raise from_core_status(results[0][0])
        return apb.UpsertAccountResponse(account=self._account(account_id), created=results[0][1])

    async def GetAccount(self, request, context):
        try:
            return apb.GetAccountResponse(account=self._account(check_id(request.account_id, "account_id")))
        except QuotaError as exc:
            await abort_with(context, exc)

    # ------------------------------------------------------------------ grants

    async def Grant(self, request, context):
        try:
            return await self._grant(request)
        except QuotaError as exc:
            await abort_with(context, exc)

    async def _grant(self, req: apb.GrantRequest) -> apb.GrantResponse:
        account_id = check_id(req.account_id, "account_id")
        grant_id = check_id(req.grant_id, "grant_id")
        amount = check_amount(req.amount, "amount")
        category = req.category or C.LOT_PURCHASED
        if category not in (C.LOT_PURCHASED, C.LOT_PROMOTIONAL, C.LOT_INCLUDED, C.LOT_ADJUSTMENT):
            raise QuotaError("INVALID_ARGUMENT", f"unknown category {req.category}", metadata={"field": "category"})
        expires_ms = req.expires_at_ms
        if expires_ms < 0 or (expires_ms and expires_ms * NS_PER_MS <= self.engine.now_ns()):
            raise QuotaError("INVALID_ARGUMENT", "expires_at_ms must be 0 (never) or in the future",
                             metadata={"field": "expires_at_ms"})
        fp = _wire.fingerprint(_wire.DOMAIN_GRANT, amount, category, req.priority, expires_ms)
        op = (C.OP_GRANT, account_id, grant_id, fp, amount, category, req.priority, expires_ms * NS_PER_MS)
        result = await self.engine.submit(op, _grant_event(account_id, grant_id, amount, category))
        if result[0] != C.OK:
            raise from_core_status(result[0])
        return apb.GrantResponse(lot_id=grant_id, available_after=result[1])

    # ------------------------------------------------------------------ usage

    def _window(self, req) -> tuple[str, int, int]:
        account_id = check_id(req.account_id, "account_id")
        if req.from_at_ms < 0 or req.to_at_ms < 0 or (req.to_at_ms and req.to_at_ms < req.from_at_ms):
            raise QuotaError("INVALID_ARGUMENT", "from_at_ms and to_at_ms must be >= 0 and from <= to",
                             metadata={"field": "from_at_ms" if req.from_at_ms < 0 else "to_at_ms"})
        if self.engine.ledger.account_view(account_id, self.engine.now_ns()) is None:
            raise from_core_status(C.ACCOUNT_NOT_FOUND)
        return account_id, req.from_at_ms, req.to_at_ms

    async def ListUsage(self, request, context):
        try:
            account_id, from_ms, to_ms = self._window(request)
            if request.page_size < 0:
                raise QuotaError("INVALID_ARGUMENT", "page_size must be >= 0", metadata={"field": "page_size"})
            size = min(request.page_size or PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX)
            query = _query_tag(account_id, from_ms, to_ms)
            after = _page_cursor(request.page_token, query)
            while True:
                try:
                    with _storage_reads("usage"):
                        rows, cursor = await self.engine.storage.list_usage(account_id, from_ms, to_ms, size, after)
                except InvalidCursor:
                    raise QuotaError("INVALID_ARGUMENT", "bad page_token", metadata={"field": "page_token"}) from None
                records = [_usage_record(row) for row in rows]
                fit = _records_that_fit(records, self.max_message_bytes - PAGE_BYTES_SLACK)
                if fit == len(records):
                    return apb.ListUsageResponse(records=records,
                                                 next_page_token=f"{cursor}~{query}" if cursor else "")
                if fit == 0:
                    raise QuotaError(
                        "RESPONSE_TOO_LARGE",
                        f"a usage record is larger than the server's max_message_bytes ({self.max_message_bytes})",
                        metadata={"field": "max_message_bytes"},
                    )
                size = fit  # a shorter page: the storage makes the cursor for where it ends
        except QuotaError as exc:
            await abort_with(context, exc)

    async def GetUsageSummary(self, request, context):
        try:
            account_id, from_ms, to_ms = self._window(request)
            totals: dict[str, dict] = defaultdict(
                lambda: {"count": 0, "quantities": defaultdict(int), "charged": 0, "uncharged": 0}
            )
            invoice_total = 0
            # Only pay-as-you-go accounts (an overdraft, paid in arrears) are invoiced for usage;
            # proto GetUsageSummaryResponse.invoice_total: "0 for prepaid accounts".
            view = self.engine.ledger.account_view(account_id, self.engine.now_ns())
            invoiced = view is not None and view["credit_limit"] > 0
            with _storage_reads("usage"):
                async for row in self.engine.storage.iter_usage(account_id, from_ms, to_ms):
                    data = json.loads(row.payload)
                    entry = totals[data["action"]]
                    entry["count"] += 1
                    for name, value in data["quantities"].items():
                        entry["quantities"][name] += value
                    entry["charged"] += data["amount_charged"]
                    entry["uncharged"] += data["amount_uncharged"]
                    invoice_total += data["amount_charged"]
            return apb.GetUsageSummaryResponse(
                actions=[
                    apb.ActionUsage(action=action, count=e["count"], quantities=dict(e["quantities"]),
                                    amount_charged=e["charged"], amount_uncharged=e["uncharged"])
                    for action, e in sorted(totals.items())
                ],
                invoice_total=invoice_total if invoiced else 0,
            )
        except QuotaError as exc:
            await abort_with(context, exc)

    # ------------------------------------------------------------------ events

    async def WatchEvents(self, request, context):
        try:
            if request.account_id:
                check_id(request.account_id, "account_id")
            position = request.after_event_id
            after = -1
            if position:
                # Not a decimal event id, or beyond what this server's data has written: an id
                # from another server's data (a stream resumed there would wait for ids that
                # may never come, or skip events).
                if not (position.isascii() and position.isdigit()) or int(position) > self._last_event_position():
                    raise QuotaError("INVALID_ARGUMENT", "after_event_id must be an event id from this server",
                                     metadata={"field": "after_event_id"})
                after = int(position)
        except QuotaError as exc:
            await abort_with(context, exc)
            return
        types = set(request.types)
        account = request.account_id or None
        if after < 0:  # no position given: only events from now on
            after = self._last_event_position()
        while True:
            if self._closing:
                await abort_with(context, QuotaError(
                    "SHUTTING_DOWN", "the server is shutting down; resume with after_event_id set to the last event "
                    "id received"))
                return
            try:
                with _storage_reads("events"):
                    rows = await self.engine.storage.read_events(after, 500, account)
            except QuotaError as exc:  # the client resumes after the last event it received
                await abort_with(context, exc)
                return
            for row in rows:
                after = row.event_id
                if types and row.type not in types:
                    continue
                yield apb.WatchEventsResponse(event=apb.Event(
                    event_id=str(row.event_id), type=row.type, account_id=row.account_id, at_ms=row.at_ms,
                    attributes=json.loads(row.payload) if row.payload else {},
                ))
            if len(rows) < 500:
                async with self.engine.events_written:
                    try:
                        await asyncio.wait_for(self.engine.events_written.wait(), WATCH_POLL_S)
                    except asyncio.TimeoutError:
                        pass


@contextlib.contextmanager
def _storage_reads(what: str) -> Iterator[None]:
    """Storage failures of a read as the API's errors: UNAVAILABLE / STORAGE_UNAVAILABLE while
    the storage cannot be reached (retry), INTERNAL / STORAGE_ERROR for data it cannot read;
    the details (backend, address, cause) go to the log, not to the caller."""
    try:
        yield
    except InvalidCursor:
        raise  # the caller's own mistake (a bad page token): its caller says so
    except StorageUnavailable as exc:
        log.warning("reading %s: storage unavailable: %s", what, exc)
        raise QuotaError("STORAGE_UNAVAILABLE", f"storage cannot be read right now ({what}); retry") from None
    except StorageError as exc:
        log.error("reading %s failed: %s", what, exc)
        raise QuotaError("STORAGE_ERROR", f"stored {what} could not be read (see the server log)") from None


def _usage_record(row) -> apb.UsageRecord:
    data = json.loads(row.payload)
    return apb.UsageRecord(
        account_id=row.account_id, reservation_id=data["reservation_id"], charge_id=data["charge_id"],
        action=data["action"], quantities=data["quantities"], amount_charged=data["amount_charged"],
        amount_uncharged=data["amount_uncharged"], at_ms=row.at_ms, labels=data["labels"], late=data["late"],
    )

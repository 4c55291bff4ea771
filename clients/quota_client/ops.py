"""Prepared calls: each function builds one request and says how to read its response.

An Op is built once per logical call, so an idempotency id the caller omitted is
generated here, once, and every retry of the Op sends the same id. The data-plane ops
can also be sent together with ``client.batch([ops.reserve(...), ops.charge(...)])``.
Keyword options are the proto fields of the request (see protos/quota/v1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypedDict, TypeVar, Unpack

from quota.v1 import admin_service_pb2 as admin_pb
from quota.v1 import quota_service_pb2 as pb

from . import errors, results
from .enums import AccountStatus, ExpireAction, LotCategory
from .retry import new_id

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Op(Generic[T]):
    """One prepared RPC: ``method`` of QuotaService (or AdminService if ``admin``)."""

    method: str
    request: Any
    convert: Callable[[Any], T]
    batch_field: str | None = None  # the BatchOp oneof field; None: cannot be batched
    can_deny: bool = False  # the response carries a Decision
    admin: bool = False


class PricedOptions(TypedDict, total=False):
    """How a call is priced: an ``amount``, or an ``action`` with ``quantities``, or both."""

    amount: int
    action: str
    quantities: Mapping[str, int]


class ReserveOptions(PricedOptions, total=False):
    """Options of reserve; ``reservation_id`` is generated when omitted."""

    reservation_id: str | None
    ttl_ms: int
    allow_partial: bool
    min_amount: int
    on_expire: ExpireAction
    labels: Mapping[str, str]


class CommitOptions(TypedDict, total=False):
    """Options of commit; ``amount`` None (the default) means "not given"."""

    amount: int | None
    quantities: Mapping[str, int]
    labels: Mapping[str, str]


class ExtendOptions(TypedDict, total=False):
    """Options of extend: an absolute ``hold_total`` (0 keeps it) and a TTL from now."""

    hold_total: int
    ttl_ms: int


class ChargeOptions(PricedOptions, total=False):
    """Options of charge; ``charge_id`` is generated when omitted."""

    charge_id: str | None
    labels: Mapping[str, str]


class QuoteOptions(TypedDict, total=False):
    """Options of quote."""

    account_id: str
    quantities: Mapping[str, int]


class UpsertAccountOptions(TypedDict, total=False):
    """Options of upsert_account; omitted fields are unchanged on update."""

    plan_id: str
    credit_limit: int | None
    status: AccountStatus


class GrantOptions(TypedDict, total=False):
    """Options of grant; ``grant_id`` is generated when omitted."""

    grant_id: str | None
    category: LotCategory
    priority: int
    expires_at_ms: int


class UsageWindow(TypedDict, total=False):
    """A time window [from_at_ms, to_at_ms); 0 leaves that end open."""

    from_at_ms: int
    to_at_ms: int


class ListUsageOptions(UsageWindow, total=False):
    """Options of list_usage."""

    page_size: int
    page_token: str


def _fields(options: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword options as proto constructor arguments (None means "not given")."""
    return {key: value for key, value in options.items() if value is not None}


def _id(value: str | None) -> str:
    return value if value else new_id()


def reserve(account_id: str, **options: Unpack[ReserveOptions]) -> Op[results.ReserveResult]:
    """Hold credits for an operation whose cost is not known yet."""
    fields = _fields(options)
    rid = _id(fields.pop("reservation_id", None))
    request = pb.ReserveRequest(account_id=account_id, reservation_id=rid, **fields)
    return Op(
        "Reserve",
        request,
        lambda m: results.ReserveResult.from_proto(m, rid),
        "reserve",
        can_deny=True,
    )


def commit(
    account_id: str, reservation_id: str, **options: Unpack[CommitOptions]
) -> Op[results.CommitResult]:
    """Settle a hold with the actual cost (``amount`` or ``quantities``; neither: all)."""
    request = pb.CommitRequest(
        account_id=account_id, reservation_id=reservation_id, **_fields(options)
    )
    return Op("Commit", request, results.CommitResult.from_proto, "commit")


def release(account_id: str, reservation_id: str) -> Op[results.ReleaseResult]:
    """Free a hold."""
    request = pb.ReleaseRequest(account_id=account_id, reservation_id=reservation_id)
    return Op("Release", request, results.ReleaseResult.from_proto, "release")


def extend(
    account_id: str, reservation_id: str, **options: Unpack[ExtendOptions]
) -> Op[results.ExtendResult]:
    """Raise a hold to ``hold_total`` and/or refresh its TTL."""
    request = pb.ExtendRequest(
        account_id=account_id, reservation_id=reservation_id, **_fields(options)
    )
    return Op("Extend", request, results.ExtendResult.from_proto, "extend", can_deny=True)


def charge(account_id: str, **options: Unpack[ChargeOptions]) -> Op[results.ChargeResult]:
    """Reserve and commit in one step, for a known cost."""
    fields = _fields(options)
    cid = _id(fields.pop("charge_id", None))
    request = pb.ChargeRequest(account_id=account_id, charge_id=cid, **fields)
    return Op(
        "Charge",
        request,
        lambda m: results.ChargeResult.from_proto(m, cid),
        "charge",
        can_deny=True,
    )


def check(account_id: str, **options: Unpack[PricedOptions]) -> Op[results.CheckResult]:
    """Would a charge of this shape be allowed now? Changes nothing."""
    request = pb.CheckRequest(account_id=account_id, **_fields(options))
    return Op("Check", request, results.CheckResult.from_proto, "check")


def quote(action: str, **options: Unpack[QuoteOptions]) -> Op[results.QuoteResult]:
    """Price an action from the catalog."""
    request = pb.QuoteRequest(action=action, **_fields(options))
    return Op("Quote", request, results.QuoteResult.from_proto, "quote")


def get_balance(account_id: str) -> Op[results.Balance]:
    """An account's balance, holds, lots, period and limits."""
    request = pb.GetBalanceRequest(account_id=account_id)
    return Op("GetBalance", request, results.Balance.from_proto, "get_balance")


def batch(operations: Iterable[Op[Any]]) -> Op[list[Any]]:
    """Many data-plane ops in one RPC; the result has, per op, its result or a QuotaError."""
    items = tuple(operations)
    request = pb.BatchRequest(ops=[_batch_op(op) for op in items])
    return Op("Batch", request, lambda m: _batch_results(items, m))


def _batch_op(op: Op[Any]) -> Any:
    if op.batch_field is None:
        raise TypeError(f"{op.method} cannot be batched")
    return pb.BatchOp(**{op.batch_field: op.request})


def _batch_results(items: Sequence[Op[Any]], response: Any) -> list[Any]:
    if len(response.results) != len(items):
        raise errors.Internal(f"batch of {len(items)} ops answered with {len(response.results)}")
    out: list[Any] = []
    for op, result in zip(items, response.results, strict=True):
        kind = result.WhichOneof("result")
        if kind == "error":
            e = result.error
            out.append(errors.from_status(e.code, e.message, e.reason, dict(e.metadata)))
        elif kind == op.batch_field:
            out.append(op.convert(getattr(result, kind)))
        else:
            raise errors.Internal(f"batch op {op.batch_field} answered with {kind}")
    return out


def upsert_account(
    account_id: str, **options: Unpack[UpsertAccountOptions]
) -> Op[results.UpsertAccountResult]:
    """Create an account (``plan_id`` required) or update the fields given."""
    request = admin_pb.UpsertAccountRequest(account_id=account_id, **_fields(options))
    return Op("UpsertAccount", request, results.UpsertAccountResult.from_proto, admin=True)


def get_account(account_id: str) -> Op[results.Account]:
    """An account's administrative record."""
    request = admin_pb.GetAccountRequest(account_id=account_id)
    return Op("GetAccount", request, lambda m: results.Account.from_proto(m.account), admin=True)


def grant(account_id: str, amount: int, **options: Unpack[GrantOptions]) -> Op[results.GrantResult]:
    """Add ``amount`` credits to an account as a new lot."""
    fields = _fields(options)
    gid = _id(fields.pop("grant_id", None))
    request = admin_pb.GrantRequest(account_id=account_id, grant_id=gid, amount=amount, **fields)
    return Op("Grant", request, lambda m: results.GrantResult.from_proto(m, gid), admin=True)


def list_usage(account_id: str, **options: Unpack[ListUsageOptions]) -> Op[results.UsagePage]:
    """One page of an account's usage records."""
    request = admin_pb.ListUsageRequest(account_id=account_id, **_fields(options))
    return Op("ListUsage", request, results.UsagePage.from_proto, admin=True)


def get_usage_summary(account_id: str, **options: Unpack[UsageWindow]) -> Op[results.UsageSummary]:
    """Per-action usage totals over a window."""
    request = admin_pb.GetUsageSummaryRequest(account_id=account_id, **_fields(options))
    return Op("GetUsageSummary", request, results.UsageSummary.from_proto, admin=True)


def watch_request(account_id: str = "", types: Sequence[str] = (), after_event_id: str = "") -> Any:
    """The WatchEvents request (a stream, so not an Op)."""
    return admin_pb.WatchEventsRequest(
        account_id=account_id, types=list(types), after_event_id=after_event_id
    )

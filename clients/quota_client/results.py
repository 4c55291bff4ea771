"""Typed, immutable results of the quota API calls, read from the proto responses.

Amounts are int64 counts of the smallest credit unit; ``*_at_ms`` are Unix epoch
milliseconds and ``*_ms`` durations. Field meanings are documented in protos/quota/v1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from .enums import AccountStatus, Decision, LotCategory, QuoteLineKind, to_enum

R = TypeVar("R")


def _read(cls: type[R], message: Any, **overrides: Any) -> R:
    """Build cls from the same-named fields of message; overrides cover the rest."""
    names = (f.name for f in fields(cls))  # type: ignore[arg-type]
    values = {name: getattr(message, name) for name in names if name not in overrides}
    return cls(**values, **overrides)


class _Decided:
    """Mixin for results that carry a Decision."""

    __slots__ = ()
    decision: Decision | int

    @property
    def ok(self) -> bool:
        """True when the call was allowed (``Decision.OK``)."""
        return self.decision == Decision.OK


@dataclass(frozen=True, slots=True)
class ReserveResult(_Decided):
    """Outcome of Reserve: a hold of ``amount_held`` until ``expires_at_ms``, or a denial."""

    decision: Decision | int
    reservation_id: str
    amount_held: int
    available_after: int
    expires_at_ms: int
    retry_after_ms: int
    limit_name: str

    @classmethod
    def from_proto(cls, m: Any, reservation_id: str = "") -> ReserveResult:
        return _read(
            cls,
            m,
            decision=to_enum(Decision, m.decision),
            reservation_id=m.reservation_id or reservation_id,
        )


@dataclass(frozen=True, slots=True)
class CommitResult:
    """Outcome of Commit: what was charged, released, and left uncollected."""

    amount_charged: int
    amount_released: int
    amount_uncharged: int
    available_after: int
    late: bool

    @classmethod
    def from_proto(cls, m: Any) -> CommitResult:
        return _read(cls, m)


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    """Outcome of Release."""

    amount_released: int
    available_after: int

    @classmethod
    def from_proto(cls, m: Any) -> ReleaseResult:
        return _read(cls, m)


@dataclass(frozen=True, slots=True)
class ExtendResult(_Decided):
    """Outcome of Extend; when denied the hold is unchanged."""

    decision: Decision | int
    amount_held: int
    expires_at_ms: int
    available_after: int

    @classmethod
    def from_proto(cls, m: Any) -> ExtendResult:
        return _read(cls, m, decision=to_enum(Decision, m.decision))


@dataclass(frozen=True, slots=True)
class ChargeResult(_Decided):
    """Outcome of Charge, with the charge id that was sent (generated if omitted)."""

    decision: Decision | int
    charge_id: str
    amount_charged: int
    available_after: int
    retry_after_ms: int
    limit_name: str

    @classmethod
    def from_proto(cls, m: Any, charge_id: str = "") -> ChargeResult:
        return _read(cls, m, decision=to_enum(Decision, m.decision), charge_id=charge_id)


@dataclass(frozen=True, slots=True)
class CheckResult(_Decided):
    """Pre-flight answer of Check; nothing was changed."""

    decision: Decision | int
    available: int
    retry_after_ms: int
    limit_name: str

    @classmethod
    def from_proto(cls, m: Any) -> CheckResult:
        return _read(cls, m, decision=to_enum(Decision, m.decision))


@dataclass(frozen=True, slots=True)
class QuoteLine:
    """One price line, rounded up on its own, margin included."""

    kind: QuoteLineKind | int
    quantity_name: str
    quantity: int
    per_1000: int
    fixed_amount: int
    margin_percent: int
    amount: int

    @classmethod
    def from_proto(cls, m: Any) -> QuoteLine:
        return _read(cls, m, kind=to_enum(QuoteLineKind, m.kind))


@dataclass(frozen=True, slots=True)
class QuoteResult:
    """A price: ``amount`` is the sum of the lines' amounts."""

    amount: int
    price_version: str
    lines: tuple[QuoteLine, ...]

    @classmethod
    def from_proto(cls, m: Any) -> QuoteResult:
        return _read(cls, m, lines=tuple(QuoteLine.from_proto(x) for x in m.lines))


@dataclass(frozen=True, slots=True)
class Lot:
    """A credit lot; ``expires_at_ms`` 0 means never."""

    lot_id: str
    category: LotCategory | int
    remaining: int
    priority: int
    expires_at_ms: int

    @classmethod
    def from_proto(cls, m: Any) -> Lot:
        return _read(cls, m, category=to_enum(LotCategory, m.category))


@dataclass(frozen=True, slots=True)
class BillingPeriod:
    """The current billing period and its included credits."""

    start_at_ms: int
    end_at_ms: int
    included: int
    used: int

    @classmethod
    def from_proto(cls, m: Any) -> BillingPeriod:
        return _read(cls, m)


@dataclass(frozen=True, slots=True)
class LimitState:
    """State of one rate limit (token bucket)."""

    name: str
    remaining: int
    capacity: int
    reset_after_ms: int

    @classmethod
    def from_proto(cls, m: Any) -> LimitState:
        return _read(cls, m)


@dataclass(frozen=True, slots=True)
class Balance:
    """Result of GetBalance: ``available == balance - held + credit_limit``."""

    available: int
    held: int
    balance: int
    credit_limit: int
    plan_id: str
    status: AccountStatus | int
    lots: tuple[Lot, ...]
    period: BillingPeriod
    limits: tuple[LimitState, ...]

    @classmethod
    def from_proto(cls, m: Any) -> Balance:
        return _read(
            cls,
            m,
            status=to_enum(AccountStatus, m.status),
            lots=tuple(Lot.from_proto(x) for x in m.lots),
            period=BillingPeriod.from_proto(m.period),
            limits=tuple(LimitState.from_proto(x) for x in m.limits),
        )


@dataclass(frozen=True, slots=True)
class Account:
    """An account's administrative record."""

    account_id: str
    plan_id: str
    credit_limit: int
    status: AccountStatus | int

    @classmethod
    def from_proto(cls, m: Any) -> Account:
        return _read(cls, m, status=to_enum(AccountStatus, m.status))


@dataclass(frozen=True, slots=True)
class UpsertAccountResult:
    """Result of UpsertAccount: the stored account, and whether this call created it."""

    account: Account
    created: bool

    @classmethod
    def from_proto(cls, m: Any) -> UpsertAccountResult:
        return cls(account=Account.from_proto(m.account), created=m.created)


@dataclass(frozen=True, slots=True)
class GrantResult:
    """Result of Grant, with the grant id that was sent (generated if omitted)."""

    grant_id: str
    lot_id: str
    available_after: int

    @classmethod
    def from_proto(cls, m: Any, grant_id: str = "") -> GrantResult:
        return _read(cls, m, grant_id=grant_id)


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One commit or charge; exactly one of reservation_id and charge_id is set."""

    account_id: str
    reservation_id: str
    charge_id: str
    action: str
    quantities: Mapping[str, int]
    amount_charged: int
    amount_uncharged: int
    at_ms: int
    labels: Mapping[str, str]
    late: bool

    @classmethod
    def from_proto(cls, m: Any) -> UsageRecord:
        return _read(cls, m, quantities=dict(m.quantities), labels=dict(m.labels))


@dataclass(frozen=True, slots=True)
class UsagePage:
    """One page of ListUsage; ``next_page_token`` is "" on the last page."""

    records: tuple[UsageRecord, ...]
    next_page_token: str

    @classmethod
    def from_proto(cls, m: Any) -> UsagePage:
        records = tuple(UsageRecord.from_proto(x) for x in m.records)
        return cls(records=records, next_page_token=m.next_page_token)


@dataclass(frozen=True, slots=True)
class ActionUsage:
    """Usage totals of one action over a window."""

    action: str
    count: int
    quantities: Mapping[str, int]
    amount_charged: int
    amount_uncharged: int

    @classmethod
    def from_proto(cls, m: Any) -> ActionUsage:
        return _read(cls, m, quantities=dict(m.quantities))


@dataclass(frozen=True, slots=True)
class UsageSummary:
    """Result of GetUsageSummary."""

    actions: tuple[ActionUsage, ...]
    invoice_total: int

    @classmethod
    def from_proto(cls, m: Any) -> UsageSummary:
        actions = tuple(ActionUsage.from_proto(x) for x in m.actions)
        return cls(actions=actions, invoice_total=m.invoice_total)


@dataclass(frozen=True, slots=True)
class Event:
    """An event from WatchEvents; pass ``event_id`` as ``after_event_id`` to resume."""

    event_id: str
    type: str
    account_id: str
    at_ms: int
    attributes: Mapping[str, str]

    @classmethod
    def from_proto(cls, m: Any) -> Event:
        return _read(cls, m, attributes=dict(m.attributes))

from quota.v1 import enums_pb2 as _enums_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReserveRequest(_message.Message):
    __slots__ = ("account_id", "reservation_id", "amount", "action", "quantities", "ttl_ms", "allow_partial", "min_amount", "on_expire", "labels")
    class QuantitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    QUANTITIES_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    MIN_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    ON_EXPIRE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    reservation_id: str
    amount: int
    action: str
    quantities: _containers.ScalarMap[str, int]
    ttl_ms: int
    allow_partial: bool
    min_amount: int
    on_expire: _enums_pb2.ExpireAction
    labels: _containers.ScalarMap[str, str]
    def __init__(self, account_id: _Optional[str] = ..., reservation_id: _Optional[str] = ..., amount: _Optional[int] = ..., action: _Optional[str] = ..., quantities: _Optional[_Mapping[str, int]] = ..., ttl_ms: _Optional[int] = ..., allow_partial: _Optional[bool] = ..., min_amount: _Optional[int] = ..., on_expire: _Optional[_Union[_enums_pb2.ExpireAction, str]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ReserveResponse(_message.Message):
    __slots__ = ("decision", "reservation_id", "amount_held", "available_after", "expires_at_ms", "retry_after_ms", "limit_name")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_HELD_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_AFTER_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_NAME_FIELD_NUMBER: _ClassVar[int]
    decision: _enums_pb2.Decision
    reservation_id: str
    amount_held: int
    available_after: int
    expires_at_ms: int
    retry_after_ms: int
    limit_name: str
    def __init__(self, decision: _Optional[_Union[_enums_pb2.Decision, str]] = ..., reservation_id: _Optional[str] = ..., amount_held: _Optional[int] = ..., available_after: _Optional[int] = ..., expires_at_ms: _Optional[int] = ..., retry_after_ms: _Optional[int] = ..., limit_name: _Optional[str] = ...) -> None: ...

class CommitRequest(_message.Message):
    __slots__ = ("account_id", "reservation_id", "amount", "quantities", "labels")
    class QuantitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    QUANTITIES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    reservation_id: str
    amount: int
    quantities: _containers.ScalarMap[str, int]
    labels: _containers.ScalarMap[str, str]
    def __init__(self, account_id: _Optional[str] = ..., reservation_id: _Optional[str] = ..., amount: _Optional[int] = ..., quantities: _Optional[_Mapping[str, int]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CommitResponse(_message.Message):
    __slots__ = ("amount_charged", "amount_released", "amount_uncharged", "available_after", "late")
    AMOUNT_CHARGED_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_RELEASED_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_UNCHARGED_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_AFTER_FIELD_NUMBER: _ClassVar[int]
    LATE_FIELD_NUMBER: _ClassVar[int]
    amount_charged: int
    amount_released: int
    amount_uncharged: int
    available_after: int
    late: bool
    def __init__(self, amount_charged: _Optional[int] = ..., amount_released: _Optional[int] = ..., amount_uncharged: _Optional[int] = ..., available_after: _Optional[int] = ..., late: _Optional[bool] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("account_id", "reservation_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    reservation_id: str
    def __init__(self, account_id: _Optional[str] = ..., reservation_id: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("amount_released", "available_after")
    AMOUNT_RELEASED_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_AFTER_FIELD_NUMBER: _ClassVar[int]
    amount_released: int
    available_after: int
    def __init__(self, amount_released: _Optional[int] = ..., available_after: _Optional[int] = ...) -> None: ...

class ExtendRequest(_message.Message):
    __slots__ = ("account_id", "reservation_id", "hold_total", "ttl_ms")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    HOLD_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    reservation_id: str
    hold_total: int
    ttl_ms: int
    def __init__(self, account_id: _Optional[str] = ..., reservation_id: _Optional[str] = ..., hold_total: _Optional[int] = ..., ttl_ms: _Optional[int] = ...) -> None: ...

class ExtendResponse(_message.Message):
    __slots__ = ("decision", "amount_held", "expires_at_ms", "available_after")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_HELD_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_AFTER_FIELD_NUMBER: _ClassVar[int]
    decision: _enums_pb2.Decision
    amount_held: int
    expires_at_ms: int
    available_after: int
    def __init__(self, decision: _Optional[_Union[_enums_pb2.Decision, str]] = ..., amount_held: _Optional[int] = ..., expires_at_ms: _Optional[int] = ..., available_after: _Optional[int] = ...) -> None: ...

class ChargeRequest(_message.Message):
    __slots__ = ("account_id", "charge_id", "amount", "action", "quantities", "labels")
    class QuantitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CHARGE_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    QUANTITIES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    charge_id: str
    amount: int
    action: str
    quantities: _containers.ScalarMap[str, int]
    labels: _containers.ScalarMap[str, str]
    def __init__(self, account_id: _Optional[str] = ..., charge_id: _Optional[str] = ..., amount: _Optional[int] = ..., action: _Optional[str] = ..., quantities: _Optional[_Mapping[str, int]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ChargeResponse(_message.Message):
    __slots__ = ("decision", "amount_charged", "available_after", "retry_after_ms", "limit_name")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_CHARGED_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_AFTER_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_NAME_FIELD_NUMBER: _ClassVar[int]
    decision: _enums_pb2.Decision
    amount_charged: int
    available_after: int
    retry_after_ms: int
    limit_name: str
    def __init__(self, decision: _Optional[_Union[_enums_pb2.Decision, str]] = ..., amount_charged: _Optional[int] = ..., available_after: _Optional[int] = ..., retry_after_ms: _Optional[int] = ..., limit_name: _Optional[str] = ...) -> None: ...

class CheckRequest(_message.Message):
    __slots__ = ("account_id", "amount", "action", "quantities")
    class QuantitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    QUANTITIES_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    amount: int
    action: str
    quantities: _containers.ScalarMap[str, int]
    def __init__(self, account_id: _Optional[str] = ..., amount: _Optional[int] = ..., action: _Optional[str] = ..., quantities: _Optional[_Mapping[str, int]] = ...) -> None: ...

class CheckResponse(_message.Message):
    __slots__ = ("decision", "available", "retry_after_ms", "limit_name")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_NAME_FIELD_NUMBER: _ClassVar[int]
    decision: _enums_pb2.Decision
    available: int
    retry_after_ms: int
    limit_name: str
    def __init__(self, decision: _Optional[_Union[_enums_pb2.Decision, str]] = ..., available: _Optional[int] = ..., retry_after_ms: _Optional[int] = ..., limit_name: _Optional[str] = ...) -> None: ...

class QuoteRequest(_message.Message):
    __slots__ = ("account_id", "action", "quantities")
    class QuantitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    QUANTITIES_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    action: str
    quantities: _containers.ScalarMap[str, int]
    def __init__(self, account_id: _Optional[str] = ..., action: _Optional[str] = ..., quantities: _Optional[_Mapping[str, int]] = ...) -> None: ...

class QuoteResponse(_message.Message):
    __slots__ = ("amount", "price_version", "lines")
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    PRICE_VERSION_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    amount: int
    price_version: str
    lines: _containers.RepeatedCompositeFieldContainer[QuoteLine]
    def __init__(self, amount: _Optional[int] = ..., price_version: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[QuoteLine, _Mapping]]] = ...) -> None: ...

class QuoteLine(_message.Message):
    __slots__ = ("kind", "quantity_name", "quantity", "per_1000", "fixed_amount", "margin_percent", "amount")
    KIND_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_NAME_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    PER_1000_FIELD_NUMBER: _ClassVar[int]
    FIXED_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    MARGIN_PERCENT_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    kind: _enums_pb2.QuoteLineKind
    quantity_name: str
    quantity: int
    per_1000: int
    fixed_amount: int
    margin_percent: int
    amount: int
    def __init__(self, kind: _Optional[_Union[_enums_pb2.QuoteLineKind, str]] = ..., quantity_name: _Optional[str] = ..., quantity: _Optional[int] = ..., per_1000: _Optional[int] = ..., fixed_amount: _Optional[int] = ..., margin_percent: _Optional[int] = ..., amount: _Optional[int] = ...) -> None: ...

class GetBalanceRequest(_message.Message):
    __slots__ = ("account_id",)
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    def __init__(self, account_id: _Optional[str] = ...) -> None: ...

class GetBalanceResponse(_message.Message):
    __slots__ = ("available", "held", "balance", "credit_limit", "plan_id", "lots", "period", "limits", "status")
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    CREDIT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    LOTS_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    available: int
    held: int
    balance: int
    credit_limit: int
    plan_id: str
    lots: _containers.RepeatedCompositeFieldContainer[Lot]
    period: BillingPeriod
    limits: _containers.RepeatedCompositeFieldContainer[LimitState]
    status: _enums_pb2.AccountStatus
    def __init__(self, available: _Optional[int] = ..., held: _Optional[int] = ..., balance: _Optional[int] = ..., credit_limit: _Optional[int] = ..., plan_id: _Optional[str] = ..., lots: _Optional[_Iterable[_Union[Lot, _Mapping]]] = ..., period: _Optional[_Union[BillingPeriod, _Mapping]] = ..., limits: _Optional[_Iterable[_Union[LimitState, _Mapping]]] = ..., status: _Optional[_Union[_enums_pb2.AccountStatus, str]] = ...) -> None: ...

class Lot(_message.Message):
    __slots__ = ("lot_id", "category", "remaining", "priority", "expires_at_ms")
    LOT_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    lot_id: str
    category: _enums_pb2.LotCategory
    remaining: int
    priority: int
    expires_at_ms: int
    def __init__(self, lot_id: _Optional[str] = ..., category: _Optional[_Union[_enums_pb2.LotCategory, str]] = ..., remaining: _Optional[int] = ..., priority: _Optional[int] = ..., expires_at_ms: _Optional[int] = ...) -> None: ...

class BillingPeriod(_message.Message):
    __slots__ = ("start_at_ms", "end_at_ms", "included", "used")
    START_AT_MS_FIELD_NUMBER: _ClassVar[int]
    END_AT_MS_FIELD_NUMBER: _ClassVar[int]
    INCLUDED_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    start_at_ms: int
    end_at_ms: int
    included: int
    used: int
    def __init__(self, start_at_ms: _Optional[int] = ..., end_at_ms: _Optional[int] = ..., included: _Optional[int] = ..., used: _Optional[int] = ...) -> None: ...

class LimitState(_message.Message):
    __slots__ = ("name", "remaining", "capacity", "reset_after_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    RESET_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    remaining: int
    capacity: int
    reset_after_ms: int
    def __init__(self, name: _Optional[str] = ..., remaining: _Optional[int] = ..., capacity: _Optional[int] = ..., reset_after_ms: _Optional[int] = ...) -> None: ...

class BatchRequest(_message.Message):
    __slots__ = ("ops",)
    OPS_FIELD_NUMBER: _ClassVar[int]
    ops: _containers.RepeatedCompositeFieldContainer[BatchOp]
    def __init__(self, ops: _Optional[_Iterable[_Union[BatchOp, _Mapping]]] = ...) -> None: ...

class BatchOp(_message.Message):
    __slots__ = ("reserve", "commit", "release", "extend", "charge", "check", "quote", "get_balance")
    RESERVE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    EXTEND_FIELD_NUMBER: _ClassVar[int]
    CHARGE_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    QUOTE_FIELD_NUMBER: _ClassVar[int]
    GET_BALANCE_FIELD_NUMBER: _ClassVar[int]
    reserve: ReserveRequest
    commit: CommitRequest
    release: ReleaseRequest
    extend: ExtendRequest
    charge: ChargeRequest
    check: CheckRequest
    quote: QuoteRequest
    get_balance: GetBalanceRequest
    def __init__(self, reserve: _Optional[_Union[ReserveRequest, _Mapping]] = ..., commit: _Optional[_Union[CommitRequest, _Mapping]] = ..., release: _Optional[_Union[ReleaseRequest, _Mapping]] = ..., extend: _Optional[_Union[ExtendRequest, _Mapping]] = ..., charge: _Optional[_Union[ChargeRequest, _Mapping]] = ..., check: _Optional[_Union[CheckRequest, _Mapping]] = ..., quote: _Optional[_Union[QuoteRequest, _Mapping]] = ..., get_balance: _Optional[_Union[GetBalanceRequest, _Mapping]] = ...) -> None: ...

class BatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BatchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[BatchResult, _Mapping]]] = ...) -> None: ...

class BatchResult(_message.Message):
    __slots__ = ("reserve", "commit", "release", "extend", "charge", "check", "quote", "get_balance", "error")
    RESERVE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    EXTEND_FIELD_NUMBER: _ClassVar[int]
    CHARGE_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    QUOTE_FIELD_NUMBER: _ClassVar[int]
    GET_BALANCE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    reserve: ReserveResponse
    commit: CommitResponse
    release: ReleaseResponse
    extend: ExtendResponse
    charge: ChargeResponse
    check: CheckResponse
    quote: QuoteResponse
    get_balance: GetBalanceResponse
    error: BatchError
    def __init__(self, reserve: _Optional[_Union[ReserveResponse, _Mapping]] = ..., commit: _Optional[_Union[CommitResponse, _Mapping]] = ..., release: _Optional[_Union[ReleaseResponse, _Mapping]] = ..., extend: _Optional[_Union[ExtendResponse, _Mapping]] = ..., charge: _Optional[_Union[ChargeResponse, _Mapping]] = ..., check: _Optional[_Union[CheckResponse, _Mapping]] = ..., quote: _Optional[_Union[QuoteResponse, _Mapping]] = ..., get_balance: _Optional[_Union[GetBalanceResponse, _Mapping]] = ..., error: _Optional[_Union[BatchError, _Mapping]] = ...) -> None: ...

class BatchError(_message.Message):
    __slots__ = ("code", "message", "reason", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    reason: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., reason: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

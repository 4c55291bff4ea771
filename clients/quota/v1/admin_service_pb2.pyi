from quota.v1 import enums_pb2 as _enums_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Account(_message.Message):
    __slots__ = ("account_id", "plan_id", "credit_limit", "status")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    CREDIT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    plan_id: str
    credit_limit: int
    status: _enums_pb2.AccountStatus
    def __init__(self, account_id: _Optional[str] = ..., plan_id: _Optional[str] = ..., credit_limit: _Optional[int] = ..., status: _Optional[_Union[_enums_pb2.AccountStatus, str]] = ...) -> None: ...

class UpsertAccountRequest(_message.Message):
    __slots__ = ("account_id", "plan_id", "credit_limit", "status")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    CREDIT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    plan_id: str
    credit_limit: int
    status: _enums_pb2.AccountStatus
    def __init__(self, account_id: _Optional[str] = ..., plan_id: _Optional[str] = ..., credit_limit: _Optional[int] = ..., status: _Optional[_Union[_enums_pb2.AccountStatus, str]] = ...) -> None: ...

class UpsertAccountResponse(_message.Message):
    __slots__ = ("account", "created")
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    account: Account
    created: bool
    def __init__(self, account: _Optional[_Union[Account, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetAccountRequest(_message.Message):
    __slots__ = ("account_id",)
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    def __init__(self, account_id: _Optional[str] = ...) -> None: ...

class GetAccountResponse(_message.Message):
    __slots__ = ("account",)
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    account: Account
    def __init__(self, account: _Optional[_Union[Account, _Mapping]] = ...) -> None: ...

class GrantRequest(_message.Message):
    __slots__ = ("account_id", "grant_id", "amount", "category", "priority", "expires_at_ms")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    grant_id: str
    amount: int
    category: _enums_pb2.LotCategory
    priority: int
    expires_at_ms: int
    def __init__(self, account_id: _Optional[str] = ..., grant_id: _Optional[str] = ..., amount: _Optional[int] = ..., category: _Optional[_Union[_enums_pb2.LotCategory, str]] = ..., priority: _Optional[int] = ..., expires_at_ms: _Optional[int] = ...) -> None: ...

class GrantResponse(_message.Message):
    __slots__ = ("lot_id", "available_after")
    LOT_ID_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_AFTER_FIELD_NUMBER: _ClassVar[int]
    lot_id: str
    available_after: int
    def __init__(self, lot_id: _Optional[str] = ..., available_after: _Optional[int] = ...) -> None: ...

class ListUsageRequest(_message.Message):
    __slots__ = ("account_id", "from_at_ms", "to_at_ms", "page_size", "page_token")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_AT_MS_FIELD_NUMBER: _ClassVar[int]
    TO_AT_MS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    from_at_ms: int
    to_at_ms: int
    page_size: int
    page_token: str
    def __init__(self, account_id: _Optional[str] = ..., from_at_ms: _Optional[int] = ..., to_at_ms: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListUsageResponse(_message.Message):
    __slots__ = ("records", "next_page_token")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[UsageRecord]
    next_page_token: str
    def __init__(self, records: _Optional[_Iterable[_Union[UsageRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UsageRecord(_message.Message):
    __slots__ = ("account_id", "reservation_id", "charge_id", "action", "quantities", "amount_charged", "amount_uncharged", "at_ms", "labels", "late")
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
    CHARGE_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    QUANTITIES_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_CHARGED_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_UNCHARGED_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LATE_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    reservation_id: str
    charge_id: str
    action: str
    quantities: _containers.ScalarMap[str, int]
    amount_charged: int
    amount_uncharged: int
    at_ms: int
    labels: _containers.ScalarMap[str, str]
    late: bool
    def __init__(self, account_id: _Optional[str] = ..., reservation_id: _Optional[str] = ..., charge_id: _Optional[str] = ..., action: _Optional[str] = ..., quantities: _Optional[_Mapping[str, int]] = ..., amount_charged: _Optional[int] = ..., amount_uncharged: _Optional[int] = ..., at_ms: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., late: _Optional[bool] = ...) -> None: ...

class GetUsageSummaryRequest(_message.Message):
    __slots__ = ("account_id", "from_at_ms", "to_at_ms")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_AT_MS_FIELD_NUMBER: _ClassVar[int]
    TO_AT_MS_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    from_at_ms: int
    to_at_ms: int
    def __init__(self, account_id: _Optional[str] = ..., from_at_ms: _Optional[int] = ..., to_at_ms: _Optional[int] = ...) -> None: ...

class GetUsageSummaryResponse(_message.Message):
    __slots__ = ("actions", "invoice_total")
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    INVOICE_TOTAL_FIELD_NUMBER: _ClassVar[int]
    actions: _containers.RepeatedCompositeFieldContainer[ActionUsage]
    invoice_total: int
    def __init__(self, actions: _Optional[_Iterable[_Union[ActionUsage, _Mapping]]] = ..., invoice_total: _Optional[int] = ...) -> None: ...

class ActionUsage(_message.Message):
    __slots__ = ("action", "count", "quantities", "amount_charged", "amount_uncharged")
    class QuantitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ACTION_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    QUANTITIES_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_CHARGED_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_UNCHARGED_FIELD_NUMBER: _ClassVar[int]
    action: str
    count: int
    quantities: _containers.ScalarMap[str, int]
    amount_charged: int
    amount_uncharged: int
    def __init__(self, action: _Optional[str] = ..., count: _Optional[int] = ..., quantities: _Optional[_Mapping[str, int]] = ..., amount_charged: _Optional[int] = ..., amount_uncharged: _Optional[int] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("account_id", "types", "after_event_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    AFTER_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    types: _containers.RepeatedScalarFieldContainer[str]
    after_event_id: str
    def __init__(self, account_id: _Optional[str] = ..., types: _Optional[_Iterable[str]] = ..., after_event_id: _Optional[str] = ...) -> None: ...

class WatchEventsResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: Event
    def __init__(self, event: _Optional[_Union[Event, _Mapping]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("event_id", "type", "account_id", "at_ms", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    type: str
    account_id: str
    at_ms: int
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, event_id: _Optional[str] = ..., type: _Optional[str] = ..., account_id: _Optional[str] = ..., at_ms: _Optional[int] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    DECISION_OK: _ClassVar[Decision]
    DECISION_INSUFFICIENT_CREDITS: _ClassVar[Decision]
    DECISION_RATE_LIMITED: _ClassVar[Decision]
    DECISION_CONCURRENCY_LIMITED: _ClassVar[Decision]
    DECISION_FEATURE_NOT_IN_PLAN: _ClassVar[Decision]
    DECISION_ACCOUNT_SUSPENDED: _ClassVar[Decision]

class ExpireAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPIRE_ACTION_UNSPECIFIED: _ClassVar[ExpireAction]
    EXPIRE_ACTION_RELEASE: _ClassVar[ExpireAction]
    EXPIRE_ACTION_COMMIT: _ClassVar[ExpireAction]

class LotCategory(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOT_CATEGORY_UNSPECIFIED: _ClassVar[LotCategory]
    LOT_CATEGORY_PURCHASED: _ClassVar[LotCategory]
    LOT_CATEGORY_PROMOTIONAL: _ClassVar[LotCategory]
    LOT_CATEGORY_INCLUDED: _ClassVar[LotCategory]
    LOT_CATEGORY_ADJUSTMENT: _ClassVar[LotCategory]

class AccountStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACCOUNT_STATUS_UNSPECIFIED: _ClassVar[AccountStatus]
    ACCOUNT_STATUS_ACTIVE: _ClassVar[AccountStatus]
    ACCOUNT_STATUS_SUSPENDED: _ClassVar[AccountStatus]

class QuoteLineKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUOTE_LINE_KIND_UNSPECIFIED: _ClassVar[QuoteLineKind]
    QUOTE_LINE_KIND_FIXED: _ClassVar[QuoteLineKind]
    QUOTE_LINE_KIND_METERED: _ClassVar[QuoteLineKind]
DECISION_UNSPECIFIED: Decision
DECISION_OK: Decision
DECISION_INSUFFICIENT_CREDITS: Decision
DECISION_RATE_LIMITED: Decision
DECISION_CONCURRENCY_LIMITED: Decision
DECISION_FEATURE_NOT_IN_PLAN: Decision
DECISION_ACCOUNT_SUSPENDED: Decision
EXPIRE_ACTION_UNSPECIFIED: ExpireAction
EXPIRE_ACTION_RELEASE: ExpireAction
EXPIRE_ACTION_COMMIT: ExpireAction
LOT_CATEGORY_UNSPECIFIED: LotCategory
LOT_CATEGORY_PURCHASED: LotCategory
LOT_CATEGORY_PROMOTIONAL: LotCategory
LOT_CATEGORY_INCLUDED: LotCategory
LOT_CATEGORY_ADJUSTMENT: LotCategory
ACCOUNT_STATUS_UNSPECIFIED: AccountStatus
ACCOUNT_STATUS_ACTIVE: AccountStatus
ACCOUNT_STATUS_SUSPENDED: AccountStatus
QUOTE_LINE_KIND_UNSPECIFIED: QuoteLineKind
QUOTE_LINE_KIND_FIXED: QuoteLineKind
QUOTE_LINE_KIND_METERED: QuoteLineKind

"""Client library of the quota-and-credit authorization service (quota.v1).

    from quota_client import QuotaClient

    with QuotaClient("127.0.0.1:50051", api_key="...") as client:
        result = client.charge("acct-1", action="image.generate")
        if not result.ok:
            print("denied:", result.decision.name)

``AsyncQuotaClient`` is the same API for asyncio. Build batch items with ``quota_client.ops``.
"""

from . import ops
from .aio import AsyncQuotaClient
from .client import QuotaClient
from .enums import AccountStatus, Decision, ExpireAction, LotCategory, QuoteLineKind
from .errors import (
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    Denied,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Overloaded,
    PermissionDenied,
    QuotaError,
    Unauthenticated,
    Unavailable,
)
from .reservation import AsyncReservation, Reservation
from .results import (
    Account,
    ActionUsage,
    Balance,
    BillingPeriod,
    ChargeResult,
    CheckResult,
    CommitResult,
    Event,
    ExtendResult,
    GrantResult,
    LimitState,
    Lot,
    QuoteLine,
    QuoteResult,
    ReleaseResult,
    ReserveResult,
    UpsertAccountResult,
    UsagePage,
    UsageRecord,
    UsageSummary,
)
from .retry import NO_RETRY, RETRYABLE_CODES, RetryPolicy

__version__ = "0.1.0"

__all__ = [
    "AccountStatus",
    "Account",
    "ActionUsage",
    "AlreadyExists",
    "AsyncQuotaClient",
    "AsyncReservation",
    "Balance",
    "BillingPeriod",
    "Cancelled",
    "ChargeResult",
    "CheckResult",
    "CommitResult",
    "DeadlineExceeded",
    "Decision",
    "Denied",
    "Event",
    "ExpireAction",
    "ExtendResult",
    "FailedPrecondition",
    "GrantResult",
    "Internal",
    "InvalidArgument",
    "LimitState",
    "Lot",
    "LotCategory",
    "NO_RETRY",
    "NotFound",
    "Overloaded",
    "PermissionDenied",
    "QuotaClient",
    "QuotaError",
    "QuoteLine",
    "QuoteLineKind",
    "QuoteResult",
    "RETRYABLE_CODES",
    "ReleaseResult",
    "Reservation",
    "ReserveResult",
    "RetryPolicy",
    "Unauthenticated",
    "Unavailable",
    "UpsertAccountResult",
    "UsagePage",
    "UsageRecord",
    "UsageSummary",
    "ops",
]

"""Operational errors and the one table that maps them to gRPC status codes.

Business denials are never errors (they are a `decision` in a successful response). Everything
here is a request that could not be judged; each carries a machine-readable reason that goes out
as `google.rpc.ErrorInfo.reason`.
"""

from __future__ import annotations

import grpc

from _fastledger import codes as C

DOMAIN = "quota.v1"


class QuotaError(Exception):
    """A request that cannot be judged: a gRPC status plus a machine-readable reason."""

    def __init__(self, reason: str, message: str, *, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata = metadata or {}

    @property
    def code(self) -> grpc.StatusCode:
        return REASON_TO_CODE.get(self.reason, grpc.StatusCode.INTERNAL)


# The one table: reason -> gRPC status code.
REASON_TO_CODE: dict[str, grpc.StatusCode] = {
    "INVALID_ID": grpc.StatusCode.INVALID_ARGUMENT,
    "INVALID_AMOUNT": grpc.StatusCode.INVALID_ARGUMENT,
    "INVALID_TTL": grpc.StatusCode.INVALID_ARGUMENT,
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "UNKNOWN_ACTION": grpc.StatusCode.INVALID_ARGUMENT,
    "MESSAGE_TOO_LARGE": grpc.StatusCode.INVALID_ARGUMENT,
    "ACCOUNT_NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "PLAN_NOT_FOUND": grpc.StatusCode.NOT_FOUND,  # proto UpsertAccountRequest.plan_id: "Unknown is NOT_FOUND"
    "RESERVATION_NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "IDEMPOTENCY_KEY_REUSED": grpc.StatusCode.ALREADY_EXISTS,
    "RESERVATION_COMMITTED": grpc.StatusCode.FAILED_PRECONDITION,
    "RESERVATION_RELEASED": grpc.StatusCode.FAILED_PRECONDITION,
    "RESERVATION_EXPIRED": grpc.StatusCode.FAILED_PRECONDITION,
    "LIMIT_EXCEEDED": grpc.StatusCode.FAILED_PRECONDITION,
    "OVERFLOW": grpc.StatusCode.FAILED_PRECONDITION,
    "RESPONSE_TOO_LARGE": grpc.StatusCode.FAILED_PRECONDITION,  # one usage record above max_message_bytes
    "UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
    "PERMISSION_DENIED": grpc.StatusCode.PERMISSION_DENIED,
    "OVERLOADED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "STORAGE_UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "SHUTTING_DOWN": grpc.StatusCode.UNAVAILABLE,
    "STORAGE_ERROR": grpc.StatusCode.INTERNAL,  # stored data that cannot be read (damaged)
    "NOT_OWNER": grpc.StatusCode.UNAVAILABLE,
}

# Core status -> (reason, message).
_CORE_STATUS: dict[int, tuple[str, str]] = {
    C.INVALID_ID: ("INVALID_ID", "an id is empty, longer than 128 characters, or has a character outside [A-Za-z0-9._:@/-]"),
    C.INVALID_AMOUNT: ("INVALID_AMOUNT", "amount out of range"),
    C.INVALID_TTL: ("INVALID_TTL", "ttl out of range"),
    C.INVALID_ARGUMENT: ("INVALID_ARGUMENT", "malformed request"),
    C.ACCOUNT_NOT_FOUND: ("ACCOUNT_NOT_FOUND", "unknown account"),
    C.RESERVATION_NOT_FOUND: ("RESERVATION_NOT_FOUND", "unknown reservation"),
    C.PLAN_REQUIRED: ("PLAN_NOT_FOUND", "creating an account needs a known plan_id"),
    C.IDEMPOTENCY_KEY_REUSED: ("IDEMPOTENCY_KEY_REUSED", "this id was already used with different parameters"),
    C.RESERVATION_COMMITTED: ("RESERVATION_COMMITTED", "the reservation was already committed"),
    C.RESERVATION_RELEASED: ("RESERVATION_RELEASED", "the reservation was already released"),
    C.RESERVATION_EXPIRED: ("RESERVATION_EXPIRED", "the hold expired and is no longer open"),
    C.LIMIT_EXCEEDED: ("LIMIT_EXCEEDED", "a per-account table is full (lots, open holds or rate limits)"),
    C.OVERFLOW: ("OVERFLOW", "an account counter would overflow int64"),
}


def from_core_status(status: int, *, detail: str = "") -> QuotaError:
    """The QuotaError for a non-OK core status."""
    reason, message = _CORE_STATUS.get(status, ("INTERNAL", f"core status {status}"))
    return QuotaError(reason, f"{message}{': ' + detail if detail else ''}")


class Unavailable(QuotaError):
    def __init__(self, message: str = "storage cannot persist right now; retry with the same id") -> None:
        super().__init__("STORAGE_UNAVAILABLE", message)


class Overloaded(QuotaError):
    def __init__(self, message: str = "the server's queue is full; retry later") -> None:
        super().__init__("OVERLOADED", message)


class ShuttingDown(QuotaError):
    def __init__(self) -> None:
        super().__init__("SHUTTING_DOWN", "the server is shutting down; retry on another instance")

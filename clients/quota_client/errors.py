"""Typed exceptions: one class per gRPC status the quota API uses, plus Denied.

``reason`` and ``metadata`` come from the ``google.rpc.ErrorInfo`` in the status details
(e.g. reason ``RESERVATION_RELEASED``), so callers can branch without parsing messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

if TYPE_CHECKING:
    from .enums import Decision


class QuotaError(Exception):
    """Base of every error raised by the client.

    ``code`` is the gRPC status code (None for Denied), ``reason`` the ErrorInfo reason
    ("" when the server sent none), ``metadata`` the ErrorInfo metadata.
    """

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.metadata: Mapping[str, str] = dict(metadata or {})

    def __str__(self) -> str:
        code = self.code.name if self.code is not None else type(self).__name__
        reason = f" [{self.reason}]" if self.reason else ""
        return f"{code}{reason}: {self.message}"


class InvalidArgument(QuotaError):
    """Malformed input: bad id, amount out of range, unknown action, bad TTL."""


class NotFound(QuotaError):
    """Unknown account, reservation or plan."""


class AlreadyExists(QuotaError):
    """An idempotency id was reused with different parameters."""


class FailedPrecondition(QuotaError):
    """The call does not fit the object's state (e.g. commit after release)."""


class Unauthenticated(QuotaError):
    """Missing or bad credentials."""


class PermissionDenied(QuotaError):
    """The caller's tenant or role may not do this."""


class Overloaded(QuotaError):
    """RESOURCE_EXHAUSTED. With reason ``OVERLOADED`` the server's queue is full: retry later
    with the same id (``retryable``). Without it, gRPC itself refused a message far above the
    server's size limit: retrying cannot help (``retryable`` is False); split the Batch."""

    retryable = True


class Unavailable(QuotaError):
    """Storage cannot persist right now; safe to retry with the same id."""

    retryable = True


class DeadlineExceeded(QuotaError):
    """No answer within the deadline; the call may or may not have taken effect."""

    retryable = True


class Cancelled(QuotaError):
    """The call was cancelled."""


class Internal(QuotaError):
    """A server bug or an unexpected failure (INTERNAL, UNKNOWN, DATA_LOSS)."""


class Denied(QuotaError):
    """A business denial, raised only when asked (``raise_on_denial=True``).

    ``result`` is the typed result that carried the denial.
    """

    def __init__(self, result: Any) -> None:
        self.decision: Decision | int = result.decision
        self.retry_after_ms: int = getattr(result, "retry_after_ms", 0)
        self.limit_name: str = getattr(result, "limit_name", "")
        self.result = result
        name = getattr(self.decision, "name", str(self.decision))
        message = name
        if self.limit_name:
            message += f" by {self.limit_name}"
        if self.retry_after_ms:
            message += f", retry after {self.retry_after_ms} ms"
        super().__init__(message, reason=f"DECISION_{name}")


_BY_CODE: dict[grpc.StatusCode, type[QuotaError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.UNKNOWN: Internal,
    grpc.StatusCode.DATA_LOSS: Internal,
}
_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
OVERLOADED_REASON = "OVERLOADED"  # the only RESOURCE_EXHAUSTED worth retrying


def from_status(
    code: grpc.StatusCode | int,
    message: str,
    reason: str = "",
    metadata: Mapping[str, str] | None = None,
) -> QuotaError:
    """The typed error for a status code (enum or wire number)."""
    if isinstance(code, int):
        code = _CODE_BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
    cls = _BY_CODE.get(code, QuotaError)
    error = cls(message, code=code, reason=reason, metadata=metadata)
    if cls is Overloaded and reason != OVERLOADED_REASON:
        error.retryable = False
    return error


def from_rpc_error(error: grpc.RpcError) -> QuotaError:
    """The typed error for a failed call (sync RpcError or grpc.aio AioRpcError)."""
    code = error.code()  # type: ignore[attr-defined]
    message = error.details() or ""  # type: ignore[attr-defined]
    info = _error_info(error)
    if info is None:
        return from_status(code, message)
    return from_status(code, message, info.reason, dict(info.metadata))


def _error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The first google.rpc.ErrorInfo in the status details, if any."""
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except (ValueError, TypeError):  # details inconsistent with the call's status
        return None
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None

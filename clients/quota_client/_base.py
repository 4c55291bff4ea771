"""What the blocking and the asyncio client share: configuration and reading results."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc

from .errors import OVERLOADED_REASON, Denied, _error_info
from .ops import Op
from .retry import RetryPolicy

T = TypeVar("T")

#: Per-attempt deadline of unary calls, in seconds, unless the client or the call says.
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_RETRY = RetryPolicy()

Metadata = Sequence[tuple[str, str]]


def call_metadata(api_key: str | None, metadata: Metadata) -> tuple[tuple[str, str], ...]:
    """Metadata sent with every call: ``authorization: Bearer <api_key>`` plus extras."""
    auth = (("authorization", f"Bearer {api_key}"),) if api_key else ()
    return auth + tuple(metadata)


class ClientBase:
    """Holds the options; subclasses add the channel and the way calls are awaited."""

    def __init__(
        self,
        *,
        api_key: str | None,
        metadata: Metadata,
        timeout: float | None,
        retry: RetryPolicy,
        raise_on_denial: bool,
        rand: Callable[[], float],
    ) -> None:
        self._metadata = call_metadata(api_key, metadata)
        self._timeout = timeout
        self._retry = retry
        self._raise_on_denial = raise_on_denial
        self._rand = rand

    def _deadline(self, timeout: float | None) -> float | None:
        return self._timeout if timeout is None else timeout

    def _retry_delay(self, error: grpc.RpcError, attempt: int) -> float | None:
        """Seconds to wait before the next attempt, or None when the failure is final."""
        code = error.code()  # type: ignore[attr-defined]
        if not self._retry.should_retry(code, attempt):
            return None
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            info = _error_info(error)
            if info is None or info.reason != OVERLOADED_REASON:  # not overload: a message far too large
                return None
        return self._retry.backoff_s(attempt, self._rand)

    def _watch_retry_delay(self, error: grpc.RpcError, attempt: int) -> float | None:
        """As _retry_delay, but a stream that ran out its own deadline is over."""
        if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
            return None
        return self._retry_delay(error, attempt)

    def _finish(self, op: Op[T], response: Any, raise_on_denial: bool | None) -> T:
        result = op.convert(response)
        deny = self._raise_on_denial if raise_on_denial is None else raise_on_denial
        if deny and op.can_deny and not result.ok:  # type: ignore[attr-defined]
            raise Denied(result)
        return result


def open_channel(
    module: Any,
    target: str | None,
    credentials: grpc.ChannelCredentials | None,
    options: Sequence[tuple[str, Any]],
) -> Any:
    """A channel from ``grpc`` or ``grpc.aio``: TLS when credentials are given."""
    if credentials is not None:
        return module.secure_channel(target, credentials, options=list(options))
    return module.insecure_channel(target, options=list(options))

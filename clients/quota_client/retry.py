"""Retry policy: exponential backoff with full jitter, on transient status codes only.

Retrying is safe because every mutating call carries an idempotency id that the client
chooses once per logical call (see ops.py): a retried reserve or charge returns the
original result instead of charging twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import grpc

#: The server is reachable but could not answer: storage down, overloaded, too slow.
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to retry a call.

    ``max_attempts`` counts the first try (1 disables retries). The n-th retry waits a
    random time in ``[0, min(max_backoff_s, initial_backoff_s * multiplier**(n-1)))``.
    """

    max_attempts: int = 4
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    retry_codes: frozenset[grpc.StatusCode] = RETRYABLE_CODES

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("backoff times must not be negative")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")

    def should_retry(self, code: grpc.StatusCode, attempt: int) -> bool:
        """Whether a call whose ``attempt``-th try (1-based) failed with code is retried."""
        return attempt < self.max_attempts and code in self.retry_codes

    def backoff_s(self, attempt: int, rand: Callable[[], float]) -> float:
        """Seconds to wait after the ``attempt``-th try failed; rand() is in [0, 1)."""
        ceiling = self.initial_backoff_s * self.multiplier ** min(attempt - 1, 64)
        return min(self.max_backoff_s, ceiling) * rand()


NO_RETRY = RetryPolicy(max_attempts=1)


def new_id() -> str:
    """A fresh idempotency id (32 hex characters, valid in every id field)."""
    return uuid.uuid4().hex

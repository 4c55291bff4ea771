"""Python mirrors of the quota.v1 enums, without the proto's value prefixes.

The numbers are the wire numbers (a test checks them against the generated stubs), so a
member can be passed wherever the proto expects the enum.
"""

from __future__ import annotations

import enum
from typing import TypeVar

E = TypeVar("E", bound=enum.IntEnum)


class Decision(enum.IntEnum):
    """Business outcome of a call that may be denied (proto ``Decision``)."""

    UNSPECIFIED = 0
    OK = 1
    INSUFFICIENT_CREDITS = 2
    RATE_LIMITED = 3
    CONCURRENCY_LIMITED = 4
    FEATURE_NOT_IN_PLAN = 5
    ACCOUNT_SUSPENDED = 6


class ExpireAction(enum.IntEnum):
    """What happens to a hold whose TTL runs out (proto ``ExpireAction``)."""

    UNSPECIFIED = 0
    RELEASE = 1
    COMMIT = 2


class LotCategory(enum.IntEnum):
    """Kind of credit lot (proto ``LotCategory``)."""

    UNSPECIFIED = 0
    PURCHASED = 1
    PROMOTIONAL = 2
    INCLUDED = 3
    ADJUSTMENT = 4


class AccountStatus(enum.IntEnum):
    """Administrative state of an account (proto ``AccountStatus``)."""

    UNSPECIFIED = 0
    ACTIVE = 1
    SUSPENDED = 2


class QuoteLineKind(enum.IntEnum):
    """Fixed or metered price line (proto ``QuoteLineKind``)."""

    UNSPECIFIED = 0
    FIXED = 1
    METERED = 2


def to_enum(cls: type[E], value: int) -> E | int:
    """The member for a wire value, or the bare int if this client predates the value."""
    try:
        return cls(value)
    except ValueError:
        return value

"""Request validation shared by the servicers: ids, amounts, TTLs, maps.

Every check raises a QuotaError with the reason the API contract names, before anything is
queued, so bad input never reaches the core.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from _fastledger import codes as C

from .errors import QuotaError

_ID_RE = re.compile(r"[A-Za-z0-9._:@/-]{1,128}\Z")

MAP_ENTRIES_MAX = 64  # quantities or labels per request
LABEL_KEY_MAX = 128
LABEL_VALUE_MAX = 1024
ACTION_MAX = 128


def check_id(value: str, field: str) -> str:
    if not _ID_RE.match(value):
        raise QuotaError(
            "INVALID_ID",
            f"{field} must be 1 to 128 characters from [A-Za-z0-9._:@/-], got {value[:140]!r}",
            metadata={"field": field},
        )
    return value


def check_amount(value: int, field: str, *, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if not low <= value <= C.AMOUNT_MAX:
        raise QuotaError(
            "INVALID_AMOUNT",
            f"{field} must be in {low}..{C.AMOUNT_MAX}, got {value}",
            metadata={"field": field},
        )
    return value


def check_ttl_ms(value: int, field: str, *, default_ms: int, max_ms: int) -> int:
    """A TTL in ms: 0 means `default_ms`; negative or above `max_ms` is refused."""
    if value == 0:
        return default_ms
    if not 0 < value <= max_ms:
        raise QuotaError(
            "INVALID_TTL", f"{field} must be in 1..{max_ms} ms (0 = default), got {value}",
            metadata={"field": field},
        )
    return value


def check_action(action: str) -> str:
    if action and not _ID_RE.match(action):
        raise QuotaError("INVALID_ARGUMENT", f"action must be 1 to {ACTION_MAX} characters from [A-Za-z0-9._:@/-]",
                         metadata={"field": "action"})
    return action


def check_quantities(quantities: Mapping[str, int]) -> dict[str, int]:
    if len(quantities) > MAP_ENTRIES_MAX:
        raise QuotaError("INVALID_ARGUMENT", f"at most {MAP_ENTRIES_MAX} quantities", metadata={"field": "quantities"})
    out = {}
    for name, value in quantities.items():
        if not name or len(name) > LABEL_KEY_MAX:
            raise QuotaError("INVALID_ARGUMENT", "quantity names must be 1 to 128 characters",
                             metadata={"field": "quantities"})
        if not 0 <= value <= C.AMOUNT_MAX:
            raise QuotaError("INVALID_ARGUMENT", f"quantity {name!r} must be in 0..{C.AMOUNT_MAX}, got {value}",
                             metadata={"field": "quantities"})
        out[name] = value
    return out


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    if len(labels) > MAP_ENTRIES_MAX:
        raise QuotaError("INVALID_ARGUMENT", f"at most {MAP_ENTRIES_MAX} labels", metadata={"field": "labels"})
    for key, value in labels.items():
        if not key or len(key) > LABEL_KEY_MAX or len(value) > LABEL_VALUE_MAX:
            raise QuotaError(
                "INVALID_ARGUMENT",
                f"label keys must be 1 to {LABEL_KEY_MAX} characters and values at most {LABEL_VALUE_MAX}",
                metadata={"field": "labels"},
            )
    return dict(labels)

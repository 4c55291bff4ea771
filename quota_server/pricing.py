"""The price catalog: exact integer prices for actions, with cost-plus margin.

Each line of a price is rounded up on its own, margin included (API.md, "Pricing"):

- fixed line:   ceil(amount * (100 + margin) / 100)
- metered line: ceil(quantity * per_1000 * (100 + margin) / 100000)

and the price is the sum of the lines. Only integer arithmetic is used. A reservation keeps
the unit prices it was quoted (`freeze`) so that its commit is priced the same way even after
the catalog has been reloaded.
"""
from __future__ import annotations

import functools
import hashlib
import json
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

MAX_AMOUNT = 10**15

# Error reasons (google.rpc.ErrorInfo.reason); all map to gRPC INVALID_ARGUMENT.
INVALID_ARGUMENT = "INVALID_ARGUMENT"
UNKNOWN_ACTION = "UNKNOWN_ACTION"
INVALID_AMOUNT = "INVALID_AMOUNT"

_FROZEN_V1 = 1
_HAS_AMOUNT = 0x01
_HEADER = struct.Struct("<BBI")  # format version, flags, margin_percent
_U64 = struct.Struct("<Q")
_U16 = struct.Struct("<H")


class PricingError(ValueError):
    """A call that cannot be priced; `reason` is the API error reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, kw_only=True)
class QuoteLine:
    """One line of a quote: a metered quantity, or the fixed per-call amount."""

    quantity_name: str  # "" for the fixed per-call line
    quantity: int  # the request's quantity (0 if absent); 1 for the fixed line
    unit_price: int  # units per 1000 of the quantity; the fixed amount for the fixed line
    amount: int  # this line's price, margin included, rounded up


@dataclass(frozen=True, kw_only=True)
class Quote:
    action: str
    amount: int
    price_version: str
    lines: tuple[QuoteLine, ...]


def check_quantities(quantities: Mapping[str, int]) -> None:
    """Refuse negative (or non-integer) quantities, named by a price or not."""
    for name, value in quantities.items():
        if type(value) is not int or value < 0:
            raise PricingError(
                INVALID_ARGUMENT,
                f"quantity {name!r} must be a non-negative integer, got {value!r}")


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


@dataclass(frozen=True, kw_only=True)
class ActionPrice:
    """The price of one action: an optional fixed amount plus metered quantities."""

    amount: int | None = None  # fixed units per call; None = no fixed line
    per_1000: Mapping[str, int] = field(default_factory=dict)  # quantity -> units per 1000
    margin_percent: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "per_1000", MappingProxyType(dict(self.per_1000)))

    def price(self, quantities: Mapping[str, int]) -> int:
        """The price of one call with `quantities` (the hot path: no line objects)."""
        check_quantities(quantities)
        scale = 100 + self.margin_percent
        total = 0
        for name, per_1000 in self.per_1000.items():
            total += _ceil_div(quantities.get(name, 0) * per_1000 * scale, 100_000)
        if self.amount is not None:
            total += _ceil_div(self.amount * scale, 100)
        return _check_total(total)

    def lines(self, quantities: Mapping[str, int]) -> tuple[QuoteLine, ...]:
        """The price line by line: each metered quantity it names, then the fixed line."""
        check_quantities(quantities)
        scale = 100 + self.margin_percent
        lines = [
            QuoteLine(quantity_name=name, quantity=quantities.get(name, 0), unit_price=per_1000,
                      amount=_ceil_div(quantities.get(name, 0) * per_1000 * scale, 100_000))
            for name, per_1000 in self.per_1000.items()
        ]
        if self.amount is not None:
            lines.append(QuoteLine(quantity_name="", quantity=1, unit_price=self.amount,
                                   amount=_ceil_div(self.amount * scale, 100)))
        _check_total(sum(line.amount for line in lines))
        return tuple(lines)

    def canonical(self) -> dict[str, object]:
        """A JSON-ready description; equal prices give equal descriptions."""
        data: dict[str, object] = {"margin_percent": self.margin_percent,
                                   "per_1000": dict(self.per_1000)}
        if self.amount is not None:
            data["amount"] = self.amount
        return data

    def freeze(self) -> bytes:
        """These unit prices as compact, versioned bytes (kept with a hold; see `thaw`)."""
        flags = _HAS_AMOUNT if self.amount is not None else 0
        parts = [_HEADER.pack(_FROZEN_V1, flags, self.margin_percent)]
        if self.amount is not None:
            parts.append(_U64.pack(self.amount))
        parts.append(_U16.pack(len(self.per_1000)))
        for name, per_1000 in self.per_1000.items():
            encoded = name.encode()
            if len(encoded) > 255:
                raise ValueError(f"quantity name too long to freeze: {name!r}")
            parts += [bytes([len(encoded)]), encoded, _U64.pack(per_1000)]
        return b"".join(parts)

    @staticmethod
    def thaw(frozen: bytes) -> ActionPrice:
        """The ActionPrice that `freeze` encoded; ValueError if the bytes are not one."""
        return _thaw(bytes(frozen))


def _check_total(total: int) -> int:
    if total > MAX_AMOUNT:
        raise PricingError(INVALID_AMOUNT,
                           f"price {total} is above the maximum amount {MAX_AMOUNT}")
    return total


@functools.lru_cache(maxsize=4096)
def _thaw(frozen: bytes) -> ActionPrice:
    try:
        version, flags, margin_percent = _HEADER.unpack_from(frozen, 0)
        if version != _FROZEN_V1:
            raise ValueError(f"unsupported frozen price format version {version}")
        offset = _HEADER.size
        amount = None
        if flags & _HAS_AMOUNT:
            (amount,) = _U64.unpack_from(frozen, offset)
            offset += _U64.size
        (count,) = _U16.unpack_from(frozen, offset)
        offset += _U16.size
        per_1000 = {}
        for _ in range(count):
            size = frozen[offset]
            name = frozen[offset + 1:offset + 1 + size].decode()
            offset += 1 + size
            (per_1000[name],) = _U64.unpack_from(frozen, offset)
            offset += _U64.size
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise ValueError(f"corrupt frozen price: {exc}") from None
    if offset != len(frozen):
        raise ValueError("corrupt frozen price: trailing bytes")
    return ActionPrice(amount=amount, per_1000=per_1000, margin_percent=margin_percent)


class PriceCatalog(Mapping[str, ActionPrice]):
    """The `[prices]` table: action name -> ActionPrice, with a stable `price_version`."""

    def __init__(self, prices: Mapping[str, ActionPrice]) -> None:
        self._prices = dict(prices)
        canonical = {action: price.canonical() for action, price in self._prices.items()}
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
        self.price_version = hashlib.sha256(text.encode()).hexdigest()[:12]

    def price_of(self, action: str) -> ActionPrice:
        """The action's price; PricingError(UNKNOWN_ACTION) if the catalog has none."""
        price = self._prices.get(action)
        if price is None:
            raise PricingError(UNKNOWN_ACTION, f"action {action!r} has no price in the catalog")
        return price

    def price(self, action: str, quantities: Mapping[str, int]) -> int:
        return self.price_of(action).price(quantities)

    def quote(self, action: str, quantities: Mapping[str, int]) -> Quote:
        lines = self.price_of(action).lines(quantities)
        return Quote(action=action, amount=sum(line.amount for line in lines),
                     price_version=self.price_version, lines=lines)

    def freeze(self, action: str) -> bytes:
        """The action's current unit prices as bytes to keep with a reservation."""
        return self.price_of(action).freeze()

    @staticmethod
    def price_frozen(frozen: bytes, quantities: Mapping[str, int]) -> int:
        """Price `quantities` at prices frozen earlier, whatever the catalog says now."""
        return ActionPrice.thaw(frozen).price(quantities)

    def __getitem__(self, action: str) -> ActionPrice:
        return self._prices[action]

    def __iter__(self) -> Iterator[str]:
        return iter(self._prices)

    def __len__(self) -> int:
        return len(self._prices)

    def __repr__(self) -> str:
        return f"PriceCatalog(price_version={self.price_version!r}, prices={self._prices!r})"

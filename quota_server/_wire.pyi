"""Typed surface of the compiled wire fast path (quota_server/_wire.pyx)."""

from collections.abc import Callable, Mapping
from typing import Any

FINGERPRINT_KEY: bytes
DOMAIN_RESERVE: str
DOMAIN_COMMIT: str
DOMAIN_CHARGE: str
DOMAIN_GRANT: str
DOMAIN_INCLUDED_GRANT: str

def siphash24_bytes(key: bytes, data: bytes) -> int: ...
def fingerprint(domain: str, *parts: object) -> int: ...
def fingerprint_reserve(
    amount: int,
    action: str,
    quantities: Mapping[str, int] | None,
    ttl_ms: int,
    allow_partial: bool,
    min_amount: int,
    on_expire: int,
    labels: Mapping[str, str] | None,
) -> int: ...
def fingerprint_commit(amount: int | None, quantities: Mapping[str, int] | None,
                       labels: Mapping[str, str] | None) -> int: ...
def fingerprint_charge(amount: int, action: str, quantities: Mapping[str, int] | None,
                       labels: Mapping[str, str] | None) -> int: ...

# (op, derive) as DataPlane.prepare_* builds them; derive is None or the engine's Derive.
Decoded = tuple[tuple[Any, ...], Callable[[tuple, tuple, bool, int], tuple[Any, Any]] | None]

class BatchWork:
    n: int
    slow: list[int]
    def raw(self, i: int) -> bytes: ...
    def set_slow(self, i: int, slot: object, submit: tuple | None) -> None: ...
    def submit_items(self) -> list[tuple]: ...
    def encode(self, results: list[tuple], answer: Callable[[Any, tuple | None], bytes]) -> bytes: ...

class WireCodec:
    def __init__(
        self,
        *,
        accounts: Any,
        plans: Any,
        prices: Any,
        engine: Any,
        hold_ttl_ms: int,
        hold_ttl_max_ms: int,
        meta_fn: Callable[[str, bytes, dict[str, str]], bytes],
        decode_meta: Callable[[bytes], dict],
        credit_events: Callable[[str, int, int], list],
    ) -> None: ...
    def decode(self, kind: int, data: bytes) -> Decoded | None: ...
    def decode_batch(self, data: bytes, max_ops: int) -> BatchWork | None: ...
    def encode(self, kind: int, op: tuple, r: tuple) -> bytes: ...

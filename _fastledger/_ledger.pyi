"""Typed surface of the compiled core (see README.md for ops, results and semantics)."""

from collections.abc import Iterable, Sequence
from typing import Any, overload

DEBUG: bool
CODES: dict[str, int]

Op = tuple[Any, ...]

class Result(Sequence[Any]):
    """One op's result: an immutable sequence of ints, bools and at most one str that equals,
    hashes and prints like the tuple of its items (see README.md)."""

    def __init__(self, items: tuple[Any, ...] = ()) -> None: ...
    def __len__(self) -> int: ...
    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[Any, ...]: ...
    def __hash__(self) -> int: ...

class LedgerCorrupt(AssertionError):
    """An invariant does not hold: the ledger must not keep serving."""

class Ledger:
    retention_ns: int

    def __init__(self, *, retention_ns: int = 86_400_000_000_000) -> None: ...
    def apply(self, ops: Iterable[Op], now_ns: int) -> list[Result]:
        """Judge `ops` in order at `now_ns`; one Result per op.

        Raises ValueError only for more than BATCH_OPS_MAX ops or `now_ns` outside
        [0, NOW_NS_LIMIT); every malformed op is a status in its result.
        """
    def take_expired(self) -> list[tuple[str, str, int, int, int, bytes]]: ...
    def take_expired_lots(self) -> list[tuple[str, str, int]]: ...
    def replayed_indices(self) -> list[int]:
        """Indices, within the last `apply`'s ops, of those answered from a stored result."""
    def take_journal(self) -> bytes:
        """The redo record of everything changed since the last take (b"" if nothing)."""
    def snapshot(self) -> bytes:
        """The whole state, in the journal format."""
    @staticmethod
    def from_snapshot(blob: bytes, *, retention_ns: int = 86_400_000_000_000) -> Ledger:
        """A ledger with exactly the state of `blob`; ValueError if it is not a valid snapshot."""
    def settle_purge_queue(self) -> None:
        """Move replayed purge entries into the purge queue's in-order part where they can go."""
    def replay(self, record: bytes) -> None:
        """Apply a redo record; ValueError (ledger unchanged) if it is corrupt or truncated."""
    def account_view(self, account_id: str, now_ns: int) -> dict[str, Any] | None: ...
    def lots_view(self, account_id: str, now_ns: int) -> list[dict[str, Any]]: ...
    def reservation_view(self, account_id: str, reservation_id: str) -> dict[str, Any] | None: ...
    def reservation_meta(self, account_id: str, reservation_id: str) -> bytes | None: ...
    def buckets_view(self, account_id: str, now_ns: int) -> list[dict[str, Any]]: ...
    def has_charge(self, account_id: str, charge_id: str) -> bool: ...
    def has_grant(self, account_id: str, grant_id: str) -> bool: ...
    def grant_remaining(self, account_id: str, grant_id: str) -> int | None:
        """What is left of the grant's lot (0 once spent or if it made none), or None without a
        record of the grant."""
    def grant_expired(self, account_id: str, grant_id: str) -> int | None:
        """How much of the grant's lot expired unused, or None without a record of the grant."""
    def account_ids(self) -> list[str]: ...
    def plan_counts(self) -> dict[str, int]: ...
    def accounts_off_terms(self, terms: dict[str, tuple[int, bool]]) -> list[tuple[str, int, bool]]: ...
    def check_invariants(self) -> None:
        """Raise LedgerCorrupt if any invariant is broken."""
    def stats(self) -> dict[str, int]: ...

"""A hold as a context manager: reserve on enter, commit on normal exit, release on error.

    with client.reservation("acct-1", action="llm.chat", quantities={"output_tokens": 4000}) as r:
        used = run_model(max_tokens=...)
        r.set_actual(quantities={"output_tokens": used})

Entering raises Denied when the reserve is denied (the block cannot run without a hold).
The block may set the actual cost (``r.commit_amount = n`` or ``r.set_actual(...)``);
otherwise the whole hold is committed. If the block raises, the hold is released and the
exception propagates (a failed release is added to it as a note; the hold then expires).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .ops import Op
from .results import CommitResult, ExtendResult, ReserveResult

if TYPE_CHECKING:
    from .aio import AsyncQuotaClient
    from .client import QuotaClient


class _Hold:
    """State shared by the blocking and the asyncio reservation."""

    def __init__(self, op: Op[ReserveResult]) -> None:
        self._op = op
        self._commit: dict[str, Any] = {}
        self.reserve_result: ReserveResult | None = None
        self.commit_result: CommitResult | None = None
        self.amount_held = 0
        self.expires_at_ms = 0

    @property
    def account_id(self) -> str:
        return self._op.request.account_id

    @property
    def reservation_id(self) -> str:
        """The hold's id: the caller's, or one generated once for this reservation."""
        return self._op.request.reservation_id

    @property
    def commit_amount(self) -> int | None:
        """The amount to commit on exit; None (the default) commits per set_actual or all."""
        return self._commit.get("amount")

    @commit_amount.setter
    def commit_amount(self, amount: int | None) -> None:
        if amount is None:
            self._commit.pop("amount", None)
        else:
            self._commit["amount"] = amount

    def set_actual(
        self,
        *,
        amount: int | None = None,
        quantities: Mapping[str, int] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """Commit this on exit instead of the whole hold: an ``amount``, or ``quantities``
        priced at the price fixed at reserve time; ``labels`` go to the usage record."""
        given = {"amount": amount, "quantities": quantities, "labels": labels}
        self._commit = {key: value for key, value in given.items() if value is not None}

    def _reserved(self, result: ReserveResult) -> None:
        self.reserve_result = result
        self.amount_held = result.amount_held
        self.expires_at_ms = result.expires_at_ms

    def _extended(self, result: ExtendResult) -> ExtendResult:
        if result.ok:
            self.amount_held = result.amount_held
            self.expires_at_ms = result.expires_at_ms
        return result

    def _release_failed(self, exc: BaseException | None, error: Exception) -> None:
        if exc is not None:
            exc.add_note(f"releasing reservation {self.reservation_id} failed too: {error}")


class Reservation(_Hold):
    """Returned by QuotaClient.reservation; see the module docstring."""

    def __init__(self, client: QuotaClient, op: Op[ReserveResult]) -> None:
        super().__init__(op)
        self._client = client

    def __enter__(self) -> Reservation:
        self._reserved(self._client.call(self._op, raise_on_denial=True))
        return self

    def extend(
        self, *, hold_total: int = 0, ttl_ms: int = 0, raise_on_denial: bool | None = None
    ) -> ExtendResult:
        """Raise the hold to ``hold_total`` and/or refresh its TTL. When denied, the hold is
        unchanged and the result says so (or Denied is raised, if asked)."""
        result = self._client.extend(
            self.account_id,
            self.reservation_id,
            hold_total=hold_total,
            ttl_ms=ttl_ms,
            raise_on_denial=raise_on_denial,
        )
        return self._extended(result)

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            self.commit_result = self._client.commit(
                self.account_id, self.reservation_id, **self._commit
            )
            return
        try:
            self._client.release(self.account_id, self.reservation_id)
        except Exception as error:  # keep the block's exception, which says what went wrong
            self._release_failed(exc, error)


class AsyncReservation(_Hold):
    """Returned by AsyncQuotaClient.reservation; use with ``async with``."""

    def __init__(self, client: AsyncQuotaClient, op: Op[ReserveResult]) -> None:
        super().__init__(op)
        self._client = client

    async def __aenter__(self) -> AsyncReservation:
        self._reserved(await self._client.call(self._op, raise_on_denial=True))
        return self

    async def extend(
        self, *, hold_total: int = 0, ttl_ms: int = 0, raise_on_denial: bool | None = None
    ) -> ExtendResult:
        """As Reservation.extend."""
        result = await self._client.extend(
            self.account_id,
            self.reservation_id,
            hold_total=hold_total,
            ttl_ms=ttl_ms,
            raise_on_denial=raise_on_denial,
        )
        return self._extended(result)

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            self.commit_result = await self._client.commit(
                self.account_id, self.reservation_id, **self._commit
            )
            return
        try:
            await self._client.release(self.account_id, self.reservation_id)
        except Exception as error:  # keep the block's exception, which says what went wrong
            self._release_failed(exc, error)

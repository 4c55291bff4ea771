"""AsyncQuotaClient: the grpc.aio client of QuotaService and AdminService."""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import (
    Any,
    TypeVar,
    Unpack,
)

import grpc

from quota.v1 import admin_service_pb2_grpc, quota_service_pb2_grpc

from . import ops
from ._base import DEFAULT_RETRY, DEFAULT_TIMEOUT_S, ClientBase, Metadata, open_channel
from .errors import from_rpc_error, from_status
from .reservation import AsyncReservation
from .results import (
    Account,
    Balance,
    ChargeResult,
    CheckResult,
    CommitResult,
    Event,
    ExtendResult,
    GrantResult,
    QuoteResult,
    ReleaseResult,
    ReserveResult,
    UpsertAccountResult,
    UsagePage,
    UsageRecord,
    UsageSummary,
)
from .retry import RetryPolicy

T = TypeVar("T")


class AsyncQuotaClient(ClientBase):
    """asyncio client (grpc.aio), to be used from one event loop; otherwise as QuotaClient.

    Denials are returned as results (``.ok`` is False) unless ``raise_on_denial``;
    failures raise QuotaError subclasses after the retries the policy allows
    (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, same ids).

    ``timeout`` is the deadline of each attempt in seconds (None: no deadline).
    ``sleep`` and ``rand`` are injectable so tests need no wall-clock waits.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        channel: grpc.aio.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        api_key: str | None = None,
        metadata: Metadata = (),
        timeout: float | None = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy = DEFAULT_RETRY,
        raise_on_denial: bool = False,
        channel_options: Sequence[tuple[str, Any]] = (),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(
            api_key=api_key,
            metadata=metadata,
            timeout=timeout,
            retry=retry,
            raise_on_denial=raise_on_denial,
            rand=rand,
        )
        if channel is None and not target:
            raise ValueError("a target (host:port) or a channel is required")
        self._owns_channel = channel is None
        self._channel = channel
        self._connect = functools.partial(
            open_channel, grpc.aio, target, credentials, channel_options
        )
        self._stubs: tuple[Any, Any] | None = None
        self._sleep = sleep

    async def wait_ready(self, timeout: float) -> None:
        """Wait until the channel is connected to the server; ``Unavailable`` if it is not
        within ``timeout`` seconds (as QuotaClient.wait_ready)."""
        self._stub(False)  # opens the channel
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except asyncio.TimeoutError:
            raise from_status(grpc.StatusCode.UNAVAILABLE,
                              f"not connected to the server within {timeout:g} s") from None

    def _stub(self, admin: bool) -> Any:
        """The service stub, opening the channel on first use: a grpc.aio channel belongs
        to the event loop running when it is made, so the client may be built before it."""
        if self._stubs is None:
            if self._channel is None:
                self._channel = self._connect()
            self._stubs = (
                quota_service_pb2_grpc.QuotaServiceStub(self._channel),
                admin_service_pb2_grpc.AdminServiceStub(self._channel),
            )
        return self._stubs[1] if admin else self._stubs[0]

    async def close(self) -> None:
        """Close the channel if this client opened it."""
        if self._owns_channel and self._channel is not None:
            await self._channel.close()
            self._channel, self._stubs = None, None

    async def __aenter__(self) -> AsyncQuotaClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def call(
        self, op: ops.Op[T], *, timeout: float | None = None, raise_on_denial: bool | None = None
    ) -> T:
        """Send a prepared op, retrying transient failures with the same request."""
        rpc = getattr(self._stub(op.admin), op.method)
        attempt = 1
        while True:
            try:
                deadline = self._deadline(timeout)
                response = await rpc(op.request, timeout=deadline, metadata=self._metadata)
                return self._finish(op, response, raise_on_denial)
            except grpc.RpcError as error:
                delay = self._retry_delay(error, attempt)
                if delay is None:
                    raise from_rpc_error(error) from error
            await self._sleep(delay)
            attempt += 1

    # QuotaService

    async def reserve(
        self,
        account_id: str,
        *,
        timeout: float | None = None,
        raise_on_denial: bool | None = None,
        **options: Unpack[ops.ReserveOptions],
    ) -> ReserveResult:
        """Hold credits for an operation whose cost is not known yet."""
        op = ops.reserve(account_id, **options)
        return await self.call(op, timeout=timeout, raise_on_denial=raise_on_denial)

    def reservation(
        self, account_id: str, **options: Unpack[ops.ReserveOptions]
    ) -> AsyncReservation:
        """``async with``: reserve on enter, commit on exit, release on error."""
        return AsyncReservation(self, ops.reserve(account_id, **options))

    async def commit(
        self,
        account_id: str,
        reservation_id: str,
        *,
        timeout: float | None = None,
        **options: Unpack[ops.CommitOptions],
    ) -> CommitResult:
        """Settle a hold with its actual cost; with no amount nor quantities, all of it."""
        return await self.call(ops.commit(account_id, reservation_id, **options), timeout=timeout)

    async def release(
        self, account_id: str, reservation_id: str, *, timeout: float | None = None
    ) -> ReleaseResult:
        """Free a hold."""
        return await self.call(ops.release(account_id, reservation_id), timeout=timeout)

    async def extend(
        self,
        account_id: str,
        reservation_id: str,
        *,
        timeout: float | None = None,
        raise_on_denial: bool | None = None,
        **options: Unpack[ops.ExtendOptions],
    ) -> ExtendResult:
        """Raise a hold to ``hold_total`` and/or refresh its TTL."""
        op = ops.extend(account_id, reservation_id, **options)
        return await self.call(op, timeout=timeout, raise_on_denial=raise_on_denial)

    async def charge(
        self,
        account_id: str,
        *,
        timeout: float | None = None,
        raise_on_denial: bool | None = None,
        **options: Unpack[ops.ChargeOptions],
    ) -> ChargeResult:
        """Reserve and commit in one step, for a known cost."""
        op = ops.charge(account_id, **options)
        return await self.call(op, timeout=timeout, raise_on_denial=raise_on_denial)

    async def check(
        self, account_id: str, *, timeout: float | None = None, **options: Unpack[ops.PricedOptions]
    ) -> CheckResult:
        """Would a charge of this shape be allowed now? Never raises Denied."""
        return await self.call(ops.check(account_id, **options), timeout=timeout)

    async def quote(
        self, action: str, *, timeout: float | None = None, **options: Unpack[ops.QuoteOptions]
    ) -> QuoteResult:
        """Price an action from the catalog."""
        return await self.call(ops.quote(action, **options), timeout=timeout)

    async def get_balance(self, account_id: str, *, timeout: float | None = None) -> Balance:
        """An account's balance, holds, lots, period and limits."""
        return await self.call(ops.get_balance(account_id), timeout=timeout)

    async def batch(
        self, operations: Iterable[ops.Op[Any]], *, timeout: float | None = None
    ) -> list[Any]:
        """Run data-plane ops in one RPC; per op, its result or a QuotaError (not raised)."""
        return await self.call(ops.batch(operations), timeout=timeout)

    # AdminService

    async def upsert_account(
        self,
        account_id: str,
        *,
        timeout: float | None = None,
        **options: Unpack[ops.UpsertAccountOptions],
    ) -> UpsertAccountResult:
        """Create an account (``plan_id`` required) or update the fields given."""
        return await self.call(ops.upsert_account(account_id, **options), timeout=timeout)

    async def get_account(self, account_id: str, *, timeout: float | None = None) -> Account:
        """An account's administrative record."""
        return await self.call(ops.get_account(account_id), timeout=timeout)

    async def grant(
        self,
        account_id: str,
        amount: int,
        *,
        timeout: float | None = None,
        **options: Unpack[ops.GrantOptions],
    ) -> GrantResult:
        """Add ``amount`` credits as a new lot."""
        return await self.call(ops.grant(account_id, amount, **options), timeout=timeout)

    async def list_usage(
        self,
        account_id: str,
        *,
        timeout: float | None = None,
        **options: Unpack[ops.ListUsageOptions],
    ) -> UsagePage:
        """One page of usage records; pass its ``next_page_token`` for the next."""
        return await self.call(ops.list_usage(account_id, **options), timeout=timeout)

    async def iter_usage(
        self,
        account_id: str,
        *,
        timeout: float | None = None,
        **options: Unpack[ops.ListUsageOptions],
    ) -> AsyncIterator[UsageRecord]:
        """Every usage record of the window, fetching pages as needed."""
        while True:
            page = await self.list_usage(account_id, timeout=timeout, **options)
            for record in page.records:
                yield record
            if not page.next_page_token:
                return
            options["page_token"] = page.next_page_token

    async def get_usage_summary(
        self, account_id: str, *, timeout: float | None = None, **options: Unpack[ops.UsageWindow]
    ) -> UsageSummary:
        """Per-action usage totals over a window."""
        return await self.call(ops.get_usage_summary(account_id, **options), timeout=timeout)

    async def watch_events(
        self,
        *,
        account_id: str = "",
        types: Sequence[str] = (),
        after_event_id: str = "",
        timeout: float | None = None,
    ) -> AsyncIterator[Event]:
        """Events as they happen. A dropped stream is reopened after the last event seen
        (with backoff, per the retry policy); ``timeout`` bounds each stream (None: none).
        """
        attempt = 1
        while True:
            request = ops.watch_request(account_id, types, after_event_id)
            stream = self._stub(admin=True).WatchEvents(
                request, timeout=timeout, metadata=self._metadata
            )
            try:
                async for message in stream:
                    event = Event.from_proto(message.event)
                    after_event_id, attempt = event.event_id, 1
                    yield event
                return
            except grpc.RpcError as error:
                delay = self._watch_retry_delay(error, attempt)
                if delay is None:
                    raise from_rpc_error(error) from error
            finally:
                stream.cancel()
            await self._sleep(delay)
            attempt += 1

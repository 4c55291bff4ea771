"""QuotaClient: the blocking client of QuotaService and AdminService."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar, Unpack

import grpc

from quota.v1 import admin_service_pb2_grpc, quota_service_pb2_grpc

from . import ops
from ._base import DEFAULT_RETRY, DEFAULT_TIMEOUT_S, ClientBase, Metadata, open_channel
from .errors import from_rpc_error, from_status
from .reservation import Reservation
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


class QuotaClient(ClientBase):
    """Blocking client of QuotaService and AdminService.

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
        channel: grpc.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        api_key: str | None = None,
        metadata: Metadata = (),
        timeout: float | None = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy = DEFAULT_RETRY,
        raise_on_denial: bool = False,
        channel_options: Sequence[tuple[str, Any]] = (),
        sleep: Callable[[float], None] = time.sleep,
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
        self._channel = channel or open_channel(grpc, target, credentials, channel_options)
        self._quota = quota_service_pb2_grpc.QuotaServiceStub(self._channel)
        self._admin = admin_service_pb2_grpc.AdminServiceStub(self._channel)
        self._sleep = sleep

    def close(self) -> None:
        """Close the channel if this client opened it."""
        if self._owns_channel:
            self._channel.close()

    def wait_ready(self, timeout: float) -> None:
        """Wait until the channel is connected to the server; ``Unavailable`` if it is not
        within ``timeout`` seconds (e.g. before a stream that should not wait for gRPC's own
        connection timeout of about 20 s against a server that accepts but does not answer)."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise from_status(grpc.StatusCode.UNAVAILABLE,
                              f"not connected to the server within {timeout:g} s") from None

    def __enter__(self) -> QuotaClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def call(
        self, op: ops.Op[T], *, timeout: float | None = None, raise_on_denial: bool | None = None
    ) -> T:
        """Send a prepared op, retrying transient failures with the same request."""
        rpc = getattr(self._admin if op.admin else self._quota, op.method)
        attempt = 1
        while True:
            try:
                deadline = self._deadline(timeout)
                response = rpc(op.request, timeout=deadline, metadata=self._metadata)
                return self._finish(op, response, raise_on_denial)
            except grpc.RpcError as error:
                delay = self._retry_delay(error, attempt)
                if delay is None:
                    raise from_rpc_error(error) from error
            self._sleep(delay)
            attempt += 1

    # QuotaService

    def reserve(
        self,
        account_id: str,
        *,
        timeout: float | None = None,
        raise_on_denial: bool | None = None,
        **options: Unpack[ops.ReserveOptions],
    ) -> ReserveResult:
        """Hold credits for an operation whose cost is not known yet."""
        op = ops.reserve(account_id, **options)
        return self.call(op, timeout=timeout, raise_on_denial=raise_on_denial)

    def reservation(self, account_id: str, **options: Unpack[ops.ReserveOptions]) -> Reservation:
        """A hold as a context manager: reserve on enter, commit on exit, release on error."""
        return Reservation(self, ops.reserve(account_id, **options))

    def commit(
        self,
        account_id: str,
        reservation_id: str,
        *,
        timeout: float | None = None,
        **options: Unpack[ops.CommitOptions],
    ) -> CommitResult:
        """Settle a hold with its actual cost; with no amount nor quantities, all of it."""
        return self.call(ops.commit(account_id, reservation_id, **options), timeout=timeout)

    def release(
        self, account_id: str, reservation_id: str, *, timeout: float | None = None
    ) -> ReleaseResult:
        """Free a hold."""
        return self.call(ops.release(account_id, reservation_id), timeout=timeout)

    def extend(
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
        return self.call(op, timeout=timeout, raise_on_denial=raise_on_denial)

    def charge(
        self,
        account_id: str,
        *,
        timeout: float | None = None,
        raise_on_denial: bool | None = None,
        **options: Unpack[ops.ChargeOptions],
    ) -> ChargeResult:
        """Reserve and commit in one step, for a known cost."""
        op = ops.charge(account_id, **options)
        return self.call(op, timeout=timeout, raise_on_denial=raise_on_denial)

    def check(
        self, account_id: str, *, timeout: float | None = None, **options: Unpack[ops.PricedOptions]
    ) -> CheckResult:
        """Would a charge of this shape be allowed now? Never raises Denied."""
        return self.call(ops.check(account_id, **options), timeout=timeout)

    def quote(
        self, action: str, *, timeout: float | None = None, **options: Unpack[ops.QuoteOptions]
    ) -> QuoteResult:
        """Price an action from the catalog."""
        return self.call(ops.quote(action, **options), timeout=timeout)

    def get_balance(self, account_id: str, *, timeout: float | None = None) -> Balance:
        """An account's balance, holds, lots, period and limits."""
        return self.call(ops.get_balance(account_id), timeout=timeout)

    def batch(
        self, operations: Iterable[ops.Op[Any]], *, timeout: float | None = None
    ) -> list[Any]:
        """Run data-plane ops in one RPC; per op, its result or a QuotaError (not raised)."""
        return self.call(ops.batch(operations), timeout=timeout)

    # AdminService

    def upsert_account(
        self,
        account_id: str,
        *,
        timeout: float | None = None,
        **options: Unpack[ops.UpsertAccountOptions],
    ) -> UpsertAccountResult:
        """Create an account (``plan_id`` required) or update the fields given."""
        return self.call(ops.upsert_account(account_id, **options), timeout=timeout)

    def get_account(self, account_id: str, *, timeout: float | None = None) -> Account:
        """An account's administrative record."""
        return self.call(ops.get_account(account_id), timeout=timeout)

    def grant(
        self,
        account_id: str,
        amount: int,
        *,
        timeout: float | None = None,
        **options: Unpack[ops.GrantOptions],
    ) -> GrantResult:
        """Add ``amount`` credits as a new lot."""
        return self.call(ops.grant(account_id, amount, **options), timeout=timeout)

    def list_usage(
        self,
        account_id: str,
        *,
        timeout: float | None = None,
        **options: Unpack[ops.ListUsageOptions],
    ) -> UsagePage:
        """One page of usage records; pass its ``next_page_token`` for the next."""
        return self.call(ops.list_usage(account_id, **options), timeout=timeout)

    def iter_usage(
        self,
        account_id: str,
        *,
        timeout: float | None = None,
        **options: Unpack[ops.ListUsageOptions],
    ) -> Iterator[UsageRecord]:
        """Every usage record of the window, fetching pages as needed."""
        while True:
            page = self.list_usage(account_id, timeout=timeout, **options)
            yield from page.records
            if not page.next_page_token:
                return
            options["page_token"] = page.next_page_token

    def get_usage_summary(
        self, account_id: str, *, timeout: float | None = None, **options: Unpack[ops.UsageWindow]
    ) -> UsageSummary:
        """Per-action usage totals over a window."""
        return self.call(ops.get_usage_summary(account_id, **options), timeout=timeout)

    def watch_events(
        self,
        *,
        account_id: str = "",
        types: Sequence[str] = (),
        after_event_id: str = "",
        timeout: float | None = None,
    ) -> Iterator[Event]:
        """Events as they happen. A dropped stream is reopened after the last event seen
        (with backoff, per the retry policy); ``timeout`` bounds each stream (None: none).
        """
        attempt = 1
        while True:
            request = ops.watch_request(account_id, types, after_event_id)
            stream = self._admin.WatchEvents(request, timeout=timeout, metadata=self._metadata)
            try:
                for message in stream:
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
            self._sleep(delay)
            attempt += 1

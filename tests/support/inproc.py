"""An in-process QuotaServer on a free port, with a manual clock and an SQLite file.

Tests talk to it through the real gRPC stack (raw stubs), so servicer, engine, core and storage
are all exercised; `restart()` builds a new server on the same data, as a process restart would.
"""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
from quota.v1 import admin_service_pb2 as apb
from quota.v1 import admin_service_pb2_grpc as apb_grpc
from quota.v1 import quota_service_pb2 as pb
from quota.v1 import quota_service_pb2_grpc as pb_grpc

from _fastledger import codes as C
from quota_server.server import QuotaServer

from .clock import ManualClock
from .config import build_config


class InProcessServer:
    """A QuotaServer plus an aio channel and the two service stubs."""

    def __init__(self, config: Any, clock: ManualClock) -> None:
        self.config = config
        self.clock = clock
        self.server: QuotaServer | None = None
        self.channel: grpc.aio.Channel | None = None
        self.quota: pb_grpc.QuotaServiceStub
        self.admin: apb_grpc.AdminServiceStub

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def engine(self):
        assert self.server is not None
        return self.server.engine

    async def start(self) -> InProcessServer:
        self.server = QuotaServer(self.config, clock_ns=self.clock)
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(self.target)
        self.quota = pb_grpc.QuotaServiceStub(self.channel)
        self.admin = apb_grpc.AdminServiceStub(self.channel)
        return self

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None
        if self.server is not None:
            await self.server.stop()
            self.server = None

    async def restart(self) -> None:
        """Stop (gracefully) and start a new server on the same storage."""
        await self.stop()
        await self.start()

    async def advance(self, ms: int) -> None:
        """Let `ms` of manual time pass, then run one flush so that due holds and lots expire
        (as the background sweep would) before the test looks at the state."""
        self.clock.advance_ms(ms)
        await self.engine.submit((C.OP_EXPIRE, 1_000_000))

    # -- shortcuts used by almost every test ----------------------------------------------------

    async def open_account(self, account_id: str, plan_id: str = "prepaid", *, grant: int = 0,
                           **fields: Any) -> apb.UpsertAccountResponse:
        """Create an account on `plan_id` and, if `grant`, give it a purchased lot of that size."""
        response = await self.admin.UpsertAccount(
            apb.UpsertAccountRequest(account_id=account_id, plan_id=plan_id, **fields))
        if grant:
            await self.admin.Grant(apb.GrantRequest(account_id=account_id, grant_id="seed",
                                                    amount=grant))
        return response

    async def balance(self, account_id: str) -> pb.GetBalanceResponse:
        return await self.quota.GetBalance(pb.GetBalanceRequest(account_id=account_id))

    async def available(self, account_id: str) -> int:
        return (await self.balance(account_id)).available

    async def usage(self, account_id: str, **window: int) -> list[apb.UsageRecord]:
        """Every usage record of the account (all pages)."""
        records: list[apb.UsageRecord] = []
        token = ""
        while True:
            page = await self.admin.ListUsage(
                apb.ListUsageRequest(account_id=account_id, page_size=1000, page_token=token, **window))
            records.extend(page.records)
            token = page.next_page_token
            if not token:
                return records


@contextlib.asynccontextmanager
async def running(config_data: dict, clock: ManualClock) -> AsyncIterator[InProcessServer]:
    """An InProcessServer on `config_data` (built now), started, and stopped at the end."""
    srv = InProcessServer(build_config(config_data), clock)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()

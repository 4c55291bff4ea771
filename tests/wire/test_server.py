"""Round trips through real in-process grpc.aio servers: fast wire path vs generated (de)serializers.

Two servers with the same config, clock and setup, one with the fast path (QUOTA_FAST_WIRE on)
and one without, get the same requests; every response and every failure (status code, message,
ErrorInfo reason and metadata) must be the same, and so must their state afterwards. Clients use
the normal generated stubs, and raw bytes for encodings the stubs never produce.
"""
from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from quota.v1 import admin_service_pb2 as apb
from quota.v1 import quota_service_pb2 as pb

from tests.support.clock import ManualClock
from tests.support.config import build_config, config_data
from tests.support.inproc import InProcessServer

from .support import REQUEST_TYPES, batch_requests, encoded_requests

METHODS = {1: "Reserve", 2: "Commit", 3: "Release", 4: "Extend", 5: "Charge"}
RESPONSE_TYPES = {1: pb.ReserveResponse, 2: pb.CommitResponse, 3: pb.ReleaseResponse, 4: pb.ExtendResponse,
                  5: pb.ChargeResponse}
SETUP = [("acct-prepaid", "prepaid"), ("acct-payg", "payg"), ("acct-free", "free"), ("acct-team", "team"),
         ("acct-unlimited", "unlimited"), ("acct-suspended", "prepaid")]


async def start_pair(tmp_path, monkeypatch) -> tuple[InProcessServer, InProcessServer]:
    clock = ManualClock()
    servers = []
    for fast in ("1", "0"):
        monkeypatch.setenv("QUOTA_FAST_WIRE", fast)
        server = InProcessServer(build_config(config_data(tmp_path / f"quota-{fast}.db")), clock)
        await server.start()
        assert server.server.fast_wire is (fast == "1")
        for account_id, plan in SETUP:
            await server.open_account(account_id, plan, grant=1_000_000)
        await server.admin.UpsertAccount(apb.UpsertAccountRequest(account_id="acct-suspended", status=2))
        servers.append(server)
    return servers[0], servers[1]


def outcome_of(exc: grpc.aio.AioRpcError) -> tuple:
    status = rpc_status.from_call(exc)
    info = None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
    return ("error", exc.code(), exc.details(), None if info is None else (info.reason, dict(info.metadata)))


async def call_raw(server: InProcessServer, method: str, data: bytes, response_type) -> tuple:
    call = server.channel.unary_unary(f"/quota.v1.QuotaService/{method}")
    try:
        return ("ok", response_type.FromString(await call(data)))
    except grpc.aio.AioRpcError as exc:
        return outcome_of(exc)


async def same_state(fast: InProcessServer, slow: InProcessServer) -> None:
    for account_id, _ in SETUP:
        assert await fast.balance(account_id) == await slow.balance(account_id)
        assert await fast.usage(account_id) == await slow.usage(account_id)


def test_random_requests_through_two_servers(tmp_path, monkeypatch):
    """Goal: random unary requests and batches (valid, invalid, odd encodings, corrupt) get the
    same response or the same failure from both servers, and leave the same balances and usage."""
    loop = asyncio.new_event_loop()
    fast, slow = loop.run_until_complete(start_pair(tmp_path, monkeypatch))
    try:
        @given(st.one_of(st.tuples(st.integers(1, 5)).flatmap(
            lambda k: st.tuples(st.just(k[0]), encoded_requests(k[0]))),
            st.tuples(st.just(0), batch_requests())))
        @settings(max_examples=150, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
        def run(case):
            kind, data = case
            method = METHODS.get(kind, "Batch")
            response_type = RESPONSE_TYPES.get(kind, pb.BatchResponse)
            got = [loop.run_until_complete(call_raw(server, method, data, response_type)) for server in (fast, slow)]
            assert got[0] == got[1]

        run()
        loop.run_until_complete(same_state(fast, slow))
    finally:
        loop.run_until_complete(fast.stop())
        loop.run_until_complete(slow.stop())
        loop.close()


async def test_generated_stubs_see_the_same_messages(tmp_path, monkeypatch):
    """Goal: a client using the generated stubs gets identical messages and errors from both
    servers for a reserve/extend/commit/release/charge/batch flow, including replays."""
    fast, slow = await start_pair(tmp_path, monkeypatch)
    try:
        calls = [
            ("Reserve", pb.ReserveRequest(account_id="acct-free", reservation_id="r1", action="llm.chat",
                                          quantities={"input_tokens": 1500}, labels={"job": "j-1"})),
            ("Reserve", pb.ReserveRequest(account_id="acct-free", reservation_id="r1", action="llm.chat",
                                          quantities={"input_tokens": 1500}, labels={"job": "j-1"})),
            ("Reserve", pb.ReserveRequest(account_id="acct-free", reservation_id="r1", amount=3)),
            ("Extend", pb.ExtendRequest(account_id="acct-free", reservation_id="r1", hold_total=40)),
            ("Commit", pb.CommitRequest(account_id="acct-free", reservation_id="r1",
                                        quantities={"input_tokens": 1000, "output_tokens": 2000})),
            ("Commit", pb.CommitRequest(account_id="acct-free", reservation_id="r1", amount=1)),
            ("Release", pb.ReleaseRequest(account_id="acct-free", reservation_id="r1")),
            ("Reserve", pb.ReserveRequest(account_id="acct-team", reservation_id="t1", amount=10, ttl_ms=5000)),
            ("Commit", pb.CommitRequest(account_id="acct-team", reservation_id="t1", amount=0)),
            ("Charge", pb.ChargeRequest(account_id="acct-payg", charge_id="c1", amount=1_000_500)),
            ("Charge", pb.ChargeRequest(account_id="acct-free", charge_id="c2", action="video.render")),
            ("Charge", pb.ChargeRequest(account_id="acct-suspended", charge_id="c3", amount=1)),
            ("Extend", pb.ExtendRequest(account_id="acct-prepaid", reservation_id="missing")),
            ("Reserve", pb.ReserveRequest(account_id="bad id", reservation_id="r", amount=1)),
            ("Reserve", pb.ReserveRequest(account_id="acct-prepaid", reservation_id="r", amount=10**15 + 1)),
            ("Batch", pb.BatchRequest(ops=[
                pb.BatchOp(reserve=pb.ReserveRequest(account_id="acct-prepaid", reservation_id="b1", amount=5)),
                pb.BatchOp(commit=pb.CommitRequest(account_id="acct-prepaid", reservation_id="b1")),
                pb.BatchOp(get_balance=pb.GetBalanceRequest(account_id="acct-prepaid")),
                pb.BatchOp(charge=pb.ChargeRequest(account_id="acct-prepaid", charge_id="b2", action="nope")),
            ])),
        ]
        for method, request in calls:
            got = []
            for server in (fast, slow):
                try:
                    got.append(("ok", await getattr(server.quota, method)(request)))
                except grpc.aio.AioRpcError as exc:
                    got.append(outcome_of(exc))
            assert got[0] == got[1], method
        await same_state(fast, slow)
    finally:
        await fast.stop()
        await slow.stop()


@pytest.mark.parametrize("method", ["Reserve", "Batch"])
async def test_undecodable_requests_fail_the_same_way(tmp_path, monkeypatch, method):
    """Goal: bytes the generated deserializer refuses are bad input on both paths: the same
    INVALID_ARGUMENT, reason INVALID_ARGUMENT, "malformed request" (msgsize)."""
    fast, slow = await start_pair(tmp_path, monkeypatch)
    try:
        for data in (b"\x0a\x05ab", b"\x0b", b"\x0f", b"\x0a\x04\x0a\x02\xff\xfe"):
            got = [await call_raw(s, method, data, REQUEST_TYPES[1]) for s in (fast, slow)]
            assert got[0] == got[1]
            assert got[0][1] == grpc.StatusCode.INVALID_ARGUMENT
            assert got[0][2].startswith("malformed request") and got[0][3][0] == "INVALID_ARGUMENT", got[0]
    finally:
        await fast.stop()
        await slow.stop()


async def test_health_and_reflection_with_the_fast_path(tmp_path, monkeypatch):
    """Goal: with raw-bytes handlers, health says SERVING and reflection still lists and
    describes QuotaService."""
    fast, slow = await start_pair(tmp_path, monkeypatch)
    try:
        health = health_pb2_grpc.HealthStub(fast.channel)
        status = await health.Check(health_pb2.HealthCheckRequest(service="quota.v1.QuotaService"))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(fast.channel)
        requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol="quota.v1.QuotaService")]
        responses = [r async for r in stub.ServerReflectionInfo(iter(requests))]
        assert "quota.v1.QuotaService" in [s.name for s in responses[0].list_services_response.service]
        assert responses[1].file_descriptor_response.file_descriptor_proto
    finally:
        await fast.stop()
        await slow.stop()

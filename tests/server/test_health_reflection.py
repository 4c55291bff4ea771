"""The server's standard services: gRPC health checking and server reflection."""
from __future__ import annotations

import asyncio
import logging

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.support.inproc import running

SERVICES = ["quota.v1.QuotaService", "quota.v1.AdminService"]


@pytest.mark.parametrize("service", ["", *SERVICES])
async def test_health_reports_serving_for_the_server_and_each_service(server, service):
    """Goal: once start() returns, health Check says SERVING overall and for both services."""
    stub = health_pb2_grpc.HealthStub(server.channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_services(server):
    """Goal: server reflection lists QuotaService, AdminService, health and reflection itself,
    and serves the file that declares QuotaService (so grpcurl works without the protos)."""
    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="quota.v1.QuotaService"),
    ]
    responses = [r async for r in stub.ServerReflectionInfo(iter(requests))]
    names = sorted(s.name for s in responses[0].list_services_response.service)
    assert names == sorted([*SERVICES, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"])
    assert responses[1].file_descriptor_response.file_descriptor_proto  # at least one serialized file


async def test_reflection_answers_under_the_v1_name_too(server):
    """Goal: newer tools ask grpc.reflection.v1.ServerReflection first (it was UNIMPLEMENTED):
    the same answers come under that name (the v1 messages are the v1alpha ones)."""
    call = server.channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="quota.v1.AdminService"),
    ]
    responses = [r async for r in call(iter(requests))]
    names = {s.name for s in responses[0].list_services_response.service}
    assert set(SERVICES) <= names
    assert responses[1].file_descriptor_response.file_descriptor_proto


async def test_startup_line_names_the_port_bound(server_config_data, manual_clock, caplog):
    """Goal: with listen = "127.0.0.1:0" the startup line reports the port picked (it said
    port 0, so nothing told where the server listens)."""
    caplog.set_level(logging.INFO, logger="quota.server")
    async with running(server_config_data, manual_clock) as srv:
        assert srv.port != 0
        assert f"serving on 127.0.0.1:{srv.port} (plaintext" in caplog.text, caplog.text


async def test_a_fatal_stop_does_not_drain(server_config_data, manual_clock):
    """Goal: a server that must stop serving at once (a lost lease, a broken invariant) skips
    the shutdown drain: it does not go on answering for shutdown_drain_ms."""
    server_config_data["server"]["shutdown_drain_ms"] = 20_000
    async with running(server_config_data, manual_clock) as srv:
        srv.engine._die(RuntimeError("a broken invariant, for this test"))
        await asyncio.wait_for(srv.server.wait(), 10)
        assert srv.server.exit_code == 2


async def test_wait_ready_returns_once_connected_and_is_unavailable_when_nothing_answers(server):
    """AsyncQuotaClient.wait_ready (as QuotaClient's, which quotactl events tail uses): returns
    against a serving server; Unavailable within its timeout against an address nobody serves."""
    from quota_client import AsyncQuotaClient
    from quota_client.errors import Unavailable

    from tests.support.subproc import free_port

    async with AsyncQuotaClient(server.target) as client:
        await client.wait_ready(10)
    async with AsyncQuotaClient(f"127.0.0.1:{free_port()}") as client:
        with pytest.raises(Unavailable, match="within 0.3 s"):
            await client.wait_ready(0.3)

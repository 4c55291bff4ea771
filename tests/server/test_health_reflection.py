"""The server's standard services: gRPC health checking and server reflection."""
from __future__ import annotations

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

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

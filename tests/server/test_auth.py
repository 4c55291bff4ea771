"""API keys ([auth] keys): QuotaService needs a "data" or "admin" key, AdminService an "admin"
key; health and reflection stay open; the client library's api_key is what the server checks."""
from __future__ import annotations

import hashlib

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from quota.v1 import admin_service_pb2 as apb
from quota.v1 import quota_service_pb2 as pb
from quota_client import AsyncQuotaClient
from quota_client.errors import Unauthenticated

from tests.support.status import fails

DATA_KEY = "data-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"


def bearer(key: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {key}"),)


@pytest.fixture
def server_config_data(server_config_data):
    """The standard config plus two keys (the suite's `server` fixture starts it)."""
    server_config_data["auth"] = {"keys": [
        {"name": "backend", "key": DATA_KEY, "role": "data"},
        {"name": "ops", "key_sha256": hashlib.sha256(ADMIN_KEY.encode()).hexdigest(), "role": "admin"},
    ]}
    return server_config_data


async def test_calls_without_a_known_key_are_unauthenticated_and_change_nothing(server):
    """Goal: no key, a wrong key, or another scheme: UNAUTHENTICATED with reason UNAUTHENTICATED,
    on both services, unary and streaming, and nothing is applied."""
    await server.admin.UpsertAccount(apb.UpsertAccountRequest(account_id="a", plan_id="prepaid"),
                                     metadata=bearer(ADMIN_KEY))
    charge = pb.ChargeRequest(account_id="a", charge_id="c1", amount=1)
    for metadata in [(), bearer("not-a-key-0123456789"), (("authorization", f"Basic {DATA_KEY}"),)]:
        for call in [server.quota.Charge(charge, metadata=metadata),
                     server.quota.Batch(pb.BatchRequest(ops=[pb.BatchOp(charge=charge)]), metadata=metadata),
                     server.admin.Grant(apb.GrantRequest(account_id="a", grant_id="g", amount=5), metadata=metadata)]:
            failure = await fails(call)
            assert (failure.code, failure.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
            wrong_key = metadata == bearer("not-a-key-0123456789")
            assert ("not one this server accepts" in failure.message) == wrong_key, failure.message
        stream = server.admin.WatchEvents(apb.WatchEventsRequest(after_event_id="0"), metadata=metadata)
        with pytest.raises(grpc.RpcError) as info:
            await stream.read()
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    balance = await server.quota.GetBalance(pb.GetBalanceRequest(account_id="a"), metadata=bearer(DATA_KEY))
    assert (balance.available, list(balance.lots)) == (0, [])


async def test_a_data_key_serves_quota_calls_but_not_admin_calls(server):
    """Goal: role "data" may call QuotaService; AdminService is PERMISSION_DENIED for it, and the
    "admin" key (configured by its SHA-256) may call both."""
    await server.admin.UpsertAccount(apb.UpsertAccountRequest(account_id="a", plan_id="prepaid"),
                                     metadata=bearer(ADMIN_KEY))
    await server.admin.Grant(apb.GrantRequest(account_id="a", grant_id="g", amount=10), metadata=bearer(ADMIN_KEY))
    r = await server.quota.Charge(pb.ChargeRequest(account_id="a", charge_id="c1", amount=3), metadata=bearer(DATA_KEY))
    assert r.available_after == 7
    r = await server.quota.Charge(pb.ChargeRequest(account_id="a", charge_id="c2", amount=3), metadata=bearer(ADMIN_KEY))
    assert r.available_after == 4
    failure = await fails(server.admin.Grant(apb.GrantRequest(account_id="a", grant_id="g2", amount=10),
                                             metadata=bearer(DATA_KEY)))
    assert (failure.code, failure.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    balance = await server.quota.GetBalance(pb.GetBalanceRequest(account_id="a"), metadata=bearer(DATA_KEY))
    assert balance.available == 4


async def test_health_and_reflection_need_no_key(server):
    """Goal: load balancers' health probes and grpcurl's discovery work without a key."""
    health = health_pb2_grpc.HealthStub(server.channel)
    assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = [s.name async for r in responses for s in r.list_services_response.service]
    assert "quota.v1.QuotaService" in names


async def test_the_client_librarys_api_key_is_what_the_server_checks(server):
    """Goal: AsyncQuotaClient(api_key=...) sends the key; without it the call raises the typed
    error for UNAUTHENTICATED (not retried)."""
    async with AsyncQuotaClient(server.target, api_key=ADMIN_KEY) as admin:
        await admin.upsert_account("a", plan_id="prepaid")
        await admin.grant("a", 10, grant_id="g")
    async with AsyncQuotaClient(server.target, api_key=DATA_KEY) as client:
        assert (await client.charge("a", charge_id="c1", amount=2)).available_after == 8
    async with AsyncQuotaClient(server.target) as anonymous:
        with pytest.raises(Unauthenticated) as info:
            await anonymous.charge("a", charge_id="c2", amount=2)
        assert info.value.reason == "UNAUTHENTICATED"

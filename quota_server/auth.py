"""API keys: who may call which service (`[auth]` in the config; docs/configuration.md).

With no keys configured the server accepts every call and this module is not installed. With
keys, every QuotaService and AdminService call must carry `authorization: Bearer <key>` for a
configured key: none, or an unknown one, is UNAUTHENTICATED (reason UNAUTHENTICATED); a "data"
key calling AdminService is PERMISSION_DENIED (reason PERMISSION_DENIED). The health service
and server reflection stay open, so that probes and grpcurl's discovery work without a key.

Keys are compared by their SHA-256 (a dict lookup), so the config may hold the hashes only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable

import grpc

from .config import AuthConfig
from .errors import QuotaError
from .rpc import abort_with

QUOTA_SERVICE = "quota.v1.QuotaService"
ADMIN_SERVICE = "quota.v1.AdminService"
BEARER = "bearer "


def _bearer_key(metadata) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value[:len(BEARER)].lower() == BEARER:
            return value[len(BEARER):].strip()
    return None


class ApiKeyAuth(grpc.aio.ServerInterceptor):
    """Checks the API key of every QuotaService and AdminService call."""

    def __init__(self, config: AuthConfig) -> None:
        self._roles = {key.sha256: key.role for key in config.keys}

    def role_of(self, metadata) -> str | None:
        """The role of the call's key, or None if it has none or an unknown one."""
        key = _bearer_key(metadata)
        if not key:
            return None
        return self._roles.get(hashlib.sha256(key.encode()).digest())

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable],
                                details: grpc.HandlerCallDetails):
        service = details.method.split("/")[1] if details.method.count("/") >= 2 else ""
        if service not in (QUOTA_SERVICE, ADMIN_SERVICE):
            return await continuation(details)
        role = self.role_of(details.invocation_metadata)
        if role is None and not _bearer_key(details.invocation_metadata):
            error = QuotaError("UNAUTHENTICATED", "this call needs an API key: metadata "
                               "'authorization: Bearer <key>' with a key the server accepts")
        elif role is None:
            error = QuotaError("UNAUTHENTICATED", "the API key is not one this server accepts (check [auth] keys "
                               "and the key the caller sends)")
        elif service == ADMIN_SERVICE and role != "admin":
            error = QuotaError("PERMISSION_DENIED", "this API key may call QuotaService only (role \"data\")")
        else:
            return await continuation(details)
        handler = await continuation(details)
        return _refusal(handler, error) if handler is not None else None


def _refusal(handler: grpc.RpcMethodHandler, error: QuotaError) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that ends the call with `error`."""
    if handler.response_streaming:
        async def refuse_stream(request, context):
            await abort_with(context, error)
            yield  # pragma: no cover - a generator, so that gRPC treats it as a stream

        return grpc.unary_stream_rpc_method_handler(
            refuse_stream, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)

    async def refuse(request, context):
        await abort_with(context, error)

    return grpc.unary_unary_rpc_method_handler(
        refuse, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)


__all__ = ["ApiKeyAuth"]

"""Request size and shape checks in front of QuotaService and AdminService.

gRPC refuses a message above its receive limit itself, with RESOURCE_EXHAUSTED and no ErrorInfo,
which API.md keeps for an overloaded server; and a request its deserializer cannot parse fails
with UNKNOWN. Both are bad input. So gRPC's own receive limit is set above `[server]
max_message_bytes` (RECEIVE_HEADROOM times it), every unary-request handler of the two services
takes raw bytes, and a wrapper answers, before any other work:

- a request larger than `max_message_bytes`: INVALID_ARGUMENT, reason MESSAGE_TOO_LARGE
  (metadata ``size`` and ``max_bytes``);
- bytes that are not a valid message of the request type: INVALID_ARGUMENT, reason
  INVALID_ARGUMENT ("malformed request: ...").

Then it deserializes (where the original handler had a deserializer) and calls the original
handler. Registration goes through `SizeLimitedServer`, which wraps the handlers that generated
code (or `add_quota_service`) registers, so the generated `add_*_to_server` functions are used
as they are.
"""
from __future__ import annotations

import inspect
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from .errors import QuotaError
from .rpc import abort_with

RECEIVE_HEADROOM = 4  # gRPC's own receive limit, as a multiple of max_message_bytes
INT32_MAX = 2**31 - 1


def grpc_receive_limit(max_bytes: int) -> int:
    """gRPC's receive limit for a `max_message_bytes`: room to read an oversized request and
    answer it properly; above this, gRPC still refuses it on its own (RESOURCE_EXHAUSTED)."""
    return min(INT32_MAX, max(max_bytes * RECEIVE_HEADROOM, max_bytes + 1))


def _too_large(size: int, max_bytes: int) -> QuotaError:
    return QuotaError("MESSAGE_TOO_LARGE", f"the request is {size} bytes; at most {max_bytes} are accepted "
                      f"([server] max_message_bytes); split the Batch", metadata={"size": str(size),
                                                                                  "max_bytes": str(max_bytes)})


def _malformed(exc: DecodeError) -> QuotaError:
    return QuotaError("INVALID_ARGUMENT", f"malformed request: {exc}")


def _parse(request: bytes, deserialize, max_bytes: int) -> Any:
    """The request for the handler (deserialized if it had a deserializer), or QuotaError."""
    if len(request) > max_bytes:
        raise _too_large(len(request), max_bytes)
    if deserialize is None:
        return request
    try:
        return deserialize(request)
    except DecodeError as exc:
        raise _malformed(exc) from None


def limit_handler(handler: grpc.RpcMethodHandler | None, max_bytes: int) -> grpc.RpcMethodHandler | None:
    """`handler` behind the size and shape checks (streaming requests are left as they are)."""
    if handler is None or handler.request_streaming:
        return handler
    deserialize = handler.request_deserializer
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary_unary(request: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await inner(_parse(request, deserialize, max_bytes), context)
            except DecodeError as exc:      # a raw-bytes handler's own parse (the fast path's fallback)
                await abort_with(context, _malformed(exc))
            except QuotaError as exc:
                await abort_with(context, exc)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, request_deserializer=None, response_serializer=handler.response_serializer)
    inner_stream = handler.unary_stream
    if inspect.isasyncgenfunction(inner_stream):
        async def unary_stream(request: bytes, context: grpc.aio.ServicerContext):
            try:
                message = _parse(request, deserialize, max_bytes)
            except QuotaError as exc:
                await abort_with(context, exc)
            async for item in inner_stream(message, context):
                yield item
    else:                           # a coroutine that writes with context.write
        async def unary_stream(request: bytes, context: grpc.aio.ServicerContext):  # type: ignore[misc]
            try:
                message = _parse(request, deserialize, max_bytes)
            except QuotaError as exc:
                await abort_with(context, exc)
            return await inner_stream(message, context)
    return grpc.unary_stream_rpc_method_handler(
        unary_stream, request_deserializer=None, response_serializer=handler.response_serializer)


class _LimitedGeneric(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, max_bytes: int) -> None:
        self._inner = inner
        self._max_bytes = max_bytes
        self._cache: dict[str, grpc.RpcMethodHandler | None] = {}

    def service(self, handler_call_details):
        method = handler_call_details.method
        if method not in self._cache:
            self._cache[method] = limit_handler(self._inner.service(handler_call_details), self._max_bytes)
        return self._cache[method]


class SizeLimitedServer:
    """Stands in for a grpc.aio.Server while services register: the handlers they add are
    wrapped by `limit_handler`."""

    def __init__(self, server: grpc.aio.Server, max_bytes: int) -> None:
        self._server = server
        self._max_bytes = max_bytes

    def add_generic_rpc_handlers(self, generic_rpc_handlers) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_LimitedGeneric(h, self._max_bytes) for h in generic_rpc_handlers))

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict) -> None:
        self._server.add_registered_method_handlers(
            service_name, {name: limit_handler(h, self._max_bytes) for name, h in method_handlers.items()})

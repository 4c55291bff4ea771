"""gRPC plumbing: errors as standard rich statuses with google.rpc.ErrorInfo."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from .errors import DOMAIN, QuotaError


def to_status(exc: QuotaError) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=exc.reason, domain=DOMAIN, metadata=exc.metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=exc.code.value[0], message=exc.message, details=[detail])
    return rpc_status.to_status(status)


async def abort_with(context: grpc.aio.ServicerContext, exc: QuotaError) -> None:
    """End the RPC with `exc`'s status code, message and ErrorInfo (never returns)."""
    status = to_status(exc)
    await context.abort(status.code, status.details, status.trailing_metadata)

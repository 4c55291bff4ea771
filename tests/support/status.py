"""Read a failed call's rich status: gRPC code plus google.rpc.ErrorInfo reason and metadata."""
from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class Failure:
    code: grpc.StatusCode
    reason: str
    metadata: dict[str, str] = field(default_factory=dict)
    message: str = ""
    domain: str = ""


def failure_of(error: grpc.RpcError) -> Failure:
    """The code and ErrorInfo of a failed call (reason "" if the status carries none)."""
    status = rpc_status.from_call(error)
    reason, metadata, domain = "", {}, ""
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata, domain = info.reason, dict(info.metadata), info.domain
    return Failure(code=error.code(), reason=reason, metadata=metadata, message=error.details() or "",
                   domain=domain)


async def fails(call: Awaitable) -> Failure:
    """Await an RPC that must fail and return its Failure (AssertionError if it succeeds)."""
    try:
        response = await call
    except grpc.RpcError as error:
        return failure_of(error)
    raise AssertionError(f"the call succeeded but was expected to fail: {response}")

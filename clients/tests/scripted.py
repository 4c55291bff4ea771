"""A scripted in-process gRPC server for unit tests of the client.

Each RPC answers from a queue the test fills with ``server.script(method, *answers)``:
a response message, a Fail (an error status with google.rpc.ErrorInfo), a callable
``(request, context) -> response``, or for WatchEvents a Stream. Every call is recorded
with its request, metadata and remaining deadline. An RPC with no answer left fails
with UNIMPLEMENTED, so a test never passes by accident on a default.
"""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from quota.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    quota_service_pb2,
    quota_service_pb2_grpc,
)


@dataclass(frozen=True)
class Fail:
    """Answer with this status and ErrorInfo (no ErrorInfo when reason is empty)."""

    code: grpc.StatusCode
    reason: str = ""
    message: str = "scripted failure"
    metadata: dict[str, str] = field(default_factory=dict)

    def abort(self, context: grpc.ServicerContext) -> None:
        details = []
        if self.reason:
            info = error_details_pb2.ErrorInfo(
                reason=self.reason, domain="quota.v1", metadata=self.metadata
            )
            packed = any_pb2.Any()
            packed.Pack(info)
            details.append(packed)
        status = status_pb2.Status(code=self.code.value[0], message=self.message, details=details)
        context.abort_with_status(rpc_status.to_status(status))


@dataclass(frozen=True)
class Stream:
    """A server-streaming answer: these messages, then ``then`` (a Fail) or a clean end."""

    messages: tuple[Any, ...]
    then: Fail | None = None


@dataclass(frozen=True)
class Seen:
    """One call as the server saw it."""

    request: Any
    metadata: dict[str, str]
    time_remaining: float | None


def hang_until_cancelled(request: Any, context: grpc.ServicerContext) -> None:
    """An answer that never comes: waits (bounded) until the client gives up."""
    gone = threading.Event()
    context.add_callback(gone.set)
    gone.wait(timeout=10)


class ScriptedServer:
    """QuotaService and AdminService on 127.0.0.1:<free port>, answering from scripts."""

    def __init__(self) -> None:
        self._scripts: dict[str, deque[Any]] = defaultdict(deque)
        self.calls: dict[str, list[Seen]] = defaultdict(list)
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        services = [
            (
                quota_service_pb2.DESCRIPTOR.services_by_name["QuotaService"],
                quota_service_pb2_grpc.QuotaServiceServicer(),
                quota_service_pb2_grpc.add_QuotaServiceServicer_to_server,
            ),
            (
                admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"],
                admin_service_pb2_grpc.AdminServiceServicer(),
                admin_service_pb2_grpc.add_AdminServiceServicer_to_server,
            ),
        ]
        for descriptor, servicer, add in services:
            for method in descriptor.methods:
                handler = self._streaming if method.server_streaming else self._unary
                setattr(servicer, method.name, self._bind(handler, method.name))
            add(servicer, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.target = f"127.0.0.1:{port}"

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=None)

    def script(self, method: str, *answers: Any) -> None:
        """Queue answers for the next calls of method (e.g. "Reserve")."""
        with self._lock:
            self._scripts[method].extend(answers)

    def requests(self, method: str) -> list[Any]:
        """The requests method received, in order."""
        return [seen.request for seen in self.calls[method]]

    @staticmethod
    def _bind(handler: Any, name: str) -> Any:
        return lambda request, context: handler(name, request, context)

    def _next(self, name: str, request: Any, context: grpc.ServicerContext) -> Any:
        with self._lock:
            metadata = {key: value for key, value in context.invocation_metadata()}
            self.calls[name].append(Seen(request, metadata, context.time_remaining()))
            script = self._scripts[name]
            answer = script.popleft() if script else None
        if answer is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"no scripted answer for {name}")
        return answer

    def _unary(self, name: str, request: Any, context: grpc.ServicerContext) -> Any:
        answer = self._next(name, request, context)
        if isinstance(answer, Fail):
            answer.abort(context)
        if callable(answer):
            return answer(request, context)
        return answer

    def _streaming(self, name: str, request: Any, context: grpc.ServicerContext) -> Any:
        answer = self._next(name, request, context)
        if isinstance(answer, Fail):
            answer.abort(context)
        yield from answer.messages
        if answer.then is not None:
            answer.then.abort(context)

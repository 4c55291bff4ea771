"""Errors: status codes map to typed exceptions; denials are values unless asked."""

from __future__ import annotations

import grpc
import pytest
from scripted import Fail, ScriptedServer

from quota.v1 import quota_service_pb2 as pb
from quota_client import (
    AlreadyExists,
    Decision,
    Denied,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    QuotaClient,
    QuotaError,
    Unauthenticated,
)
from quota_client.errors import from_status


@pytest.mark.parametrize(
    ("code", "reason", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ID", InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND", NotFound),
        (grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED", AlreadyExists),
        (grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_RELEASED", FailedPrecondition),
        (grpc.StatusCode.UNAUTHENTICATED, "BAD_API_KEY", Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, "WRONG_TENANT", PermissionDenied),
    ],
)
def test_status_codes_map_to_typed_errors(
    client: QuotaClient, server: ScriptedServer, code: grpc.StatusCode, reason: str, cls: type
) -> None:
    """Each status the API uses raises its own class, carrying the ErrorInfo reason."""
    server.script("Commit", Fail(code, reason, "nope"))
    with pytest.raises(cls) as caught:
        client.commit("acct-1", "r-1")
    assert isinstance(caught.value, QuotaError)
    assert (caught.value.code, caught.value.reason, caught.value.message) == (code, reason, "nope")


def test_error_without_error_info_has_empty_reason(
    client: QuotaClient, server: ScriptedServer
) -> None:
    """A plain status (no details) still maps by code; reason is ""."""
    server.script("Release", Fail(grpc.StatusCode.NOT_FOUND, message="gone"))
    with pytest.raises(NotFound) as caught:
        client.release("acct-1", "r-1")
    assert (caught.value.reason, caught.value.metadata, caught.value.message) == ("", {}, "gone")


def test_unknown_status_number_maps_to_base_class() -> None:
    """Codes outside the table (e.g. OUT_OF_RANGE = 11) give the base QuotaError."""
    error = from_status(11, "x", "R")
    assert type(error) is QuotaError and error.code == grpc.StatusCode.OUT_OF_RANGE


def test_denial_is_a_value_by_default(client: QuotaClient, server: ScriptedServer) -> None:
    """A denied charge is a successful call whose result says why."""
    server.script(
        "Charge",
        pb.ChargeResponse(decision=3, retry_after_ms=1500, limit_name="requests_per_minute"),
    )
    result = client.charge("acct-1", action="image.generate")
    assert not result.ok
    assert result.decision is Decision.RATE_LIMITED
    assert (result.retry_after_ms, result.limit_name) == (1500, "requests_per_minute")


def test_raise_on_denial_per_call(client: QuotaClient, server: ScriptedServer) -> None:
    """raise_on_denial=True turns a denial into Denied with the decision's details."""
    server.script("Reserve", pb.ReserveResponse(decision=2, available_after=3))
    with pytest.raises(Denied) as caught:
        client.reserve("acct-1", amount=10, raise_on_denial=True)
    denied = caught.value
    assert denied.decision is Decision.INSUFFICIENT_CREDITS
    assert denied.reason == "DECISION_INSUFFICIENT_CREDITS" and denied.code is None
    assert denied.result.available_after == 3
    assert str(denied) == "Denied [DECISION_INSUFFICIENT_CREDITS]: INSUFFICIENT_CREDITS"
    assert len(server.requests("Reserve")) == 1  # a denial is final, never retried


def test_raise_on_denial_client_wide_can_be_overridden(server: ScriptedServer) -> None:
    """The client default applies to reserve/charge/extend; a call may opt out."""
    server.script(
        "Extend",
        pb.ExtendResponse(decision=2, amount_held=10),
        pb.ExtendResponse(decision=2, amount_held=10),
    )
    with QuotaClient(server.target, raise_on_denial=True) as client:
        with pytest.raises(Denied):
            client.extend("acct-1", "r-1", hold_total=50)
        result = client.extend("acct-1", "r-1", hold_total=50, raise_on_denial=False)
    assert result.decision is Decision.INSUFFICIENT_CREDITS and result.amount_held == 10


def test_check_never_raises_denied(server: ScriptedServer) -> None:
    """Check is a pre-flight question: its answer is always returned."""
    server.script("Check", pb.CheckResponse(decision=5))
    with QuotaClient(server.target, raise_on_denial=True) as client:
        assert client.check("acct-1", action="x").decision is Decision.FEATURE_NOT_IN_PLAN


def test_unknown_decision_from_a_newer_server_is_kept_as_int(
    client: QuotaClient, server: ScriptedServer
) -> None:
    """A decision this client does not know is kept as its number and is not ok."""
    server.script("Charge", pb.ChargeResponse(decision=42))
    result = client.charge("acct-1", amount=1)
    assert result.decision == 42 and not result.ok

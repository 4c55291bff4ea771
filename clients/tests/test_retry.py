"""Retries: transient failures are retried with the same request, others never."""

from __future__ import annotations

import grpc
import pytest
from scripted import Fail, ScriptedServer, hang_until_cancelled

from quota.v1 import admin_service_pb2 as admin_pb
from quota.v1 import quota_service_pb2 as pb
from quota_client import (
    DeadlineExceeded,
    InvalidArgument,
    Overloaded,
    QuotaClient,
    QuotaError,
    RetryPolicy,
    Unavailable,
)

OK_RESERVE = pb.ReserveResponse(decision=1, reservation_id="r-1", amount_held=10)


def test_unavailable_twice_then_ok_reuses_the_generated_reservation_id(
    client: QuotaClient, server: ScriptedServer, sleeps: list[float]
) -> None:
    """Two UNAVAILABLE answers are retried; all three attempts carry one generated id."""
    server.script(
        "Reserve",
        Fail(grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE"),
        Fail(grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE"),
        pb.ReserveResponse(decision=1, amount_held=10, expires_at_ms=99),
    )
    result = client.reserve("acct-1", amount=10)
    ids = [r.reservation_id for r in server.requests("Reserve")]
    assert len(ids) == 3 and len(set(ids)) == 1
    assert len(ids[0]) == 32
    assert result.ok and result.amount_held == 10 and result.reservation_id == ids[0]
    assert sleeps == [0.05, 0.1]  # 0.1 s * 2**n, times rand() = 0.5


def test_caller_chosen_charge_id_is_sent_on_every_attempt(
    client: QuotaClient, server: ScriptedServer
) -> None:
    """A timeout and an overload are retried with the caller's charge_id."""
    server.script(
        "Charge",
        Fail(grpc.StatusCode.DEADLINE_EXCEEDED),
        Fail(grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED"),
        pb.ChargeResponse(decision=1, amount_charged=5),
    )
    result = client.charge("acct-1", charge_id="c-7", amount=5)
    assert [r.charge_id for r in server.requests("Charge")] == ["c-7"] * 3
    assert result.charge_id == "c-7" and result.amount_charged == 5


def test_each_logical_call_gets_its_own_id(client: QuotaClient, server: ScriptedServer) -> None:
    """Ids are generated per call, not per client."""
    server.script("Charge", pb.ChargeResponse(decision=1), pb.ChargeResponse(decision=1))
    first = client.charge("acct-1", amount=1)
    second = client.charge("acct-1", amount=1)
    assert first.charge_id != second.charge_id


def test_gives_up_after_max_attempts_with_the_last_error(
    client: QuotaClient, server: ScriptedServer, sleeps: list[float]
) -> None:
    """After max_attempts the last transient error is raised, typed, with its reason."""
    server.script(
        "Reserve", *[Fail(grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE")] * 3, OK_RESERVE
    )
    with pytest.raises(Unavailable) as caught:
        client.reserve("acct-1", amount=10)
    assert caught.value.reason == "STORAGE_UNAVAILABLE"
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert len(server.requests("Reserve")) == 3
    assert sleeps == [0.05, 0.1]


def test_overloaded_is_raised_as_overloaded(client: QuotaClient, server: ScriptedServer) -> None:
    """RESOURCE_EXHAUSTED is the server's overload signal: retried, then Overloaded."""
    server.script("Check", *[Fail(grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED")] * 3)
    with pytest.raises(Overloaded) as caught:
        client.check("acct-1", amount=1)
    assert caught.value.retryable and caught.value.reason == "OVERLOADED"


def test_resource_exhausted_without_the_overloaded_reason_is_not_retried(
    client: QuotaClient, server: ScriptedServer, sleeps: list[float]
) -> None:
    """RESOURCE_EXHAUSTED from gRPC itself (a message far above the server's limit: no
    ErrorInfo) cannot succeed on a retry: one attempt, raised as a non-retryable Overloaded.
    It used to be retried like the server's OVERLOADED."""
    server.script("Check", Fail(grpc.StatusCode.RESOURCE_EXHAUSTED), pb.CheckResponse())
    with pytest.raises(Overloaded) as caught:
        client.check("acct-1", amount=1)
    assert caught.value.reason == "" and not caught.value.retryable
    assert len(server.requests("Check")) == 1 and sleeps == []


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INTERNAL,
    ],
)
def test_other_errors_are_never_retried(
    client: QuotaClient, server: ScriptedServer, sleeps: list[float], code: grpc.StatusCode
) -> None:
    """A request that cannot be judged fails at once: one attempt, no sleep."""
    server.script("Commit", Fail(code, "SOME_REASON"), pb.CommitResponse())
    with pytest.raises(QuotaError) as caught:
        client.commit("acct-1", "r-1")
    assert caught.value.code == code and not caught.value.retryable
    assert len(server.requests("Commit")) == 1
    assert sleeps == []


def test_backoff_is_capped_and_jittered(server: ScriptedServer) -> None:
    """Backoff grows by the multiplier up to max_backoff_s, scaled by rand()."""
    slept: list[float] = []
    draws = iter([0.0, 0.999, 0.5, 0.25])
    policy = RetryPolicy(max_attempts=5, initial_backoff_s=0.4, max_backoff_s=1.0)
    server.script("Release", *[Fail(grpc.StatusCode.UNAVAILABLE)] * 4, pb.ReleaseResponse())
    with QuotaClient(
        server.target, retry=policy, sleep=slept.append, rand=lambda: next(draws)
    ) as c:
        c.release("acct-1", "r-1")
    assert slept == pytest.approx([0.0, 0.7992, 0.5, 0.25])


def test_admin_calls_retry_with_the_same_grant_id(
    client: QuotaClient, server: ScriptedServer
) -> None:
    """Grant ids are generated once too, so a retried grant never credits twice."""
    server.script(
        "Grant",
        Fail(grpc.StatusCode.UNAVAILABLE),
        admin_pb.GrantResponse(lot_id="lot-1", available_after=500),
    )
    result = client.grant("acct-1", 500)
    ids = {r.grant_id for r in server.requests("Grant")}
    assert len(ids) == 1 and result.grant_id in ids
    assert (result.lot_id, result.available_after) == ("lot-1", 500)


def test_default_deadline_is_sent_per_attempt(client: QuotaClient, server: ScriptedServer) -> None:
    """Every attempt carries the default 5 s deadline; a per-call timeout overrides it."""
    server.script("GetBalance", pb.GetBalanceResponse(), pb.GetBalanceResponse())
    client.get_balance("acct-1")
    client.get_balance("acct-1", timeout=30)
    first, second = (seen.time_remaining for seen in server.calls["GetBalance"])
    assert first == pytest.approx(5, abs=0.5)  # the wire rounds deadlines a little
    assert second == pytest.approx(30, abs=0.5)


def test_a_real_deadline_expiry_is_retried_then_raised(
    client: QuotaClient, server: ScriptedServer, sleeps: list[float]
) -> None:
    """A server that never answers makes every attempt hit its deadline."""
    server.script("Check", *[hang_until_cancelled] * 3)
    with pytest.raises(DeadlineExceeded):
        client.check("acct-1", amount=1, timeout=0.05)
    assert len(server.requests("Check")) == 3
    assert sleeps == [0.05, 0.1]


def test_invalid_argument_carries_reason_and_metadata(
    client: QuotaClient, server: ScriptedServer
) -> None:
    """ErrorInfo reason and metadata are read from the status details."""
    server.script(
        "Reserve",
        Fail(
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_AMOUNT",
            "amount out of range",
            {"field": "amount"},
        ),
    )
    with pytest.raises(InvalidArgument) as caught:
        client.reserve("acct-1", amount=-1)
    error = caught.value
    assert (error.reason, error.metadata, error.message) == (
        "INVALID_AMOUNT",
        {"field": "amount"},
        "amount out of range",
    )
    assert str(error) == "INVALID_ARGUMENT [INVALID_AMOUNT]: amount out of range"


@pytest.mark.parametrize(
    "bad",
    [
        {"max_attempts": 0},
        {"initial_backoff_s": -1.0},
        {"max_backoff_s": -1.0},
        {"multiplier": 0.5},
    ],
)
def test_retry_policy_rejects_nonsense(bad: dict[str, float]) -> None:
    """A policy that could never run or would shrink its backoff is refused."""
    with pytest.raises(ValueError):
        RetryPolicy(**bad)  # type: ignore[arg-type]


def test_client_needs_a_target_or_channel() -> None:
    """No target and no channel is a programming error, caught at construction."""
    with pytest.raises(ValueError):
        QuotaClient()

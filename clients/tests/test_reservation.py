"""The reservation context manager: commit on exit, release on error, Denied on enter."""

from __future__ import annotations

import grpc
import pytest
from scripted import Fail, ScriptedServer

from quota.v1 import quota_service_pb2 as pb
from quota_client import Decision, Denied, QuotaClient

HELD = pb.ReserveResponse(decision=1, amount_held=100, expires_at_ms=1_000)


def test_commits_the_actual_amount(client: QuotaClient, server: ScriptedServer) -> None:
    """commit_amount set in the block is what gets committed."""
    server.script("Reserve", HELD)
    server.script("Commit", pb.CommitResponse(amount_charged=42, amount_released=58))
    with client.reservation("acct-1", amount=100, ttl_ms=5_000) as r:
        assert (r.amount_held, r.expires_at_ms) == (100, 1_000)
        r.commit_amount = 42
    reserve = server.requests("Reserve")[0]
    commit = server.requests("Commit")[0]
    assert (reserve.amount, reserve.ttl_ms) == (100, 5_000)
    assert commit.reservation_id == reserve.reservation_id == r.reservation_id
    assert commit.HasField("amount") and commit.amount == 42
    assert r.commit_result is not None and r.commit_result.amount_released == 58
    assert server.requests("Release") == []


def test_commits_the_whole_hold_when_no_cost_is_set(
    client: QuotaClient, server: ScriptedServer
) -> None:
    """Without set_actual the commit has no amount, so the server charges the hold."""
    server.script("Reserve", HELD)
    server.script("Commit", pb.CommitResponse(amount_charged=100))
    with client.reservation("acct-1", action="image.generate", reservation_id="r-5"):
        pass
    commit = server.requests("Commit")[0]
    assert commit.reservation_id == "r-5" and not commit.HasField("amount")
    assert dict(commit.quantities) == {}


def test_set_actual_quantities(client: QuotaClient, server: ScriptedServer) -> None:
    """Actual quantities (priced at the reserved price) and labels go to the commit."""
    server.script("Reserve", HELD)
    server.script("Commit", pb.CommitResponse(amount_charged=30))
    with client.reservation("acct-1", action="llm.chat", quantities={"output_tokens": 4000}) as r:
        r.set_actual(quantities={"output_tokens": 1200}, labels={"model": "m"})
    commit = server.requests("Commit")[0]
    assert dict(commit.quantities) == {"output_tokens": 1200}
    assert dict(commit.labels) == {"model": "m"} and not commit.HasField("amount")


def test_releases_and_reraises_when_the_block_fails(
    client: QuotaClient, server: ScriptedServer
) -> None:
    """An exception in the block releases the hold and propagates unchanged."""
    server.script("Reserve", HELD)
    server.script("Release", pb.ReleaseResponse(amount_released=100))
    with pytest.raises(RuntimeError, match="model crashed"):
        with client.reservation("acct-1", amount=100) as r:
            raise RuntimeError("model crashed")
    assert server.requests("Release")[0].reservation_id == r.reservation_id
    assert server.requests("Commit") == []


def test_failed_release_is_noted_on_the_original_error(
    client: QuotaClient, server: ScriptedServer
) -> None:
    """If the release fails too, the block's exception still wins, with a note."""
    server.script("Reserve", HELD)
    server.script("Release", Fail(grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_COMMITTED"))
    with pytest.raises(KeyError) as caught:
        with client.reservation("acct-1", amount=100):
            raise KeyError("boom")
    assert "RESERVATION_COMMITTED" in caught.value.__notes__[0]


def test_denied_reserve_raises_and_runs_nothing(
    client: QuotaClient, server: ScriptedServer
) -> None:
    """A context manager cannot run its block without a hold: Denied on enter."""
    server.script("Reserve", pb.ReserveResponse(decision=4))
    ran = False
    with pytest.raises(Denied) as caught:
        with client.reservation("acct-1", amount=100):
            ran = True
    assert not ran and caught.value.decision is Decision.CONCURRENCY_LIMITED
    assert server.requests("Commit") == [] and server.requests("Release") == []


def test_extend_updates_the_hold_only_when_allowed(
    client: QuotaClient, server: ScriptedServer
) -> None:
    """A granted extension raises amount_held; a denied one leaves it as it was."""
    server.script("Reserve", HELD)
    server.script(
        "Extend",
        pb.ExtendResponse(decision=1, amount_held=150, expires_at_ms=2_000),
        pb.ExtendResponse(decision=2, amount_held=150, expires_at_ms=2_000),
    )
    server.script("Commit", pb.CommitResponse(amount_charged=150))
    with client.reservation("acct-1", amount=100) as r:
        assert r.extend(hold_total=150, ttl_ms=60_000).ok
        denied = r.extend(hold_total=500)
        assert not denied.ok and (r.amount_held, r.expires_at_ms) == (150, 2_000)
    first = server.requests("Extend")[0]
    assert (first.reservation_id, first.hold_total, first.ttl_ms) == (r.reservation_id, 150, 60_000)


def test_retried_reserve_on_enter_keeps_its_id(client: QuotaClient, server: ScriptedServer) -> None:
    """The generated reservation id is fixed when the reservation is created."""
    server.script("Reserve", Fail(grpc.StatusCode.UNAVAILABLE), HELD)
    server.script("Commit", pb.CommitResponse())
    with client.reservation("acct-1", amount=100) as r:
        pass
    ids = {req.reservation_id for req in server.requests("Reserve")}
    assert ids == {r.reservation_id}

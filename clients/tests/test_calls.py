"""Requests carry the caller's fields; responses come back as typed results."""

from __future__ import annotations

import grpc
import pytest
from scripted import Fail, ScriptedServer, Stream

from quota.v1 import admin_service_pb2 as admin_pb
from quota.v1 import quota_service_pb2 as pb
from quota_client import (
    AccountStatus,
    Decision,
    ExpireAction,
    FailedPrecondition,
    LotCategory,
    NotFound,
    QuotaClient,
    QuoteLineKind,
    ops,
)


def test_api_key_and_extra_metadata_are_sent(server: ScriptedServer) -> None:
    """api_key becomes "authorization: Bearer ..."; extra metadata is added to every call."""
    server.script("GetBalance", pb.GetBalanceResponse())
    with QuotaClient(server.target, api_key="s3cret", metadata=[("x-tenant", "t1")]) as client:
        client.get_balance("acct-1")
    seen = server.calls["GetBalance"][0].metadata
    assert seen["authorization"] == "Bearer s3cret" and seen["x-tenant"] == "t1"


def test_reserve_sends_every_field(client: QuotaClient, server: ScriptedServer) -> None:
    """Keyword options map one to one onto ReserveRequest fields."""
    server.script("Reserve", pb.ReserveResponse(decision=1, amount_held=40, expires_at_ms=7))
    client.reserve(
        "acct-1",
        reservation_id="r-1",
        action="llm.chat",
        quantities={"output_tokens": 2000},
        ttl_ms=30_000,
        allow_partial=True,
        min_amount=10,
        on_expire=ExpireAction.COMMIT,
        labels={"job": "j-9"},
    )
    assert server.requests("Reserve")[0] == pb.ReserveRequest(
        account_id="acct-1",
        reservation_id="r-1",
        action="llm.chat",
        quantities={"output_tokens": 2000},
        ttl_ms=30_000,
        allow_partial=True,
        min_amount=10,
        on_expire=2,
        labels={"job": "j-9"},
    )


def test_commit_amount_zero_is_sent_and_absent_amount_is_not(
    client: QuotaClient, server: ScriptedServer
) -> None:
    """amount=0 (charge nothing) must differ on the wire from no amount (charge the hold)."""
    server.script(
        "Commit",
        pb.CommitResponse(amount_released=10),
        pb.CommitResponse(amount_charged=10, late=True),
    )
    nothing = client.commit("acct-1", "r-1", amount=0)
    everything = client.commit("acct-1", "r-2")
    first, second = server.requests("Commit")
    assert first.HasField("amount") and first.amount == 0
    assert not second.HasField("amount")
    assert nothing.amount_released == 10 and everything.late


def test_upsert_account_credit_limit_presence(client: QuotaClient, server: ScriptedServer) -> None:
    """credit_limit=None leaves it unset (the plan's); 0 is an explicit zero."""
    account = admin_pb.Account(account_id="acct-1", plan_id="free", status=1, credit_limit=5)
    server.script(
        "UpsertAccount",
        admin_pb.UpsertAccountResponse(account=account, created=True),
        admin_pb.UpsertAccountResponse(account=account),
    )
    created = client.upsert_account("acct-1", plan_id="free")
    client.upsert_account("acct-1", credit_limit=0, status=AccountStatus.SUSPENDED)
    first, second = server.requests("UpsertAccount")
    assert not first.HasField("credit_limit")
    assert second.HasField("credit_limit") and second.status == 2 and second.plan_id == ""
    assert created.created and created.account.status is AccountStatus.ACTIVE
    assert created.account.credit_limit == 5


def test_get_balance_reads_lots_period_and_limits(
    client: QuotaClient, server: ScriptedServer
) -> None:
    """Nested messages become nested frozen dataclasses with enums."""
    server.script(
        "GetBalance",
        pb.GetBalanceResponse(
            available=100,
            held=20,
            balance=-900,
            credit_limit=1000,
            plan_id="payg",
            status=1,
            lots=[pb.Lot(lot_id="l1", category=3, remaining=5, priority=1, expires_at_ms=9)],
            period=pb.BillingPeriod(start_at_ms=1, end_at_ms=2, included=100, used=40),
            limits=[pb.LimitState(name="rpm", remaining=3, capacity=10, reset_after_ms=60)],
        ),
    )
    balance = client.get_balance("acct-1")
    assert (balance.available, balance.held, balance.balance) == (100, 20, -900)
    assert balance.lots[0].category is LotCategory.INCLUDED and balance.lots[0].remaining == 5
    assert (balance.period.included, balance.period.used) == (100, 40)
    assert balance.limits[0].name == "rpm" and balance.limits[0].reset_after_ms == 60


def test_quote_lines(client: QuotaClient, server: ScriptedServer) -> None:
    """Quote returns its total, version and per-quantity lines."""
    line = pb.QuoteLine(
        kind=2, quantity_name="input_tokens", quantity=1000, per_1000=3, margin_percent=20, amount=4
    )
    server.script("Quote", pb.QuoteResponse(amount=4, price_version="v7", lines=[line]))
    quote = client.quote("llm.chat", quantities={"input_tokens": 1000})
    assert server.requests("Quote")[0].action == "llm.chat"
    assert (quote.amount, quote.price_version) == (4, "v7")
    assert quote.lines[0].kind is QuoteLineKind.METERED and quote.lines[0].per_1000 == 3


def test_batch_returns_results_and_errors_in_order(
    client: QuotaClient, server: ScriptedServer
) -> None:
    """Per-op errors come back as QuotaError values; op ids are chosen before sending."""
    reserve = ops.reserve("acct-1", amount=10)
    server.script(
        "Batch",
        pb.BatchResponse(
            results=[
                pb.BatchResult(reserve=pb.ReserveResponse(decision=1, amount_held=10)),
                pb.BatchResult(
                    error=pb.BatchError(code=9, message="m", reason="RESERVATION_RELEASED")
                ),
                pb.BatchResult(get_balance=pb.GetBalanceResponse(available=7)),
            ]
        ),
    )
    reserved, failed, balance = client.batch(
        [reserve, ops.commit("acct-1", "r-0", amount=3), ops.get_balance("acct-1")]
    )
    sent = server.requests("Batch")[0].ops
    assert [op.WhichOneof("op") for op in sent] == ["reserve", "commit", "get_balance"]
    assert sent[0].reserve.reservation_id == reserve.request.reservation_id != ""
    assert reserved.ok and reserved.reservation_id == reserve.request.reservation_id
    assert isinstance(failed, FailedPrecondition) and failed.reason == "RESERVATION_RELEASED"
    assert balance.available == 7


def test_admin_ops_cannot_be_batched(client: QuotaClient) -> None:
    """Batch is a data-plane RPC."""
    with pytest.raises(TypeError):
        client.batch([ops.get_account("acct-1")])


def test_get_account_not_found(client: QuotaClient, server: ScriptedServer) -> None:
    """An unknown account is NotFound with reason ACCOUNT_NOT_FOUND."""
    server.script("GetAccount", Fail(grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND"))
    with pytest.raises(NotFound) as caught:
        client.get_account("nobody")
    assert caught.value.reason == "ACCOUNT_NOT_FOUND"


def _record(n: int) -> admin_pb.UsageRecord:
    return admin_pb.UsageRecord(charge_id=f"c{n}", amount_charged=n, quantities={"q": n})


def test_iter_usage_follows_page_tokens(client: QuotaClient, server: ScriptedServer) -> None:
    """iter_usage fetches every page, passing the window and the previous token."""
    server.script(
        "ListUsage",
        admin_pb.ListUsageResponse(records=[_record(1), _record(2)], next_page_token="p2"),
        admin_pb.ListUsageResponse(records=[_record(3)]),
    )
    records = list(client.iter_usage("acct-1", from_at_ms=10, to_at_ms=20, page_size=2))
    assert [r.charge_id for r in records] == ["c1", "c2", "c3"]
    assert records[2].quantities == {"q": 3}
    first, second = server.requests("ListUsage")
    assert (first.page_token, second.page_token) == ("", "p2")
    assert (second.from_at_ms, second.to_at_ms, second.page_size) == (10, 20, 2)


def test_usage_summary(client: QuotaClient, server: ScriptedServer) -> None:
    """Per-action totals and the invoice total."""
    action = admin_pb.ActionUsage(
        action="llm.chat", count=2, quantities={"in": 5}, amount_charged=9, amount_uncharged=1
    )
    server.script(
        "GetUsageSummary", admin_pb.GetUsageSummaryResponse(actions=[action], invoice_total=9)
    )
    summary = client.get_usage_summary("acct-1", from_at_ms=1)
    assert summary.invoice_total == 9
    assert summary.actions[0].quantities == {"in": 5} and summary.actions[0].count == 2


def _event(event_id: str) -> admin_pb.WatchEventsResponse:
    event = admin_pb.Event(
        event_id=event_id, type="balance.low", account_id="acct-1", attributes={"available": "3"}
    )
    return admin_pb.WatchEventsResponse(event=event)


def test_watch_events_resumes_after_the_last_event(
    client: QuotaClient, server: ScriptedServer, sleeps: list[float]
) -> None:
    """A stream dropped with UNAVAILABLE is reopened after the last event seen."""
    server.script(
        "WatchEvents",
        Stream((_event("e1"), _event("e2")), then=Fail(grpc.StatusCode.UNAVAILABLE)),
        Stream((_event("e3"),)),
    )
    events = list(client.watch_events(account_id="acct-1", types=["balance.low"]))
    assert [e.event_id for e in events] == ["e1", "e2", "e3"]
    assert events[0].attributes == {"available": "3"}
    first, second = server.requests("WatchEvents")
    assert (first.after_event_id, second.after_event_id) == ("", "e2")
    assert list(second.types) == ["balance.low"] and sleeps == [0.05]


def test_watch_events_raises_non_transient_errors(
    client: QuotaClient, server: ScriptedServer
) -> None:
    """A non-transient error ends the stream with a typed error."""
    server.script("WatchEvents", Stream((_event("e1"),), then=Fail(grpc.StatusCode.NOT_FOUND)))
    events = client.watch_events()
    assert next(events).event_id == "e1"
    with pytest.raises(NotFound):
        next(events)


def test_decision_values_are_read_as_enums(client: QuotaClient, server: ScriptedServer) -> None:
    """Results expose the Python IntEnum, equal to the proto number."""
    server.script("Check", pb.CheckResponse(decision=6, available=0))
    result = client.check("acct-1", amount=5)
    assert result.decision is Decision.ACCOUNT_SUSPENDED and result.decision == 6

"""AdminService: accounts, grants, usage records and summaries, and the event stream."""
from __future__ import annotations

import asyncio

import grpc
import pytest
from quota.v1 import admin_service_pb2 as apb
from quota.v1 import quota_service_pb2 as pb
from quota.v1.enums_pb2 import ACCOUNT_STATUS_ACTIVE, ACCOUNT_STATUS_SUSPENDED

from tests.support.config import CREDIT_LIMIT_PAYG, build_config
from tests.support.status import fails

STREAM_READ_TIMEOUT_S = 10.0


async def test_upsert_creates_then_updates_only_the_fields_given(server):
    """Goal: create needs a plan and defaults to active and the plan's credit limit; an update with
    an unset credit_limit or UNSPECIFIED status leaves them; GetAccount returns the stored record."""
    created = await server.admin.UpsertAccount(apb.UpsertAccountRequest(account_id="acct", plan_id="payg"))
    assert created.created is True
    assert (created.account.account_id, created.account.plan_id, created.account.credit_limit, created.account.status) == (
        "acct", "payg", CREDIT_LIMIT_PAYG, ACCOUNT_STATUS_ACTIVE)
    override = await server.admin.UpsertAccount(apb.UpsertAccountRequest(account_id="acct", credit_limit=250))
    assert (override.created, override.account.plan_id, override.account.credit_limit) == (False, "payg", 250)
    suspended = await server.admin.UpsertAccount(apb.UpsertAccountRequest(account_id="acct", status=ACCOUNT_STATUS_SUSPENDED))
    assert (suspended.account.credit_limit, suspended.account.status) == (250, ACCOUNT_STATUS_SUSPENDED)
    unchanged = await server.admin.UpsertAccount(apb.UpsertAccountRequest(account_id="acct"))
    assert (unchanged.account.plan_id, unchanged.account.credit_limit, unchanged.account.status) == (
        "payg", 250, ACCOUNT_STATUS_SUSPENDED)
    got = await server.admin.GetAccount(apb.GetAccountRequest(account_id="acct"))
    assert got.account == unchanged.account
    zero = await server.admin.UpsertAccount(apb.UpsertAccountRequest(account_id="acct", credit_limit=0))
    assert zero.account.credit_limit == 0
    assert (await server.balance("acct")).available == 0


async def test_create_with_explicit_credit_limit_overrides_the_plan(server):
    """Goal: a credit_limit given on create wins over the plan's."""
    created = await server.admin.UpsertAccount(apb.UpsertAccountRequest(account_id="acct", plan_id="payg", credit_limit=5))
    assert created.account.credit_limit == 5
    assert (await server.balance("acct")).available == 5


async def test_unknown_plan_is_not_found_and_a_missing_plan_on_create_is_invalid(server):
    """Goal: an unknown plan_id is NOT_FOUND / PLAN_NOT_FOUND (proto UpsertAccountRequest.plan_id);
    creating without any plan_id is INVALID_ARGUMENT; neither creates the account."""
    failure = await fails(server.admin.UpsertAccount(apb.UpsertAccountRequest(account_id="acct", plan_id="gold")))
    assert (failure.code, failure.reason, failure.metadata) == (
        grpc.StatusCode.NOT_FOUND, "PLAN_NOT_FOUND", {"field": "plan_id"})
    failure = await fails(server.admin.UpsertAccount(apb.UpsertAccountRequest(account_id="acct")))
    assert (failure.code, failure.reason, failure.metadata) == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", {"field": "plan_id"})
    failure = await fails(server.admin.GetAccount(apb.GetAccountRequest(account_id="acct")))
    assert (failure.code, failure.reason) == (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")


async def test_list_usage_pages_oldest_first_and_filters_by_window(server, manual_clock):
    """Goal: ListUsage returns every commit and charge, oldest first, in pages of page_size with a
    next_page_token ("" on the last page), each record complete; from/to select [from, to)."""
    await server.open_account("acct", grant=1_000)
    times = []
    for i in range(5):
        times.append(manual_clock.now_ms)
        await server.quota.Charge(pb.ChargeRequest(account_id="acct", charge_id=f"c{i}", action="llm.chat",
                                                   quantities={"input_tokens": 1_000 * (i + 1)}, labels={"i": str(i)}))
        await server.advance(1_000)
    await server.quota.Reserve(pb.ReserveRequest(account_id="acct", reservation_id="r1", amount=10, labels={"via": "reserve"}))
    await server.quota.Commit(pb.CommitRequest(account_id="acct", reservation_id="r1", amount=7))
    pages = []
    token = ""
    while True:
        page = await server.admin.ListUsage(apb.ListUsageRequest(account_id="acct", page_size=2, page_token=token))
        pages.append(page)
        token = page.next_page_token
        if not token:
            break
    assert [len(p.records) for p in pages] == [2, 2, 2]
    records = [r for p in pages for r in p.records]
    assert [(r.charge_id, r.reservation_id) for r in records] == [
        ("c0", ""), ("c1", ""), ("c2", ""), ("c3", ""), ("c4", ""), ("", "r1")]
    first = records[0]
    assert (first.account_id, first.action, dict(first.quantities), first.amount_charged, first.amount_uncharged,
            first.at_ms, dict(first.labels), first.late) == (
        "acct", "llm.chat", {"input_tokens": 1_000}, 4, 0, times[0], {"i": "0"}, False)
    assert [r.amount_charged for r in records] == [4, 8, 11, 15, 18, 7]
    window = await server.admin.ListUsage(apb.ListUsageRequest(account_id="acct", from_at_ms=times[1], to_at_ms=times[3]))
    assert [r.charge_id for r in window.records] == ["c1", "c2"]
    assert window.next_page_token == ""


async def test_list_usage_pages_fit_in_max_message_bytes(server, server_config_data):
    """Goal: a page of large usage records is cut short to fit in max_message_bytes (it was
    RESOURCE_EXHAUSTED from gRPC's send limit) and its token resumes after its last record, so
    every record is read once, in order; a single record too large for any reply is
    FAILED_PRECONDITION / RESPONSE_TOO_LARGE naming max_message_bytes, not a transport error."""
    server_config_data["server"]["max_message_bytes"] = 20_000
    server.config = build_config(server_config_data)
    await server.restart()
    await server.open_account("acct", grant=1000)
    labels = {f"k{i:02d}": "v" * 500 for i in range(8)}  # about 4 KB per record
    for i in range(12):
        await server.quota.Charge(pb.ChargeRequest(account_id="acct", charge_id=f"c{i:02d}", amount=1, labels=labels))
    seen, token, pages = [], "", 0
    while True:
        page = await server.admin.ListUsage(apb.ListUsageRequest(account_id="acct", page_size=100, page_token=token))
        assert 0 < len(page.records) < 12 and page.ByteSize() <= 20_000
        seen += [r.charge_id for r in page.records]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"c{i:02d}" for i in range(12)] and pages >= 3
    huge = {f"k{i:02d}": "v" * 1000 for i in range(19)}  # the request fits, its record does not
    await server.open_account("big", grant=1000)
    await server.quota.Charge(pb.ChargeRequest(account_id="big", charge_id="huge", amount=1, labels=huge))
    failure = await fails(server.admin.ListUsage(apb.ListUsageRequest(account_id="big")))
    assert (failure.code, failure.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "RESPONSE_TOO_LARGE")
    assert failure.metadata["field"] == "max_message_bytes"


async def test_list_usage_page_token_is_refused_with_another_account_or_window(server):
    """Goal: a page token only continues the query it came from: with another account_id or
    another window it is INVALID_ARGUMENT naming page_token (it was accepted, and paged the other
    query from an unrelated position); a different page_size is allowed."""
    for account in ("acct", "other"):
        await server.open_account(account, grant=100)
        for i in range(3):
            await server.quota.Charge(pb.ChargeRequest(account_id=account, charge_id=f"c{i}", amount=1))
    first = await server.admin.ListUsage(apb.ListUsageRequest(account_id="acct", page_size=1))
    token = first.next_page_token
    assert token
    for request in (apb.ListUsageRequest(account_id="other", page_token=token),
                    apb.ListUsageRequest(account_id="acct", from_at_ms=1, page_token=token),
                    apb.ListUsageRequest(account_id="acct", to_at_ms=10**15, page_token=token)):
        failure = await fails(server.admin.ListUsage(request))
        assert (failure.reason, failure.metadata.get("field")) == ("INVALID_ARGUMENT", "page_token"), request
    rest = await server.admin.ListUsage(apb.ListUsageRequest(account_id="acct", page_size=10, page_token=token))
    assert [r.charge_id for r in rest.records] == ["c1", "c2"] and rest.next_page_token == ""


async def test_usage_summary_totals_per_action(server):
    """Goal: GetUsageSummary sums count, quantities, charged and uncharged per action (ordered by
    action) over the window."""
    await server.open_account("acct", grant=40)
    await server.quota.Charge(pb.ChargeRequest(account_id="acct", charge_id="a", action="image.generate"))
    await server.quota.Charge(pb.ChargeRequest(account_id="acct", charge_id="b", action="image.generate"))
    await server.quota.Charge(pb.ChargeRequest(account_id="acct", charge_id="c", action="llm.chat",
                                               quantities={"input_tokens": 1_000, "output_tokens": 100}))
    await server.quota.Reserve(pb.ReserveRequest(account_id="acct", reservation_id="r", action="llm.chat",
                                                 quantities={"input_tokens": 1_000}))
    await server.quota.Commit(pb.CommitRequest(account_id="acct", reservation_id="r",
                                               quantities={"input_tokens": 2_000, "output_tokens": 1_000}))
    # charge c: 4 + 2 = 6; commit r: 8 + 18 = 26 against 40 - 10 - 6 = 24 available -> 24 charged, 2 uncharged
    summary = await server.admin.GetUsageSummary(apb.GetUsageSummaryRequest(account_id="acct"))
    got = [(a.action, a.count, dict(a.quantities), a.amount_charged, a.amount_uncharged) for a in summary.actions]
    assert got == [
        ("image.generate", 2, {}, 10, 0),
        ("llm.chat", 2, {"input_tokens": 3_000, "output_tokens": 1_100}, 30, 2),
    ]
    assert summary.invoice_total == 0  # prepaid: nothing to invoice


async def test_usage_summary_invoice_total_for_pay_as_you_go(server):
    """Goal: for a pay-as-you-go account the summary's invoice_total is what was charged in the window."""
    await server.open_account("payg-1", "payg")
    await server.quota.Charge(pb.ChargeRequest(account_id="payg-1", charge_id="a", action="video.render"))
    await server.quota.Charge(pb.ChargeRequest(account_id="payg-1", charge_id="b", amount=25))
    summary = await server.admin.GetUsageSummary(apb.GetUsageSummaryRequest(account_id="payg-1"))
    assert [(a.action, a.count, a.amount_charged) for a in summary.actions] == [("", 1, 25), ("video.render", 1, 50)]
    assert summary.invoice_total == 75


async def next_event(stream) -> apb.Event:
    message = await asyncio.wait_for(stream.read(), STREAM_READ_TIMEOUT_S)
    assert message is not grpc.aio.EOF
    return message.event


async def test_watch_events_streams_account_events_as_they_happen(server):
    """Goal: WatchEvents replays retained events after a given id, then streams new ones live
    (account created, credits granted, suspended, balance depleted), filtered by account."""
    await server.open_account("acct")
    await server.open_account("other")
    stream = server.admin.WatchEvents(apb.WatchEventsRequest(account_id="acct", after_event_id="0"))
    try:
        created = await next_event(stream)
        assert (created.type, created.account_id, dict(created.attributes)) == (
            "account.created", "acct", {"plan_id": "prepaid"})
        await server.admin.Grant(apb.GrantRequest(account_id="other", grant_id="g", amount=5))
        await server.admin.Grant(apb.GrantRequest(account_id="acct", grant_id="g1", amount=20))
        granted = await next_event(stream)
        assert (granted.type, granted.account_id, dict(granted.attributes)) == (
            "credits.granted", "acct", {"grant_id": "g1", "amount": "20", "category": "1"})
        assert int(granted.event_id) > int(created.event_id)
        await server.admin.UpsertAccount(apb.UpsertAccountRequest(account_id="acct", status=ACCOUNT_STATUS_SUSPENDED))
        assert (await next_event(stream)).type == "account.suspended"
        await server.admin.UpsertAccount(apb.UpsertAccountRequest(account_id="acct", status=ACCOUNT_STATUS_ACTIVE))
        assert (await next_event(stream)).type == "account.activated"
        await server.quota.Charge(pb.ChargeRequest(account_id="acct", charge_id="all", amount=20))
        depleted = await next_event(stream)
        assert (depleted.type, dict(depleted.attributes)) == ("balance.depleted", {"available": "0"})
    finally:
        stream.cancel()


async def test_watch_events_filters_by_type_and_resumes_after_an_event(server):
    """Goal: `types` keeps only the listed types; resuming after an event id sends only later ones."""
    await server.open_account("a")
    await server.admin.Grant(apb.GrantRequest(account_id="a", grant_id="g1", amount=1))
    await server.admin.Grant(apb.GrantRequest(account_id="a", grant_id="g2", amount=2))
    stream = server.admin.WatchEvents(apb.WatchEventsRequest(types=["credits.granted"], after_event_id="0"))
    try:
        first = await next_event(stream)
        second = await next_event(stream)
        assert [first.attributes["grant_id"], second.attributes["grant_id"]] == ["g1", "g2"]
    finally:
        stream.cancel()
    resumed = server.admin.WatchEvents(apb.WatchEventsRequest(types=["credits.granted"], after_event_id=first.event_id))
    try:
        again = await next_event(resumed)
        assert (again.event_id, again.attributes["grant_id"]) == (second.event_id, "g2")
    finally:
        resumed.cancel()


@pytest.mark.parametrize("position", ["not-a-number", "-5", "99999999999"])
async def test_watch_events_with_a_bad_position_is_invalid_argument(server, position):
    """Goal: an after_event_id this server never issued is INVALID_ARGUMENT: not a number, a
    negative one, or one beyond every event this server's data has written (an id from another
    server; it was accepted and the stream waited for ids that never come). The position of
    the last event written is accepted."""
    await server.open_account("acct", grant=10)
    stream = server.admin.WatchEvents(apb.WatchEventsRequest(after_event_id=position))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(stream.read(), STREAM_READ_TIMEOUT_S)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    replay = server.admin.WatchEvents(apb.WatchEventsRequest(after_event_id="0"))
    events = [await asyncio.wait_for(replay.read(), STREAM_READ_TIMEOUT_S) for _ in range(2)]
    last = events[-1].event.event_id
    replay.cancel()
    resumed = server.admin.WatchEvents(apb.WatchEventsRequest(after_event_id=last))
    await server.admin.Grant(apb.GrantRequest(account_id="acct", grant_id="g2", amount=5))
    following = await asyncio.wait_for(resumed.read(), STREAM_READ_TIMEOUT_S)
    assert following.event.type == "credits.granted" and int(following.event.event_id) > int(last)
    resumed.cancel()

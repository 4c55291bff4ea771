"""Malformed requests: every INVALID_ARGUMENT / NOT_FOUND reason of API.md, the id and amount
boundaries, and the rule that a refused request changes nothing."""
from __future__ import annotations

import grpc
import pytest
from quota.v1 import admin_service_pb2 as apb
from quota.v1 import quota_service_pb2 as pb
from quota.v1.enums_pb2 import DECISION_OK as OK

from tests.support.config import HOLD_TTL_MS
from tests.support.status import fails

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
AMOUNT_MAX = 10**15
TTL_MAX_MS = 604_800_000  # [defaults] hold_ttl_max_ms, the built-in default

ID_128 = "a" * 128
ID_129 = "a" * 129
BAD_IDS = ["", ID_129, "has space", "hash#", "semi;colon", "quote'", "é", "tab\t", "new\nline", "star*"]
GOOD_IDS = [ID_128, "A", "a.b_c:d@e/f-g", "0"]
BIG_LABELS = {f"key{i:02d}": "v" * 30 for i in range(40)}  # valid labels, about 1.7 KB as JSON


async def snapshot(server, account_id: str):
    """Everything a bad request could have changed on an account."""
    return (await server.balance(account_id), [r.SerializeToString() for r in await server.usage(account_id)])


# -- ids --------------------------------------------------------------------------------------


@pytest.mark.parametrize("account_id", GOOD_IDS)
async def test_valid_ids_up_to_128_characters_are_accepted(server, account_id):
    """Goal: ids of 1 to 128 characters from [A-Za-z0-9._:@/-] work in every id field."""
    created = await server.open_account(account_id, grant=10)
    assert created.account.account_id == account_id
    charge = await server.quota.Charge(pb.ChargeRequest(account_id=account_id, charge_id=ID_128, amount=1))
    assert (charge.decision, charge.amount_charged, charge.available_after) == (OK, 1, 9)
    reserve = await server.quota.Reserve(pb.ReserveRequest(account_id=account_id, reservation_id=ID_128, amount=2))
    assert reserve.reservation_id == ID_128 and reserve.amount_held == 2


@pytest.mark.parametrize("bad", BAD_IDS)
@pytest.mark.parametrize("field", ["account_id", "reservation_id", "charge_id", "grant_id", "upsert_account_id"])
async def test_bad_ids_are_invalid_id_and_change_nothing(server, field, bad):
    """Goal: an empty, 129-character or out-of-alphabet id is INVALID_ARGUMENT / INVALID_ID naming
    the field, and the account is exactly as before."""
    await server.open_account("acct", grant=100)
    before = await snapshot(server, "acct")
    if field == "account_id":
        call = server.quota.Charge(pb.ChargeRequest(account_id=bad, charge_id="c1", amount=1))
    elif field == "reservation_id":
        call = server.quota.Reserve(pb.ReserveRequest(account_id="acct", reservation_id=bad, amount=1))
    elif field == "charge_id":
        call = server.quota.Charge(pb.ChargeRequest(account_id="acct", charge_id=bad, amount=1))
    elif field == "grant_id":
        call = server.admin.Grant(apb.GrantRequest(account_id="acct", grant_id=bad, amount=1))
    else:
        field = "account_id"
        call = server.admin.UpsertAccount(apb.UpsertAccountRequest(account_id=bad, plan_id="prepaid"))
    failure = await fails(call)
    assert (failure.code, failure.reason, failure.metadata) == (INVALID, "INVALID_ID", {"field": field})
    assert failure.domain == "quota.v1"
    assert await snapshot(server, "acct") == before


@pytest.mark.parametrize("rpc", ["Commit", "Release", "Extend", "GetBalance", "Check"])
async def test_every_data_plane_rpc_validates_its_ids(server, rpc):
    """Goal: Commit, Release, Extend, GetBalance and Check refuse a 129-character id too."""
    requests = {
        "Commit": pb.CommitRequest(account_id="acct", reservation_id=ID_129),
        "Release": pb.ReleaseRequest(account_id="acct", reservation_id=ID_129),
        "Extend": pb.ExtendRequest(account_id="acct", reservation_id=ID_129),
        "GetBalance": pb.GetBalanceRequest(account_id=ID_129),
        "Check": pb.CheckRequest(account_id=ID_129, amount=1),
    }
    failure = await fails(getattr(server.quota, rpc)(requests[rpc]))
    assert (failure.code, failure.reason) == (INVALID, "INVALID_ID")


# -- amounts ----------------------------------------------------------------------------------


async def test_amount_boundaries_one_and_1e15_are_accepted(server):
    """Goal: 1 and 1e15 are valid amounts for Grant, Reserve, Charge and Check."""
    await server.open_account("rich")
    grant = await server.admin.Grant(apb.GrantRequest(account_id="rich", grant_id="g", amount=AMOUNT_MAX))
    assert grant.available_after == AMOUNT_MAX
    check = await server.quota.Check(pb.CheckRequest(account_id="rich", amount=AMOUNT_MAX))
    assert (check.decision, check.available) == (OK, AMOUNT_MAX)
    reserve = await server.quota.Reserve(pb.ReserveRequest(account_id="rich", reservation_id="r", amount=AMOUNT_MAX))
    assert (reserve.decision, reserve.amount_held, reserve.available_after) == (OK, AMOUNT_MAX, 0)
    await server.quota.Release(pb.ReleaseRequest(account_id="rich", reservation_id="r"))
    one = await server.quota.Charge(pb.ChargeRequest(account_id="rich", charge_id="one", amount=1))
    assert (one.decision, one.amount_charged, one.available_after) == (OK, 1, AMOUNT_MAX - 1)
    rest = await server.quota.Charge(pb.ChargeRequest(account_id="rich", charge_id="rest", amount=AMOUNT_MAX - 1))
    assert (rest.decision, rest.amount_charged, rest.available_after) == (OK, AMOUNT_MAX - 1, 0)


@pytest.mark.parametrize("amount", [-1, -(2**63), AMOUNT_MAX + 1, 2**63 - 1])
@pytest.mark.parametrize("rpc", ["Reserve", "Charge", "Check", "Grant", "Commit", "Extend", "UpsertAccount"])
async def test_out_of_range_amounts_are_invalid_amount_and_change_nothing(server, rpc, amount):
    """Goal: negative amounts and amounts above 1e15 are INVALID_ARGUMENT / INVALID_AMOUNT in every
    amount field (amount, hold_total, credit_limit), and nothing changes."""
    await server.open_account("acct", grant=100)
    await server.quota.Reserve(pb.ReserveRequest(account_id="acct", reservation_id="held", amount=10))
    before = await snapshot(server, "acct")
    calls = {
        "Reserve": lambda: server.quota.Reserve(pb.ReserveRequest(account_id="acct", reservation_id="r", amount=amount)),
        "Charge": lambda: server.quota.Charge(pb.ChargeRequest(account_id="acct", charge_id="c", amount=amount)),
        "Check": lambda: server.quota.Check(pb.CheckRequest(account_id="acct", amount=amount)),
        "Grant": lambda: server.admin.Grant(apb.GrantRequest(account_id="acct", grant_id="g", amount=amount)),
        "Commit": lambda: server.quota.Commit(pb.CommitRequest(account_id="acct", reservation_id="held", amount=amount)),
        "Extend": lambda: server.quota.Extend(pb.ExtendRequest(account_id="acct", reservation_id="held", hold_total=amount)),
        "UpsertAccount": lambda: server.admin.UpsertAccount(apb.UpsertAccountRequest(account_id="acct", credit_limit=amount)),
    }
    failure = await fails(calls[rpc]())
    assert (failure.code, failure.reason) == (INVALID, "INVALID_AMOUNT")
    assert await snapshot(server, "acct") == before


@pytest.mark.parametrize("rpc", ["Reserve", "Charge", "Check", "Grant"])
async def test_zero_amount_without_an_action_is_invalid_amount(server, rpc):
    """Goal: amount 0 is only valid when an action prices the call (Grant has no action: never)."""
    await server.open_account("acct", grant=100)
    calls = {
        "Reserve": lambda: server.quota.Reserve(pb.ReserveRequest(account_id="acct", reservation_id="r")),
        "Charge": lambda: server.quota.Charge(pb.ChargeRequest(account_id="acct", charge_id="c")),
        "Check": lambda: server.quota.Check(pb.CheckRequest(account_id="acct")),
        "Grant": lambda: server.admin.Grant(apb.GrantRequest(account_id="acct", grant_id="g")),
    }
    failure = await fails(calls[rpc]())
    assert (failure.code, failure.reason) == (INVALID, "INVALID_AMOUNT")
    assert await server.available("acct") == 100


async def test_min_amount_out_of_range_is_invalid_amount(server):
    """Goal: a partial reserve's min_amount follows the amount rules (negative, > 1e15 refused)."""
    await server.open_account("acct", grant=100)
    for min_amount in (-1, AMOUNT_MAX + 1):
        failure = await fails(server.quota.Reserve(pb.ReserveRequest(
            account_id="acct", reservation_id="r", amount=10, allow_partial=True, min_amount=min_amount)))
        assert (failure.code, failure.reason) == (INVALID, "INVALID_AMOUNT")
    assert await server.available("acct") == 100


# -- TTLs -------------------------------------------------------------------------------------


async def test_ttl_boundaries(server, manual_clock):
    """Goal: ttl 0 means [defaults] hold_ttl_ms, the maximum is accepted, one more and negative
    TTLs are INVALID_ARGUMENT / INVALID_TTL (Reserve and Extend) and hold nothing."""
    await server.open_account("acct", grant=100)
    default = await server.quota.Reserve(pb.ReserveRequest(account_id="acct", reservation_id="d", amount=1))
    assert default.expires_at_ms == manual_clock.now_ms + HOLD_TTL_MS
    longest = await server.quota.Reserve(pb.ReserveRequest(
        account_id="acct", reservation_id="m", amount=1, ttl_ms=TTL_MAX_MS))
    assert longest.expires_at_ms == manual_clock.now_ms + TTL_MAX_MS
    before = await snapshot(server, "acct")
    for ttl_ms in (TTL_MAX_MS + 1, -1):
        failure = await fails(server.quota.Reserve(pb.ReserveRequest(
            account_id="acct", reservation_id="bad", amount=1, ttl_ms=ttl_ms)))
        assert (failure.code, failure.reason, failure.metadata) == (INVALID, "INVALID_TTL", {"field": "ttl_ms"})
        failure = await fails(server.quota.Extend(pb.ExtendRequest(account_id="acct", reservation_id="d", ttl_ms=ttl_ms)))
        assert (failure.code, failure.reason) == (INVALID, "INVALID_TTL")
    assert await snapshot(server, "acct") == before


# -- actions and other fields -------------------------------------------------------------------


@pytest.mark.parametrize("rpc", ["Reserve", "Charge", "Check", "Quote"])
async def test_unknown_action_without_amount_is_unknown_action(server, rpc):
    """Goal: an action with no catalog price and no explicit amount is INVALID_ARGUMENT /
    UNKNOWN_ACTION (Quote too), and nothing changes."""
    await server.open_account("acct", grant=100)
    calls = {
        "Reserve": lambda: server.quota.Reserve(pb.ReserveRequest(account_id="acct", reservation_id="r", action="no.such")),
        "Charge": lambda: server.quota.Charge(pb.ChargeRequest(account_id="acct", charge_id="c", action="no.such")),
        "Check": lambda: server.quota.Check(pb.CheckRequest(account_id="acct", action="no.such")),
        "Quote": lambda: server.quota.Quote(pb.QuoteRequest(action="no.such")),
    }
    failure = await fails(calls[rpc]())
    assert (failure.code, failure.reason) == (INVALID, "UNKNOWN_ACTION")
    assert await server.available("acct") == 100


async def test_an_explicit_amount_makes_an_unpriced_action_valid(server):
    """Goal: `amount` overrides the catalog, so an unpriced action with an amount is charged it."""
    await server.open_account("acct", grant=100)
    charge = await server.quota.Charge(pb.ChargeRequest(account_id="acct", charge_id="c", action="no.such", amount=7))
    assert (charge.decision, charge.amount_charged, charge.available_after) == (OK, 7, 93)


@pytest.mark.parametrize("case", [
    "negative_quantity", "bad_action_chars", "unknown_on_expire", "label_value_too_long", "empty_quantity_name",
    "labels_over_hold_metadata",
])
async def test_other_malformed_fields_are_invalid_argument(server, case):
    """Goal: a negative quantity, an action outside the id alphabet, an unknown on_expire value and
    oversized labels are INVALID_ARGUMENT with reason INVALID_ARGUMENT, and change nothing."""
    await server.open_account("acct", grant=100)
    before = await snapshot(server, "acct")
    base = dict(account_id="acct", reservation_id="r")
    requests = {
        "negative_quantity": pb.ReserveRequest(**base, action="llm.chat", quantities={"input_tokens": -1}),
        "bad_action_chars": pb.ReserveRequest(**base, amount=1, action="bad action"),
        "unknown_on_expire": pb.ReserveRequest(**base, amount=1, on_expire=7),
        "label_value_too_long": pb.ReserveRequest(**base, amount=1, labels={"k": "v" * 1025}),
        "empty_quantity_name": pb.ReserveRequest(**base, action="llm.chat", quantities={"": 1}),
        # each label is valid, together they do not fit in the hold's 1 KiB of metadata
        "labels_over_hold_metadata": pb.ReserveRequest(**base, amount=1, labels=BIG_LABELS),
    }
    failure = await fails(server.quota.Reserve(requests[case]))
    assert (failure.code, failure.reason) == (INVALID, "INVALID_ARGUMENT")
    assert await snapshot(server, "acct") == before


async def test_reserve_labels_too_large_for_the_hold_are_refused_not_dropped(server):
    """Goal: a Reserve whose labels do not fit in the hold's metadata is INVALID_ARGUMENT (field
    labels), in a Batch too (that op only), instead of holding and losing the labels from its
    usage record; the same labels on a Charge, or on the Commit, reach the usage record whole."""
    await server.open_account("acct", grant=100)
    batch = await server.quota.Batch(pb.BatchRequest(ops=[
        pb.BatchOp(reserve=pb.ReserveRequest(account_id="acct", reservation_id="big", amount=1, labels=BIG_LABELS)),
        pb.BatchOp(reserve=pb.ReserveRequest(account_id="acct", reservation_id="ok", amount=1, labels={"k": "v"})),
    ]))
    assert batch.results[0].error.reason == "INVALID_ARGUMENT"
    assert batch.results[0].error.metadata["field"] == "labels"
    assert batch.results[1].reserve.decision == OK
    commit = await server.quota.Commit(pb.CommitRequest(account_id="acct", reservation_id="ok", labels=BIG_LABELS))
    assert commit.amount_charged == 1
    charge = await server.quota.Charge(pb.ChargeRequest(account_id="acct", charge_id="c", amount=1, labels=BIG_LABELS))
    assert charge.decision == OK
    records = await server.usage("acct")
    assert [dict(r.labels) for r in records] == [{**BIG_LABELS, "k": "v"}, BIG_LABELS]


async def test_admin_malformed_fields_are_invalid_argument(server, manual_clock):
    """Goal: Grant with an unknown category or an expiry in the past, UpsertAccount with an unknown
    status, and ListUsage with a negative page size or a foreign page token are INVALID_ARGUMENT."""
    await server.open_account("acct", grant=100)
    before = await snapshot(server, "acct")
    cases = [
        lambda: server.admin.Grant(apb.GrantRequest(account_id="acct", grant_id="g", amount=1, category=9)),
        lambda: server.admin.Grant(apb.GrantRequest(account_id="acct", grant_id="g", amount=1,
                                                    expires_at_ms=manual_clock.now_ms)),
        lambda: server.admin.UpsertAccount(apb.UpsertAccountRequest(account_id="acct", status=5)),
        lambda: server.admin.ListUsage(apb.ListUsageRequest(account_id="acct", page_size=-1)),
        lambda: server.admin.ListUsage(apb.ListUsageRequest(account_id="acct", page_token="not-a-token")),
        lambda: server.admin.ListUsage(apb.ListUsageRequest(account_id="acct", from_at_ms=10, to_at_ms=5)),
    ]
    for call in cases:
        failure = await fails(call())
        assert (failure.code, failure.reason) == (INVALID, "INVALID_ARGUMENT"), failure
    assert await snapshot(server, "acct") == before


async def test_usage_window_errors_name_the_field_at_fault(server):
    """Goal: a negative from_at_ms is reported on `from_at_ms` (it named `to_at_ms`), a window
    that ends before it starts on `to_at_ms`, on ListUsage and GetUsageSummary alike."""
    await server.open_account("acct", grant=100)
    for rpc, request in ((server.admin.ListUsage, apb.ListUsageRequest),
                         (server.admin.GetUsageSummary, apb.GetUsageSummaryRequest)):
        failure = await fails(rpc(request(account_id="acct", from_at_ms=-10)))
        assert (failure.reason, failure.metadata.get("field")) == ("INVALID_ARGUMENT", "from_at_ms")
        failure = await fails(rpc(request(account_id="acct", from_at_ms=10, to_at_ms=5)))
        assert (failure.reason, failure.metadata.get("field")) == ("INVALID_ARGUMENT", "to_at_ms")


# -- NOT_FOUND --------------------------------------------------------------------------------


async def test_unknown_account_is_account_not_found_on_every_rpc(server):
    """Goal: each RPC that names an account answers NOT_FOUND / ACCOUNT_NOT_FOUND for an unknown one
    (and the failed mutations do not create it)."""
    q, a, acct = server.quota, server.admin, "ghost"
    calls = [
        q.Reserve(pb.ReserveRequest(account_id=acct, reservation_id="r", amount=1)),
        q.Charge(pb.ChargeRequest(account_id=acct, charge_id="c", amount=1)),
        q.Check(pb.CheckRequest(account_id=acct, amount=1)),
        q.GetBalance(pb.GetBalanceRequest(account_id=acct)),
        q.Commit(pb.CommitRequest(account_id=acct, reservation_id="r")),
        q.Release(pb.ReleaseRequest(account_id=acct, reservation_id="r")),
        q.Extend(pb.ExtendRequest(account_id=acct, reservation_id="r", hold_total=2)),
        a.GetAccount(apb.GetAccountRequest(account_id=acct)),
        a.Grant(apb.GrantRequest(account_id=acct, grant_id="g", amount=1)),
        a.ListUsage(apb.ListUsageRequest(account_id=acct)),
        a.GetUsageSummary(apb.GetUsageSummaryRequest(account_id=acct)),
    ]
    for call in calls:
        failure = await fails(call)
        assert (failure.code, failure.reason) == (NOT_FOUND, "ACCOUNT_NOT_FOUND"), failure


async def test_unknown_reservation_is_reservation_not_found(server):
    """Goal: Commit, Release and Extend of a reservation id never reserved are NOT_FOUND /
    RESERVATION_NOT_FOUND (also when the commit gives quantities to price)."""
    await server.open_account("acct", grant=100)
    calls = [
        server.quota.Commit(pb.CommitRequest(account_id="acct", reservation_id="nope")),
        server.quota.Commit(pb.CommitRequest(account_id="acct", reservation_id="nope", amount=3)),
        server.quota.Commit(pb.CommitRequest(account_id="acct", reservation_id="nope", quantities={"input_tokens": 5})),
        server.quota.Release(pb.ReleaseRequest(account_id="acct", reservation_id="nope")),
        server.quota.Extend(pb.ExtendRequest(account_id="acct", reservation_id="nope", ttl_ms=1000)),
    ]
    for call in calls:
        failure = await fails(call)
        assert (failure.code, failure.reason) == (NOT_FOUND, "RESERVATION_NOT_FOUND"), failure
    assert await server.available("acct") == 100


async def test_reservation_ids_are_scoped_to_their_account(server):
    """Goal: a reservation of account A is unknown to account B (ids are per account)."""
    await server.open_account("a", grant=100)
    await server.open_account("b", grant=100)
    await server.quota.Reserve(pb.ReserveRequest(account_id="a", reservation_id="r1", amount=10))
    failure = await fails(server.quota.Commit(pb.CommitRequest(account_id="b", reservation_id="r1")))
    assert (failure.code, failure.reason) == (NOT_FOUND, "RESERVATION_NOT_FOUND")


# -- message size --------------------------------------------------------------------------------

SMALL_MAX = 65_536


async def test_requests_over_max_message_bytes_are_invalid_argument_and_change_nothing(server_config_data, manual_clock):
    """Goal: a request above [server] max_message_bytes is INVALID_ARGUMENT / MESSAGE_TOO_LARGE
    with its size and the limit in the metadata (not gRPC's own RESOURCE_EXHAUSTED, which means an
    overloaded server), checked before anything else (an oversized id is not INVALID_ID), on the
    data plane, the admin plane and a streaming call alike; it changes nothing, and a request
    just under the limit works. Far above it (over 4x) gRPC refuses the bytes itself."""
    from tests.support.config import build_config
    from tests.support.inproc import InProcessServer

    server_config_data.setdefault("server", {})["max_message_bytes"] = SMALL_MAX
    srv = InProcessServer(build_config(server_config_data), manual_clock)
    await srv.start()
    try:
        await srv.open_account("acct", grant=10_000)
        before = await snapshot(srv, "acct")
        ops = [pb.BatchOp(charge=pb.ChargeRequest(account_id="acct", charge_id=f"c{i:05d}-" + "x" * 100, amount=1))
               for i in range(600)]
        big = pb.BatchRequest(ops=ops)
        assert big.ByteSize() > SMALL_MAX
        failure = await fails(srv.quota.Batch(big))
        assert (failure.code, failure.reason) == (INVALID, "MESSAGE_TOO_LARGE")
        assert failure.metadata == {"size": str(big.ByteSize()), "max_bytes": str(SMALL_MAX)}
        assert await snapshot(srv, "acct") == before
        fits = pb.BatchRequest(ops=ops[:400])
        assert fits.ByteSize() < SMALL_MAX
        assert all(r.charge.decision == OK for r in (await srv.quota.Batch(fits)).results)

        oversized_id = "a" * (SMALL_MAX + 10)
        for call in (srv.admin.UpsertAccount(apb.UpsertAccountRequest(account_id=oversized_id, plan_id="prepaid")),
                     srv.quota.GetBalance(pb.GetBalanceRequest(account_id=oversized_id))):
            failure = await fails(call)
            assert (failure.code, failure.reason) == (INVALID, "MESSAGE_TOO_LARGE"), failure
        stream = srv.admin.WatchEvents(apb.WatchEventsRequest(account_id=oversized_id))
        failure = await fails(stream.read())
        assert (failure.code, failure.reason) == (INVALID, "MESSAGE_TOO_LARGE"), failure

        huge = await fails(srv.quota.GetBalance(pb.GetBalanceRequest(account_id="a" * (5 * SMALL_MAX))))
        assert huge.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await srv.stop()

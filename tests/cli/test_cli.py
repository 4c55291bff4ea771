"""quotactl against a real server: exact JSON output, readable tables, and exit statuses.

Exit statuses are part of the tool's contract: 0 ok, 1 RPC error (status and ErrorInfo reason on
stderr), 2 usage error, 3 judged and denied.
"""
from __future__ import annotations

import io
import json
import sys
import threading
import time

import pytest

from quota_server.cli import format_time_ms, main, parse_time_ms
from quota_server.plans import period_bounds

from ..support.config import CREDIT_LIMIT_PAYG, INCLUDED_FREE
from .conftest import Quotactl, Run, run_subprocess


def _without(record: dict, *keys: str) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


def _current_period() -> tuple[int, int]:
    return period_bounds("month", time.time_ns() // 1_000_000)


# ------------------------------------------------------------------ accounts and grants


def test_account_upsert_creates_then_updates(quotactl, account):
    """Upsert reports whether it created the account; status and credit limit are set by name."""
    first = quotactl.json("account", "upsert", account, "--plan", "payg")
    assert first["created"] is True
    assert first["account"] == {
        "account_id": account, "plan_id": "payg", "credit_limit": CREDIT_LIMIT_PAYG, "status": "ACTIVE",
    }
    again = quotactl.json("account", "upsert", account, "--status", "suspended", "--credit-limit", "250")
    assert again["created"] is False
    assert again["account"] == {
        "account_id": account, "plan_id": "payg", "credit_limit": 250, "status": "SUSPENDED",
    }
    got = quotactl.json("account", "get", account)
    assert got == again["account"]


def test_account_get_table(quotactl, account):
    """The default output is aligned `label  value` lines."""
    quotactl.ok("account", "upsert", account, "--plan", "prepaid")
    run = quotactl.ok("account", "get", account)
    lines = [line for line in run.stdout.splitlines() if not line.startswith(("created at", "updated at"))]
    assert lines == [
        f"account       {account}",
        "plan          prepaid",
        "status        ACTIVE",
        "credit limit  0",
    ]
    assert run.stderr == ""


def test_account_create_without_plan_is_an_rpc_error(quotactl, account):
    run = quotactl("account", "upsert", account)
    assert run.code == 1
    assert run.stdout == ""
    assert run.stderr.startswith("quotactl: INVALID_ARGUMENT [")
    assert "plan_id" in run.stderr


def test_grant_is_idempotent_by_grant_id(quotactl, account):
    """The same grant id and amount returns the original result; another amount is refused."""
    quotactl.ok("account", "upsert", account, "--plan", "prepaid")
    expected = {"available_after": 500, "grant_id": "order-1", "lot_id": "order-1"}
    assert quotactl.json("grant", account, "500", "--grant-id", "order-1") == expected
    assert quotactl.json("grant", account, "500", "--grant-id", "order-1") == expected
    run = quotactl("grant", account, "501", "--grant-id", "order-1")
    assert run.code == 1
    assert run.stderr.startswith("quotactl: ALREADY_EXISTS [IDEMPOTENCY_KEY_REUSED]: ")


def test_grant_table(quotactl, account):
    quotactl.ok("account", "upsert", account, "--plan", "prepaid")
    run = quotactl.ok("grant", account, "70", "--grant-id", "g-7", "--category", "promotional")
    assert run.stdout == (
        "grant id         g-7\n"
        "lot id           g-7\n"
        "available after  70\n"
    )


def test_grant_without_id_prints_the_generated_one(quotactl, account):
    quotactl.ok("account", "upsert", account, "--plan", "prepaid")
    result = quotactl.json("grant", account, "5")
    assert len(result["grant_id"]) == 32
    assert result["lot_id"] == result["grant_id"]


# ------------------------------------------------------------------ balance


def test_balance_json_lists_lots_in_consumption_order(quotactl, account):
    quotactl.ok("account", "upsert", account, "--plan", "prepaid")
    quotactl.ok("grant", account, "500", "--grant-id", "bought")
    quotactl.ok("grant", account, "200", "--grant-id", "promo", "--category", "promotional",
                "--priority", "-1", "--expires-at", "2099-01-01")
    quotactl.ok("reserve", account, "--amount", "50", "--reservation-id", "r1")
    start, end = _current_period()
    assert quotactl.json("balance", account) == {
        "available": 650, "held": 50, "balance": 700, "credit_limit": 0, "plan_id": "prepaid",
        "status": "ACTIVE",
        "lots": [
            {"lot_id": "promo", "category": "PROMOTIONAL", "remaining": 200, "priority": -1,
             "expires_at_ms": 4_070_908_800_000},
            {"lot_id": "bought", "category": "PURCHASED", "remaining": 500, "priority": 0, "expires_at_ms": 0},
        ],
        "period": {"start_at_ms": start, "end_at_ms": end, "included": 0, "used": 0},
        "limits": [],
    }


def test_balance_table(quotactl, account):
    """Fields, period, a lots table, and a limits table (every limit of the plan, full before
    any use)."""
    quotactl.ok("account", "upsert", account, "--plan", "free")
    start, end = _current_period()
    lot = f"included:free:{start}"
    pad = " " * (len(lot) - 3)
    run = quotactl.ok("balance", account)
    assert run.stdout == (
        f"account       {account}\n"
        "plan          free\n"
        "status        ACTIVE\n"
        f"available     {INCLUDED_FREE}\n"
        "held          0\n"
        f"balance       {INCLUDED_FREE}\n"
        "credit limit  0\n"
        "\n"
        f"period         {format_time_ms(start)} .. {format_time_ms(end)}\n"
        f"included       {INCLUDED_FREE}\n"
        "included used  0\n"
        "\n"
        f"LOT{pad}  CATEGORY  REMAINING  PRIORITY  EXPIRES AT\n"
        f"{lot}  INCLUDED        100         0  {format_time_ms(end)}\n"
        "\n"
        "LIMIT                    REMAINING  CAPACITY  RESET AFTER MS\n"
        "input_tokens_per_minute       5000      5000               0\n"
        "requests_per_minute             10        10               0\n"
    )


def test_balance_shows_limits_after_use(quotactl, account):
    quotactl.ok("account", "upsert", account, "--plan", "free")
    quotactl.ok("charge", account, "--action", "image.generate", "--charge-id", "c1")
    limits = quotactl.json("balance", account)["limits"]
    assert [(lim["name"], lim["remaining"], lim["capacity"]) for lim in limits] == [
        ("input_tokens_per_minute", 5000, 5000), ("requests_per_minute", 9, 10),
    ]
    assert limits[0]["reset_after_ms"] == 0 and 0 < limits[1]["reset_after_ms"] <= 60_000
    assert "LIMIT                    REMAINING  CAPACITY  RESET AFTER MS" in quotactl.ok("balance", account).stdout


def test_balance_of_unknown_account(quotactl):
    run = quotactl("balance", "no-such-account")
    assert run == Run(1, "", "quotactl: NOT_FOUND [ACCOUNT_NOT_FOUND]: unknown account\n")


def test_rpc_error_in_json_mode_is_json_on_stderr(quotactl):
    run = quotactl("--json", "account", "get", "no-such-account")
    assert run.code == 1
    assert run.stdout == ""
    assert run.stderr == (
        '{"error": {"code": "NOT_FOUND", "message": "unknown account", "metadata": {}, '
        '"reason": "ACCOUNT_NOT_FOUND"}}\n'
    )


def test_error_metadata_is_shown(quotactl, account):
    run = quotactl("reserve", account, "--amount", "1", "--reservation-id", "bad id")
    assert run.code == 1
    assert run.stderr.startswith("quotactl: INVALID_ARGUMENT [INVALID_ID]: reservation_id must be ")
    assert run.stderr.endswith(" (field=reservation_id)\n")


# ------------------------------------------------------------------ data plane


def test_reserve_commit_release(quotactl, account):
    quotactl.ok("account", "upsert", account, "--plan", "prepaid")
    quotactl.ok("grant", account, "500", "--grant-id", "g1")
    reserved = quotactl.json("reserve", account, "--amount", "100", "--reservation-id", "r1", "--ttl-ms", "30000")
    now_ms = time.time_ns() // 1_000_000
    assert now_ms < reserved.pop("expires_at_ms") <= now_ms + 30_000
    assert reserved == {"decision": "OK", "reservation_id": "r1", "amount_held": 100, "available_after": 400,
                        "retry_after_ms": 0, "limit_name": ""}
    assert quotactl.json("commit", account, "r1", "--amount", "60") == {
        "amount_charged": 60, "amount_released": 40, "amount_uncharged": 0, "available_after": 440, "late": False,
    }
    run = quotactl("release", account, "r1")
    assert run.code == 1
    assert run.stderr.startswith("quotactl: FAILED_PRECONDITION [RESERVATION_COMMITTED]: ")

    quotactl.ok("reserve", account, "--amount", "40", "--reservation-id", "r2")
    released = {"amount_released": 40, "available_after": 440}
    assert quotactl.json("release", account, "r2") == released
    assert quotactl.json("release", account, "r2") == released  # releasing twice returns the original result
    run = quotactl("commit", account, "r2")
    assert run.code == 1
    assert run.stderr.startswith("quotactl: FAILED_PRECONDITION [RESERVATION_RELEASED]: ")


def test_reserve_and_commit_by_quantities(quotactl, account):
    """llm.chat: ceil(1000*3*1.2/1000) + ceil(1000*15*1.2/1000) = 4 + 18 held; 2 + 4 charged."""
    quotactl.ok("account", "upsert", account, "--plan", "prepaid")
    quotactl.ok("grant", account, "100", "--grant-id", "g1")
    reserved = quotactl.json("reserve", account, "--action", "llm.chat", "-q", "input_tokens=1000",
                             "-q", "output_tokens=1000", "--reservation-id", "chat-1", "-l", "job=7")
    assert (reserved["decision"], reserved["amount_held"]) == ("OK", 22)
    assert quotactl.json("commit", account, "chat-1", "-q", "input_tokens=500", "-q", "output_tokens=200") == {
        "amount_charged": 6, "amount_released": 16, "amount_uncharged": 0, "available_after": 94, "late": False,
    }


def test_reserve_table_and_generated_id(quotactl, account):
    quotactl.ok("account", "upsert", account, "--plan", "prepaid")
    quotactl.ok("grant", account, "10", "--grant-id", "g1")
    lines = quotactl.ok("reserve", account, "--amount", "3").stdout.splitlines()
    assert lines[0] == "decision         OK"
    assert lines[1].startswith("reservation id   ") and len(lines[1].split()[-1]) == 32
    assert lines[2:4] == ["amount held      3", "available after  7"]
    assert lines[4].startswith("expires at       20")


def test_extend(quotactl, account):
    quotactl.ok("account", "upsert", account, "--plan", "prepaid")
    quotactl.ok("grant", account, "500", "--grant-id", "g1")
    quotactl.ok("reserve", account, "--amount", "100", "--reservation-id", "r1")
    extended = quotactl.json("extend", account, "r1", "--hold-total", "150")
    assert _without(extended, "expires_at_ms") == {"decision": "OK", "amount_held": 150, "available_after": 350}
    denied = quotactl("--json", "extend", account, "r1", "--hold-total", "10000")
    assert denied.code == 3
    assert _without(denied.json(), "expires_at_ms") == {
        "decision": "INSUFFICIENT_CREDITS", "amount_held": 150, "available_after": 350,
    }
    assert denied.json()["expires_at_ms"] == extended["expires_at_ms"]  # a denied extend changes nothing


def test_denials_exit_3_with_the_result_on_stdout(quotactl, account):
    quotactl.ok("account", "upsert", account, "--plan", "free")
    denied = quotactl("--json", "charge", account, "--action", "video.render", "--charge-id", "v1")
    assert denied.code == 3
    assert denied.json() == {"decision": "FEATURE_NOT_IN_PLAN", "charge_id": "v1", "amount_charged": 0,
                             "available_after": INCLUDED_FREE, "retry_after_ms": 0, "limit_name": ""}
    check = quotactl("--json", "check", account, "--amount", "1000")
    assert check.code == 3
    assert check.json() == {"decision": "INSUFFICIENT_CREDITS", "available": INCLUDED_FREE,
                            "retry_after_ms": 0, "limit_name": ""}
    assert quotactl.json("check", account, "--action", "image.generate") == {
        "decision": "OK", "available": INCLUDED_FREE, "retry_after_ms": 0, "limit_name": "",
    }


def test_rate_limited_charge_names_the_limit(quotactl, account):
    """The free plan allows 10 requests a minute; the 11th is denied with the limit's name."""
    quotactl.ok("account", "upsert", account, "--plan", "free")
    for i in range(10):
        assert quotactl.json("charge", account, "--action", "doc.summarize", "--charge-id", f"c{i}")["decision"] == "OK"
    run = quotactl("charge", account, "--action", "doc.summarize", "--charge-id", "c10")
    assert run.code == 3
    lines = run.stdout.splitlines()
    assert lines[:5] == [
        "decision         RATE_LIMITED",
        "charge id        c10",
        "amount charged   0",
        f"available after  {INCLUDED_FREE - 20}",
        "limit            requests_per_minute",
    ]
    assert lines[5].startswith("retry after ms   ")
    assert 0 < int(lines[5].split()[-1]) <= 60_000


def test_charge_replay_returns_the_original_result(quotactl, account):
    quotactl.ok("account", "upsert", account, "--plan", "prepaid")
    quotactl.ok("grant", account, "100", "--grant-id", "g1")
    first = quotactl.json("charge", account, "--amount", "30", "--charge-id", "c1")
    quotactl.ok("grant", account, "100", "--grant-id", "g2")
    assert quotactl.json("charge", account, "--amount", "30", "--charge-id", "c1") == first
    assert first == {"decision": "OK", "charge_id": "c1", "amount_charged": 30, "available_after": 70,
                     "retry_after_ms": 0, "limit_name": ""}


# ------------------------------------------------------------------ quote


def test_quote_metered_json(quotactl):
    quote = quotactl.json("quote", "llm.chat", "-q", "input_tokens=1234", "-q", "output_tokens=567")
    assert quote.pop("price_version")
    assert quote == {"amount": 16, "lines": [
        {"kind": "METERED", "quantity_name": "input_tokens", "quantity": 1234, "per_1000": 3, "fixed_amount": 0,
         "margin_percent": 20, "amount": 5},
        {"kind": "METERED", "quantity_name": "output_tokens", "quantity": 567, "per_1000": 15, "fixed_amount": 0,
         "margin_percent": 20, "amount": 11},
    ]}


def test_quote_table(quotactl):
    run = quotactl.ok("quote", "llm.chat", "-q", "input_tokens=1234", "-q", "output_tokens=567")
    head, table = run.stdout.split("\n\n")
    assert head.splitlines()[:2] == ["action         llm.chat", "amount         16"]
    assert table == (
        "LINE           QUANTITY  PER 1000  FIXED  MARGIN %  AMOUNT\n"
        "input_tokens       1234         3      -        20       5\n"
        "output_tokens       567        15      -        20      11\n"
    )


def test_quote_fixed_price(quotactl):
    quote = quotactl.json("quote", "image.generate")
    assert quote["amount"] == 5
    assert [(line["kind"], line["fixed_amount"], line["amount"]) for line in quote["lines"]] == [("FIXED", 5, 5)]


def test_quote_unknown_action(quotactl):
    run = quotactl("quote", "no.such.action")
    assert run.code == 1
    assert run.stderr.startswith("quotactl: INVALID_ARGUMENT [UNKNOWN_ACTION]: ")


# ------------------------------------------------------------------ usage


@pytest.fixture
def usage_account(quotactl, account) -> str:
    """A pay-as-you-go account with three usage records: a charge, a charge by action, a commit."""
    quotactl.ok("account", "upsert", account, "--plan", "payg")
    quotactl.ok("charge", account, "--amount", "7", "--charge-id", "c1", "-l", "team=red")
    quotactl.ok("charge", account, "--action", "image.generate", "--charge-id", "c2")
    quotactl.ok("reserve", account, "--action", "llm.chat", "-q", "input_tokens=1000", "--reservation-id", "r1",
                "-l", "job=9")
    quotactl.ok("commit", account, "r1", "-q", "input_tokens=500", "-q", "output_tokens=200")
    return account


def _records(account: str) -> list[dict]:
    base = {"account_id": account, "reservation_id": "", "charge_id": "", "action": "", "quantities": {},
            "amount_uncharged": 0, "labels": {}, "late": False}
    return [
        {**base, "charge_id": "c1", "amount_charged": 7, "labels": {"team": "red"}},
        {**base, "charge_id": "c2", "action": "image.generate", "amount_charged": 5},
        {**base, "reservation_id": "r1", "action": "llm.chat", "amount_charged": 6,
         "quantities": {"input_tokens": 500, "output_tokens": 200}, "labels": {"job": "9"}},
    ]


def test_usage_list_follows_pages(quotactl, usage_account):
    result = quotactl.json("usage", "list", usage_account, "--page-size", "2")
    assert result["next_page_token"] == ""
    assert [_without(r, "at_ms") for r in result["records"]] == _records(usage_account)
    assert all(isinstance(r["at_ms"], int) and r["at_ms"] > 0 for r in result["records"])


def test_usage_list_limit_and_page_token(quotactl, usage_account):
    first = quotactl.json("usage", "list", usage_account, "--limit", "2", "--page-size", "1")
    assert [r["charge_id"] for r in first["records"]] == ["c1", "c2"]
    assert first["next_page_token"]
    rest = quotactl.json("usage", "list", usage_account, "--page-token", first["next_page_token"])
    assert [r["reservation_id"] for r in rest["records"]] == ["r1"]
    assert rest["next_page_token"] == ""
    table = quotactl.ok("usage", "list", usage_account, "--limit", "1")
    assert table.stderr.startswith("more records: --page-token ")


def test_usage_list_window(quotactl, usage_account):
    assert quotactl.json("usage", "list", usage_account, "--from", "2099-01-01")["records"] == []
    assert quotactl.json("usage", "list", usage_account, "--to", "2000-01-01T00:00:00Z")["records"] == []
    everything = quotactl.json("usage", "list", usage_account, "--from", "2000-01-01", "--to", "4070908800000")
    assert len(everything["records"]) == 3
    assert quotactl.ok("usage", "list", usage_account, "--from", "2099-01-01").stdout == "no usage records\n"


def test_usage_list_table(quotactl, usage_account):
    lines = quotactl.ok("usage", "list", usage_account).stdout.splitlines()
    assert lines[0].split() == ["AT", "KIND", "ID", "ACTION", "CHARGED", "UNCHARGED", "LATE", "QUANTITIES", "LABELS"]
    assert [line.split()[1:] for line in lines[1:]] == [
        ["charge", "c1", "-", "7", "0", "-", "team=red"],
        ["charge", "c2", "image.generate", "5", "0", "-", "-"],
        ["commit", "r1", "llm.chat", "6", "0", "input_tokens=500", "output_tokens=200", "job=9"],
    ]


def test_usage_summary(quotactl, usage_account):
    assert quotactl.json("usage", "summary", usage_account) == {
        "actions": [
            {"action": "", "count": 1, "quantities": {}, "amount_charged": 7, "amount_uncharged": 0},
            {"action": "image.generate", "count": 1, "quantities": {}, "amount_charged": 5, "amount_uncharged": 0},
            {"action": "llm.chat", "count": 1, "quantities": {"input_tokens": 500, "output_tokens": 200},
             "amount_charged": 6, "amount_uncharged": 0},
        ],
        "invoice_total": 18,
    }
    assert quotactl.ok("usage", "summary", usage_account).stdout == (
        "ACTION          COUNT  CHARGED  UNCHARGED  QUANTITIES\n"
        "-                   1        7          0  -\n"
        "image.generate      1        5          0  -\n"
        "llm.chat            1        6          0  input_tokens=500 output_tokens=200\n"
        "\n"
        "invoice total  18\n"
    )


# ------------------------------------------------------------------ events


def test_events_replay_from_zero_with_filters(quotactl, account):
    """`--after 0` replays every retained event; --account and --type filter on the server."""
    quotactl.ok("account", "upsert", account, "--plan", "prepaid")
    quotactl.ok("grant", account, "500", "--grant-id", "g1")
    quotactl.ok("charge", account, "--amount", "500", "--charge-id", "all")
    run = quotactl.ok("--json", "events", "tail", "--after", "0", "--account", account, "--count", "3")
    events = run.json_lines()
    assert [_without(e, "event_id", "at_ms") for e in events] == [
        {"type": "account.created", "account_id": account, "attributes": {"plan_id": "prepaid"}},
        {"type": "credits.granted", "account_id": account,
         "attributes": {"amount": "500", "category": "1", "grant_id": "g1"}},
        {"type": "balance.depleted", "account_id": account, "attributes": {"available": "0"}},
    ]
    ids = [int(e["event_id"]) for e in events]
    assert ids == sorted(ids)
    only = quotactl.ok("--json", "events", "tail", "--after", "0", "--account", account,
                       "--type", "credits.granted", "--count", "1").json_lines()
    assert only == [events[1]]
    resumed = quotactl.ok("--json", "events", "tail", "--after", events[0]["event_id"], "--account", account,
                          "--count", "2").json_lines()
    assert resumed == events[1:]


def test_events_table_line(quotactl, account):
    quotactl.ok("account", "upsert", account, "--plan", "prepaid")
    run = quotactl.ok("events", "tail", "--after", "0", "--account", account, "--count", "1")
    fields = run.stdout.split()
    assert fields[2:] == ["account.created", account, "plan_id=prepaid"]


def test_events_tail_from_now_sees_new_events(server, account):
    """Without --after the stream starts now: a grant made while it is open arrives."""
    from quota_client import QuotaClient

    out, err = io.StringIO(), io.StringIO()
    codes: list[int] = []
    argv = ["--target", server.target, "--json", "events", "tail", "--account", account, "--count", "1",
            "--duration", "20"]
    tail = threading.Thread(target=lambda: codes.append(main(argv, stdout=out, stderr=err)))
    with QuotaClient(server.target) as client:
        client.upsert_account(account, plan_id="prepaid")
        tail.start()
        grants = 0
        deadline = time.monotonic() + 15
        while tail.is_alive() and time.monotonic() < deadline:  # the stream may open after a grant
            client.grant(account, 1, grant_id=f"g{grants}")
            grants += 1
            tail.join(0.2)
    tail.join(20)
    assert codes == [0], err.getvalue()
    [event] = [json.loads(line) for line in out.getvalue().splitlines()]
    assert event["type"] == "credits.granted"
    assert event["attributes"]["grant_id"].startswith("g")


def test_events_tail_duration_ends_quietly(quotactl):
    run = quotactl("events", "tail", "--account", "nobody-ever", "--duration", "0.3")
    assert run == Run(0, "", "")


@pytest.fixture
def silent_server():
    """A port whose listener accepts connections and never answers (a frozen server)."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield Quotactl(f"127.0.0.1:{listener.getsockname()[1]}")
    finally:
        listener.close()


def test_events_tail_that_cannot_connect_is_an_error_not_an_empty_tail(silent_server):
    """Goal (regression: exit 0 and no output, as for a quiet stream): a tail against a server
    that does not answer fails with exit 1 once --timeout (or a shorter --duration) has passed,
    instead of waiting for gRPC's own connection timeout (about 20 s)."""
    started = time.monotonic()
    run = silent_server("--timeout", "1", "events", "tail", "--after", "0", "--duration", "5")
    assert run.code == 1 and run.stdout == "" and "UNAVAILABLE" in run.stderr, run
    assert time.monotonic() - started < 10


def test_a_call_that_misses_its_timeout_is_not_tried_again(silent_server):
    """Goal (regression: --timeout applied to each of 4 attempts): a call to a server that does
    not answer ends after about --timeout, with exit 1 (DEADLINE_EXCEEDED)."""
    started = time.monotonic()
    run = silent_server("--timeout", "1", "balance", "acme")
    assert run.code == 1 and "DEADLINE_EXCEEDED" in run.stderr, run
    assert time.monotonic() - started < 3.5  # 4 attempts of 1 s took 4.2 s and more


# ------------------------------------------------------------------ usage errors and the console


@pytest.mark.parametrize("argv", [
    [],
    ["account"],
    ["grant", "a1", "ten"],
    ["grant", "a1", "10", "--category", "gold"],
    ["account", "upsert", "a1", "--status", "closed"],
    ["usage", "list", "a1", "--from", "yesterday"],
    ["reserve", "a1", "-q", "tokens"],
    ["events", "tail", "--duration", "0"],
])
def test_bad_arguments_exit_2(quotactl, argv):
    assert quotactl(*argv).code == 2


@pytest.mark.parametrize("argv, message", [
    (["check", "a1"], "give --amount, --action, or both"),
    (["usage", "list", "a1", "--from", "2025-02-01", "--to", "2025-01-01"], "--to must not be before --from"),
    (["charge", "a1", "--amount", "1", "-l", "k=1", "-l", "k=2"], "label 'k' given twice"),
])
def test_argument_errors_found_after_parsing_exit_2(quotactl, argv, message):
    """Goal: exit 2 with the message, after the usage of the command at fault (it printed
    quotactl's own usage)."""
    run = quotactl(*argv)
    assert run.code == 2
    assert run.stderr.endswith(f"quotactl: error: {message}\n")
    assert run.stderr.startswith(f"usage: quotactl {' '.join(argv[:2] if argv[0] == 'usage' else argv[:1])} ")


def test_json_is_accepted_after_the_command_too(quotactl, account):
    """Goal: `quotactl balance ACCOUNT --json` works like `quotactl --json balance ACCOUNT` (it
    was a usage error), for a nested command as well."""
    quotactl.ok("account", "upsert", account, "--plan", "prepaid")
    before = quotactl.json("balance", account)
    assert quotactl.ok("balance", account, "--json").json() == before
    assert quotactl.ok("account", "get", account, "--json").json()["account_id"] == account


def test_unreachable_server_is_an_rpc_error():
    out, err = io.StringIO(), io.StringIO()
    code = main(["--target", "127.0.0.1:1", "--timeout", "2", "account", "get", "a1"], stdout=out, stderr=err)
    assert code == 1
    assert err.getvalue().startswith("quotactl: UNAVAILABLE: ")


def test_module_entry_point_reads_quota_target(server, account):
    """The real process: QUOTA_TARGET selects the server, and the exit status reaches the shell."""
    run = run_subprocess([sys.executable, "-m", "quota_server.cli", "--json", "account", "get", account],
                         env={"QUOTA_TARGET": server.target})
    assert run.code == 1
    assert '"reason": "ACCOUNT_NOT_FOUND"' in run.stderr
    run = run_subprocess([sys.executable, "-m", "quota_server.cli", "--help"])
    assert run.code == 0
    assert "usage: quotactl" in run.stdout


def test_console_script(server, account):
    import shutil

    quotactl = shutil.which("quotactl")
    if quotactl is None:
        pytest.skip("quotactl is not installed (pip install .)")
    run = run_subprocess([quotactl, "--target", server.target, "account", "upsert", account, "--plan", "prepaid"])
    assert run.code == 0, run.stderr
    assert run.stdout.splitlines()[:2] == ["created       yes", f"account       {account}"]


# ------------------------------------------------------------------ times


@pytest.mark.parametrize("text, ms", [
    ("1700000000000", 1_700_000_000_000),
    ("2025-06-01", 1_748_736_000_000),
    ("2025-06-01T12:00:00Z", 1_748_779_200_000),
    ("2025-06-01T12:00:00", 1_748_779_200_000),
    ("2025-06-01T14:00:00+02:00", 1_748_779_200_000),
    ("2025-06-01T12:00:00.250Z", 1_748_779_200_250),
])
def test_parse_time_ms(text, ms):
    assert parse_time_ms(text) == ms


def test_format_time_ms():
    assert format_time_ms(1_748_779_200_000) == "2025-06-01T12:00:00Z"
    assert format_time_ms(1_748_779_200_250) == "2025-06-01T12:00:00.250Z"
    assert format_time_ms(0) == "-"

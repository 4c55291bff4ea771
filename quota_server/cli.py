"""`quotactl`: the operator's command-line tool for a running quota-server.

It talks to the server over gRPC through the `quota_client` library, like any backend would:
accounts, grants, balances, usage, events and quotes, plus the data-plane calls (reserve,
commit, release, extend, charge, check) for manual testing. Output is aligned tables by
default and JSON with `--json` (one object per command; one object per line for
`events tail`).

Exit status: 0 success; 1 the RPC failed (the gRPC status and its ErrorInfo reason are printed
on stderr); 2 a usage error (bad arguments); 3 the call succeeded but the decision is a denial
(reserve, charge, check, extend), so shell scripts can branch on it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import enum
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TextIO

DEFAULT_TARGET = "127.0.0.1:50051"
TARGET_ENV = "QUOTA_TARGET"
API_KEY_ENV = "QUOTA_API_KEY"
DEFAULT_TIMEOUT_S = 10.0

EXIT_OK = 0
EXIT_RPC_ERROR = 1
EXIT_USAGE = 2
EXIT_DENIED = 3

USAGE_PAGE_SIZE_MAX = 1000  # the server's cap on ListUsage.page_size

CATEGORIES = ("purchased", "promotional", "included", "adjustment")
STATUSES = ("active", "suspended")
ON_EXPIRE = ("release", "commit")


class UsageError(Exception):
    """A bad argument found after parsing (exit status 2)."""


# ------------------------------------------------------------------ argument types


def parse_time_ms(text: str) -> int:
    """An instant as epoch milliseconds: an integer (ms), or an ISO 8601 date or date-time.

    A date means 00:00 UTC that day; a date-time without an offset is UTC.
    """
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        value = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (use epoch milliseconds, 2025-06-01 or 2025-06-01T12:00:00Z)"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    delta = value - epoch
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _int_arg(minimum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return key, value


def _quantity(text: str) -> tuple[str, int]:
    key, value = _pair(text)
    try:
        return key, int(value, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"quantity {key!r} must be an integer, got {value!r}") from None


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _to_map(pairs: Sequence[tuple[str, Any]] | None, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs or ():
        if key in out:
            raise UsageError(f"{what} {key!r} given twice")
        out[key] = value
    return out


# ------------------------------------------------------------------ rendering


def format_time_ms(ms: int) -> str:
    """Epoch ms as ISO 8601 UTC (milliseconds only when not zero); 0 is '-'."""
    if not ms:
        return "-"
    value = datetime.datetime(1970, 1, 1) + datetime.timedelta(milliseconds=ms)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if ms % 1000:
        text += f".{ms % 1000:03d}"
    return text + "Z"


def _name(value: Any) -> str:
    return value.name if isinstance(value, enum.Enum) else str(value)


def to_jsonable(value: Any) -> Any:
    """Results (frozen dataclasses of quota_client) as plain JSON values; enums by name."""
    if isinstance(value, enum.Enum):
        return value.name
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def _map_text(mapping: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(mapping.items())) or "-"


def render_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, right: Sequence[bool] = ()) -> str:
    """An aligned text table; `right[i]` right-aligns column i (numbers)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = []
        for i, cell in enumerate(row):
            aligned = cell.rjust(widths[i]) if i < len(right) and right[i] else cell.ljust(widths[i])
            parts.append(aligned)
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def render_fields(pairs: Sequence[tuple[str, Any]]) -> str:
    """`label  value` lines with the values aligned."""
    width = max(len(label) for label, _ in pairs)
    return "\n".join(f"{label.ljust(width)}  {value}".rstrip() for label, value in pairs)


class Output:
    """Where a command writes: a table for people, or JSON for machines."""

    def __init__(self, *, as_json: bool, stdout: TextIO, stderr: TextIO) -> None:
        self.as_json = as_json
        self.stdout = stdout
        self.stderr = stderr

    def emit(self, result: Any, text: Callable[[], str]) -> None:
        if self.as_json:
            self.json(to_jsonable(result))
        else:
            self.stdout.write(text() + "\n")

    def json(self, value: Any) -> None:
        self.stdout.write(json.dumps(value, sort_keys=True) + "\n")
        self.stdout.flush()

    def line(self, text: str) -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def note(self, text: str) -> None:
        """A remark for people (stderr), never mixed into the JSON on stdout."""
        self.stderr.write(text + "\n")


# ------------------------------------------------------------------ commands: accounts, grants


def _account_fields(account: Any) -> list[tuple[str, Any]]:
    return [
        ("account", account.account_id),
        ("plan", account.plan_id),
        ("status", _name(account.status)),
        ("credit limit", account.credit_limit),
    ]


def cmd_account_upsert(client: Any, args: argparse.Namespace, out: Output) -> int:
    from quota_client import AccountStatus

    options: dict[str, Any] = {}
    if args.plan:
        options["plan_id"] = args.plan
    if args.credit_limit is not None:
        options["credit_limit"] = args.credit_limit
    if args.status:
        options["status"] = AccountStatus[args.status.upper()]
    result = client.upsert_account(args.account_id, **options)
    out.emit(result, lambda: render_fields([("created", "yes" if result.created else "no")]
                                           + _account_fields(result.account)))
    return EXIT_OK


def cmd_account_get(client: Any, args: argparse.Namespace, out: Output) -> int:
    account = client.get_account(args.account_id)
    out.emit(account, lambda: render_fields(_account_fields(account)))
    return EXIT_OK


def cmd_grant(client: Any, args: argparse.Namespace, out: Output) -> int:
    from quota_client import LotCategory

    options: dict[str, Any] = {"category": LotCategory[args.category.upper()], "priority": args.priority}
    if args.grant_id:
        options["grant_id"] = args.grant_id
    if args.expires_at is not None:
        options["expires_at_ms"] = args.expires_at
    result = client.grant(args.account_id, args.amount, **options)
    out.emit(result, lambda: render_fields([
        ("grant id", result.grant_id), ("lot id", result.lot_id), ("available after", result.available_after),
    ]))
    return EXIT_OK


def render_balance(account_id: str, b: Any) -> str:
    parts = [render_fields([
        ("account", account_id),
        ("plan", b.plan_id),
        ("status", _name(b.status)),
        ("available", b.available),
        ("held", b.held),
        ("balance", b.balance),
        ("credit limit", b.credit_limit),
    ])]
    p = b.period
    if p.start_at_ms or p.end_at_ms:
        parts.append(render_fields([
            ("period", f"{format_time_ms(p.start_at_ms)} .. {format_time_ms(p.end_at_ms)}"),
            ("included", p.included),
            ("included used", p.used),
        ]))
    if b.lots:
        parts.append(render_table(
            ("LOT", "CATEGORY", "REMAINING", "PRIORITY", "EXPIRES AT"),
            [(lot.lot_id, _name(lot.category), lot.remaining, lot.priority,
              format_time_ms(lot.expires_at_ms) if lot.expires_at_ms else "never") for lot in b.lots],
            right=(False, False, True, True, False),
        ))
    else:
        parts.append("no lots")
    if b.limits:
        parts.append(render_table(
            ("LIMIT", "REMAINING", "CAPACITY", "RESET AFTER MS"),
            [(lim.name, lim.remaining, lim.capacity, lim.reset_after_ms) for lim in b.limits],
            right=(False, True, True, True),
        ))
    return "\n\n".join(parts)


def cmd_balance(client: Any, args: argparse.Namespace, out: Output) -> int:
    balance = client.get_balance(args.account_id)
    out.emit(balance, lambda: render_balance(args.account_id, balance))
    return EXIT_OK


# ------------------------------------------------------------------ commands: usage and events


def _window(args: argparse.Namespace) -> dict[str, int]:
    if args.from_ms is not None and args.to_ms is not None and args.to_ms < args.from_ms:
        raise UsageError("--to must not be before --from")
    window = {}
    if args.from_ms is not None:
        window["from_at_ms"] = args.from_ms
    if args.to_ms is not None:
        window["to_at_ms"] = args.to_ms
    return window


def cmd_usage_list(client: Any, args: argparse.Namespace, out: Output) -> int:
    """Follow pages until the window is exhausted or --limit records were shown."""
    window = _window(args)
    records: list[Any] = []
    token = args.page_token or ""
    while True:
        want = args.page_size
        if args.limit is not None:
            want = min(want, args.limit - len(records))
        page = client.list_usage(args.account_id, page_size=want, page_token=token, **window)
        records.extend(page.records)
        token = page.next_page_token
        if not token or (args.limit is not None and len(records) >= args.limit):
            break
    if args.limit is not None:
        del records[args.limit:]
    result = {"records": [to_jsonable(r) for r in records], "next_page_token": token}
    if out.as_json:
        out.json(result)
        return EXIT_OK
    if records:
        out.line(render_table(
            ("AT", "KIND", "ID", "ACTION", "CHARGED", "UNCHARGED", "LATE", "QUANTITIES", "LABELS"),
            [(format_time_ms(r.at_ms), "commit" if r.reservation_id else "charge",
              r.reservation_id or r.charge_id, r.action or "-", r.amount_charged, r.amount_uncharged,
              "yes" if r.late else "", _map_text(r.quantities), _map_text(r.labels)) for r in records],
            right=(False, False, False, False, True, True),
        ))
    else:
        out.line("no usage records")
    if token:
        out.note(f"more records: --page-token {token}")
    return EXIT_OK


def cmd_usage_summary(client: Any, args: argparse.Namespace, out: Output) -> int:
    summary = client.get_usage_summary(args.account_id, **_window(args))

    def text() -> str:
        if not summary.actions:
            table = "no usage records"
        else:
            table = render_table(
                ("ACTION", "COUNT", "CHARGED", "UNCHARGED", "QUANTITIES"),
                [(a.action or "-", a.count, a.amount_charged, a.amount_uncharged, _map_text(a.quantities))
                 for a in summary.actions],
                right=(False, True, True, True),
            )
        return table + "\n\n" + render_fields([("invoice total", summary.invoice_total)])

    out.emit(summary, text)
    return EXIT_OK


def cmd_events_tail(client: Any, args: argparse.Namespace, out: Output) -> int:
    """Stream events until --count events were shown, --duration ran out, or Ctrl-C."""
    from quota_client import DeadlineExceeded

    shown = 0
    if args.count == 0:
        return EXIT_OK
    # The stream itself has no deadline but --duration: --timeout bounds getting connected, and
    # a --duration that runs out before then is an error, not an empty tail.
    client.wait_ready(args.timeout if args.duration is None else min(args.timeout, args.duration))
    stream = client.watch_events(account_id=args.account or "", types=args.types or (),
                                 after_event_id=args.after or "", timeout=args.duration)
    try:
        for event in stream:
            if out.as_json:
                out.json(to_jsonable(event))
            else:
                out.line(f"{event.event_id:>12}  {format_time_ms(event.at_ms):<24}  {event.type:<20}  "
                         f"{event.account_id:<16}  {_map_text(event.attributes)}".rstrip())
            shown += 1
            if args.count is not None and shown >= args.count:
                break
    except DeadlineExceeded:
        if args.duration is None:
            raise
    except KeyboardInterrupt:
        pass
    finally:
        stream.close()
    return EXIT_OK


# ------------------------------------------------------------------ commands: data plane


def _priced(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.amount is not None:
        options["amount"] = args.amount
    if args.action:
        options["action"] = args.action
    quantities = _to_map(args.quantities, "quantity")
    if quantities:
        options["quantities"] = quantities
    if "amount" not in options and "action" not in options:
        raise UsageError("give --amount, --action, or both")
    return options


def _decided(result: Any) -> int:
    return EXIT_OK if result.ok else EXIT_DENIED


def cmd_quote(client: Any, args: argparse.Namespace, out: Output) -> int:
    options: dict[str, Any] = {}
    if args.account:
        options["account_id"] = args.account
    quantities = _to_map(args.quantities, "quantity")
    if quantities:
        options["quantities"] = quantities
    quote = client.quote(args.action, **options)

    def text() -> str:
        head = render_fields([("action", args.action), ("amount", quote.amount),
                              ("price version", quote.price_version)])
        lines = render_table(
            ("LINE", "QUANTITY", "PER 1000", "FIXED", "MARGIN %", "AMOUNT"),
            [(line.quantity_name or "fixed", line.quantity if line.quantity_name else "-",
              line.per_1000 if line.quantity_name else "-", "-" if line.quantity_name else line.fixed_amount,
              line.margin_percent, line.amount) for line in quote.lines],
            right=(False, True, True, True, True, True),
        )
        return head + "\n\n" + lines

    out.emit(quote, text)
    return EXIT_OK


def _denial_fields(result: Any) -> list[tuple[str, Any]]:
    if getattr(result, "limit_name", ""):
        return [("limit", result.limit_name), ("retry after ms", result.retry_after_ms)]
    return []


def cmd_reserve(client: Any, args: argparse.Namespace, out: Output) -> int:
    from quota_client import ExpireAction

    options = _priced(args)
    options.update(ttl_ms=args.ttl_ms, allow_partial=args.allow_partial, min_amount=args.min_amount,
                   on_expire=ExpireAction[args.on_expire.upper()] if args.on_expire else ExpireAction.UNSPECIFIED)
    labels = _to_map(args.labels, "label")
    if labels:
        options["labels"] = labels
    if args.reservation_id:
        options["reservation_id"] = args.reservation_id
    r = client.reserve(args.account_id, **options)
    out.emit(r, lambda: render_fields([
        ("decision", _name(r.decision)), ("reservation id", r.reservation_id), ("amount held", r.amount_held),
        ("available after", r.available_after), ("expires at", format_time_ms(r.expires_at_ms)),
    ] + _denial_fields(r)))
    return _decided(r)


def cmd_commit(client: Any, args: argparse.Namespace, out: Output) -> int:
    options: dict[str, Any] = {}
    if args.amount is not None:
        options["amount"] = args.amount
    quantities = _to_map(args.quantities, "quantity")
    if quantities:
        options["quantities"] = quantities
    labels = _to_map(args.labels, "label")
    if labels:
        options["labels"] = labels
    r = client.commit(args.account_id, args.reservation_id, **options)
    out.emit(r, lambda: render_fields([
        ("amount charged", r.amount_charged), ("amount released", r.amount_released),
        ("amount uncharged", r.amount_uncharged), ("available after", r.available_after),
        ("late", "yes" if r.late else "no"),
    ]))
    return EXIT_OK


def cmd_release(client: Any, args: argparse.Namespace, out: Output) -> int:
    r = client.release(args.account_id, args.reservation_id)
    out.emit(r, lambda: render_fields([("amount released", r.amount_released),
                                       ("available after", r.available_after)]))
    return EXIT_OK


def cmd_extend(client: Any, args: argparse.Namespace, out: Output) -> int:
    r = client.extend(args.account_id, args.reservation_id, hold_total=args.hold_total, ttl_ms=args.ttl_ms)
    out.emit(r, lambda: render_fields([
        ("decision", _name(r.decision)), ("amount held", r.amount_held),
        ("expires at", format_time_ms(r.expires_at_ms)), ("available after", r.available_after),
    ]))
    return _decided(r)


def cmd_charge(client: Any, args: argparse.Namespace, out: Output) -> int:
    options = _priced(args)
    labels = _to_map(args.labels, "label")
    if labels:
        options["labels"] = labels
    if args.charge_id:
        options["charge_id"] = args.charge_id
    r = client.charge(args.account_id, **options)
    out.emit(r, lambda: render_fields([
        ("decision", _name(r.decision)), ("charge id", r.charge_id), ("amount charged", r.amount_charged),
        ("available after", r.available_after),
    ] + _denial_fields(r)))
    return _decided(r)


def cmd_check(client: Any, args: argparse.Namespace, out: Output) -> int:
    r = client.check(args.account_id, **_priced(args))
    out.emit(r, lambda: render_fields([("decision", _name(r.decision)), ("available", r.available)]
                                      + _denial_fields(r)))
    return _decided(r)


# ------------------------------------------------------------------ the parser


def _add_priced(p: argparse.ArgumentParser) -> None:
    p.add_argument("--amount", type=_int_arg(), help="amount in units (overrides the catalog price)")
    p.add_argument("--action", help='catalog action that prices the call, e.g. "image.generate"')
    p.add_argument("-q", "--quantity", dest="quantities", action="append", type=_quantity, metavar="NAME=N",
                   help="metered quantity, e.g. -q input_tokens=1200 (repeatable)")


def _add_labels(p: argparse.ArgumentParser) -> None:
    p.add_argument("-l", "--label", dest="labels", action="append", type=_pair, metavar="KEY=VALUE",
                   help="label copied into the usage record (repeatable)")


def _add_window(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="from_ms", type=parse_time_ms, metavar="TIME",
                   help="window start, inclusive: epoch ms or ISO date/time (UTC unless an offset is given)")
    p.add_argument("--to", dest="to_ms", type=parse_time_ms, metavar="TIME", help="window end, exclusive")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quotactl",
        description="Operate a quota-server: accounts, grants, balances, usage, events, quotes, "
                    "and manual reserve/commit/release/charge/check calls.",
        epilog="Exit status: 0 ok, 1 RPC error (status and reason on stderr), 2 usage error, "
               "3 the call was judged and denied (reserve, charge, check, extend).",
    )
    parser.add_argument("--target", default=os.environ.get(TARGET_ENV, DEFAULT_TARGET), metavar="HOST:PORT",
                        help=f"server address (default: ${TARGET_ENV} or {DEFAULT_TARGET})")
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")
    parser.add_argument("--timeout", type=_positive_seconds, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help=f"deadline of each call (default {DEFAULT_TIMEOUT_S:g}); a call the server refuses as "
                             "unavailable is retried with backoff, one that misses its deadline is not; for "
                             "events tail, how long to wait to get connected")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV), help=f"bearer token (default: ${API_KEY_ENV})")
    parser.add_argument("--tls-ca", metavar="PEM", help="connect with TLS, trusting this CA bundle")
    parser.add_argument("--tls-cert", metavar="PEM", help="client certificate for mutual TLS (with --tls-key)")
    parser.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    account = commands.add_parser("account", help="create, update or show an account")
    account_cmds = account.add_subparsers(dest="account_command", metavar="SUBCOMMAND", required=True)
    p = account_cmds.add_parser("upsert", help="create an account (--plan required) or update it")
    p.add_argument("account_id")
    p.add_argument("--plan", help="plan id (required on create; joining a plan grants its included credits)")
    p.add_argument("--credit-limit", type=_int_arg(0), metavar="N", help="overdraft in units (default: the plan's)")
    p.add_argument("--status", choices=STATUSES)
    p.set_defaults(func=cmd_account_upsert)
    p = account_cmds.add_parser("get", help="show an account")
    p.add_argument("account_id")
    p.set_defaults(func=cmd_account_get)

    p = commands.add_parser("grant", help="add credits to an account as a new lot")
    p.add_argument("account_id")
    p.add_argument("amount", type=_int_arg(), help="credits in units")
    p.add_argument("--grant-id", help="idempotency id (default: a new random id, printed); reuse it to retry")
    p.add_argument("--category", choices=CATEGORIES, default="purchased")
    p.add_argument("--priority", type=_int_arg(), default=0, help="lower is consumed first (default 0)")
    p.add_argument("--expires-at", type=parse_time_ms, metavar="TIME", help="when the lot expires (default never)")
    p.set_defaults(func=cmd_grant)

    p = commands.add_parser("balance", help="available, held, balance, lots, period and limits of an account")
    p.add_argument("account_id")
    p.set_defaults(func=cmd_balance)

    usage = commands.add_parser("usage", help="usage records and totals")
    usage_cmds = usage.add_subparsers(dest="usage_command", metavar="SUBCOMMAND", required=True)
    p = usage_cmds.add_parser("list", help="usage records, oldest first (follows pages)")
    p.add_argument("account_id")
    _add_window(p)
    p.add_argument("--limit", type=_int_arg(1), metavar="N", help="show at most N records")
    p.add_argument("--page-size", type=_int_arg(1), default=100, metavar="N", help="records per RPC (default 100)")
    p.add_argument("--page-token", metavar="TOKEN", help="continue from a previous listing")
    p.set_defaults(func=cmd_usage_list)
    p = usage_cmds.add_parser("summary", help="per-action totals and the invoice total")
    p.add_argument("account_id")
    _add_window(p)
    p.set_defaults(func=cmd_usage_summary)

    events = commands.add_parser("events", help="the event stream")
    events_cmds = events.add_subparsers(dest="events_command", metavar="SUBCOMMAND", required=True)
    p = events_cmds.add_parser("tail", help="stream events (Ctrl-C to stop)")
    p.add_argument("--account", help="only this account's events")
    p.add_argument("--type", dest="types", action="append", metavar="TYPE",
                   help='only this event type, e.g. "balance.depleted" (repeatable)')
    p.add_argument("--after", metavar="EVENT_ID",
                   help='resume after this event id; "0" replays every retained event (default: from now on)')
    p.add_argument("--count", type=_int_arg(0), metavar="N", help="stop after N events")
    p.add_argument("--duration", type=_positive_seconds, metavar="SECONDS", help="stop after this long")
    p.set_defaults(func=cmd_events_tail)

    p = commands.add_parser("quote", help="price an action from the catalog")
    p.add_argument("action")
    p.add_argument("--account", help="the account the quote is for (only routes the call; it need not exist)")
    p.add_argument("-q", "--quantity", dest="quantities", action="append", type=_quantity, metavar="NAME=N")
    p.set_defaults(func=cmd_quote)

    p = commands.add_parser("reserve", help="hold credits (manual testing)")
    p.add_argument("account_id")
    p.add_argument("--reservation-id", help="idempotency id (default: a new random id, printed)")
    _add_priced(p)
    p.add_argument("--ttl-ms", type=_int_arg(0), default=0, help="hold TTL (default: the server's hold_ttl_ms)")
    p.add_argument("--allow-partial", action="store_true", help="hold what is available if at least --min-amount")
    p.add_argument("--min-amount", type=_int_arg(0), default=0)
    p.add_argument("--on-expire", choices=ON_EXPIRE, help="release (default) or commit the hold when it expires")
    _add_labels(p)
    p.set_defaults(func=cmd_reserve)

    p = commands.add_parser("commit", help="settle a hold with its actual cost")
    p.add_argument("account_id")
    p.add_argument("reservation_id")
    p.add_argument("--amount", type=_int_arg(0), help="actual cost (default: price the quantities, or the whole hold)")
    p.add_argument("-q", "--quantity", dest="quantities", action="append", type=_quantity, metavar="NAME=N")
    _add_labels(p)
    p.set_defaults(func=cmd_commit)

    p = commands.add_parser("release", help="free a hold")
    p.add_argument("account_id")
    p.add_argument("reservation_id")
    p.set_defaults(func=cmd_release)

    p = commands.add_parser("extend", help="raise a hold to a total and/or refresh its TTL")
    p.add_argument("account_id")
    p.add_argument("reservation_id")
    p.add_argument("--hold-total", type=_int_arg(0), default=0, help="new total hold (default: keep)")
    p.add_argument("--ttl-ms", type=_int_arg(0), default=0, help="new TTL from now (default: the server's)")
    p.set_defaults(func=cmd_extend)

    p = commands.add_parser("charge", help="reserve and commit in one step")
    p.add_argument("account_id")
    p.add_argument("--charge-id", help="idempotency id (default: a new random id, printed)")
    _add_priced(p)
    _add_labels(p)
    p.set_defaults(func=cmd_charge)

    p = commands.add_parser("check", help="would a charge of this shape be allowed now? (changes nothing)")
    p.add_argument("account_id")
    _add_priced(p)
    p.set_defaults(func=cmd_check)
    return parser


def _report_error(exc: Any, out: Output) -> None:
    code = exc.code.name if exc.code is not None else "UNKNOWN"
    if out.as_json:
        out.stderr.write(json.dumps({"error": {
            "code": code, "reason": exc.reason, "message": exc.message, "metadata": dict(exc.metadata),
        }}, sort_keys=True) + "\n")
        return
    reason = f" [{exc.reason}]" if exc.reason else ""
    meta = f" ({_map_text(exc.metadata)})" if exc.metadata else ""
    out.stderr.write(f"quotactl: {code}{reason}: {exc.message}{meta}\n")


def _tls_credentials(args):
    """grpc channel credentials from --tls-ca / --tls-cert / --tls-key, or None (plaintext)."""
    import grpc

    if not (args.tls_ca or args.tls_cert or args.tls_key):
        return None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")

    def read(path):
        with open(path, "rb") as file:
            return file.read()

    return grpc.ssl_channel_credentials(
        root_certificates=read(args.tls_ca) if args.tls_ca else None,
        private_key=read(args.tls_key) if args.tls_key else None,
        certificate_chain=read(args.tls_cert) if args.tls_cert else None,
    )


def _per_command_options(parser: argparse.ArgumentParser) -> None:
    """Let every command take --json after its arguments too (`quotactl balance acme --json`),
    and remember each command's own parser (its usage goes with its errors)."""
    for action in parser._actions:  # noqa: SLF001 (argparse keeps subparsers only here)
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sub in action.choices.values():
                if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):  # noqa: SLF001
                    _per_command_options(sub)
                    continue
                sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                                 help="machine-readable JSON output (also before the command)")
                sub.set_defaults(subparser=sub)


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run one command; returns the exit status (see the module docstring)."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    parser = build_parser()
    _per_command_options(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage message
        return int(exc.code or 0)
    out = Output(as_json=args.json, stdout=stdout, stderr=stderr)

    import grpc
    from quota_client import RETRYABLE_CODES, QuotaClient, QuotaError, RetryPolicy

    # --timeout is each call's deadline: a call that misses it is not tried again (an answer
    # that does not come within it is not waited for 4 times); refusals are, with backoff.
    retry = dataclasses.replace(RetryPolicy(), retry_codes=RETRYABLE_CODES - {grpc.StatusCode.DEADLINE_EXCEEDED})
    try:
        credentials = _tls_credentials(args)
        client = QuotaClient(args.target, timeout=args.timeout, api_key=args.api_key, credentials=credentials,
                             retry=retry)
    except (ValueError, OSError) as exc:
        stderr.write(f"quotactl: error: {exc}\n")
        return EXIT_USAGE
    started = time.monotonic()
    try:
        with client:
            return args.func(client, args, out)
    except UsageError as exc:
        getattr(args, "subparser", parser).print_usage(stderr)  # the command's usage, not quotactl's
        stderr.write(f"quotactl: error: {exc}\n")
        return EXIT_USAGE
    except QuotaError as exc:
        _report_error(exc, out)
        return EXIT_RPC_ERROR
    except KeyboardInterrupt:
        stderr.write(f"quotactl: interrupted after {time.monotonic() - started:.1f} s\n")
        return 130
    except BrokenPipeError:  # `quotactl ... | head`
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

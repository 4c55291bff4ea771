"""Included credits, granted again at the start of every period (API.md: a plan's
`included_credits` are "granted at the start of every period, expires at its end").

Joining a plan grants the current period's included lot (AdminService.UpsertAccount). From then
on, `IncludedCredits` grants each later period's lot to every account on the plan: a background
pass runs whenever a plan with included credits has entered a period that no pass has covered
yet, which is at startup (so a server that was down across a period boundary catches up) and
within `interval_s` of each boundary.

Each grant has the id `included:<plan>:<period start ms>` (`included_grant_id`), the id that
joining uses, so a pass never grants a period twice: the core keeps a grant's idempotency record
until a retention past its lot's expiry (the period's end), even once the lot is spent, and a
grant already made is a replay. A pass skips accounts whose record exists, so a restart costs one lookup per account.

Roll-over (`rollover_max` > 0): the pass first touches each due account (a Check of 0, which
lets its lots expire), then reads what of the previous period's included and roll-over lots
expired unused (the core notes it on each grant's record, `Ledger.grant_expired`), and grants
the smaller of that and `rollover_max` as the lot `rollover:<plan>:<period start ms>`
(LOT_CATEGORY_INCLUDED, expiring with the period) just before the period's included lot, so that
it is consumed first. Credit earmarked by a hold open across the boundary is not part of it. The
records of the previous period are kept a retention (`idempotency_retention_ms`) past its end:
a server down for longer than that across a boundary grants the new period without roll-over.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from _fastledger import codes as C

from . import _wire
from .plans import Plan

log = logging.getLogger("quota.renewal")

NS_PER_MS = 1_000_000
CHUNK_OPS = 512  # grants per engine submission
YIELD_EVERY = 2048  # accounts examined between yields to the event loop


def included_grant_id(plan_id: str, period_start_ms: int) -> str:
    """The grant id of a plan's included credits for one period (idempotent per period)."""
    return f"included:{plan_id}:{period_start_ms}"


def included_used(ledger: Any, account_id: str, plan: Plan, period_start_ms: int) -> int | None:
    """How much of the period's included credits the account has used (what is gone from the
    `included:` lot, earmarks not counted as used), or None if it got none this period. The
    grant's record outlives a spent lot (see above), so a spent lot reads as all used.

    The lot's own size is not kept, so this counts against the plan's `included_credits` as
    configured now: exact unless that changed during the period (the lot keeps the size it was
    granted with), in which case it is clamped to 0..included_credits until the next period."""
    remaining = ledger.grant_remaining(account_id, included_grant_id(plan.name, period_start_ms))
    if remaining is None:
        return None
    return min(max(plan.included_credits - remaining, 0), plan.included_credits)


def rollover_grant_id(plan_id: str, period_start_ms: int) -> str:
    """The grant id of the included credit a period carries over from the one before."""
    return f"rollover:{plan_id}:{period_start_ms}"


def included_grant_op(account_id: str, plan: Plan, start_ms: int, end_ms: int) -> tuple:
    """The core op granting `plan`'s included credits for the period [start_ms, end_ms)."""
    return (
        C.OP_GRANT, account_id, included_grant_id(plan.name, start_ms),
        _wire.fingerprint(_wire.DOMAIN_INCLUDED_GRANT, plan.included_credits, end_ms),
        plan.included_credits, C.LOT_INCLUDED, 0, end_ms * NS_PER_MS,
    )


def rollover_grant_op(account_id: str, plan: Plan, start_ms: int, end_ms: int, amount: int) -> tuple:
    """The core op granting `amount` carried over into the period [start_ms, end_ms)."""
    return (
        C.OP_GRANT, account_id, rollover_grant_id(plan.name, start_ms),
        _wire.fingerprint(_wire.DOMAIN_INCLUDED_GRANT, amount, end_ms, "rollover"),
        amount, C.LOT_INCLUDED, 0, end_ms * NS_PER_MS,
    )


def grant_event(account_id: str, grant_id: str, amount: int, category: int) -> Callable:
    """The derive of a grant op: a `credits.granted` event when the grant is new."""
    def derive(op, r, fresh, now_ms):
        if not fresh:
            return [], []
        return [], [("credits.granted", account_id,
                     {"grant_id": grant_id, "amount": str(amount), "category": str(category)})]
    return derive


class IncludedCredits:
    """Grants each period's included credits to the accounts of the plans that have them."""

    def __init__(self, *, engine: Any, plans: Any, interval_s: float = 1.0) -> None:
        self.engine = engine
        self.plans = plans
        self.interval_s = interval_s
        self._covered: dict[str, int] = {}  # plan name -> period start its last full pass covered
        self._ledger: Any = None

    async def run(self) -> None:
        """Renew whenever due, until cancelled. A failed pass (storage down, say) is retried."""
        while True:
            try:
                await self.renew_due()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the next pass retries; nothing is half done
                log.warning("renewing included credits failed (retrying): %s", exc)
            await asyncio.sleep(self.interval_s)

    def _due(self, now_ms: int) -> dict[str, tuple[Plan, int, int]]:
        ledger = self.engine.ledger
        if ledger is not self._ledger:  # a new ledger (recovery): nothing is known to be covered
            self._covered.clear()
            self._ledger = ledger
        due = {}
        for name in self.plans:
            plan = self.plans[name]
            if plan.included_credits > 0:
                start, end = plan.period_bounds(now_ms)
                if self._covered.get(name) != start:
                    due[name] = (plan, start, end)
        return due

    async def renew_due(self) -> int:
        """One pass if any plan entered an uncovered period: grant that period's included lot
        (and roll-over) to each of the plan's accounts that lacks it. Returns how many accounts
        got grants."""
        if self.engine.ledger is None:
            return 0
        now_ns = self.engine.now_ns()
        due = self._due(now_ns // NS_PER_MS)
        if not due:
            return 0
        ledger = self.engine.ledger
        granted = 0
        chunk: list[tuple[str, Plan, int, int]] = []
        for n, account_id in enumerate(ledger.account_ids(), 1):
            view = ledger.account_view(account_id, now_ns)
            entry = due.get(view["plan_id"]) if view is not None else None
            if entry is not None:
                plan, start, end = entry
                if not ledger.has_grant(account_id, included_grant_id(plan.name, start)) or (
                        plan.rollover_max > 0 and not ledger.has_grant(account_id, rollover_grant_id(plan.name, start))):
                    chunk.append((account_id, plan, start, end))
            if len(chunk) >= CHUNK_OPS:
                granted += await self._renew(chunk)
                chunk = []
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        if chunk:
            granted += await self._renew(chunk)
        for name, (_, start, _) in due.items():
            self._covered[name] = start
        if granted:
            log.info("included credits of the current period granted to %d accounts", granted)
        return granted

    async def _renew(self, chunk: list[tuple[str, Plan, int, int]]) -> int:
        """Grant each (account, plan, period) its roll-over, then its included lot."""
        touch = [((C.OP_CHECK, account_id, 0, True, ()), None)
                 for account_id, plan, _, _ in chunk if plan.rollover_max > 0]
        if touch:  # lets the previous period's lots expire, so that what they left is known
            await self.engine.submit_many(touch)
        ledger = self.engine.ledger
        items: list[tuple] = []
        accounts = set()
        for account_id, plan, start, end in chunk:
            if plan.rollover_max > 0 and not ledger.has_grant(account_id, rollover_grant_id(plan.name, start)):
                prev = plan.period_bounds(start - 1)[0]
                left = sum(ledger.grant_expired(account_id, gid) or 0
                           for gid in (included_grant_id(plan.name, prev), rollover_grant_id(plan.name, prev)))
                carry = min(left, plan.rollover_max)
                if carry > 0:
                    gid = rollover_grant_id(plan.name, start)
                    items.append((rollover_grant_op(account_id, plan, start, end, carry),
                                  grant_event(account_id, gid, carry, C.LOT_INCLUDED)))
                    accounts.add(account_id)
            gid = included_grant_id(plan.name, start)
            if not ledger.has_grant(account_id, gid):
                items.append((included_grant_op(account_id, plan, start, end),
                              grant_event(account_id, gid, plan.included_credits, C.LOT_INCLUDED)))
                accounts.add(account_id)
        if items:
            for (op, _), result in zip(items, await self.engine.submit_many(items)):
                if result[0] != C.OK:  # LIMIT_EXCEEDED (the account holds as many lots as it may), say
                    log.warning("included grant %s to %s answered status %d", op[2], op[1], result[0])
        return len(accounts)


__all__ = ["IncludedCredits", "grant_event", "included_grant_id", "included_grant_op", "included_used", "rollover_grant_id",
           "rollover_grant_op"]

"""Notifications before surprises (PRODUCT.md): threshold events on usage.

After each batch is applied, the engine hands `Thresholds` the accounts that recorded usage in
it (a commit, a charge, a hold committed at expiry). For each one whose plan asks for it:

- `credits.threshold` when the current period's included credits (the lot
  `included:<plan>:<period start ms>`) become 50, 80 or 100 % used: one event per threshold
  crossed, attributes `percent`, `included`, `used`, `period_start_at_ms`;
- `limit.low` when a rate limit with `warn_at_percent` (a soft limit: a warning before the
  limit blocks) has at most that share of its capacity left after the account's usage:
  attributes `limit_name`, `remaining`, `capacity`, `warn_at_percent`; armed again once the
  bucket is seen above it (refilled);
- `balance.low` when `available` falls to the plan's `low_balance` or below (from above it):
  attributes `available`, `threshold`; it is armed again once `available` is back above, seen
  after any batch with an op of the account (a grant, a release, a hold's expiry, a raised
  credit limit, as well as usage). What a batch does is judged once, after the whole batch.

The events go out with the batch's own write, like every other event. What has been announced
is kept in memory only, so after a restart a threshold already reached may be announced again
with the next usage of the account: consumers deduplicate by (`account_id`,
`period_start_at_ms`, `percent`) and treat `balance.low` as a state ("is low"), not a count.
"""

from __future__ import annotations

from typing import Any

from .renewal import included_used

NS_PER_MS = 1_000_000
PERCENTS = (50, 80, 100)


class Thresholds:
    """The engine's `observe` hook: threshold events for the accounts that recorded usage."""

    def __init__(self, *, engine: Any, plans: Any, accounts: Any) -> None:
        self.engine = engine
        self.plans = plans
        self.accounts = accounts  # dataplane.AccountIndex: account -> (plan_id, status)
        # Whether any plan asks for these events (the server installs the hook only then).
        self.active = any(plans[name].included_credits > 0 or plans[name].low_balance > 0
                          or any(lim.warn_at_percent for lim in plans[name].limits) for name in plans)
        self._announced: dict[str, tuple[int, int]] = {}  # account -> (period start, highest percent)
        self.low: set[str] = set()  # accounts announced low and not above their threshold since
        self._limits_low: set[tuple[str, str]] = set()  # (account, limit) announced low, not seen above since

    def __call__(self, touched: set[str], now_ms: int) -> list[tuple[str, str, dict[str, str]]]:
        events: list[tuple[str, str, dict[str, str]]] = []
        ledger = self.engine.ledger
        now_ns = now_ms * NS_PER_MS
        periods: dict[str, int] = {}  # plan -> start of its current period (one calendar sum per call)
        for account_id in sorted(touched):  # a fixed order: the event ids do not depend on set order
            plan = self.accounts.plan_of(account_id, self.plans)
            if plan is None:
                continue
            if plan.included_credits > 0:
                start = periods.get(plan.name)
                if start is None:
                    start = periods[plan.name] = plan.period_bounds(now_ms)[0]
                self._included(ledger, account_id, plan, start, events)
            if any(lim.warn_at_percent for lim in plan.limits):
                self._soft_limits(ledger, account_id, plan, now_ns, events)
            if plan.low_balance > 0:
                available = _low_available(ledger, account_id, plan, now_ns)
                if available is None:
                    self.low.discard(account_id)
                elif account_id not in self.low:
                    self.low.add(account_id)
                    events.append(("balance.low", account_id,
                                   {"available": str(available), "threshold": str(plan.low_balance)}))
        return events

    def _soft_limits(self, ledger: Any, account_id: str, plan: Any, now_ns: int, events: list) -> None:
        tokens = {b["name"]: b["tokens"] for b in ledger.buckets_view(account_id, now_ns)}
        for lim in plan.limits:
            if not lim.warn_at_percent:
                continue
            key = (account_id, lim.name)
            remaining = tokens.get(lim.name, lim.capacity)  # a bucket never used is full
            if remaining * 100 > lim.capacity * lim.warn_at_percent:
                self._limits_low.discard(key)
            elif key not in self._limits_low:
                self._limits_low.add(key)
                events.append(("limit.low", account_id, {
                    "limit_name": lim.name, "remaining": str(remaining), "capacity": str(lim.capacity),
                    "warn_at_percent": str(lim.warn_at_percent)}))

    def rearm(self, account_ids: set[str], now_ms: int) -> None:
        """Arm `balance.low` again for those of `account_ids` (accounts announced low) whose
        `available` is back above their plan's threshold."""
        ledger = self.engine.ledger
        for account_id in account_ids:
            plan = self.accounts.plan_of(account_id, self.plans)
            if plan is None or plan.low_balance <= 0 or _low_available(
                    ledger, account_id, plan, now_ms * NS_PER_MS) is None:
                self.low.discard(account_id)

    def _included(self, ledger: Any, account_id: str, plan: Any, start: int, events: list) -> None:
        used = included_used(ledger, account_id, plan, start)
        if used is None:
            return  # no included credits this period (yet)
        percent = used * 100 // plan.included_credits
        period, level = self._announced.get(account_id, (start, 0))
        if period != start:
            level = 0
        for threshold in PERCENTS:
            if level < threshold <= percent:
                events.append(("credits.threshold", account_id, {
                    "percent": str(threshold), "included": str(plan.included_credits), "used": str(used),
                    "period_start_at_ms": str(start),
                }))
                level = threshold
        self._announced[account_id] = (start, level)


def _low_available(ledger: Any, account_id: str, plan: Any, now_ns: int) -> int | None:
    """The account's `available` if it is at or below the plan's `low_balance`, else None."""
    view = ledger.account_view(account_id, now_ns)
    if view is None or view["available"] > plan.low_balance:
        return None
    return view["available"]


__all__ = ["PERCENTS", "Thresholds"]

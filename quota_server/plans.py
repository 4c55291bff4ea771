"""Plans: the feature gate, the rate limits attached to actions, and UTC billing periods.

Pure data and pure functions: no I/O, no clock (time comes in as `now_ms`). The config loader
(`quota_server.config`) validates the file and builds these objects; the engine asks them
questions on every call.

Action patterns (plan `features`, limit `actions`) are matched the same way everywhere:
`"*"` matches every action, `"image.*"` matches every action that starts with `"image."`
(so `"image.generate"` and `"image.edit.mask"`, but not `"image"` itself), anything else
matches exactly that action name.
"""
from __future__ import annotations

import datetime
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

MS_PER_DAY = 86_400_000
PERIODS = ("day", "week", "month", "year")
REQUESTS_COST = "requests"

# Names of plans, limits, actions and quantities: the same alphabet as ids in API.md.
NAME_RE = re.compile(r"[A-Za-z0-9._:@/-]{1,128}")

_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()
_MIN_DAYS = datetime.date.min.toordinal() - _EPOCH_ORDINAL
# The last day that still has a following day/week/month/year start representable by `date`.
_MAX_DAYS = datetime.date(9998, 12, 31).toordinal() - _EPOCH_ORDINAL


class PlanNotFoundError(LookupError):
    """`plan_id` names no configured plan (error reason `PLAN_NOT_FOUND`)."""

    reason = "PLAN_NOT_FOUND"

    def __init__(self, plan_id: str) -> None:
        super().__init__(f"unknown plan {plan_id!r}")
        self.plan_id = plan_id


def pattern_problem(pattern: object) -> str | None:
    """Why `pattern` is not a valid action pattern, or None if it is."""
    if not isinstance(pattern, str):
        return "must be a string"
    if pattern == "*":
        return None
    name = pattern[:-2] if pattern.endswith(".*") else pattern
    if not NAME_RE.fullmatch(name):
        return ('must be "*", an action name of 1 to 128 characters from [A-Za-z0-9._:@/-], '
                'or a prefix ending in ".*" (e.g. "image.*")')
    return None


@dataclass(frozen=True, kw_only=True)
class ActionSet:
    """A compiled list of action patterns; `contains` is the hot-path question."""

    match_all: bool
    exact: frozenset[str]
    prefixes: tuple[str, ...]

    @classmethod
    def compile(cls, patterns: tuple[str, ...]) -> ActionSet:
        prefixes = tuple(p[:-1] for p in patterns if p.endswith(".*"))  # keep the dot
        exact = frozenset(p for p in patterns if p != "*" and not p.endswith(".*"))
        return cls(match_all="*" in patterns, exact=exact, prefixes=prefixes)

    def contains(self, action: str) -> bool:
        if self.match_all or action in self.exact:
            return True
        return bool(self.prefixes) and action.startswith(self.prefixes)


@dataclass(frozen=True, kw_only=True)
class RateLimit:
    """A token bucket a plan attaches to some of its actions."""

    name: str
    capacity: int
    refill_amount: int
    refill_period_ms: int
    cost: str = REQUESTS_COST
    actions: tuple[str, ...] = ("*",)
    warn_at_percent: int = 0  # a soft limit: `limit.low` once remaining is at most this % of capacity
    _action_set: ActionSet = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_action_set", ActionSet.compile(self.actions))

    def applies_to(self, action: str) -> bool:
        return self._action_set.contains(action)

    def cost_of(self, quantities: Mapping[str, int]) -> int:
        """Tokens one call takes: 1 for "requests", else the named quantity (0 if absent).

        Quantities are assumed validated (non-negative) by the caller.
        """
        if self.cost == REQUESTS_COST:
            return 1
        return quantities.get(self.cost, 0)


@dataclass(frozen=True, kw_only=True)
class Plan:
    """One plan from the config: billing period, credits, overdraft, features and limits."""

    name: str
    period: str = "month"
    included_credits: int = 0
    rollover_max: int = 0
    credit_limit: int = 0
    unlimited: bool = False
    max_open_holds: int = 0
    low_balance: int = 0  # balance.low when available falls to this or below (0: never)
    features: tuple[str, ...] = ("*",)
    limits: tuple[RateLimit, ...] = ()
    _feature_set: ActionSet = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_feature_set", ActionSet.compile(self.features))

    def allows(self, action: str) -> bool:
        """The feature gate: may an account on this plan use `action` at all?"""
        return self._feature_set.contains(action)

    def limits_for(self, action: str) -> tuple[RateLimit, ...]:
        """The rate limits that apply to `action`, in config order."""
        return tuple(limit for limit in self.limits if limit.applies_to(action))

    def period_bounds(self, now_ms: int) -> tuple[int, int]:
        return period_bounds(self.period, now_ms)


class PlanCatalog(Mapping[str, Plan]):
    """The configured plans by name (read-only)."""

    def __init__(self, plans: Mapping[str, Plan]) -> None:
        self._plans = dict(plans)

    def get_plan(self, plan_id: str) -> Plan:
        """The plan named `plan_id`; raises PlanNotFoundError if there is none."""
        plan = self._plans.get(plan_id)
        if plan is None:
            raise PlanNotFoundError(plan_id)
        return plan

    def __getitem__(self, plan_id: str) -> Plan:
        return self._plans[plan_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._plans)

    def __len__(self) -> int:
        return len(self._plans)

    def __repr__(self) -> str:
        return f"PlanCatalog({self._plans!r})"


def period_bounds(period: str, now_ms: int) -> tuple[int, int]:
    """The UTC calendar period containing `now_ms`, as `[start_ms, end_ms)` epoch milliseconds.

    "day" starts at 00:00 UTC, "week" on Monday 00:00 UTC (ISO weeks), "month" on the 1st,
    "year" on January 1st. Integer arithmetic only (no floats, no time zones).
    """
    days = now_ms // MS_PER_DAY  # floor division: correct before 1970 too
    if not _MIN_DAYS <= days <= _MAX_DAYS:
        raise ValueError(f"now_ms out of range: {now_ms}")
    if period == "day":
        return days * MS_PER_DAY, (days + 1) * MS_PER_DAY
    if period == "week":
        monday = days - (days + 3) % 7  # 1970-01-01 was a Thursday (ISO weekday index 3)
        return monday * MS_PER_DAY, (monday + 7) * MS_PER_DAY
    today = datetime.date.fromordinal(days + _EPOCH_ORDINAL)
    if period == "month":
        start = today.replace(day=1)
        end = (datetime.date(today.year + 1, 1, 1) if today.month == 12
               else datetime.date(today.year, today.month + 1, 1))
    elif period == "year":
        start = datetime.date(today.year, 1, 1)
        end = datetime.date(today.year + 1, 1, 1)
    else:
        raise ValueError(f"unknown period {period!r} (expected one of {', '.join(PERIODS)})")
    return _date_ms(start), _date_ms(end)


def _date_ms(day: datetime.date) -> int:
    return (day.toordinal() - _EPOCH_ORDINAL) * MS_PER_DAY

"""Plans: the feature gate, which limits apply to an action, limit costs, UTC periods."""
import calendar

import pytest

from quota_server.plans import (MS_PER_DAY, Plan, PlanCatalog, PlanNotFoundError, RateLimit,
                                pattern_problem, period_bounds)


def utc_ms(year, month, day, hour=0, minute=0, second=0, ms=0):
    """An independent oracle for instants: calendar.timegm is exact integer seconds."""
    return calendar.timegm((year, month, day, hour, minute, second)) * 1000 + ms


def limit(name, *, actions=("*",), cost="requests"):
    return RateLimit(name=name, capacity=10, refill_amount=10, refill_period_ms=60_000,
                     cost=cost, actions=tuple(actions))


# --- feature gate ---------------------------------------------------------------------


def test_star_allows_every_action():
    """The default features ["*"] allow anything, including names never seen before."""
    plan = Plan(name="pro")
    assert plan.features == ("*",)
    assert plan.allows("image.generate")
    assert plan.allows("anything-at-all")


def test_exact_features_allow_only_those_names():
    plan = Plan(name="free", features=("image.generate", "doc.summarize"))
    assert plan.allows("image.generate")
    assert plan.allows("doc.summarize")
    assert not plan.allows("image.edit")
    assert not plan.allows("image")
    assert not plan.allows("image.generate.hd")  # exact means exact


def test_prefix_wildcard_matches_names_under_the_prefix_only():
    """"image.*" matches image.<anything> (nested too) but not "image" or "imagex.y"."""
    plan = Plan(name="p", features=("image.*",))
    assert plan.allows("image.generate")
    assert plan.allows("image.edit.mask")
    assert not plan.allows("image")
    assert not plan.allows("imagex.generate")
    assert not plan.allows("video.image.generate")


def test_empty_features_allow_nothing():
    assert not Plan(name="closed", features=()).allows("image.generate")


def test_mixed_patterns():
    plan = Plan(name="p", features=("doc.summarize", "image.*", "llm.chat.*"))
    assert plan.allows("doc.summarize")
    assert plan.allows("image.x")
    assert plan.allows("llm.chat.gpt")
    assert not plan.allows("llm.chat")
    assert not plan.allows("doc.translate")


@pytest.mark.parametrize("pattern", ["*", "image.generate", "image.*", "a", "x:y@z/w-1_2"])
def test_valid_patterns(pattern):
    assert pattern_problem(pattern) is None


@pytest.mark.parametrize("pattern", ["", "im*ge", "*.generate", "image*", ".*", "a b",
                                     "x" * 129, 3, None, "image.**"])
def test_invalid_patterns(pattern):
    assert pattern_problem(pattern) is not None


# --- limits ---------------------------------------------------------------------------


def test_limits_for_returns_matching_limits_in_config_order():
    plan = Plan(name="p", limits=(
        limit("all_rpm"),
        limit("image_rpm", actions=("image.*",)),
        limit("chat_tpm", actions=("llm.chat",), cost="output_tokens"),
    ))
    assert [x.name for x in plan.limits_for("image.generate")] == ["all_rpm", "image_rpm"]
    assert [x.name for x in plan.limits_for("llm.chat")] == ["all_rpm", "chat_tpm"]
    assert [x.name for x in plan.limits_for("doc.summarize")] == ["all_rpm"]


def test_limits_for_is_independent_of_the_feature_gate():
    """A limit can name an action the plan does not allow; the gate is checked separately."""
    plan = Plan(name="p", features=("doc.summarize",), limits=(limit("l", actions=("x",)),))
    assert [x.name for x in plan.limits_for("x")] == ["l"]
    assert plan.limits_for("doc.summarize") == ()


def test_no_limits():
    assert Plan(name="p").limits_for("anything") == ()


def test_requests_cost_is_one_per_call_whatever_the_quantities():
    rpm = limit("rpm")
    assert rpm.cost_of({}) == 1
    assert rpm.cost_of({"requests": 50, "input_tokens": 9}) == 1


def test_quantity_cost_is_that_quantity_or_zero():
    tpm = limit("tpm", cost="input_tokens")
    assert tpm.cost_of({"input_tokens": 1234, "output_tokens": 5}) == 1234
    assert tpm.cost_of({"output_tokens": 5}) == 0
    assert tpm.cost_of({"input_tokens": 0}) == 0


# --- catalog --------------------------------------------------------------------------


def test_catalog_lookup():
    catalog = PlanCatalog({"free": Plan(name="free"), "pro": Plan(name="pro")})
    assert catalog.get_plan("pro").name == "pro"
    assert "free" in catalog and "gold" not in catalog
    assert list(catalog) == ["free", "pro"] and len(catalog) == 2
    assert catalog.get("gold") is None  # Mapping.get: no exception


def test_catalog_unknown_plan_raises_with_reason():
    with pytest.raises(PlanNotFoundError) as caught:
        PlanCatalog({}).get_plan("gold")
    assert caught.value.reason == "PLAN_NOT_FOUND"
    assert caught.value.plan_id == "gold"
    assert "gold" in str(caught.value)


def test_plan_is_frozen_and_keyword_only():
    plan = Plan(name="p")
    with pytest.raises(AttributeError):
        plan.credit_limit = 5
    with pytest.raises(TypeError):
        Plan("p")


# --- period bounds --------------------------------------------------------------------


def test_known_epoch_values():
    """Pinned literals, so the oracle itself is checked once."""
    assert utc_ms(2024, 1, 1) == 1_704_067_200_000
    assert period_bounds("year", 1_704_067_200_000) == (1_704_067_200_000, 1_735_689_600_000)
    assert period_bounds("day", 0) == (0, MS_PER_DAY)


@pytest.mark.parametrize("now, expected", [
    (utc_ms(2024, 2, 29, 13, 45), (utc_ms(2024, 2, 29), utc_ms(2024, 3, 1))),
    (utc_ms(2024, 2, 29, 23, 59, 59, 999), (utc_ms(2024, 2, 29), utc_ms(2024, 3, 1))),
    (utc_ms(2024, 3, 1), (utc_ms(2024, 3, 1), utc_ms(2024, 3, 2))),
    (utc_ms(2023, 12, 31, 23, 59, 59, 999), (utc_ms(2023, 12, 31), utc_ms(2024, 1, 1))),
])
def test_day(now, expected):
    assert period_bounds("day", now) == expected


@pytest.mark.parametrize("now, expected", [
    # 2024-03-03 is a Sunday: its last millisecond still belongs to the week of Mon 02-26.
    (utc_ms(2024, 3, 3, 23, 59, 59, 999), (utc_ms(2024, 2, 26), utc_ms(2024, 3, 4))),
    # Monday 00:00 starts a new week (the start is inclusive).
    (utc_ms(2024, 3, 4), (utc_ms(2024, 3, 4), utc_ms(2024, 3, 11))),
    (utc_ms(2024, 3, 6, 12), (utc_ms(2024, 3, 4), utc_ms(2024, 3, 11))),
    # A week across New Year: Tue 2024-12-31 is in the week Mon 12-30 .. Mon 2025-01-06.
    (utc_ms(2024, 12, 31, 8), (utc_ms(2024, 12, 30), utc_ms(2025, 1, 6))),
    (utc_ms(2025, 1, 5, 23, 59, 59, 999), (utc_ms(2024, 12, 30), utc_ms(2025, 1, 6))),
    # A week across Feb 29 in a leap year.
    (utc_ms(2024, 2, 29), (utc_ms(2024, 2, 26), utc_ms(2024, 3, 4))),
    # The epoch was a Thursday: its week began Monday 1969-12-29 (a negative instant).
    (0, (utc_ms(1969, 12, 29), utc_ms(1970, 1, 5))),
])
def test_iso_week_starts_monday(now, expected):
    start, end = period_bounds("week", now)
    assert (start, end) == expected
    assert end - start == 7 * MS_PER_DAY


@pytest.mark.parametrize("now, expected", [
    (utc_ms(2024, 1, 31, 23, 59, 59, 999), (utc_ms(2024, 1, 1), utc_ms(2024, 2, 1))),
    (utc_ms(2024, 2, 1), (utc_ms(2024, 2, 1), utc_ms(2024, 3, 1))),
    # February in a leap year (29 days), a common year (28), 2000 (leap), 2100 (not leap).
    (utc_ms(2024, 2, 29, 23, 59, 59, 999), (utc_ms(2024, 2, 1), utc_ms(2024, 3, 1))),
    (utc_ms(2023, 2, 28, 12), (utc_ms(2023, 2, 1), utc_ms(2023, 3, 1))),
    (utc_ms(2000, 2, 29), (utc_ms(2000, 2, 1), utc_ms(2000, 3, 1))),
    (utc_ms(2100, 2, 28), (utc_ms(2100, 2, 1), utc_ms(2100, 3, 1))),
    (utc_ms(2024, 4, 30, 23, 59, 59, 999), (utc_ms(2024, 4, 1), utc_ms(2024, 5, 1))),
    # December rolls over into January of the next year.
    (utc_ms(2024, 12, 31, 23, 59, 59, 999), (utc_ms(2024, 12, 1), utc_ms(2025, 1, 1))),
    (utc_ms(2025, 1, 1), (utc_ms(2025, 1, 1), utc_ms(2025, 2, 1))),
])
def test_calendar_month(now, expected):
    assert period_bounds("month", now) == expected


def test_month_lengths_in_days():
    lengths = [(period_bounds("month", utc_ms(2024, m, 15))[1]
                - period_bounds("month", utc_ms(2024, m, 15))[0]) // MS_PER_DAY
               for m in range(1, 13)]
    assert lengths == [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
    assert (period_bounds("month", utc_ms(2023, 2, 1))[1] - utc_ms(2023, 2, 1)) \
        == 28 * MS_PER_DAY


@pytest.mark.parametrize("now, expected, days", [
    (utc_ms(2024, 12, 31, 23, 59, 59, 999), (utc_ms(2024, 1, 1), utc_ms(2025, 1, 1)), 366),
    (utc_ms(2025, 1, 1), (utc_ms(2025, 1, 1), utc_ms(2026, 1, 1)), 365),
    (utc_ms(2023, 7, 4), (utc_ms(2023, 1, 1), utc_ms(2024, 1, 1)), 365),
])
def test_calendar_year(now, expected, days):
    start, end = period_bounds("year", now)
    assert (start, end) == expected
    assert end - start == days * MS_PER_DAY


def test_negative_instants_floor_to_the_previous_day():
    assert period_bounds("day", -1) == (-MS_PER_DAY, 0)
    assert period_bounds("month", -1) == (utc_ms(1969, 12, 1), 0)


def test_results_are_ints():
    for period in ("day", "week", "month", "year"):
        start, end = period_bounds(period, utc_ms(2024, 5, 17, 3))
        assert type(start) is int and type(end) is int


def test_plan_period_bounds_uses_its_period():
    assert Plan(name="p", period="week").period_bounds(utc_ms(2024, 3, 6)) == \
        (utc_ms(2024, 3, 4), utc_ms(2024, 3, 11))


def test_unknown_period_and_out_of_range_instants_are_refused():
    with pytest.raises(ValueError):
        period_bounds("fortnight", 0)
    with pytest.raises(ValueError):
        period_bounds("month", utc_ms(9999, 12, 31))

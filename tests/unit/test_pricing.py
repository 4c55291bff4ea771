"""Pricing: exact integer prices, per-line rounding with margin, versions, frozen prices."""
import hashlib
import json
import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quota_server.pricing import (MAX_AMOUNT, ActionPrice, PriceCatalog, PricingError, Quote,
                                  QuoteLine, check_quantities)

LLM_CHAT = ActionPrice(per_1000={"input_tokens": 3, "output_tokens": 15}, margin_percent=20)
IMAGE = ActionPrice(amount=5)


API_CATALOG = PriceCatalog({
    "image.generate": IMAGE,
    "doc.summarize": ActionPrice(amount=2),
    "llm.chat": LLM_CHAT,
})


def reason_of(call):
    with pytest.raises(PricingError) as caught:
        call()
    return caught.value.reason


# --- the API.md examples --------------------------------------------------------------


def test_llm_chat_example_rounds_each_line_up_with_margin():
    """1234 input tokens and 567 output tokens at 3 / 15 per 1000, margin 20 %.

    input:  ceil(1234 * 3  * 120 / 100000) = ceil( 444240 / 100000) = ceil( 4.4424) = 5
    output: ceil( 567 * 15 * 120 / 100000) = ceil(1020600 / 100000) = ceil(10.206 ) = 11
    price:  5 + 11 = 16   (rounding the sum instead would give ceil(14.6484) = 15)
    """
    quote = API_CATALOG.quote("llm.chat", {"input_tokens": 1234, "output_tokens": 567})
    assert quote == Quote(action="llm.chat", amount=16, price_version=API_CATALOG.price_version,
                          lines=(
        QuoteLine(quantity_name="input_tokens", quantity=1234, unit_price=3, amount=5),
        QuoteLine(quantity_name="output_tokens", quantity=567, unit_price=15, amount=11),
    ))
    assert API_CATALOG.price("llm.chat", {"input_tokens": 1234, "output_tokens": 567}) == 16


def test_fixed_prices_from_the_example():
    assert API_CATALOG.price("image.generate", {}) == 5
    assert API_CATALOG.price("doc.summarize", {}) == 2
    assert API_CATALOG.quote("image.generate", {}).lines == (
        QuoteLine(quantity_name="", quantity=1, unit_price=5, amount=5),)


# --- rounding -------------------------------------------------------------------------


@pytest.mark.parametrize("amount, margin, expected", [
    (5, 0, 5),     # ceil(500 / 100)
    (5, 20, 6),    # ceil(600 / 100)
    (3, 10, 4),    # ceil(330 / 100) = ceil(3.3)
    (1, 1, 2),     # ceil(101 / 100): any margin on 1 unit rounds up to 2
    (10, 50, 15),  # ceil(1500 / 100), exact
    (0, 20, 0),    # a free action stays free
])
def test_fixed_line(amount, margin, expected):
    assert ActionPrice(amount=amount, margin_percent=margin).price({}) == expected


@pytest.mark.parametrize("quantity, per_1000, margin, expected", [
    (1000, 3, 0, 3),        # exactly 3
    (1, 3, 0, 1),           # ceil(3 / 1000): one token still costs a unit
    (999, 1, 0, 1),         # ceil(0.999)
    (1001, 1, 0, 2),        # ceil(1.001)
    (2000, 1, 50, 3),       # ceil(2000 * 150 / 100000) = 3, exact
    (0, 15, 20, 0),         # nothing used costs nothing
])
def test_metered_line(quantity, per_1000, margin, expected):
    price = ActionPrice(per_1000={"q": per_1000}, margin_percent=margin)
    assert price.price({"q": quantity}) == expected


def test_each_line_is_rounded_on_its_own():
    """amount 1 + 1 unit of q at 1/1000, margin 50: fixed ceil(1.5)=2, metered ceil(0.0015)=1."""
    price = ActionPrice(amount=1, per_1000={"q": 1}, margin_percent=50)
    assert price.price({"q": 1}) == 3
    assert [line.amount for line in price.lines({"q": 1})] == [1, 2]  # metered first, then fixed


def test_zero_and_absent_quantities_still_get_a_line():
    quote = API_CATALOG.quote("llm.chat", {"input_tokens": 0})
    assert quote.amount == 0
    assert quote.lines == (
        QuoteLine(quantity_name="input_tokens", quantity=0, unit_price=3, amount=0),
        QuoteLine(quantity_name="output_tokens", quantity=0, unit_price=15, amount=0),
    )


def test_quantities_the_price_does_not_name_are_ignored():
    assert API_CATALOG.price("image.generate", {"input_tokens": 10**9, "pixels": 5}) == 5
    assert API_CATALOG.price("llm.chat", {"input_tokens": 1000, "images": 10**12}) == 4


# --- invalid input --------------------------------------------------------------------


def test_unknown_action():
    assert reason_of(lambda: API_CATALOG.price("video.render", {})) == "UNKNOWN_ACTION"
    assert reason_of(lambda: API_CATALOG.quote("video.render", {})) == "UNKNOWN_ACTION"
    assert reason_of(lambda: API_CATALOG.freeze("video.render")) == "UNKNOWN_ACTION"
    assert reason_of(lambda: API_CATALOG.price_of("")) == "UNKNOWN_ACTION"


def test_negative_quantities_are_invalid_even_when_not_priced():
    assert reason_of(lambda: API_CATALOG.price("llm.chat", {"input_tokens": -1})) \
        == "INVALID_ARGUMENT"
    assert reason_of(lambda: API_CATALOG.quote("llm.chat", {"output_tokens": -5})) \
        == "INVALID_ARGUMENT"
    assert reason_of(lambda: API_CATALOG.price("image.generate", {"other": -1})) \
        == "INVALID_ARGUMENT"
    assert reason_of(lambda: check_quantities({"a": True})) == "INVALID_ARGUMENT"
    assert reason_of(lambda: check_quantities({"a": 1.5})) == "INVALID_ARGUMENT"
    check_quantities({"a": 0, "b": 2**63 - 1})


def test_pricing_error_is_a_value_error_with_a_message():
    with pytest.raises(ValueError, match="'input_tokens'.*-1"):
        API_CATALOG.price("llm.chat", {"input_tokens": -1})


# --- limits ---------------------------------------------------------------------------


def test_metered_price_exactly_at_the_maximum_is_allowed():
    """10**18 units of q at 1 per 1000 is exactly 10**15; one more unit rounds up past it."""
    price = ActionPrice(per_1000={"q": 1})
    assert price.price({"q": 10**18}) == MAX_AMOUNT
    with pytest.raises(PricingError) as caught:
        price.price({"q": 10**18 + 1})
    assert caught.value.reason == "INVALID_AMOUNT"


def test_fixed_price_at_the_maximum_and_margin_pushing_it_over():
    assert ActionPrice(amount=MAX_AMOUNT).price({}) == MAX_AMOUNT
    assert reason_of(lambda: ActionPrice(amount=MAX_AMOUNT, margin_percent=1).price({})) \
        == "INVALID_AMOUNT"


def test_sum_of_lines_over_the_maximum():
    """Each line alone is within the limit; the sum is not."""
    price = ActionPrice(amount=MAX_AMOUNT, per_1000={"q": 1000})
    assert reason_of(lambda: price.price({"q": 1})) == "INVALID_AMOUNT"
    assert reason_of(lambda: price.lines({"q": 1})) == "INVALID_AMOUNT"


def test_int64_quantities_do_not_overflow_and_are_refused_as_too_expensive():
    price = ActionPrice(per_1000={"q": MAX_AMOUNT}, margin_percent=10_000)
    assert reason_of(lambda: price.price({"q": 2**63 - 1})) == "INVALID_AMOUNT"


# --- oracle ---------------------------------------------------------------------------


def oracle(price, quantities):
    """The formula from API.md, with exact fractions."""
    factor = Fraction(100 + price.margin_percent, 100)
    total = sum(math.ceil(Fraction(quantities.get(n, 0) * u, 1000) * factor)
                for n, u in price.per_1000.items())
    if price.amount is not None:
        total += math.ceil(price.amount * factor)
    return total


@given(
    amount=st.none() | st.integers(0, 10**6),
    per_1000=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(0, 10**4)),
    margin=st.integers(0, 500),
    quantities=st.dictionaries(st.sampled_from(["a", "b", "c", "z"]), st.integers(0, 10**9)),
)
def test_price_matches_the_exact_fraction_formula(amount, per_1000, margin, quantities):
    """price() == sum(lines) == the API.md formula computed with Fractions."""
    price = ActionPrice(amount=amount, per_1000=per_1000, margin_percent=margin)
    expected = oracle(price, quantities)
    assert price.price(quantities) == expected
    assert sum(line.amount for line in price.lines(quantities)) == expected
    assert ActionPrice.thaw(price.freeze()).price(quantities) == expected


# --- price_version --------------------------------------------------------------------


def test_price_version_is_sha256_of_canonical_json():
    """Documented in docs/configuration.md; clients may show or compare it."""
    canonical = json.dumps({
        "doc.summarize": {"amount": 2, "margin_percent": 0, "per_1000": {}},
        "image.generate": {"amount": 5, "margin_percent": 0, "per_1000": {}},
        "llm.chat": {"margin_percent": 20, "per_1000": {"input_tokens": 3, "output_tokens": 15}},
    }, sort_keys=True, separators=(",", ":"))
    assert API_CATALOG.price_version == hashlib.sha256(canonical.encode()).hexdigest()[:12]


def test_price_version_ignores_order_and_follows_every_price_change():
    reordered = PriceCatalog({
        "llm.chat": ActionPrice(per_1000={"output_tokens": 15, "input_tokens": 3},
                                margin_percent=20),
        "doc.summarize": ActionPrice(amount=2),
        "image.generate": ActionPrice(amount=5),
    })
    assert reordered.price_version == API_CATALOG.price_version
    base = dict(API_CATALOG)
    changes = [
        {**base, "image.generate": ActionPrice(amount=6)},
        {**base, "llm.chat": ActionPrice(per_1000=LLM_CHAT.per_1000, margin_percent=21)},
        {**base, "llm.chat": ActionPrice(per_1000={"input_tokens": 3}, margin_percent=20)},
        {**base, "image.generate": ActionPrice(amount=5, per_1000={"pixels": 0})},
        {**base, "video.render": ActionPrice(amount=1)},
    ]
    versions = {PriceCatalog(c).price_version for c in changes} | {API_CATALOG.price_version}
    assert len(versions) == len(changes) + 1
    assert all(len(v) == 12 and int(v, 16) >= 0 for v in versions)


def test_catalog_is_a_read_only_mapping():
    assert API_CATALOG["llm.chat"] == LLM_CHAT
    assert "llm.chat" in API_CATALOG and len(API_CATALOG) == 3
    assert API_CATALOG.get("nope") is None
    with pytest.raises(TypeError):
        API_CATALOG["x"] = IMAGE
    with pytest.raises(TypeError):
        LLM_CHAT.per_1000["input_tokens"] = 0


# --- frozen prices --------------------------------------------------------------------


def test_commit_is_priced_at_the_reserved_price_after_a_reload():
    frozen = API_CATALOG.freeze("llm.chat")
    reloaded = PriceCatalog({"llm.chat": ActionPrice(per_1000={"input_tokens": 100},
                                                     margin_percent=0)})
    quantities = {"input_tokens": 1234, "output_tokens": 567}
    assert reloaded.price("llm.chat", quantities) == 124
    assert PriceCatalog.price_frozen(frozen, quantities) == 16
    assert reloaded.price_frozen(frozen, quantities) == 16


def test_frozen_round_trip_keeps_every_field():
    for price in [IMAGE, LLM_CHAT, ActionPrice(amount=0),
                  ActionPrice(amount=MAX_AMOUNT, per_1000={"q": MAX_AMOUNT, "x:y/z@w": 0},
                              margin_percent=10_000)]:
        thawed = ActionPrice.thaw(price.freeze())
        assert thawed == price
        assert list(thawed.per_1000) == list(price.per_1000)  # line order survives


def test_frozen_format_v1_is_stable():
    """The bytes are persisted with holds: changing them needs a new format version."""
    assert IMAGE.freeze() == bytes([1, 1]) + (0).to_bytes(4, "little") \
        + (5).to_bytes(8, "little") + (0).to_bytes(2, "little")
    assert ActionPrice(per_1000={"t": 3}, margin_percent=20).freeze() == \
        bytes([1, 0]) + (20).to_bytes(4, "little") + (1).to_bytes(2, "little") \
        + b"\x01t" + (3).to_bytes(8, "little")
    assert len(LLM_CHAT.freeze()) == 51


@pytest.mark.parametrize("data", [
    b"",
    b"\x02" + IMAGE.freeze()[1:],  # unknown version
    IMAGE.freeze()[:-1],  # truncated
    IMAGE.freeze() + b"\x00",  # trailing garbage
    LLM_CHAT.freeze()[:-3],
])
def test_corrupt_frozen_prices_are_refused(data):
    with pytest.raises(ValueError):
        PriceCatalog.price_frozen(data, {})


def test_frozen_price_still_validates_quantities():
    frozen = API_CATALOG.freeze("llm.chat")
    assert reason_of(lambda: PriceCatalog.price_frozen(frozen, {"input_tokens": -1})) \
        == "INVALID_ARGUMENT"

"""USD prices for SWAP, pure: the conversion rounds up exactly, the last reading decides, a realm
parameter set encoded before USD pricing still decodes (upcast: priced in tokens)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.events import (
    PriceObserved,
    RealmCreated,
    RealmParams,
    RealmParamsChanged,
    event_from_dict,
    event_to_dict,
)
from domain.swap import HandshakeRefused
from router_core.prices import PriceBook, base_units_per_message

FEED = "0x" + "fe" * 20


@given(
    usd=st.integers(0, 10**24),
    answer=st.integers(1, 10**20),
    feed_decimals=st.integers(0, 18),
    token_decimals=st.integers(0, 24),
)
def test_conversion_is_the_exact_price_rounded_up(
    usd: int, answer: int, feed_decimals: int, token_decimals: int
) -> None:
    units = base_units_per_message(usd, answer, feed_decimals, token_decimals)
    exact_numerator = usd * 10**feed_decimals * 10**token_decimals
    denominator = answer * 10**18
    assert units * denominator >= exact_numerator  # never below the USD price
    assert (units - 1) * denominator < exact_numerator or units == 0  # by less than one unit


def test_conversion_refuses_a_non_positive_price() -> None:
    with pytest.raises(ValueError, match="positive"):
        base_units_per_message(10**15, 0, 8, 18)


def observed(status: str, block: int, round_id: int, answer: int = 2000 * 10**8) -> PriceObserved:
    return PriceObserved("", 1, FEED, round_id, answer, 8, 100, status, block, "0x")


def test_the_last_reading_decides_and_a_stale_one_refuses() -> None:
    book = PriceBook()
    with pytest.raises(HandshakeRefused) as err:
        book.price_per_message(FEED, 10**15, 18)
    assert err.value.reason == "price_stale" and "no price" in err.value.detail
    book.observe(observed("valid", 10, 1))
    assert book.price_per_message(FEED.upper().replace("0X", "0x"), 10**15, 18) == 5 * 10**11
    book.observe(observed("stale", 12, 1))
    with pytest.raises(HandshakeRefused) as err:
        book.price_per_message(FEED, 10**15, 18)
    assert err.value.reason == "price_stale" and "is stale" in err.value.detail
    book.observe(observed("valid", 11, 1))  # an older reading read late changes nothing
    assert book.last(FEED) is not None and book.last(FEED).status == "stale"  # type: ignore[union-attr]
    book.observe(observed("valid", 13, 2, answer=1000 * 10**8))
    assert book.price_per_message(FEED, 10**15, 18) == 10**12


def test_usd_price_needs_a_feed() -> None:
    with pytest.raises(ValueError, match="needs a price_feed"):
        RealmParams(usd_price_per_message=1)


@pytest.mark.parametrize(("cls", "old_version"), [(RealmCreated, 3), (RealmParamsChanged, 2)])
def test_params_encoded_before_usd_pricing_upcast_to_token_pricing(
    cls: type, old_version: int
) -> None:
    params = RealmParams(price_per_message=7)
    event = (
        RealmCreated("r", "0x" + "11" * 20, params, 5)
        if cls is RealmCreated
        else RealmParamsChanged("r", params, 5)
    )
    data = event_to_dict(event)
    assert data["v"] == old_version + 1
    data["v"] = old_version
    del data["params"]["usd_price_per_message"], data["params"]["price_feed"]
    decoded = event_from_dict(data)
    assert decoded == event
    priced = RealmParams(usd_price_per_message=3 * 10**15, price_feed=FEED)
    assert event_from_dict(event_to_dict(RealmParamsChanged("r", priced, 6))).params == priced  # type: ignore[attr-defined]

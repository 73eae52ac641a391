"""Realm economics: integer payouts, conservation, order independence, stake caps."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.economics import (
    Payout,
    compute_payouts,
    epoch_funding,
    payout_digest,
    split_pool,
)
from domain.events import RealmParams
from domain.stakes import block_sum

accounts = st.sampled_from([f"0x{i:040x}" for i in range(1, 9)])
counts = st.dictionaries(accounts, st.integers(min_value=0, max_value=10**9), max_size=8)
amounts = st.integers(min_value=0, max_value=10**30)


@st.composite
def params(draw: st.DrawFn) -> RealmParams:
    router = draw(st.integers(0, 10_000))
    service = draw(st.integers(0, 10_000 - router))
    return RealmParams(
        rfr_bps=draw(st.integers(0, 10_000)),
        stake_per_mpb=draw(st.integers(1, 10**20)),
        epoch_blocks=draw(st.integers(1, 10_000)),
        funding_period_blocks=draw(st.integers(1, 10_000)),
        weight_router_bps=router,
        weight_service_bps=service,
        weight_vendor_bps=10_000 - router - service,
    )


@given(params(), amounts, amounts, counts, counts, counts, counts, counts)
@settings(max_examples=300)
def test_payouts_plus_remainder_equal_the_pool_exactly(
    p, reserved, carry, ru, su, vu, rc, sc
) -> None:
    result = compute_payouts(
        p,
        reserved,
        carry,
        {"router": ru, "service": su, "vendor": vu},
        {"router": rc, "service": sc},
    )
    assert result.total + result.remainder == epoch_funding(p, reserved) + carry
    assert all(po.amount > 0 for po in result.payouts)
    assert result.remainder >= 0


@given(params(), amounts, counts, counts, st.randoms(use_true_random=False))
def test_result_does_not_depend_on_the_order_of_usage(
    p, reserved, used, caps, rnd: random.Random
) -> None:
    items = list(used.items())
    rnd.shuffle(items)
    cap_items = list(caps.items())
    rnd.shuffle(cap_items)
    a = compute_payouts(p, reserved, 0, {"router": used}, {"router": caps})
    b = compute_payouts(p, reserved, 0, {"router": dict(items)}, {"router": dict(cap_items)})
    assert a == b
    assert payout_digest("r", 1, a.payouts) == payout_digest("r", 1, list(reversed(b.payouts)))


def test_credit_is_capped_by_provided_bandwidth() -> None:
    p = RealmParams(
        weight_router_bps=10_000,
        weight_service_bps=0,
        weight_vendor_bps=0,
        rfr_bps=10_000,
        funding_period_blocks=1,
    )
    # a: used 1000 but may only provide 100; b: used 100 of 1000 -> equal credit, equal pay
    result = compute_payouts(
        p, 1000, 0, {"router": {"a": 1000, "b": 100}}, {"router": {"a": 100, "b": 1000}}
    )
    assert [(x.account, x.amount) for x in result.payouts] == [("a", 500), ("b", 500)]


def test_zero_usage_carries_the_whole_pool() -> None:
    p = RealmParams(rfr_bps=200, funding_period_blocks=100)
    result = compute_payouts(p, 10**22, 5, {}, {})
    assert result.payouts == ()
    assert result.remainder == epoch_funding(p, 10**22) + 5 > 5


def test_single_operator_takes_its_class_pool_and_remainder_is_the_rest() -> None:
    p = RealmParams(
        weight_router_bps=5000,
        weight_service_bps=3000,
        weight_vendor_bps=2000,
        rfr_bps=10_000,
        funding_period_blocks=1,
    )
    result = compute_payouts(p, 10_001, 0, {"router": {"r": 7}}, {"router": {"r": 7}})
    assert result.payouts == (Payout("r", "router", 10_001 * 5000 // 10_000),)
    assert result.remainder == 10_001 - 5000


def test_rounding_goes_down_and_the_rest_is_carried() -> None:
    assert split_pool(10, {"a": 1, "b": 1, "c": 1}) == {"a": 3, "b": 3, "c": 3}
    p = RealmParams(
        weight_router_bps=10_000,
        weight_service_bps=0,
        weight_vendor_bps=0,
        rfr_bps=10_000,
        funding_period_blocks=1,
    )
    result = compute_payouts(
        p, 10, 0, {"router": {"a": 1, "b": 1, "c": 1}}, {"router": {"a": 9, "b": 9, "c": 9}}
    )
    assert result.remainder == 1


@given(
    st.lists(st.tuples(st.integers(0, 50), st.integers(0, 10**6)), max_size=10),
    st.integers(0, 40),
    st.integers(0, 40),
)
def test_stake_block_sum_matches_a_block_by_block_sum(changes, first, length) -> None:
    last = first + length
    by_block = {}
    for block, amount in sorted(changes):
        by_block[block] = amount  # the last change at a block wins
    expected = 0
    current = 0
    for block in range(0, last + 1):
        current = by_block.get(block, current)
        if block >= first:
            expected += current
    assert block_sum(sorted(by_block.items()), first, last) == expected


def test_capacity_floors_each_block() -> None:
    assert block_sum([(0, 25)], 0, 9, divisor=10) == 20

"""Chainlink feeds: Chainlink's own MockV3Aggregator (npm @chainlink/contracts 1.2.0) on a real
anvil, as price feed and as L2 sequencer-uptime feed; each fault gives its documented status,
and the indexer emits a `PriceObserved` whenever a feed's round or status changes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from indexer_harness import Harness
from mesh_chain import MeshChain, rpc

from domain.events import PRICE_STATUSES, PriceObserved
from indexer.feeds import FeedConfig, FeedReader, RoundData, SequencerConfig, judge
from indexer.rpc import JsonRpc
from settlement.contracts import deploy

HEARTBEAT_S = 3600
GRACE_S = 3600
FEED = FeedConfig("0x" + "11" * 20, HEARTBEAT_S, min_answer=100, max_answer=10**12)

rounds = st.builds(
    RoundData,
    round_id=st.integers(0, 2**80 - 1),
    answer=st.integers(-(2**255), 2**255 - 1),
    started_at=st.integers(0, 2**40),
    updated_at=st.integers(0, 2**40),
)


@given(reading=rounds, now=st.integers(0, 2**40), sequencer=st.none() | rounds)
def test_only_a_fresh_positive_bounded_price_with_a_settled_sequencer_is_valid(
    reading: RoundData, now: int, sequencer: RoundData | None
) -> None:
    status = judge(FEED, reading, now, sequencer, GRACE_S)
    assert status in PRICE_STATUSES
    valid = (
        reading.answer > 0
        and FEED.min_answer <= reading.answer <= FEED.max_answer
        and now - reading.updated_at <= HEARTBEAT_S
        and (sequencer is None or (sequencer.answer == 0 and now - sequencer.started_at > GRACE_S))
    )
    assert (status == "valid") == valid


@pytest.mark.integration
def test_feed_faults_on_anvil(mesh: MeshChain) -> None:
    w3, owner = mesh.w3, mesh.accounts[0]
    price = deploy(w3, "FeedMock", 8, 2000 * 10**8, sender=owner)
    uptime = deploy(w3, "FeedMock", 0, 0, sender=owner)
    reader = FeedReader(
        JsonRpc(mesh.anvil.url),
        42161,
        [FeedConfig(price.address, HEARTBEAT_S, min_answer=10**8, max_answer=10**14)],
        SequencerConfig(uptime.address, GRACE_S),
    )

    def now() -> int:
        return int(w3.eth.get_block("latest")["timestamp"])

    def observe() -> PriceObserved:
        (seen,) = reader.observe(mesh.head())
        return seen

    def set_uptime(answer: int, since: int) -> None:
        mesh.send(uptime.functions.updateRoundData(7, answer, since, since), owner)

    # the uptime feed was deployed just now: up, but within the grace period
    assert observe().status == "sequencer_grace"
    set_uptime(0, now() - GRACE_S - 10)
    seen = observe()
    assert (seen.status, seen.answer, seen.decimals) == ("valid", 2000 * 10**8, 8)
    set_uptime(1, now())
    assert observe().status == "sequencer_down"
    set_uptime(0, now() - 60)  # back up, but only a minute ago
    assert observe().status == "sequencer_grace"
    set_uptime(0, now() - GRACE_S - 10)
    mesh.send(price.functions.updateAnswer(10**15), owner)
    assert observe().status == "out_of_bounds"
    mesh.send(price.functions.updateAnswer(-5), owner)
    assert (observe().status, observe().answer) == ("non_positive", -5)
    mesh.send(price.functions.updateAnswer(1999 * 10**8), owner)
    assert observe().status == "valid"
    rpc(w3, "evm_increaseTime", HEARTBEAT_S + 1)
    mesh.mine()
    assert observe().status == "stale"


@pytest.mark.integration
def test_the_indexer_emits_a_price_when_round_or_status_change(harness: Harness) -> None:
    mesh = harness.mesh
    owner = mesh.accounts[0]
    price = deploy(mesh.w3, "FeedMock", 8, 2000 * 10**8, sender=owner)
    reader = FeedReader(JsonRpc(mesh.anvil.url), 42161, [FeedConfig(price.address, HEARTBEAT_S)])
    harness.sync_to(mesh.head(), feeds=reader)
    harness.close()
    mesh.mine(3)  # same round, same status: nothing new
    harness.sync_to(mesh.head(), feeds=reader)
    harness.close()
    mesh.send(price.functions.updateAnswer(2100 * 10**8), owner)
    rpc(mesh.w3, "evm_increaseTime", HEARTBEAT_S + 1)
    mesh.mine()
    harness.sync_to(mesh.head(), feeds=reader)
    prices = [e for e in harness.events() if isinstance(e, PriceObserved)]
    assert [(p.round_id, p.answer, p.status) for p in prices] == [
        (1, 2000 * 10**8, "valid"),
        (2, 2100 * 10**8, "stale"),
    ]

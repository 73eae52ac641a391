"""Reciprocity ("if you run my service I will run yours"): A offers calc and rewards echo, B
offers echo and rewards calc, C offers calc (cheaper) and rewards nothing. After A and B served
each other's rewarded services, discovery ranks A first for B despite C's lower price, not for a
client without rewards; the ledger's `reciprocity` (and `meshledger query reciprocity`) says A
and B reciprocate, B and C do not. Real broker, router, projector, stock autobahn sessions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from market_world import API, MarketWorld, chain_log
from router_harness import new_key, run
from test_indexer_projection import project

from domain.events import OfferSet, RewardSet, ServiceRegistered
from infra.broker import Broker
from ledger.cli import cli
from market.client import offers, serve
from market.registry import ZERO_HASH, service_id

pytestmark = pytest.mark.integration

ECHO = "com.example.echo"


def test_servers_that_reward_each_other_reciprocate_and_are_preferred(
    tmp_path: Path, fresh_broker: Broker
) -> None:
    b = new_key()
    world = MarketWorld(tmp_path, fresh_broker.bootstrap, prices=[2_000, 1_000], extra_keys=[b])
    a, c = world.operators
    realm = world.realm.realm
    world.extra_events = [
        ServiceRegistered(realm="", service_id=service_id(ECHO), publisher=b.address, api=ECHO,
                          spec_hash=ZERO_HASH, deterministic=False, verifier_hash=ZERO_HASH,
                          min_requests=0, **chain_log(5, 1)),
        OfferSet(realm=realm, server=b.address, service_id=service_id(ECHO), price_per_call=500,
                 **chain_log(6, 10)),
        RewardSet(realm=realm, server=a.address, service_id=service_id(ECHO), **chain_log(6, 11)),
        RewardSet(realm=realm, server=b.address, service_id=service_id(API), **chain_log(6, 12)),
    ]  # fmt: skip

    async def body() -> None:
        await world.start()
        try:
            sa, sb, sc = [await world.connect(k) for k in (a, b, c)]
            for session in (sa, sc):
                await serve(session, API, {"add": lambda x, y: x + y})
            await serve(sb, ECHO, {"say": lambda text: text})
            user = await world.connect(world.client)
            calc = {o.operator: o for o in await offers(user, API)}
            echo = {o.operator: o for o in await offers(user, ECHO)}
            assert await sb.call(calc[a.address].procedure("add"), 1, 2) == 3  # A runs B's calc
            assert await sa.call(echo[b.address].procedure("say"), "hi") == "hi"  # B runs A's echo
            assert await sb.call(calc[c.address].procedure("add"), 2, 2) == 4  # C runs B's calc

            for_b = await offers(sb, API)
            assert [(o.operator, o.reciprocal) for o in for_b] == [
                (a.address, True), (c.address, False)
            ]  # fmt: skip
            for_user = await offers(user, API)  # the client rewards nothing: price decides
            assert [(o.operator, o.reciprocal) for o in for_user] == [
                (c.address, False), (a.address, False)
            ]  # fmt: skip
        finally:
            await world.stop()

    run(body)
    db = tmp_path / "ledger.duckdb"
    project(fresh_broker, db, [world.realm.indexer.address]).close()
    out = CliRunner().invoke(cli, ["query", "reciprocity", "--db", str(db), "--realm", realm,
                                   "--json"])  # fmt: skip
    assert out.exit_code == 0, out.output
    pairs = {
        frozenset((r["server_a"], r["server_b"])): r
        for r in map(json.loads, out.output.splitlines())
    }
    assert set(pairs) == {frozenset((a.address, b.address)), frozenset((b.address, c.address))}
    ab = pairs[frozenset((a.address, b.address))]
    assert ab["reciprocal"] is True and ab["b_served_for_a"] == ab["a_served_for_b"] == 1
    bc = pairs[frozenset((b.address, c.address))]
    served_for_b = bc["a_served_for_b"] if bc["server_a"] == c.address else bc["b_served_for_a"]
    served_for_c = bc["b_served_for_a"] if bc["server_a"] == c.address else bc["a_served_for_b"]
    assert (bc["reciprocal"], served_for_b, served_for_c) == (False, 1, 0)

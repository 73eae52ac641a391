"""Discovery (`mesh.market.offers`, `find_service`): a service with three operators at different
prices, offered in the log; a real router following it, stock autobahn clients as operators and
user. The best online offer at or under the price is found and called; bad requests are refused
with their reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from autobahn.wamp.exception import ApplicationError
from market_world import API, MarketWorld
from router_harness import run
from web3 import Web3

from domain.market import operator_prefix
from infra.anvil import Anvil
from infra.broker import Broker
from infra.ens import Names, deploy_ens, register_name
from market.client import NoOffer, find_service, offer_of, offers, serve

pytestmark = pytest.mark.integration


def test_discovery_lists_ranks_and_finds_the_best_offer(tmp_path: Path, broker: Broker) -> None:
    world = MarketWorld(tmp_path, broker.bootstrap, prices=[3_000, 1_000, 2_000])
    expensive, cheap, offline = world.operators

    async def body() -> None:
        await world.start()
        try:
            sessions = []
            for key, tag in ((expensive, "expensive"), (cheap, "cheap")):
                op = await world.connect(key)
                sessions.append(op)
                await serve(op, API, {"add": lambda a, b, tag=tag: {"sum": a + b, "by": tag}})
            user = await world.connect(world.client)

            listed = await offers(user, API)
            # online first, then price; the operator that never connected is listed last
            assert [(o.operator, o.price_per_call, o.online) for o in listed] == [
                (cheap.address, 1_000, True),
                (expensive.address, 3_000, True),
                (offline.address, 2_000, False),
            ]
            assert listed[0].procedure_prefix == operator_prefix(API, cheap.address)
            assert {o.calls for o in listed} == {0}

            best = await find_service(user, API, max_price=5_000)
            assert best.operator == cheap.address
            assert await user.call(best.procedure("add"), 2, 3) == {"sum": 5, "by": "cheap"}
            with pytest.raises(NoOffer) as none:
                await find_service(user, API, max_price=999)
            assert "at or under 999" in str(none.value)
            # the offline operator is cheaper than `expensive` but cannot be found
            only = await find_service(user, API, max_price=2_500)
            assert only.operator == cheap.address

            # an operator may not register under another operator's prefix
            with pytest.raises(ApplicationError) as stolen:
                await sessions[0].register(
                    lambda: 0, operator_prefix(API, offline.address) + ".add"
                )
            assert stolen.value.error == "wamp.error.not_authorized"
            assert "another operator's prefix" in str(stolen.value.args[0])
            # outside every operator prefix, the API's procedures are ordinary ones: not
            # guarded, not assessed
            await sessions[0].register(lambda: "open", f"{API}.open.status")
            assert await user.call(f"{API}.open.status") == "open"
            assert {o.calls for o in await offers(user, API)} == {0, 1}  # the one market call
            for bad, reason in (({"service": "com.nothing"}, "no service"),
                                ({"service": API, "max_price": -1}, "max_price"),
                                ({}, "service")):  # fmt: skip
                with pytest.raises(ApplicationError) as err:
                    await user.call("mesh.market.offers", **bad)
                assert err.value.error == "wamp.error.invalid_argument"
                assert reason in str(err.value.args[0])
        finally:
            await world.stop()

    run(body)


def test_a_client_finds_an_operator_by_its_ens_name(
    tmp_path: Path, broker: Broker, fresh_anvil: Anvil
) -> None:
    w3 = Web3(Web3.HTTPProvider(fresh_anvil.url))
    ens = deploy_ens(w3, w3.eth.accounts[0])
    world = MarketWorld(tmp_path, broker.bootstrap, prices=[3_000, 1_000])
    named, cheap = world.operators
    w3.provider.make_request("anvil_setBalance", [named.address, hex(10**20)])  # type: ignore[arg-type]
    register_name(w3, ens, "calc-op.eth", named.private)
    names = Names(fresh_anvil.url, ens.registry)

    async def body() -> None:
        await world.start()
        try:
            for key, tag in ((named, "named"), (cheap, "cheap")):
                op = await world.connect(key)
                await serve(op, API, {"add": lambda a, b, tag=tag: {"sum": a + b, "by": tag}})
            user = await world.connect(world.client)
            # by name: the named operator's offer, not the cheapest
            offer = await offer_of(user, API, "calc-op.eth", names)
            assert (offer.operator, offer.price_per_call) == (named.address, 3_000)
            assert await user.call(offer.procedure("add"), 1, 2) == {"sum": 3, "by": "named"}
            assert (await offer_of(user, API, cheap.address)).operator == cheap.address
            with pytest.raises(ValueError, match="resolves to no address"):
                await offer_of(user, API, "nobody.eth", names)
            with pytest.raises(NoOffer, match="offers no"):
                await offer_of(user, API, w3.eth.accounts[3])
        finally:
            await world.stop()

    run(body)

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

from domain.market import operator_prefix
from infra.broker import Broker
from market.client import NoOffer, find_service, offers, serve

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

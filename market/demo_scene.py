"""The marketplace scene of `meshledger demo`: a deterministic service registered on chain,
three operators offering it through the registry, a client that discovers the cheapest, negotiates
a price, and calls; the router verifies the calls by redundant requests, convicts the operator
that answers wrongly, and the client finds and negotiates with another.

Runs on the demo's stack after its traffic, with its actors: their chequebooks pay what the scene
costs (the sessions pay off before leaving, as the traffic's do)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from autobahn.wamp.exception import ApplicationError

from domain.market import QUOTE_PROCEDURE_NAME
from ledger.demo_clients import Client, ClientSpec, Tally, Traffic, join
from market.client import AgreedQuote, Offer, QuoteDesk, find_service, negotiate, offers, serve
from market.registry import ZERO_HASH, realm_id, service_id
from router_core.client import SwapOffer
from settlement.contracts import at

REALM = "io.crossbar.market"
ROUTER = "r2"
API = "io.crossbar.market.prices"
SPEC_HASH = "0x" + "5e" * 32
PUBLISHER = "quotes-dev"
CLIENT = "dave"
#: operator -> price per call (base units); the cheapest answers wrongly
OPERATORS = {"quotes-svc": 3 * 10**14, "orders-svc": 2 * 10**14, "erin": 10**14}
WRONG = "erin"
CALLS_EACH = 3
#: how long the scene waits for the chain (indexer) or the router's verification
WAIT_S = 60.0


@dataclass
class SceneResult:
    first: Offer
    first_quote: AgreedQuote
    second: Offer
    second_quote: AgreedQuote
    invocations: int


async def _until(check: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"market scene: {what} not within {WAIT_S:.0f}s")
        await asyncio.sleep(0.25)


def register_on_chain(demo: Any) -> None:
    """The publisher registers the service (deterministic, 3 answers compared by exact
    equality); each operator offers it in the realm at its price."""
    chain = demo._chain()
    registry = at(chain.w3, "ServiceRegistry", demo.stack.contracts["service_registry"])
    sid = bytes.fromhex(service_id(API)[2:])
    publisher = demo.actors[PUBLISHER]
    calls = [
        (publisher, registry.functions.registerService(
            API, bytes.fromhex(SPEC_HASH[2:]), True, bytes.fromhex(ZERO_HASH[2:]), 3
        ), "registerService"),
    ]  # fmt: skip
    chain.submit(calls)
    chain.submit(
        [
            (
                demo.actors[name],
                registry.functions.setOffer(realm_id(REALM), sid, price),
                "setOffer",
            )
            for name, price in OPERATORS.items()
        ]
    )


async def run_scene(demo: Any, offer_of: Any) -> tuple[SceneResult, list[Client]]:
    """The scene's sessions on router r2; returns what happened and the clients (their tallies
    count what the router routed to them, their payments what they paid)."""
    realm_plan = next(r for r in demo.plan.realms if r.name == REALM)
    url = demo.stack.address_of(f"router-{ROUTER}")
    state = demo.work / "clients"
    clients: dict[str, Client] = {}
    for name in [*OPERATORS, CLIENT]:
        spec: ClientSpec = demo._spec(name, realm_plan, ROUTER, url)
        clients[name] = Client(spec, await join(spec, offer_of(spec), state), Tally())

    def add_of(client: Client, wrong: bool) -> Any:
        def add(a: int, b: int) -> int:
            client.tally.invocations += 1
            return a + b + (1 if wrong else 0)

        return add

    def desk_of(client: Client, floor_price: int) -> Any:
        desk = QuoteDesk(client.spec.private_key, floor_price)

        def answer(quote: dict[str, Any], client_signature: str) -> dict[str, Any]:
            client.tally.invocations += 1
            return desk.answer(quote, client_signature)

        return answer

    for name, price in OPERATORS.items():
        client = clients[name]
        prefix = await serve(client.session, API, {"add": add_of(client, name == WRONG)})
        await client.session.register(
            desk_of(client, price * 2 // 3), f"{prefix}.{QUOTE_PROCEDURE_NAME}"
        )
    user = clients[CLIENT]

    async def offered() -> bool:
        try:
            return len(await offers(user.session, API)) == len(OPERATORS)
        except ApplicationError:  # the indexer has not brought the registry's logs in yet
            return False

    await _until(offered, "the registry's offers reach the router")
    first = await find_service(user.session, API, max_price=max(OPERATORS.values()))
    first_quote = await negotiate(
        user.session, user.spec.private_key, first, API,
        target_price=first.price_per_call // 2, max_price=first.price_per_call,
    )  # fmt: skip
    for a in range(CALLS_EACH):
        await user.session.call(first.procedure("add"), a, 1)
        user.tally.calls += 1

    async def convicted() -> bool:
        return any(o.convicted for o in await offers(user.session, API))

    await _until(convicted, "a conviction")
    second = await find_service(user.session, API, max_price=max(OPERATORS.values()))
    second_quote = await negotiate(
        user.session, user.spec.private_key, second, API,
        target_price=second.price_per_call // 2, max_price=second.price_per_call,
    )  # fmt: skip
    for a in range(CALLS_EACH):
        answer = await user.session.call(second.procedure("add"), a, 1)
        user.tally.calls += 1
        if answer != a + 1:
            raise RuntimeError(f"market scene: {second.operator} answered {answer} to {a} + 1")

    # every call assessed: the client's six, and the router's two verification calls for each
    # of the first three (after the conviction too few operators remain to verify)
    async def assessed() -> bool:
        return sum(o.calls for o in await offers(user.session, API)) == 4 * CALLS_EACH

    await _until(assessed, "every market call assessed")
    invocations = sum(c.tally.invocations for c in clients.values())
    # every invocation (the client's calls, the router's verification calls, the price asks)
    # was answered with a result, routed and metered like the invocation
    user.tally.results = invocations
    return SceneResult(first, first_quote, second, second_quote, invocations), list(
        clients.values()
    )


async def leave(clients: list[Client]) -> None:
    """Pay off and leave, as the traffic's clients do."""
    await Traffic(clients).stop()


def swap_offer_of(demo: Any) -> Any:
    token = demo.stack.contracts["token"]
    prices = {r.name: r.params.price_per_message for r in demo.plan.realms}

    def offer(spec: ClientSpec) -> SwapOffer:
        return SwapOffer(spec.chequebook, 31337, token, demo.plan.payment_threshold,
                         prices[spec.realm])  # fmt: skip

    return offer

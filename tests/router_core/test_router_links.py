"""Router-to-router links: real `meshledger router run` processes linked in a line, a triangle and
a full mesh of 4, stock autobahn clients. Every event reaches every subscriber exactly once, calls
reach callees two hops away (results, errors, timeouts, cancels), and a link cut mid-traffic is
re-established with its subscriptions while the calls in flight over it fail cleanly."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import CallOptions, PublishOptions, SubscribeOptions
from link_harness import FULL_MESH_4, LINE, TRIANGLE, Client, anonymous, mesh, proxied_pair
from router_harness import REALM, Key, new_key, run, until
from websockets.asyncio.client import connect as connect_ws
from websockets.typing import Subprotocol

from infra.procs import free_port
from router_core.auth import sign_challenge
from router_core.chain_clock import ManualClock
from router_core.links import LINK_LOST, LinkPeer
from router_core.router import RealmOptions, Router
from router_core.stakes import StaticStakes

pytestmark = pytest.mark.integration

TOPIC = "com.example.linked"


async def _wait_subscribed(publisher: Client, received: list[list[Any]], topic: str) -> None:
    """Publish probes until every subscriber has one: interest has spread over the links."""
    probe = 0
    while not all(any(e == ("probe",) for e in got) for got in received):
        publisher.publish(topic, "probe", options=PublishOptions(exclude_me=False))
        probe += 1
        await asyncio.sleep(0.05)
        assert probe < 400, f"interest did not spread: {[len(g) for g in received]}"


@pytest.mark.parametrize(
    ("size", "edges"),
    [(3, LINE), (3, TRIANGLE), (4, FULL_MESH_4)],
    ids=["line", "triangle", "full-mesh-4"],
)
def test_every_event_reaches_every_subscriber_exactly_once(
    tmp_path: Path, size: int, edges: list[tuple[int, int]]
) -> None:
    events = 100
    with mesh(tmp_path, size, edges) as net:

        async def body() -> list[dict[str, Any]]:
            clients = await net.converged()
            received: list[list[Any]] = [[] for _ in clients]
            for i, client in enumerate(clients):
                await client.subscribe(lambda *a, i=i: received[i].append(a), TOPIC)
            # a prefix subscription on the last router counts once per event as well
            prefixed: list[Any] = []
            await clients[-1].subscribe(
                lambda *a: prefixed.append(a), "com.example", SubscribeOptions(match="prefix")
            )
            publisher = clients[0]
            await _wait_subscribed(publisher, received, TOPIC)
            for n in range(events):
                publisher.publish(TOPIC, n, options=PublishOptions(exclude_me=False))
            await until(
                lambda: (
                    all(sum(1 for e in got if e != ("probe",)) >= events for got in received)
                    and sum(1 for e in prefixed if e != ("probe",)) >= events
                ),
                f"{events} events at every subscriber",
                timeout_s=30,
            )
            # anything duplicated or looping would have arrived by the time a marker has
            publisher.publish(TOPIC, "end", options=PublishOptions(exclude_me=False))
            await until(lambda: all(("end",) in got for got in received), "the end marker")
            for got in [*received, prefixed]:
                numbered = [e[0] for e in got if e not in (("probe",), ("end",))]
                assert numbered == list(range(events))  # each once, in order
            return [await c.call("mesh.link.status") for c in clients]

        stats = run(body)
    # the broadcast tree crosses each router once: no router ever saw a duplicate
    assert sum(s["duplicates"] + s["stale"] for s in stats) == 0
    assert sum(s["received_forwarded"] for s in stats) == sum(s["forwarded"] for s in stats)
    assert sum(s["forwarded"] for s in stats) >= events * (size - 1)


def test_calls_reach_a_callee_two_hops_away(tmp_path: Path) -> None:
    with mesh(tmp_path, 3, LINE) as net:

        async def body() -> None:
            caller, _, callee = await net.converged()
            interrupted = asyncio.Event()

            async def add(a: int, b: int) -> int:
                return a + b

            def fail() -> None:
                raise ApplicationError("com.example.error.nope", "not today", code=7)

            async def slow() -> str:
                try:
                    await asyncio.sleep(60)
                finally:
                    interrupted.set()
                return "late"

            await callee.register(add, "com.example.add")
            await callee.register(fail, "com.example.fail")
            await callee.register(slow, "com.example.slow")

            async def routed() -> bool:
                try:
                    return bool(await caller.call("com.example.add", 1, 1) == 2)
                except ApplicationError as exc:
                    assert exc.error == "wamp.error.no_such_procedure"
                    return False

            await _until_true(routed, "the registration spread to the caller's router")
            assert await caller.call("com.example.add", 2, 40) == 42
            results = await asyncio.gather(
                *(caller.call("com.example.add", n, n) for n in range(200))
            )
            assert results == [2 * n for n in range(200)]

            with pytest.raises(ApplicationError) as error:
                await caller.call("com.example.fail")
            assert error.value.error == "com.example.error.nope"
            assert error.value.args == ("not today",)

            with pytest.raises(ApplicationError) as timeout:
                await caller.call("com.example.slow", options=CallOptions(timeout=500))
            assert timeout.value.error == "wamp.error.timeout"
            await until(lambda: interrupted.is_set(), "the callee was interrupted (timeout)")

            interrupted.clear()
            pending = asyncio.ensure_future(caller.call("com.example.slow"))
            await asyncio.sleep(0.3)
            pending.cancel()
            await until(lambda: interrupted.is_set(), "the callee was interrupted (cancel)")

            with pytest.raises(ApplicationError) as missing:
                await caller.call("com.example.nobody")
            assert missing.value.error == "wamp.error.no_such_procedure"

        run(body)


def test_a_link_cut_mid_traffic_is_redialed_and_calls_in_flight_fail(tmp_path: Path) -> None:
    with proxied_pair(tmp_path) as (net, proxies):

        async def body() -> None:
            for proxy in proxies:
                await proxy.start()
            a, b = await net.converged()
            got: list[int] = []
            await b.subscribe(lambda n: got.append(n), TOPIC)
            gate = asyncio.Event()

            async def held() -> str:
                await gate.wait()
                return "done"

            await b.register(held, "com.example.held")
            probes: list[Any] = []
            await b.subscribe(lambda *x: probes.append(x), "com.example.probe")
            await _wait_subscribed(a, [probes], "com.example.probe")
            await _until_true(lambda: _has_route(a, "com.example.held"), "the registration spread")
            in_flight = asyncio.ensure_future(a.call("com.example.held"))
            sent = 0
            for _ in range(300):
                a.publish(TOPIC, sent)
                sent += 1
                if sent % 20 == 0:
                    await asyncio.sleep(0.001)
                if sent == 150:
                    await until(lambda: len(got) >= 50, "traffic flows over the link")
                    assert proxies[0].cut() > 0  # A's session to B was open, and is cut
                    assert proxies[1].cut() > 0
            with pytest.raises(ApplicationError) as lost:
                await asyncio.wait_for(in_flight, 10)
            assert lost.value.error == LINK_LOST
            assert "lost" in lost.value.args[0]

            async def relinked() -> bool:
                status = await a.call("mesh.link.status")
                return bool(status["reachable"])

            await _until_true(relinked, "the link is re-established")
            assert proxies[0].connections >= 2 and proxies[1].connections >= 2
            # B's subscription is known again on A: new events arrive, once each
            probes.clear()
            await _wait_subscribed(a, [probes], "com.example.probe")
            later = sent
            for n in range(later, later + 100):
                a.publish(TOPIC, n)
            await until(lambda: bool(got) and got[-1] == later + 99, "events after the re-link")
            assert [n for n in got if n >= later] == list(range(later, later + 100))
            assert len(got) == len(set(got))  # nothing delivered twice
            assert got == sorted(got)
            gate.set()

        run(body)


async def _has_route(client: Client, procedure: str) -> bool:
    try:
        await client.call(procedure, options=CallOptions(timeout=200))
    except ApplicationError as exc:
        return exc.error != "wamp.error.no_such_procedure"
    return True


async def _until_true(check: Any, what: str, timeout_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():
        assert loop.time() < deadline, f"not within {timeout_s}s: {what}"
        await asyncio.sleep(0.05)


def test_a_router_that_is_not_a_peer_is_refused_and_an_impostor_is_not_linked() -> None:
    b_key, x_key, y_key = new_key(), new_key(), new_key()
    clock = ManualClock()
    stakes = StaticStakes({})
    b_port = free_port()

    def router(key: Key, peers: list[LinkPeer]) -> Router:
        return Router(
            key.address,
            [RealmOptions(REALM, allow_anonymous=True)],
            stakes,
            clock,
            peers={REALM: peers},
            link_key=key.private,
        )

    async def body() -> None:
        # B links only with Y; X dials B anyway (refused), and Y's entry points at B's port
        # with Y's address: B answers, but cannot sign as Y (an impostor at that address)
        b = router(b_key, [LinkPeer("ws://127.0.0.1:1/ws", y_key.address)])
        await b.start("127.0.0.1", b_port)
        x = router(x_key, [LinkPeer(f"ws://127.0.0.1:{b_port}/ws", b_key.address)])
        await x.start()
        fooled = router(y_key, [LinkPeer(f"ws://127.0.0.1:{b_port}/ws", x_key.address)])
        await fooled.start()
        try:
            x_link = x.federations[REALM].links[b_key.address.lower()]
            y_link = fooled.federations[REALM].links[x_key.address.lower()]
            await until(lambda: "is not a peer router" in x_link.last_error, "B refused X's link")
            await until(
                lambda: f"expected {x_key.address}" in y_link.last_error,
                "Y refused a router that cannot sign as the expected peer",
            )
            assert not x_link.up and not y_link.up
            assert x_link.connects == 0 and y_link.connects == 0
            assert b.federations[REALM].stats()["reachable"] == []
        finally:
            for r in (x, fooled, b):
                await r.stop()

    run(body)


def test_a_malformed_forwarded_publication_ends_the_link_session_and_delivers_nothing() -> None:
    b_key, x_key = new_key(), new_key()
    b = Router(
        b_key.address,
        [RealmOptions(REALM, allow_anonymous=True)],
        StaticStakes({}),
        ManualClock(),
        peers={REALM: [LinkPeer("ws://127.0.0.1:1/ws", x_key.address)]},
        link_key=b_key.private,
    )

    async def body() -> None:
        await b.start()
        try:
            sub = await anonymous(f"ws://127.0.0.1:{b.port}/ws")
            got: list[Any] = []
            await sub.subscribe(lambda *a: got.append(a), TOPIC)
            async with connect_ws(
                f"ws://127.0.0.1:{b.port}/ws", subprotocols=[Subprotocol("wamp.2.json")]
            ) as ws:
                nonce = "ab" * 16
                hello = {
                    "authmethods": ["eth-eip191"],
                    "authid": x_key.address,
                    "authextra": {"link": {"nonce": nonce}},
                }
                await ws.send(json.dumps([1, REALM, hello]))
                challenge = json.loads(await ws.recv())
                await ws.send(json.dumps([5, sign_challenge(x_key.private, challenge[2]), {}]))
                welcome = json.loads(await ws.recv())
                assert welcome[0] == 2 and welcome[2]["authrole"] == "router"
                # a peer router's PUBLISH without its origin and trail is refused
                await ws.send(json.dumps([16, 1, {}, TOPIC, ["forged"]]))
                goodbye = json.loads(await ws.recv())
                assert goodbye[0] == 6 and goodbye[2] == "wamp.error.protocol_violation"
                assert "forward_for" in goodbye[1]["message"]
            pub = await anonymous(f"ws://127.0.0.1:{b.port}/ws")
            await pub.publish(TOPIC, "local", options=PublishOptions(acknowledge=True))
            await until(lambda: bool(got), "the local event")
            assert got == [("local",)]  # the forged one was never delivered
        finally:
            await b.stop()

    run(body)

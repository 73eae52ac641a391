"""Past the disconnect threshold a peer is served nothing: not the rest of a pipelined burst, not
while CLOSING (which ends in bounded time), not in its next session (debt checked at join)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import PublishOptions
from router_harness import PRICE, REALM, Harness, decode, encode, login, run, until
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from domain.events import PeerDisconnected
from router_core.session import Session

TOPIC = "com.example.ticks"


async def listener(harness: Harness, router: Any) -> list[Any]:
    got: list[Any] = []
    sub = await harness.connect(router, harness.peer())
    await sub.subscribe(lambda *a: got.append(a[0]), TOPIC)
    return got


def test_pipelined_publishes_past_the_threshold_are_not_routed(harness: Harness) -> None:
    async def body() -> None:
        router = await harness.start(swap=True)
        got = await listener(harness, router)
        key = harness.peer()
        deadbeat = await harness.connect(router, key, auto_pay=False)
        for i in range(300):  # one burst, no acknowledgements awaited: many arrive in one read
            deadbeat.publish(TOPIC, i)
        await asyncio.wait_for(deadbeat.left, 10)
        assert deadbeat.close_reason == "mesh.error.payment_required"
        # the threshold is 20 messages: the 21st crosses it and nothing after is routed
        probe = await harness.connect(router, harness.peer())
        await probe.publish(TOPIC, "probe", options=PublishOptions(acknowledge=True))
        await until(lambda: "probe" in got, "the probe after the burst arrived")
        assert got == [*range(21), "probe"]
        assert router.swap is not None and router.swap.debt(REALM, key.address) == 21 * PRICE
        assert [e.balance for e in harness.sink.of_type(PeerDisconnected)] == [21 * PRICE]
        await router.stop()

    run(body)


def test_closing_session_receives_nothing_and_ends_in_bounded_time(harness: Harness) -> None:
    """A raw client that never answers GOODBYE: no EVENT reaches it after the GOODBYE, and the
    router closes the connection within `Session.closing_timeout_s`."""

    async def body() -> None:
        router = await harness.start(swap=True)
        await listener(harness, router)  # deliveries are what a publisher pays for
        key = harness.peer()
        other = await harness.connect(router, harness.peer())
        proto = "wamp.2.json"
        async with ws_connect(f"ws://127.0.0.1:{router.port}/ws", subprotocols=[proto]) as ws:  # type: ignore[list-item]
            await login(ws, proto, key)
            await ws.send(encode(proto, [32, 1, {}, "com.example.back"]))
            assert decode(proto, await ws.recv())[0] == 33  # SUBSCRIBED
            for i in range(25):
                await ws.send(encode(proto, [16, 100 + i, {}, TOPIC, [i]]))
            after_goodbye: list[Any] = []
            goodbye_at = None
            loop = asyncio.get_running_loop()
            with contextlib.suppress(ConnectionClosed):
                while True:
                    frame = decode(proto, await asyncio.wait_for(ws.recv(), 10))
                    if frame[0] == 6:
                        goodbye_at = loop.time()
                        assert frame[2] == "mesh.error.payment_required"
                        for i in range(5):  # events published for it while it is CLOSING
                            other.publish("com.example.back", i)
                    elif goodbye_at is not None:
                        after_goodbye.append(frame)
            assert goodbye_at is not None, "the router never said GOODBYE"
            closed_after = loop.time() - goodbye_at
        assert after_goodbye == []
        assert closed_after < Session.closing_timeout_s + 3
        await until(
            lambda: all(s.authid != key.address for s in router.sessions.values()),
            "the router dropped the closed session",
        )
        await router.stop()

    run(body)


def test_returning_peer_over_the_threshold_is_not_served_until_it_pays(harness: Harness) -> None:
    async def body() -> None:
        router = await harness.start(swap=True)
        assert router.swap is not None
        router.swap._grace_s = 1.0  # keep the test short
        got = await listener(harness, router)
        key = harness.peer()
        deadbeat = await harness.connect(router, key, auto_pay=False)
        for i in range(21):
            deadbeat.publish(TOPIC, i)
        await asyncio.wait_for(deadbeat.left, 10)
        assert len(got) == 21
        again = await harness.connect(router, key, auto_pay=False)
        assert again.swap_terms["debt"] == 21 * PRICE and again.swap_terms["suspended"] is True
        with pytest.raises(ApplicationError) as err:
            await again.publish(TOPIC, "more", options=PublishOptions(acknowledge=True))
        assert err.value.error == "mesh.error.payment_required"
        # it may still talk to the router (to pay); nothing else
        assert (await again.call("mesh.swap.balance"))["debt"] == 21 * PRICE
        callee = await harness.connect(router, harness.peer())
        await callee.register(lambda: "served", "com.example.service")
        with pytest.raises(ApplicationError) as err:
            await again.call("com.example.service")
        assert err.value.error == "mesh.error.payment_required"
        await asyncio.wait_for(again.left, 10)  # the grace period ends the session
        assert again.close_reason == "mesh.error.payment_required"
        assert len(got) == 21
        assert router.swap.debt(REALM, key.address) == 21 * PRICE
        await router.stop()

    run(body)

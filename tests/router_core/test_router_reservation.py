"""Reservation enforcement: within the reserved messages per block a peer is served, a burst
beyond is held until the next block (throttled), and past the burst it is refused."""

from __future__ import annotations

import asyncio

from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import PublishOptions
from router_harness import REALM, Harness, run, until

from router_core.router import RealmOptions


def test_peer_over_its_reservation_is_throttled_then_refused(harness: Harness) -> None:
    async def body() -> None:
        router = await harness.start(
            swap=False, realm=RealmOptions(REALM, enforce_bandwidth=True, burst_messages=3)
        )
        got: list[int] = []
        sub = await harness.connect(router, harness.peer(), swap=False)
        await sub.subscribe(got.append, "com.example.metered")
        pub = await harness.connect(router, harness.peer(mpb=4), swap=False)
        sends = [
            asyncio.ensure_future(
                pub.publish("com.example.metered", i, options=PublishOptions(acknowledge=True))
            )
            for i in range(10)
        ]
        await until(
            lambda: len(got) == 4 and sum(s.done() for s in sends) == 7,
            "4 delivered and 3 refused in this block",
        )
        assert sorted(got) == [0, 1, 2, 3]  # the reservation: 4 messages in this block
        refused = [s for s in sends if s.done() and isinstance(s.exception(), ApplicationError)]
        assert len(refused) == 3
        assert all(s.exception().error == "mesh.error.bandwidth_exceeded" for s in refused)  # type: ignore[union-attr]
        harness.clock.advance()  # next block: the 3 held messages go through
        await until(lambda: len(got) == 7, "the held messages were released")
        assert sorted(got) == [0, 1, 2, 3, 4, 5, 6]
        assert sum(1 for s in sends if s.done() and s.exception() is None) == 7
        await router.stop()

    run(body)


def test_reservation_ending_mid_session_stops_routing(harness: Harness) -> None:
    async def body() -> None:
        router = await harness.start(swap=False)
        got: list[int] = []
        sub = await harness.connect(router, harness.peer(), swap=False)
        await sub.subscribe(got.append, "com.example.metered")
        key = harness.peer()
        pub = await harness.connect(router, key, swap=False)
        await pub.publish("com.example.metered", 1, options=PublishOptions(acknowledge=True))
        harness.stakes.set(REALM, key.address, 0)  # unstaked on chain
        harness.clock.advance()
        await asyncio.wait_for(pub.left, 5)
        assert pub.close_reason == "mesh.error.no_reservation"
        assert "no longer holds a reservation" in (pub.close_message or "")
        await until(lambda: got == [1], "the message sent while staked arrived")
        assert all(s.authid != key.address for s in router.realms[REALM].sessions.values())
        await router.stop()

    run(body)

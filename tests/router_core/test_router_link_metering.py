"""Metering across a router link (real broker, two `meshledger router run` processes): each
message crossing the link is in the sender's log as `link_out` and in the receiver's as
`link_in`, per link, kind and URI, and the deliveries on both ends under their usual kinds."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
from link_harness import mesh
from metering_harness import read_source
from router_harness import run, until

from domain.events import MessageMetered
from infra.broker import Broker

pytestmark = pytest.mark.integration

TOPIC = "com.example.metered"
PROBE = "com.example.probe"
PROC = "com.example.double"


def test_link_traffic_is_metered_on_both_sides(tmp_path: Path, broker: Broker) -> None:
    events, calls = 40, 15
    with mesh(tmp_path, 2, [(0, 1)], extra_toml=f'broker = "{broker.bootstrap}"') as net:
        a_addr, b_addr = (r.key.address for r in net.routers)

        async def body() -> None:
            a, b = await net.converged()
            got: list[int] = []
            probes: list[object] = []
            await b.subscribe(lambda n: got.append(n), TOPIC)
            await b.subscribe(lambda *x: probes.append(x), PROBE)  # after TOPIC: announced later
            await b.register(lambda n: 2 * n, PROC)
            while not probes:
                a.publish(PROBE)
                await asyncio.sleep(0.05)
            for n in range(events):
                a.publish(TOPIC, n)
            for n in range(calls):
                assert await a.call(PROC, n) == 2 * n
            await until(lambda: len(got) == events, "every event delivered on B")

        run(body)
        for router in net.routers:  # a clean stop seals and flushes the metering
            assert router.proc is not None and router.proc.poll() is None
        net.stop()
    metered = Counter()
    for source in (a_addr, b_addr):
        for event in read_source(broker.bootstrap, source).values():
            if isinstance(event, MessageMetered) and event.uri in (TOPIC, PROC):
                metered[(source, event.kind, event.from_peer, event.to_peer, event.uri)] += 1
    a_side = {k[1:]: n for k, n in metered.items() if k[0] == a_addr}
    b_side = {k[1:]: n for k, n in metered.items() if k[0] == b_addr}
    # publications A -> B: sent by A, received by B, delivered by B
    assert a_side[("link_out", a_addr, b_addr, TOPIC)] == events
    assert b_side[("link_in", a_addr, b_addr, TOPIC)] == events
    assert sum(n for k, n in b_side.items() if k[0] == "event" and k[3] == TOPIC) == events
    # calls: CALL out of A, into B, invoked on B; the RESULT out of B, into A, delivered on A
    assert a_side[("link_out", a_addr, b_addr, PROC)] == calls
    assert b_side[("link_in", a_addr, b_addr, PROC)] == calls
    assert sum(n for k, n in b_side.items() if k[0] == "invocation") == calls
    assert sum(n for k, n in b_side.items() if k[0] == "link_out" and k[3] == PROC) == calls
    assert a_side[("link_in", b_addr, a_addr, PROC)] == calls
    assert sum(n for k, n in a_side.items() if k[0] == "result") == calls

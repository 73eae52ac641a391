"""A running router's /metrics and /health (config `metrics_listen`), against a real broker (the
metering child) and a real chain (anvil: chequebooks, the head poller): sessions, messages by
kind, cheques and near-threshold peers move with the traffic; /health fails when the broker, then
the chain, is stopped."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from autobahn.wamp.types import PublishOptions
from router_harness import PRICE, Chain, Key, new_key, run

from infra.anvil import Anvil
from infra.broker import Broker, restart_broker
from infra.metrics import read_health, scrape
from infra.procs import free_port
from ledger.keys import write_new_key
from router_core.client import MeshSession, SwapOffer, connect
from router_core.config import RealmConfig, RouterConfig, SwapConfig
from router_core.service import RouterService

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def health(url: str) -> tuple[int, dict[str, str]]:
    status, body = read_health(url)
    return status, body["checks"]


def routed(samples: Samples, kind: str) -> float:
    return samples.get(("meshledger_router_messages_routed_total", (("kind", kind),)), 0)


async def scraped_until(url: str, check: Any, what: str, timeout_s: float = 30) -> Samples:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        samples = await asyncio.to_thread(scrape, url)
        if check(samples):
            return samples
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"{what} not reached: {samples}")
        await asyncio.sleep(0.1)


def test_router_metrics_move_with_traffic_and_health_follows_broker_and_chain(
    fresh_broker: Broker, fresh_anvil: Anvil, tmp_path: Path
) -> None:
    chain = Chain(fresh_anvil.url, fresh_anvil.chain_id)
    peers: list[Key] = [new_key(), new_key()]
    write_new_key(tmp_path / "router.key")
    config = RouterConfig(
        realms=[
            RealmConfig(
                "m", price_per_message=PRICE, reservations={p.address: 10**6 for p in peers}
            )
        ],
        listen=f"127.0.0.1:{free_port('127.0.0.1')}",
        key_file=str(tmp_path / "router.key"),
        data_dir=str(tmp_path / "router"),
        broker=fresh_broker.bootstrap,
        chain_id=fresh_anvil.chain_id,
        chain_rpc_url=fresh_anvil.url,
        metrics_listen="127.0.0.1:0",
        swap=SwapConfig(
            token=chain.token.address,
            payment_threshold=10 * PRICE,
            disconnect_threshold=1000 * PRICE,
        ),
    )

    async def body() -> None:
        service = RouterService(config)
        router = await service.start()
        url = service.metrics.url
        try:
            before = await asyncio.to_thread(scrape, url)
            assert before[("meshledger_router_sessions", (("realm", "m"),))] == 0
            assert routed(before, "event") == 0
            sessions: list[MeshSession] = []
            for peer in peers:
                offer = SwapOffer(
                    chain.chequebook(peer), chain.chain_id, chain.token.address, 10 * PRICE, PRICE
                )
                sessions.append(
                    await connect(f"ws://127.0.0.1:{router.port}/ws", "m", peer.private, swap=offer)
                )
            publisher, callee = sessions
            await callee.subscribe(lambda *_: None, "com.example.ticks")
            await callee.register(lambda x: x + 1, "com.example.add")
            for i in range(30):
                await publisher.publish(
                    "com.example.ticks", i, options=PublishOptions(acknowledge=True)
                )
            assert await publisher.call("com.example.add", 1) == 2
            during = await scraped_until(
                url,
                lambda s: (
                    routed(s, "event") >= 30
                    and routed(s, "invocation") == 1
                    and routed(s, "result") == 1
                    and s.get(("meshledger_router_cheques_total", (("outcome", "accepted"),)), 0)
                    >= 1
                ),
                "30 events, a call and an accepted cheque",
            )
            assert during[("meshledger_router_sessions", (("realm", "m"),))] == 2
            assert during[("meshledger_router_swap_peers", ())] == 2
            assert ("meshledger_router_metering_buffer_items", ()) in during
            near = "meshledger_router_swap_peers_near_threshold"
            assert (near, (("threshold", "payment"),)) in during  # cheques pay it down: varies
            assert during[(near, (("threshold", "disconnect"),))] == 0  # 31 messages of 1000
            assert ("meshledger_router_cashout_pending_cheques", ()) in during

            assert await asyncio.to_thread(health, url) == (200, {"broker": "ok", "chain": "ok"})
            assert fresh_broker.alive()
            fresh_broker.stop_tansu()
            status, checks = await asyncio.to_thread(health, url)
            assert status == 503 and checks["chain"] == "ok"
            assert checks["broker"].startswith(f"broker {fresh_broker.bootstrap} unreachable")
            await asyncio.to_thread(restart_broker, fresh_broker)
            assert await asyncio.to_thread(health, url) == (200, {"broker": "ok", "chain": "ok"})
            fresh_anvil.stop()
            status, checks = await asyncio.to_thread(health, url)
            assert status == 503 and checks["broker"] == "ok"
            assert checks["chain"].startswith(f"chain {fresh_anvil.url} unreachable")
            for session in sessions:
                session.leave()
        finally:
            await service.stop()

    run(body)

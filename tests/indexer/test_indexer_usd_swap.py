"""A realm priced in USD, end to end (issue 7, the routers' part): the keeper sets
`usdPricePerMessage` and `priceFeed` on RealmStaking, the indexer brings the realm and the feed's
readings (a Chainlink `MockV3Aggregator` on anvil) into the log, and a router following the log
refuses a SWAP handshake while the price is stale and prices it from the last valid one."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from indexer_harness import Harness
from mesh_chain import DEV_KEYS, MeshChain

from domain.events import RealmParams
from indexer.feeds import FeedConfig, FeedReader
from indexer.rpc import JsonRpc
from router_core import messages as m
from router_core.client import JoinRefused, SwapOffer, connect
from router_core.config import RealmConfig, RouterConfig, SwapConfig
from router_core.prices import base_units_per_message
from router_core.service import RouterService
from settlement.contracts import deploy

pytestmark = pytest.mark.integration

HEARTBEAT_S = 3600
USD_PER_MESSAGE = 3 * 10**15  # $0.003 (10**-18 USD units)


def test_usd_priced_handshake_refused_while_stale_and_priced_when_fresh(
    mesh: MeshChain, harness: Harness, tmp_path: Path
) -> None:
    w3, keeper = mesh.w3, mesh.accounts[1]
    feed = deploy(w3, "FeedMock", 8, 2000 * 10**8, sender=mesh.accounts[0])
    name = f"usd-{uuid.uuid4().hex[:8]}"
    mesh.register(
        name, keeper, RealmParams(usd_price_per_message=USD_PER_MESSAGE, price_feed=feed.address)
    )
    reader = FeedReader(JsonRpc(mesh.anvil.url), 42161, [FeedConfig(feed.address, HEARTBEAT_S)])

    def now() -> int:
        return int(w3.eth.get_block("latest")["timestamp"])

    def set_price(round_id: int, answer: int, updated_at: int) -> None:
        mesh.send(feed.functions.updateRoundData(round_id, answer, updated_at, updated_at), keeper)

    def index() -> None:
        harness.sync_to(mesh.head(), feeds=reader)
        assert harness.emitter is not None
        harness.emitter.flush(timeout_s=30)

    set_price(2, 2000 * 10**8, now() - 2 * HEARTBEAT_S)  # last updated two heartbeats ago
    index()
    client = DEV_KEYS[3]
    key_file = tmp_path / "router.key"
    key_file.write_text("0x" + bytes(DEV_KEYS[5].key).hex())
    key_file.chmod(0o600)
    config = RouterConfig(
        realms=[RealmConfig(name, reservations={client.address: 1_000_000})],
        listen="127.0.0.1:0",
        key_file=str(key_file),
        data_dir=str(tmp_path / "router"),
        broker=harness.broker.bootstrap,
        chain_id=42161,
        ledger_sources=[harness.signer.address],
        ledger_catchup_timeout_s=30,
        swap=SwapConfig(token=mesh.stack.token.address, payment_threshold=10**18,
                        disconnect_threshold=2 * 10**18),
    )  # fmt: skip
    offer = SwapOffer("0x" + "22" * 20, 42161, mesh.stack.token.address, 10**18, 10**18)

    async def body() -> None:
        service = RouterService(config)
        router = await service.start()
        url = f"ws://127.0.0.1:{router.port}/ws"
        try:
            with pytest.raises(JoinRefused) as err:
                await connect(url, name, bytes(client.key), swap=offer)
            assert err.value.reason == m.SWAP_HANDSHAKE_REFUSED
            assert "price_stale" in str(err.value) and "stale" in str(err.value)
            # a fresh round at $2,500 per WMP: the next handshake is priced from it
            await asyncio.to_thread(set_price, 3, 2500 * 10**8, now())
            await asyncio.to_thread(index)
            follower = service.follower
            assert follower is not None and follower.prices is not None
            prices = follower.prices
            deadline = asyncio.get_running_loop().time() + 30
            while (seen := prices.last(feed.address)) is None or seen.status != "valid":
                assert asyncio.get_running_loop().time() < deadline, "no valid price followed"
                await asyncio.sleep(0.05)
            session = await connect(url, name, bytes(client.key), swap=offer)
            expected = base_units_per_message(USD_PER_MESSAGE, 2500 * 10**8, 8, 18)
            assert expected == 12 * 10**11  # $0.003 at $2,500 per 10**18 base units
            assert session.swap_terms["price_per_message"] == expected
            session.leave()
        finally:
            await service.stop()

    asyncio.run(body())

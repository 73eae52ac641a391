"""The RPC head poller of a running router: it follows the chain and its log stays clean (one
provider for its life; a provider per poll leaked an aiohttp session, "Unclosed client session",
about once a second)."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path

import pytest
from router_harness import new_key, run, until
from web3 import Web3

from infra.anvil import Anvil
from router_core.chain_clock import Web3HeadPoller
from router_core.config import RealmConfig, RouterConfig, SwapConfig
from router_core.service import RouterService

pytestmark = pytest.mark.integration


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


def test_running_router_polls_the_chain_without_leaking_sessions(
    tmp_path: Path, anvil_l2: Anvil, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESH_ROUTER_KEY", "0x" + new_key().private.hex())
    config = RouterConfig(
        realms=[RealmConfig("realm1")],
        listen="127.0.0.1:0",
        data_dir=str(tmp_path / "router"),
        chain_id=anvil_l2.chain_id,
        chain_rpc_url=anvil_l2.url,
        chain_poll_ms=20,
        swap=SwapConfig(enabled=False),
    )
    collect = Collect()
    root = logging.getLogger()
    root.addHandler(collect)
    w3 = Web3(Web3.HTTPProvider(anvil_l2.url))

    async def body() -> None:
        service = RouterService(config)
        await service.start()
        poller = service.clock
        assert isinstance(poller, Web3HeadPoller)
        await asyncio.to_thread(w3.provider.make_request, "anvil_mine", [3])  # type: ignore[arg-type]
        head = await asyncio.to_thread(lambda: w3.eth.block_number)
        await until(lambda: poller.block >= head, "the poller saw the mined head")
        await until(lambda: poller.polls >= 30, "30 polls of a running router")
        gc.collect()  # a leaked client session reports itself when collected
        await service.stop()

    try:
        run(body)
        gc.collect()
    finally:
        root.removeHandler(collect)
    unclosed = [line for line in collect.lines if "Unclosed" in line]
    assert unclosed == []
    assert not any("head poll" in line for line in collect.lines)

"""Chain clocks: the current block number that metered messages and bandwidth budgets use.

`ManualClock` for tests and dev, `HeadEventClock` fed by ChainHead events from the ledger log
(see `router_core.ledger_follower`), `Web3HeadPoller` polling an RPC endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("router_core.chain_clock")

BlockListener = Callable[[int], None]


class ChainClock(Protocol):
    #: the latest block known; read on the routing path, so a plain attribute
    block: int

    def on_block(self, listener: BlockListener) -> None:
        """Call `listener(block)` in the router's loop whenever the block advances."""


class ManualClock:
    """A clock moved by hand (tests, dev without a chain)."""

    def __init__(self, block: int = 0) -> None:
        self.block = block
        self._listeners: list[BlockListener] = []

    def on_block(self, listener: BlockListener) -> None:
        self._listeners.append(listener)

    def set(self, block: int) -> None:
        if block <= self.block:
            return
        self.block = block
        for listener in self._listeners:
            listener(block)

    def advance(self, blocks: int = 1) -> None:
        self.set(self.block + blocks)


class HeadEventClock(ManualClock):
    """Advanced from another thread (the ledger follower) by ChainHead events of one chain."""

    def __init__(self, loop: asyncio.AbstractEventLoop, chain_id: int, block: int = 0) -> None:
        super().__init__(block)
        self._loop = loop
        self.chain_id = chain_id

    def head_seen(self, chain_id: int, block: int) -> None:
        """Thread-safe: a ChainHead for `chain_id` at `block` was read."""
        if chain_id == self.chain_id and block > self.block:
            self._loop.call_soon_threadsafe(self.set, block)


class Web3HeadPoller(ManualClock):
    """Polls `eth_blockNumber` every `poll_ms` (a task of the router's loop; the request on a
    thread with web3's synchronous provider: a cancelled AsyncHTTPProvider request can leave
    web3's process-wide session lock held forever, web3.py issue 3867). One provider serves
    every poll."""

    def __init__(self, rpc_url: str, poll_ms: int = 1000, block: int = 0) -> None:
        super().__init__(block)
        self.rpc_url = rpc_url
        self.poll_ms = poll_ms
        self.polls = 0
        self._task: asyncio.Task[None] | None = None
        self._w3: Any = None

    async def poll_once(self) -> int:
        if self._w3 is None:
            from web3 import Web3

            from router_core.chequebooks import rpc_provider

            self._w3 = Web3(rpc_provider(self.rpc_url, 5.0))
        number = int(await asyncio.to_thread(self._w3.eth.get_block_number))
        self.polls += 1
        self.set(number)
        return number

    async def _run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an RPC hiccup keeps the last known block
                log.warning("head poll of %s failed: %s", self.rpc_url, exc)
            await asyncio.sleep(self.poll_ms / 1000)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._w3 = None

"""`meshledger bench market`: what the marketplace costs a router per routed call, measured
against the same router without it in one run. One uvloop process holds the router and two stock
autobahn clients (an operator serving `add` under its prefix, a caller with a bounded window of
calls in flight), so the figures are not absolute; their differences are. The process's CPU time per call is the
measure (wall-clock rates on a shared machine move with its load); the least of the rounds."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import uvloop
from eth_account import Account

from domain.events import Event, ServiceRegistered
from domain.market import operator_prefix
from market.client import serve
from market.registry import ZERO_HASH, service_id
from router_core.chain_clock import ManualClock
from router_core.client import connect
from router_core.market import MarketBook, MarketService
from router_core.router import RealmOptions, Router
from router_core.stakes import StaticStakes

REALM = "bench.market"
API = "com.example.calc"
#: calls in flight at once from the caller
WINDOW_CALLS = 64
SCENARIOS = ("plain", "market_idle", "market")


class CountingSink:
    """Counts what the marketplace emits (one CallAssessed per market call)."""

    def __init__(self) -> None:
        self.events = 0

    def meter(self, *args: Any) -> None:
        return None

    def emit(self, event: Event) -> int:
        self.events += 1
        return self.events


def _book(with_service: bool) -> MarketBook:
    book = MarketBook()
    if with_service:
        book.apply(
            ServiceRegistered(
                realm="", chain_id=1, block=1, block_hash="0x" + "00" * 32, log_index=0,
                tx_hash="0x", service_id=service_id(API), publisher="0x" + "00" * 20, api=API,
                spec_hash=ZERO_HASH, deterministic=False, verifier_hash=ZERO_HASH, min_requests=0,
            )
        )  # fmt: skip
    return book


async def _one(scenario: str, calls: int) -> tuple[float, int]:
    """CPU µs per call (router and both clients) through a router of `scenario`, and the
    events it emitted."""
    operator, caller = secrets.token_bytes(32), secrets.token_bytes(32)
    addresses = [Account.from_key(k).address for k in (operator, caller)]
    clock = ManualClock(1)
    sink = CountingSink()
    market = None
    if scenario != "plain":
        router_address = Account.from_key(secrets.token_bytes(32)).address
        market = MarketService(_book(scenario == "market"), router_address, sink, clock)
    router = Router(
        "0x" + "00" * 20,
        [RealmOptions(REALM)],
        StaticStakes({REALM: dict.fromkeys(addresses, 10**9)}),
        clock,
        market=market,
    )
    port = await router.start("127.0.0.1", 0)
    url = f"ws://127.0.0.1:{port}/ws"
    try:
        op = await connect(url, REALM, operator)
        await serve(op, API, {"add": lambda a, b: a + b})
        user = await connect(url, REALM, caller)
        uri = f"{operator_prefix(API, addresses[0])}.add"
        window = asyncio.Semaphore(WINDOW_CALLS)

        async def one(i: int) -> None:
            async with window:
                assert await user.call(uri, i, 1) == i + 1

        await asyncio.gather(*(one(i) for i in range(min(calls, 500))))  # warm up
        started = time.process_time()
        await asyncio.gather(*(one(i) for i in range(calls)))
        elapsed = time.process_time() - started
        user.leave()
        op.leave()
    finally:
        await router.stop()
    return elapsed / calls * 1e6, sink.events


def run_bench(calls: int, rounds: int) -> dict[str, Any]:
    """The least CPU per call of each scenario over `rounds` alternating runs."""
    cpu: dict[str, list[float]] = {s: [] for s in SCENARIOS}
    emitted = 0
    for _ in range(rounds):
        for scenario in SCENARIOS:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                us, events = runner.run(_one(scenario, calls))
            cpu[scenario].append(us)
            if scenario == "market":
                emitted = events
    least = {s: min(r) for s, r in cpu.items()}
    return {
        "calls": calls,
        "cpu_us_per_call_plain": round(least["plain"], 1),
        "cpu_us_per_call_market_idle": round(least["market_idle"], 1),
        "cpu_us_per_call_market": round(least["market"], 1),
        "market_us_per_call": round(least["market"] - least["plain"], 1),
        "call_assessed_events": emitted,
    }

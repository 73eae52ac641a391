"""Helpers of the router tests: keys, a recording usage sink, routers on free loopback ports, and a
real chain (anvil) with the WMP token and one deployed, funded Chequebook per paying peer."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import orjson
import uvloop
from eth_account import Account
from web3 import Web3
from websockets.asyncio.client import ClientConnection

from domain.events import Event
from domain.swap import RouterTerms
from router_core.auth import sign_challenge
from router_core.chain_clock import ManualClock
from router_core.chequebooks import Web3Chequebooks
from router_core.client import MeshSession, SwapOffer, connect
from router_core.router import Limits, RealmOptions, Router
from router_core.stakes import StaticStakes
from router_core.swap import SwapService
from settlement.contracts import deploy, deploy_chequebook, transact

T = TypeVar("T")

REALM = "realm1"
CHAIN_ID = 31337
TOKEN = "0x" + "11" * 20
PRICE = 1_000


@dataclass(frozen=True)
class Key:
    private: bytes
    address: str


def new_key() -> Key:
    private = secrets.token_bytes(32)
    return Key(private, Account.from_key(private).address)


def chequebook_of(key: Key) -> str:
    """A made-up chequebook address (for routers without a chain, which accept no cheque)."""
    return "0x" + key.address[2:].lower()[::-1]


#: what a peer's chequebook holds unless a test says otherwise (plenty for any test's debt)
FUNDED = 10**24


class Chain:
    """anvil with the WMP token deployed; `chequebook(key)` deploys one issued by `key`."""

    def __init__(self, url: str, chain_id: int) -> None:
        self.url = url
        self.chain_id = chain_id
        self.w3 = Web3(Web3.HTTPProvider(url))
        self.deployer = str(self.w3.eth.accounts[0])
        self.token = deploy(self.w3, "WMPToken", self.deployer, sender=self.deployer)
        self._books: dict[str, str] = {}

    def chequebook(self, key: Key, funded: int = FUNDED, token: str | None = None) -> str:
        """The address of a Chequebook whose issuer is `key`, holding `funded` tokens (one per
        key and token, deployed on first use)."""
        token = token or self.token.address
        cache = f"{key.address}:{token}:{funded}"
        if cache not in self._books:
            book = deploy_chequebook(self.w3, token, key.address, sender=self.deployer)
            if funded:
                transact(self.w3, self.token.functions.mint(book.address, funded), self.deployer)
            self._books[cache] = book.address
        return self._books[cache]


@dataclass
class RecordingSink:
    """Stands in for the ledger emitter in unit tests: records what the router reports."""

    metered: list[tuple[str, str, str, str, str, int, int]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def meter(
        self,
        realm: str,
        from_peer: str,
        to_peer: str,
        kind: str,
        uri: str,
        payload_bytes: int,
        block: int,
    ) -> None:
        self.metered.append((realm, from_peer, to_peer, kind, uri, payload_bytes, block))

    def emit(self, event: Event) -> int:
        self.events.append(event)
        return len(self.events)

    def of_type(self, cls: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls)]


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run one async test body on uvloop."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro_fn())


@dataclass
class Harness:
    """Builds routers for a test; `reserved` peers hold a reservation stake in REALM."""

    tmp_path: Path
    router_key: Key = field(default_factory=new_key)
    clock: ManualClock = field(default_factory=ManualClock)
    sink: RecordingSink = field(default_factory=RecordingSink)
    stakes: StaticStakes = field(default_factory=lambda: StaticStakes({}))
    routers: list[Router] = field(default_factory=list)
    #: a real chain: cheques are checked against deployed Chequebooks (without: refused)
    chain: Chain | None = None

    @property
    def chain_id(self) -> int:
        return self.chain.chain_id if self.chain is not None else CHAIN_ID

    @property
    def token(self) -> str:
        return self.chain.token.address if self.chain is not None else TOKEN

    def reserve(self, key: Key, mpb: int = 1_000_000) -> Key:
        self.stakes.set(REALM, key.address, mpb)
        return key

    def peer(self, mpb: int = 1_000_000) -> Key:
        return self.reserve(new_key(), mpb)

    def terms(self, **overrides: Any) -> RouterTerms:
        values: dict[str, Any] = dict(
            payment_threshold=10 * PRICE,
            disconnect_threshold=20 * PRICE,
            price_per_message=PRICE,
            token=self.token,
            chain_id=self.chain_id,
            min_payment_threshold=5 * PRICE,
        )
        values.update(overrides)
        return RouterTerms(**values)

    async def start(
        self,
        *,
        swap: bool = True,
        terms: RouterTerms | None = None,
        limits: Limits | None = None,
        realm: RealmOptions | None = None,
        db_name: str = "swap.sqlite",
        port: int = 0,
        on_cheque: Any = None,
        sink: Any = None,
    ) -> Router:
        sink = sink if sink is not None else self.sink
        service = None
        if swap:
            service = SwapService(
                self.router_key.address,
                {REALM: terms or self.terms()},
                sink,
                self.clock,
                self.tmp_path / db_name,
                flush_interval_ms=50,
                chequebooks=(
                    Web3Chequebooks(self.chain.url, self.chain.chain_id)
                    if self.chain is not None
                    else None
                ),
                on_cheque=on_cheque,
            )
        router = Router(
            self.router_key.address,
            [realm or RealmOptions(REALM)],
            self.stakes,
            self.clock,
            sink=sink,
            swap=service,
            limits=limits,
        )
        await router.start("127.0.0.1", port)
        self.routers.append(router)
        return router

    def offer(self, key: Key, **overrides: Any) -> SwapOffer:
        values: dict[str, Any] = dict(
            chequebook=self.chain.chequebook(key) if self.chain is not None else chequebook_of(key),
            chain_id=self.chain_id,
            token=self.token,
            payment_threshold=10 * PRICE,
            price_per_message=PRICE,
        )
        values.update(overrides)
        return SwapOffer(**values)

    async def connect(
        self,
        router: Router,
        key: Key,
        *,
        serializer: str = "json",
        swap: bool = True,
        **kwargs: Any,
    ) -> MeshSession:
        offer = kwargs.pop("offer", None) or (self.offer(key) if swap else None)
        return await connect(
            f"ws://127.0.0.1:{router.port}/ws",
            kwargs.pop("realm", REALM),
            key.private,
            serializer=serializer,
            swap=offer,
            **kwargs,
        )


async def until(check: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Wait until `check()` holds (polling), or fail naming `what`: never a fixed sleep."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout_s}s: {what}")
        await asyncio.sleep(0.02)


def encode(proto: str, msg: Any) -> bytes | str:
    return msgpack.packb(msg) if proto == "wamp.2.msgpack" else orjson.dumps(msg).decode()


def decode(proto: str, data: bytes | str) -> Any:
    return msgpack.unpackb(data) if proto == "wamp.2.msgpack" else orjson.loads(data)


async def login(ws: ClientConnection, proto: str, key: Key) -> Any:
    """Log in over a raw WebSocket (SWAP offered with a made-up chequebook); returns WELCOME."""
    await ws.send(
        encode(
            proto,
            [
                1,
                REALM,
                {
                    "authmethods": ["eth-eip191"],
                    "authid": key.address,
                    "roles": {"caller": {}},
                    "authextra": {
                        "swap": {
                            "payment_threshold": 10**6,
                            "price_per_message": 10**6,
                            "token": "0x" + "11" * 20,
                            "chain_id": 31337,
                            "chequebook": "0x" + "22" * 20,
                            "version": "1",
                        }
                    },
                },
            ],
        )
    )
    challenge = decode(proto, await ws.recv())
    assert challenge[0] == 4, challenge
    await ws.send(encode(proto, [5, sign_challenge(key.private, challenge[2]), {}]))
    welcome = decode(proto, await ws.recv())
    assert welcome[0] == 2, welcome
    return welcome

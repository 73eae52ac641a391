"""A realm with a registered service whose settings, stakes, service and offers a trusted indexer
key puts in mesh.ledger, and a real `RouterService` following it (the marketplace's router tests)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from realm_log import LoggedRealm
from router_harness import TOKEN, Key, new_key

from domain.events import (
    REALM_TARGET,
    ChainHead,
    Event,
    OfferSet,
    RealmCreated,
    RealmParams,
    ServiceRegistered,
    StakeChanged,
)
from market.registry import ZERO_HASH, service_id
from router_core.client import MeshSession, SwapOffer, connect
from router_core.service import RouterService

API = "com.example.calc"
PARAMS = RealmParams(stake_per_mpb=10**15, price_per_message=10**12)


def chain_log(block: int, index: int) -> dict[str, Any]:
    return {"chain_id": 31337, "block": block, "block_hash": f"0x{block:064x}",
            "log_index": index, "tx_hash": "0x"}  # fmt: skip


@dataclass
class MarketWorld:
    """`operators` offer API in the realm at `prices`; `client` and the operators hold
    reservations. `start()` runs the router; `connect(key)` logs a stock client in."""

    tmp: Path
    bootstrap: str
    prices: list[int]
    deterministic: bool = False
    min_requests: int = 2
    verifier_hash: str = ZERO_HASH
    #: more keys holding reservations, and more events for the log (other services, rewards)
    extra_keys: list[Key] = field(default_factory=list)
    extra_events: list[Event] = field(default_factory=list)
    realm: LoggedRealm = field(init=False)
    operators: list[Key] = field(init=False)
    service: RouterService | None = None

    router: Key = field(init=False)

    def __post_init__(self) -> None:
        self.realm = LoggedRealm(self.tmp, self.bootstrap, f"market-{uuid.uuid4().hex[:8]}")
        self.operators = [new_key() for _ in self.prices]
        # the router's key, written where LoggedRealm's configuration reads it: its provision
        # stake goes into the log with the rest, so the ledger accepts what it reports
        self.router = new_key()
        key_file = self.tmp / "router.key"
        key_file.write_text("0x" + self.router.private.hex())
        key_file.chmod(0o600)

    @property
    def client(self) -> Key:
        return self.realm.client

    def publish_world(self) -> None:
        name = self.realm.realm
        stakes = [
            StakeChanged(name, key.address, "user", REALM_TARGET, 10**18, "0x", 4, i)
            for i, key in enumerate([self.client, *self.operators, *self.extra_keys])
        ]
        stakes.append(
            StakeChanged(name, self.router.address, "router_operator", REALM_TARGET, 10**18,
                         "0x", 4, len(stakes))
        )  # fmt: skip
        offers = [
            OfferSet(realm=name, server=key.address, service_id=service_id(API),
                     price_per_call=price, **chain_log(6, i))
            for i, (key, price) in enumerate(zip(self.operators, self.prices, strict=True))
        ]  # fmt: skip
        self.realm.publish(
            RealmCreated(name, "0x" + "4b" * 20, PARAMS, 3),
            *stakes,
            ServiceRegistered(
                realm="", service_id=service_id(API), publisher=self.operators[0].address,
                api=API, spec_hash=ZERO_HASH, deterministic=self.deterministic,
                verifier_hash=self.verifier_hash,
                min_requests=self.min_requests if self.deterministic else 0, **chain_log(5, 0),
            ),
            *offers,
            *self.extra_events,
            ChainHead(name, self.realm.chain_id, 7),
        )  # fmt: skip

    async def start(self, **config: Any) -> int:
        self.publish_world()
        cfg = self.realm.config()
        if config:
            cfg = type(cfg)(**{**cfg.__dict__, **config})
        self.service = RouterService(cfg)
        router = await self.service.start()
        return router.port

    async def connect(self, key: Key, offer: SwapOffer | None = None) -> MeshSession:
        """Log `key` in with SWAP (`offer`, else a made-up chequebook a chainless router never
        needs to read)."""
        assert self.service is not None and self.service.router is not None
        offer = offer or SwapOffer(
            "0x" + key.address[2:][::-1], self.realm.chain_id, TOKEN, 10**18, 10**13
        )
        return await connect(
            f"ws://127.0.0.1:{self.service.router.port}/ws", self.realm.realm, key.private,
            swap=offer,
        )  # fmt: skip

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()

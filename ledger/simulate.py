"""Simulated sources for the demo, tests and benchmarks: an indexer (realms, stakes, chain heads)
and routers (metered traffic), each a real Emitter with its own key, writing to a real broker."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from domain.envelope import Signer
from domain.events import (
    REALM_TARGET,
    ApiEnabled,
    ChainHead,
    RealmCreated,
    RealmParams,
    StakeChanged,
)
from ledger.emitter import Emitter, EmitterConfig

CHAIN_ID = 31337
TOKEN = 10**18


def new_signer() -> Signer:
    return Signer(os.urandom(32))


def emitter(signer: Signer, bootstrap: str, spool_dir: Path, **overrides: object) -> Emitter:
    cfg = EmitterConfig(
        bootstrap=bootstrap, spool_dir=spool_dir / signer.address, linger_ms=20, fsync=False
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return Emitter(signer, cfg)


@dataclass
class RealmSetup:
    name: str
    keeper: Signer = field(default_factory=new_signer)
    params: RealmParams = field(
        default_factory=lambda: RealmParams(epoch_blocks=100, funding_period_blocks=100)
    )
    users: list[tuple[str, int]] = field(default_factory=list)  # (address, stake)
    routers: list[tuple[Signer, int]] = field(default_factory=list)  # (router key, provision stake)
    services: list[tuple[str, int]] = field(default_factory=list)
    apis: list[tuple[str, str]] = field(default_factory=list)  # (uri prefix, vendor)


class IndexerSim:
    """Plays the chain indexer: realm configuration, stake changes and chain heads."""

    def __init__(self, signer: Signer, em: Emitter) -> None:
        self.signer = signer
        self.em = em
        self.log_index = 0

    def create_realm(self, realm: RealmSetup, block: int) -> None:
        self.em.emit(
            RealmCreated(
                realm=realm.name, keeper=realm.keeper.address, params=realm.params, block=block
            )
        )
        for api, vendor in realm.apis:
            self.em.emit(ApiEnabled(realm=realm.name, api=api, vendor=vendor, block=block))
        for address, amount in realm.users:
            self.stake(realm, address, "user", amount, block)
        for router, amount in realm.routers:
            self.stake(realm, router.address, "router_operator", amount, block)
        for address, amount in realm.services:
            self.stake(realm, address, "service_operator", amount, block)

    def stake(self, realm: RealmSetup, staker: str, role: str, amount: int, block: int) -> None:
        self.log_index += 1
        self.em.emit(
            StakeChanged(
                realm=realm.name,
                staker=staker,
                role=role,
                target=REALM_TARGET,
                amount=amount,
                tx_hash="0x" + os.urandom(32).hex(),
                block=block,
                log_index=self.log_index,
            )
        )

    def head(self, block: int) -> None:
        self.em.emit(
            ChainHead(
                realm="", chain_id=CHAIN_ID, block=block, block_hash="0x" + os.urandom(32).hex()
            )
        )


def skewed_traffic(
    em: Emitter,
    realm: str,
    clients: list[str],
    services: list[str],
    uris: list[str],
    blocks: range,
    per_block: int,
    rng: random.Random,
) -> int:
    """Meter `per_block` messages a block (skewed towards the first clients); returns the count."""
    n = 0
    weights = [1 / (i + 1) for i in range(len(clients))]
    for block in blocks:
        for _ in range(per_block):
            sender = rng.choices(clients, weights)[0]
            if services and rng.random() < 0.4:
                callee = rng.choice(services)
                em.meter(
                    realm,
                    sender,
                    callee,
                    "invocation",
                    rng.choice(uris),
                    rng.randint(20, 400),
                    block,
                )
                em.meter(
                    realm, callee, sender, "result", rng.choice(uris), rng.randint(20, 400), block
                )
                n += 2
            else:
                em.meter(
                    realm,
                    sender,
                    rng.choice(clients),
                    "event",
                    "mesh.demo.topic",
                    rng.randint(20, 400),
                    block,
                )
                n += 1
    return n


def heartbeat(em: Emitter, realm: str, block: int) -> None:
    """A router's watermark in a realm: it has metered everything up to `block`."""
    em.emit(ChainHead(realm=realm, chain_id=CHAIN_ID, block=block))

"""A small world on a real broker for ledger tests: indexer, routers, a realm, a projector."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from eth_hash.auto import keccak
from kafka import KafkaProducer

from domain.envelope import MAGIC, ZERO_HASH, MeteredBuilder, Signer, seal
from domain.events import RealmParams
from domain.topics import USAGE_TOPIC
from ledger.service import LedgerService, ServiceConfig, trust_from
from ledger.simulate import TOKEN, IndexerSim, RealmSetup, emitter, new_signer


class World:
    def __init__(self, bootstrap: str, tmp: Path, head: int = 1000) -> None:
        self.bootstrap = bootstrap
        self.tmp = tmp
        self.indexer_key, self.ledger_key = new_signer(), new_signer()
        self.trust = trust_from([self.ledger_key.address], [self.indexer_key.address], [])
        self.indexer = IndexerSim(
            self.indexer_key, emitter(self.indexer_key, bootstrap, tmp / "spool")
        )
        self.router = new_signer()
        self.crafted = new_signer()  # a router whose records the test writes by hand
        self.other_realm_router = new_signer()
        self.user = new_signer().address
        params = RealmParams(epoch_blocks=100, funding_period_blocks=100, stake_per_mpb=TOKEN)
        self.realm = RealmSetup(
            "r1",
            params=params,
            users=[(self.user, 100 * TOKEN)],
            routers=[(self.router, 50 * TOKEN), (self.crafted, 50 * TOKEN)],
        )
        self.realm2 = RealmSetup(
            "r2", params=params, routers=[(self.other_realm_router, 5 * TOKEN)]
        )
        self.indexer.create_realm(self.realm, 0)
        self.indexer.create_realm(self.realm2, 0)
        self.indexer.head(head)
        self.indexer.em.flush()
        self.producer = KafkaProducer(bootstrap_servers=bootstrap)
        self.crafted_seq = 0
        self.crafted_prev = ZERO_HASH

    def service(
        self, name: str = "live.duckdb", live: bool = False, **overrides: Any
    ) -> LedgerService:
        cfg = ServiceConfig(
            bootstrap=self.bootstrap,
            db_path=self.tmp / name,
            trust=self.trust,
            query_port=None,
            gap_timeout_ms=500,
            grace_blocks=2,
        )
        for key, value in overrides.items():
            setattr(cfg, key, value)
        em = emitter(self.ledger_key, self.bootstrap, self.tmp / "spool") if live else None
        return LedgerService(cfg, emitter=em)

    def send_raw(self, value: bytes, key: bytes = b"r1", topic: str = USAGE_TOPIC) -> None:
        self.producer.send(topic, key=key, value=value)
        self.producer.flush()

    def crafted_metered(
        self,
        n: int,
        block: int,
        realm: str = "r1",
        signer: Signer | None = None,
        seq: int | None = None,
        prev: str | None = None,
    ) -> bytes:
        """A metered record by hand: by default the next one of the crafted router's chain."""
        cols = MeteredBuilder()
        for _ in range(n):
            cols.add(self.user, "0xpeer", "event", "t", 50, block)
        signer = signer or self.crafted
        own = signer is self.crafted and seq is None and prev is None
        wire, record = seal(
            signer,
            seq if seq is not None else self.crafted_seq + 1,
            prev if prev is not None else self.crafted_prev,
            realm,
            metered=cols.build(),
        )
        if own:
            self.crafted_seq, self.crafted_prev = record.last_seq, record.hash_hex
        return wire


def signed_body(signer: Signer, body: dict[str, Any]) -> bytes:
    """Sign an arbitrary body: a well-signed record whose content is wrong."""
    data = orjson.dumps(body)
    return MAGIC + signer.sign_hash(keccak(data)) + data


def run_until(
    service: LedgerService, check: Callable[[LedgerService], bool], timeout_s: float = 30
) -> None:
    deadline = time.monotonic() + timeout_s

    def until(svc: LedgerService) -> bool:
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not reached; progress {svc.progress}")
        return check(svc)

    service.run(until=until)


def caught_up(service: LedgerService) -> bool:
    return service.caught_up() and not any(service._buffers.values())


def table(service: LedgerService, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in service.con.execute(sql).fetchall()]

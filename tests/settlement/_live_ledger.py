"""A live ledger for the settle tests: simulated sources (an indexer, two routers) on a real
broker, and a real projector that closes the realm's epoch 0 and logs its PayoutsComputed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
from eth_hash.auto import keccak
from kafka import KafkaProducer

from domain.envelope import MAGIC, ZERO_HASH, Signer, seal
from domain.events import Event, PayoutsComputed, RealmParams, event_to_dict
from domain.topics import LEDGER_TOPIC
from ledger.keys import write_new_key
from ledger.simulate import TOKEN, IndexerSim, RealmSetup, emitter, heartbeat, new_signer

REPO_ROOT = Path(__file__).resolve().parents[2]
EPOCH_BLOCKS = 100
#: router i meters this many messages in each of 10 blocks of epoch 0 (well under its capacity)
ROUTER_MESSAGES_PER_BLOCK = (3, 7)


@dataclass(frozen=True)
class LiveSources:
    realm: str
    indexer: Signer
    ledger_key_file: Path
    ledger: Signer
    routers: tuple[Signer, ...]


def feed_epoch_zero(bootstrap: str, tmp: Path, realm: str) -> LiveSources:
    """A realm with one user's reservation and two staked routers metering traffic in blocks
    0..99; every source's watermark is past block 100, so a projector closes epoch 0."""
    indexer_key = new_signer()
    ledger_key_file = tmp / "ledger.key"
    ledger_key = write_new_key(ledger_key_file)
    routers = (new_signer(), new_signer())
    user = new_signer().address
    setup = RealmSetup(
        realm,
        params=RealmParams(epoch_blocks=EPOCH_BLOCKS, funding_period_blocks=100),
        users=[(user, 100 * TOKEN)],
        routers=[(router, 50 * TOKEN) for router in routers],
    )
    indexer = IndexerSim(indexer_key, emitter(indexer_key, bootstrap, tmp / "spool"))
    indexer.create_realm(setup, block=0)
    indexer.head(EPOCH_BLOCKS + 20)
    indexer.em.close()
    for router, per_block in zip(routers, ROUTER_MESSAGES_PER_BLOCK, strict=True):
        em = emitter(router, bootstrap, tmp / "spool")
        for block in range(0, EPOCH_BLOCKS, 10):
            for _ in range(per_block):
                em.meter(realm, user, "0x" + "ee" * 20, "event", "com.example.topic", 50, block)
        heartbeat(em, realm, EPOCH_BLOCKS + 20)
        em.close()
    return LiveSources(realm, indexer_key, ledger_key_file, ledger_key, routers)


def start_projector(bootstrap: str, db_path: Path, sources: LiveSources) -> subprocess.Popen[bytes]:
    """`meshledger project` as a process of its own, with the ledger key: it closes epochs and
    writes its query endpoint's URL to DB.query."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ledger.cli",
            "project",
            "--bootstrap",
            bootstrap,
            "--db",
            str(db_path),
            "--key-file",
            str(sources.ledger_key_file),
            "--indexer-source",
            sources.indexer.address,
            "--grace-blocks",
            "2",
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached within {timeout_s:.0f}s")
        time.sleep(0.1)


# -- hand-made records of ledger sources (log reader tests) -----------------------------------


def payouts_event(realm: str, epoch: int, digest: str) -> PayoutsComputed:
    return PayoutsComputed(
        realm=realm, epoch=epoch, funding=10, total=10, remainder=0, payees=1, digest=digest
    )


class HandSource:
    """A source whose records a test seals by hand: the next of its chain, or any seq/prev."""

    def __init__(self, signer: Signer | None = None) -> None:
        self.signer = signer or new_signer()
        self.seq = 0
        self.prev = ZERO_HASH

    @property
    def address(self) -> str:
        return self.signer.address

    def next(self, event: Event) -> bytes:
        wire, record = seal(self.signer, self.seq + 1, self.prev, event.realm, events=[event])
        self.seq, self.prev = record.last_seq, record.hash_hex
        return wire

    def at(self, seq: int, prev: str, event: Event) -> bytes:
        """A record outside the chain this object follows (a fork, a record past a gap)."""
        return seal(self.signer, seq, prev, event.realm, events=[event])[0]

    def claimed_by_another(self, impostor: Signer, event: Event) -> bytes:
        """A record naming this source but signed by `impostor`."""
        body = orjson.dumps(
            {
                "src": self.address,
                "seq": self.seq + 1,
                "n": 1,
                "prev": self.prev,
                "realm": event.realm,
                "events": [event_to_dict(event)],
            }
        )
        return MAGIC + impostor.sign_hash(keccak(body)) + body


def produce(bootstrap: str, realm: str, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for value in values:
            producer.send(LEDGER_TOPIC, key=realm.encode(), value=value)
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=10)

"""The indexer's output read back from the broker (records verified, events in seq order), and a
restartable indexer on a mesh's anvil: helpers the indexer tests share."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from mesh_chain import MeshChain

from domain.envelope import Signer, decode
from domain.events import Event
from domain.topics import LEDGER_TOPIC
from indexer.rpc import JsonRpc, RpcSource
from indexer.service import Indexer, SyncConfig
from infra.broker import Broker
from ledger.emitter import Emitter, EmitterConfig
from ledger.keys import write_new_key


def read_events(bootstrap: str, source: str, timeout_s: float = 30) -> list[tuple[int, Event]]:
    """Every (seq, event) the source put in mesh.ledger, verified, in seq order. The emitter
    re-sends a record whose acknowledgement a crash cut off under its original seq (consumers
    deduplicate on (source, seq)): such a copy must be the same event, else it is a second one."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = [
            TopicPartition(LEDGER_TOPIC, p)
            for p in consumer.partitions_for_topic(LEDGER_TOPIC) or ()
        ]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        out: dict[int, Event] = {}
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in parts):
            if time.monotonic() > deadline:
                raise TimeoutError("broker did not return every record")
            for records in consumer.poll(timeout_ms=500).values():
                for msg in records:
                    record = decode(msg.value)
                    if record.source != source:
                        continue
                    record.verify()
                    for seq, event in record.iter_events():
                        assert out.setdefault(seq, event) == event, f"seq {seq} means two events"
        return sorted(out.items())
    finally:
        consumer.close()


@dataclass
class Harness:
    """An indexer on the mesh's anvil writing to the broker; restartable on the same files."""

    mesh: MeshChain
    broker: Broker
    tmp: Path
    sync: SyncConfig
    signer: Signer = field(init=False)
    emitter: Emitter | None = None

    def __post_init__(self) -> None:
        self.signer = write_new_key(self.tmp / "indexer.key")

    def source(self, url: str | None = None, **kw: Any) -> RpcSource:
        return RpcSource(JsonRpc(url or self.mesh.anvil.url), self.mesh.contracts, 42161, **kw)

    def indexer(self, source: Any = None, **kw: Any) -> Indexer:
        if self.emitter is None:
            self.emitter = Emitter(
                self.signer,
                EmitterConfig(bootstrap=self.broker.bootstrap, spool_dir=self.tmp / "spool"),
            )
        return Indexer(
            source or self.source(), self.emitter, self.tmp / "checkpoint.json", self.sync, **kw
        )

    def sync_to(self, block: int, source: Any = None, timeout_s: float = 60, **kw: Any) -> Indexer:
        ix = self.indexer(source, **kw)
        stop = threading.Event()
        timer = threading.Timer(timeout_s, stop.set)
        timer.start()
        try:
            ix.run(stop, until_block=block)
        finally:
            timer.cancel()
        assert ix.checkpoint.cursor_block >= block, (
            f"indexer stopped at {ix.checkpoint.cursor_block}"
        )
        return ix

    def close(self) -> None:
        if self.emitter is not None:
            self.emitter.close(timeout_s=30)
            self.emitter = None

    def events(self) -> list[Event]:
        self.close()
        return [e for _, e in read_events(self.broker.bootstrap, self.signer.address)]


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)

"""Follows `mesh.ledger` for what the router needs from the chain side: StakeChanged events
(reservations) and ChainHead events (the block clock). Only verified records of configured
indexer sources are trusted. Runs in a thread (kafka-python is blocking)."""

from __future__ import annotations

import logging
import threading

from domain.envelope import RecordError, decode
from domain.events import ChainHead, StakeChanged
from domain.topics import LEDGER_TOPIC
from router_core.chain_clock import HeadEventClock
from router_core.stakes import LedgerStakes

log = logging.getLogger("router_core.ledger_follower")


class LedgerFollower:
    def __init__(
        self,
        bootstrap: str,
        trusted_sources: list[str],
        stakes: LedgerStakes,
        clock: HeadEventClock | None,
        poll_ms: int = 500,
    ) -> None:
        self.bootstrap = bootstrap
        self.trusted = {s.lower() for s in trusted_sources}
        self.stakes = stakes
        self.clock = clock
        self.poll_ms = poll_ms
        self.applied = 0
        self.rejected = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ledger-follower", daemon=True)

    def handle(self, wire: bytes) -> None:
        """Apply one mesh.ledger record (public for tests)."""
        try:
            record = decode(wire)
            if record.source.lower() not in self.trusted:
                return
            record.verify()
        except RecordError as exc:
            self.rejected += 1
            log.warning("ignoring a mesh.ledger record: %s", exc)
            return
        for _, event in record.iter_events():
            if isinstance(event, StakeChanged):
                self.stakes.apply(event)
                self.applied += 1
            elif isinstance(event, ChainHead) and self.clock is not None:
                self.clock.head_seen(event.chain_id, event.block)
                self.applied += 1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        try:
            partitions = consumer.partitions_for_topic(LEDGER_TOPIC) or {0}
            tps = [TopicPartition(LEDGER_TOPIC, p) for p in sorted(partitions)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            while not self._stop.is_set():
                for records in consumer.poll(timeout_ms=self.poll_ms).values():
                    for rec in records:
                        self.handle(rec.value)
        except Exception:
            log.exception("ledger follower stopped")
        finally:
            consumer.close()

"""Follows `mesh.ledger` for what the router needs from the chain side: StakeChanged events
(reservations), ChainHead events (the block clock), realms, their parameters and keepers
(`router_core.realm_settings`), Chainlink prices (`router_core.prices`), the marketplace's
services and offers (`router_core.market`) and the realms' routers (`router_core.discovery`).
Only verified records of configured indexer sources are trusted. Runs in a thread (kafka-python
is blocking); `caught_up` is set once it has read the log as far as it reached when the follower
started."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from domain.envelope import RecordError, decode
from domain.events import ChainHead, Event, LogRetracted, PriceObserved, StakeChanged, log_identity
from domain.topics import LEDGER_TOPIC
from router_core.chain_clock import HeadEventClock
from router_core.discovery import RealmEndpoints
from router_core.market import MarketBook
from router_core.prices import PriceBook
from router_core.realm_settings import LedgerRealms
from router_core.stakes import LedgerStakes

log = logging.getLogger("router_core.ledger_follower")

#: chain logs remembered so that a retraction (LogRetracted) can undo what one did; the oldest
#: are forgotten first (a reorg reaches back a few blocks, not through this many logs)
MAX_RETRACTABLE_LOGS = 65_536


class LedgerFollower:
    def __init__(
        self,
        bootstrap: str,
        trusted_sources: list[str],
        stakes: LedgerStakes,
        clock: HeadEventClock | None,
        poll_ms: int = 500,
        realms: LedgerRealms | None = None,
        prices: PriceBook | None = None,
        market: MarketBook | None = None,
        endpoints: RealmEndpoints | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.trusted = {s.lower() for s in trusted_sources}
        self.stakes = stakes
        self.clock = clock
        self.poll_ms = poll_ms
        self.realms = realms
        self.prices = prices
        self.market = market
        self.endpoints = endpoints
        self.caught_up = threading.Event()
        self.applied = 0
        self.rejected = 0
        #: retractions applied, and those naming a log this follower does not hold
        self.retracted = 0
        self.unmatched_retractions = 0
        #: (chain id, block hash, log index) -> (source, seq, event) of the chain logs applied
        self._logs: OrderedDict[tuple[int, str, int], tuple[str, int, Event]] = OrderedDict()
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
        for seq, event in record.iter_events():
            if isinstance(event, LogRetracted):
                self._retract(event)
                continue
            ident = log_identity(event)
            if ident is not None:
                self._logs[ident] = (record.source, seq, event)
                if len(self._logs) > MAX_RETRACTABLE_LOGS:
                    self._logs.popitem(last=False)
            if (
                self.realms is not None
                and self.realms.apply(record.source, seq, event)
                or self.market is not None
                and self.market.apply(event)
                or self.endpoints is not None
                and self.endpoints.apply(event)
            ):
                self.applied += 1
            elif isinstance(event, PriceObserved):
                if self.prices is not None:
                    self.prices.observe(event)
                    self.applied += 1
            elif isinstance(event, StakeChanged):
                self.stakes.apply(event)
                self.applied += 1
            elif isinstance(event, ChainHead) and self.clock is not None:
                self.clock.head_seen(event.chain_id, event.block)
                self.applied += 1

    def _retract(self, retraction: LogRetracted) -> None:
        """Undo what a chain log orphaned by a reorg did to the router's views."""
        found = self._logs.pop(
            (retraction.chain_id, retraction.block_hash, retraction.log_index), None
        )
        if found is None:
            self.unmatched_retractions += 1
            log.warning(
                "retraction of a log not held (block %d, index %d)",
                retraction.block,
                retraction.log_index,
            )
            return
        source, seq, event = found
        if (
            isinstance(event, StakeChanged)
            and self.stakes.retract(event)
            or self.realms is not None
            and self.realms.retract(source, seq, event)
            or self.market is not None
            and self.market.retract(event)
            or self.endpoints is not None
            and self.endpoints.retract(event)
        ):
            self.retracted += 1

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
            ends = consumer.end_offsets(tps)
            while not self._stop.is_set():
                for records in consumer.poll(timeout_ms=self.poll_ms).values():
                    for rec in records:
                        self.handle(rec.value)
                if not self.caught_up.is_set() and all(
                    consumer.position(tp) >= ends[tp] for tp in tps
                ):
                    self.caught_up.set()
        except Exception:
            log.exception("ledger follower stopped")
        finally:
            consumer.close()

"""Reads the ledger's own verdicts back from `mesh.ledger`: `PayoutsComputed` of a realm epoch,
taken only from records signed by a trusted ledger source whose seq chain verifies from seq 1.

A record counts when its signature recovers its source, the source is trusted, and it extends
that source's chain (`seq` follows the previous record's last seq, `prev` is its hash); a re-sent
copy of a record is skipped, two different records at one seq are a fork (`SourceForked`).
Records past a seq gap cannot be chained and never count. The scan reads every partition from
offset 0 up to the end offsets taken when it starts, within `timeout_s`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field

from eth_utils import to_checksum_address

from domain.envelope import ZERO_HASH, Record, RecordError, decode
from domain.events import PayoutsComputed
from domain.topics import LEDGER_TOPIC

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 200
POLL_MAX_RECORDS = 10_000


class LogReadError(RuntimeError):
    """The log could not be read to its end (broker unreachable, topic missing, timeout)."""


class SourceForked(LogReadError):
    """A trusted source signed two different records for one seq: its events cannot be trusted."""


class UnverifiablePayouts(LogReadError):
    """The wanted PayoutsComputed lies past a seq gap of its source (a record is missing)."""


class ConflictingPayouts(LogReadError):
    """Trusted records give one realm epoch two different payout digests."""


@dataclass(frozen=True, slots=True)
class _Link:
    """What chain verification needs of one record, and the payouts it carries."""

    seq: int
    last_seq: int
    prev: str
    hash: str
    payouts: tuple[PayoutsComputed, ...]


@dataclass
class ScanStats:
    records: int = 0
    undecodable: int = 0
    bad_signature: int = 0  # claimed a trusted source but was not signed by it
    trusted: int = 0
    duplicates: int = 0
    gaps: dict[str, int] = field(default_factory=dict)  # source -> first missing seq


class LedgerLog:
    """The trusted ledger sources' PayoutsComputed events, read once from the log (`scan`)."""

    def __init__(
        self,
        bootstrap: str,
        trusted_sources: Collection[str],
        topic: str = LEDGER_TOPIC,
        timeout_s: float = 60.0,
    ) -> None:
        if not trusted_sources:
            raise ValueError("no trusted ledger source: nothing on the log could be believed")
        self.bootstrap = bootstrap
        self.trusted = frozenset(to_checksum_address(s) for s in trusted_sources)
        self.topic = topic
        self.timeout_s = timeout_s
        self.stats = ScanStats()
        self._verified: dict[tuple[str, int], PayoutsComputed] | None = None
        self._past_gaps: dict[tuple[str, int], str] = {}  # (realm, epoch) -> source

    def payouts_computed(self, realm: str, epoch: int) -> PayoutsComputed | None:
        """The verified PayoutsComputed of (realm, epoch), None when the log has none.

        Raises UnverifiablePayouts when it exists only past a gap in its source's chain,
        ConflictingPayouts / SourceForked when the trusted log contradicts itself."""
        if self._verified is None:
            self.scan()
        assert self._verified is not None
        found = self._verified.get((realm, epoch))
        if found is None and (realm, epoch) in self._past_gaps:
            source = self._past_gaps[(realm, epoch)]
            raise UnverifiablePayouts(
                f"PayoutsComputed of {realm} epoch {epoch} by {source} lies past a gap in its "
                f"seq chain (seq {self.stats.gaps[source]} missing); it cannot be verified"
            )
        return found

    def scan(self) -> None:
        """Read the topic to its current end and verify every trusted source's chain."""
        stats = ScanStats()
        links: dict[str, list[_Link]] = {}
        for value in self._values():
            stats.records += 1
            try:
                record = decode(value)
            except RecordError:
                stats.undecodable += 1
                continue
            if record.source not in self.trusted:
                continue
            try:
                record.verify()
            except RecordError:
                stats.bad_signature += 1
                continue
            stats.trusted += 1
            links.setdefault(record.source, []).append(_link(record))
        verified: dict[tuple[str, int], PayoutsComputed] = {}
        past_gaps: dict[tuple[str, int], str] = {}
        for source, chain in links.items():
            good, rest = _verify_chain(source, chain, stats)
            for link in good:
                for event in link.payouts:
                    _add_payouts(verified, event, source)
            for link in rest:
                for event in link.payouts:
                    past_gaps[(event.realm, event.epoch)] = source
        self.stats, self._verified, self._past_gaps = stats, verified, past_gaps
        log.info("ledger log scanned: %s", stats)

    def _values(self) -> Iterator[bytes]:
        """Record values of every partition, from offset 0 to the end offsets at the start."""
        from kafka import KafkaConsumer, TopicPartition
        from kafka.errors import KafkaError

        deadline = time.monotonic() + self.timeout_s
        try:
            consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap,
                enable_auto_commit=False,
                group_id=None,
                request_timeout_ms=int(min(self.timeout_s, 30) * 1000) + 1000,
            )
        except KafkaError as err:
            raise LogReadError(f"broker {self.bootstrap}: {err}") from err
        try:
            parts = consumer.partitions_for_topic(self.topic)
            while not parts and time.monotonic() < deadline:
                time.sleep(0.1)
                parts = consumer.partitions_for_topic(self.topic)
            if not parts:
                raise LogReadError(f"topic {self.topic} not found on {self.bootstrap}")
            tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            ends = consumer.end_offsets(tps)
            while True:
                batches = consumer.poll(timeout_ms=POLL_TIMEOUT_MS, max_records=POLL_MAX_RECORDS)
                for messages in batches.values():
                    for message in messages:
                        if message.value is not None:
                            yield message.value
                if not batches and all(consumer.position(tp) >= ends[tp] for tp in tps):
                    return
                if time.monotonic() > deadline:
                    behind = {
                        tp.partition: (consumer.position(tp), ends[tp])
                        for tp in tps
                        if consumer.position(tp) < ends[tp]
                    }
                    raise LogReadError(
                        f"{self.topic} not read to its end within {self.timeout_s:.0f}s "
                        f"(partition: (position, end) {behind})"
                    )
        except KafkaError as err:
            raise LogReadError(f"reading {self.topic} from {self.bootstrap}: {err}") from err
        finally:
            consumer.close()


def payouts_computed(
    bootstrap: str, realm: str, epoch: int, trusted_sources: Collection[str]
) -> PayoutsComputed | None:
    """One-off read: the verified PayoutsComputed of (realm, epoch) or None."""
    return LedgerLog(bootstrap, trusted_sources).payouts_computed(realm, epoch)


def _link(record: Record) -> _Link:
    events = tuple(e for e in record.events if isinstance(e, PayoutsComputed))
    return _Link(record.seq, record.last_seq, record.prev, record.hash_hex, events)


def _verify_chain(
    source: str, chain: list[_Link], stats: ScanStats
) -> tuple[list[_Link], list[_Link]]:
    """(links that chain from seq 1, links past the first gap)."""
    chain.sort(key=lambda link: link.seq)
    expected, prev = 1, ZERO_HASH
    accepted: dict[int, str] = {}
    good: list[_Link] = []
    for i, link in enumerate(chain):
        if link.seq < expected:
            if accepted.get(link.seq) == link.hash:
                stats.duplicates += 1  # the emitter re-sent it after a restart
                continue
            raise SourceForked(
                f"ledger source {source} signed two different records at seq {link.seq}"
            )
        if link.seq > expected:
            stats.gaps[source] = expected
            return good, chain[i:]
        if link.prev != prev:
            raise SourceForked(
                f"ledger source {source}: record at seq {link.seq} does not chain to the one "
                f"before it (prev {link.prev[:18]}, expected {prev[:18]})"
            )
        accepted[link.seq] = link.hash
        good.append(link)
        expected, prev = link.last_seq + 1, link.hash
    return good, []


def _add_payouts(
    verified: dict[tuple[str, int], PayoutsComputed], event: PayoutsComputed, source: str
) -> None:
    key = (event.realm, event.epoch)
    known = verified.get(key)
    if known is not None and known.digest.lower() != event.digest.lower():
        raise ConflictingPayouts(
            f"{event.realm} epoch {event.epoch}: trusted ledger records carry digests "
            f"{known.digest} and {event.digest} (the later from {source})"
        )
    verified.setdefault(key, event)


__all__ = [
    "ConflictingPayouts",
    "LedgerLog",
    "LogReadError",
    "SourceForked",
    "UnverifiablePayouts",
    "payouts_computed",
]

"""The projector's consume loop: Kafka partitions in, verdicts applied, offsets committed with the
tables; dead letters out; the live epoch closer; the query endpoint beside it.

Partitions of ``mesh.usage`` and ``mesh.ledger`` are assigned explicitly (no consumer group; the
offsets live in DuckDB). Each partition is processed in order; a record that must WAIT holds its
partition while the others go on. A seq gap that stays unresolved while every other partition is
caught up for ``gap_timeout_ms`` is declared (recorded in ``seq_gaps``) and the chain resumes.

A shard (``partitions``: the partition numbers it owns, in both topics) reads every partition
too, but applies only the records of its own; the others it follows (see ledger/projector.py).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from kafka.errors import KafkaError, KafkaTimeoutError
from prometheus_client import Histogram

from domain.envelope import Record
from domain.events import PayoutsComputed
from domain.topics import DEAD_TOPIC, LEDGER_TOPIC, USAGE_TOPIC
from ledger import store
from ledger.emitter import Emitter
from ledger.projector import Outcome, Projector, Trust, Verdict

log = logging.getLogger(__name__)

#: a buffered entry decided out of its partition's order (see LedgerService._wake)
_DONE = object()


@dataclass
class ServiceConfig:
    bootstrap: str
    db_path: Path
    trust: Trust
    grace_blocks: int = 5
    #: a router whose watermark is this many blocks behind the chain no longer holds epochs open
    inactive_after_blocks: int | None = 600
    gap_timeout_ms: int = 5000
    max_buffered_records: int = 2048  # per partition; the partition is paused beyond it
    commit_every_records: int = 512
    poll_timeout_ms: int = 50
    #: how long a request for the partitions' end offsets may take; past it (a broker down) the
    #: service counts as not caught up and goes on polling
    offsets_timeout_ms: int = 10_000
    query_host: str = "127.0.0.1"
    query_port: int | None = 0  # 0: a free port, None: no query endpoint
    topics: tuple[str, ...] = (USAGE_TOPIC, LEDGER_TOPIC)
    dead_letters: bool = True
    #: how long one send or flush of dead letters waits for the broker before it is tried again;
    #: the commit waits meanwhile (a rejected record's offset is committed only after its letter)
    dead_letter_block_ms: int = 10_000
    #: /health reports the projector unhealthy when its consume loop made no pass for this long
    #: (a commit held by an unanswered mesh.dead, a wedged call) or when the loop died
    health_stall_s: float = 30.0
    #: the partitions this projector owns when it is one shard of several (None: all of them)
    partitions: frozenset[int] | None = None


class ShardMismatch(RuntimeError):
    """A database built for other partitions than configured, or topics whose partition counts
    differ (a realm's records would not share a partition number)."""


@dataclass
class Progress:
    records: int = 0
    events: int = 0
    rejected: int = 0
    waits: dict[str, int] = field(default_factory=dict)


class LedgerService:
    def __init__(self, config: ServiceConfig, emitter: Emitter | None = None) -> None:
        self.config = config
        self.emitter = emitter
        self.con = store.connect(config.db_path)
        on_payouts: Callable[[PayoutsComputed], None] | None = (
            self._emit_payouts if emitter else None
        )
        self.projector = Projector(self.con, config.trust, on_payouts=on_payouts)
        #: (realm, epoch) whose PayoutsComputed this process emitted after committing the close
        self._emitted_payouts: set[tuple[str, int]] = set()
        self.progress = Progress()
        self.query_server: Any = None
        self._stop = threading.Event()
        self._requested_close: dict[str, int] = {}
        self._dead_producer: Any = None
        #: dead letters of records decided since the last commit: [origin, value, future or
        #: None when the send itself timed out]; at most `commit_every_records` of them
        self._dead_unacked: list[list[Any]] = []
        #: times a commit waited on an unanswered mesh.dead; letters the broker refused for good
        self.dead_letter_stalls = 0
        self.dead_letters_failed = 0
        #: when the running consume loop began its last pass (None while it does not run), and
        #: the exception that ended it, if one did (what /health reports)
        self._pass_at: float | None = None
        self._loop_error: BaseException | None = None
        self._consumer: Any = None
        self._buffers: dict[Any, deque[list[Any]]] = {}
        self._paused: set[Any] = set()
        self._stalled_since: float | None = None
        self._offsets_unavailable = False  # the broker could not give end offsets (logged once)
        #: replay stops each partition at these offsets (exclusive); live has none
        self.limits: dict[tuple[str, int], int] = {}
        #: replay also applies these offsets beyond a partition's limit (applied ahead live)
        self.limits_ahead: dict[tuple[str, int], set[int]] = {}
        self._fetched: dict[Any, int] = {}
        self.idle_polls = 0
        self._staged = 0
        #: records waiting for their source's previous seq: (source, seq) -> (partition, entry);
        #: deciding that previous record decides them at once, wherever they sit
        self._parked: dict[tuple[str, int], tuple[Any, list[Any]]] = {}
        self._payouts_resent = False
        #: the broker's high watermark per (topic, partition), as the last fetch reported it
        self.high_watermarks: dict[tuple[str, int], int] = {}
        self.commit_seconds = Histogram(
            "meshledger_projector_commit_seconds",
            "Time to commit a transaction of tables and offsets.",
            registry=None,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )

    # -- lifecycle ---------------------------------------------------------------------------------
    def start_query_server(self) -> int:
        from infra.metrics import projector_metrics, registry_of, tcp_check
        from ledger.query import serve

        self.query_server = serve(
            self.con,
            self.config.query_host,
            self.config.query_port or 0,
            metrics=(
                registry_of(lambda: projector_metrics(self)),
                {"broker": tcp_check(self.config.bootstrap), "loop": self.loop_check},
            ),
        )
        return int(self.query_server.server_address[1])

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        if self.query_server is not None:
            self.query_server.shutdown()
        if self._consumer is not None:
            self._consumer.close()
        if self._dead_producer is not None:
            self._dead_producer.close(timeout=5)
        self.con.close()

    def connect(self, consumer: Any = None) -> None:
        """Assign every partition of the topics and seek to the stored offsets. `consumer` is a
        kafka-python consumer (a new one by default; the projector simulation passes its own)."""
        from kafka import KafkaConsumer, TopicPartition

        if consumer is None:
            consumer = KafkaConsumer(
                bootstrap_servers=self.config.bootstrap,
                enable_auto_commit=False,
                group_id=None,
                fetch_max_bytes=64 << 20,
                max_partition_fetch_bytes=16 << 20,
                receive_buffer_bytes=4 << 20,
                # a fetch parked at the broker (no new data) delays every request queued behind
                # it on the connection, end offsets included: park no longer than a poll waits
                fetch_max_wait_ms=self.config.poll_timeout_ms,
            )
        tps = []
        for topic in self.config.topics:
            parts = None
            deadline = time.monotonic() + 10
            while not parts and time.monotonic() < deadline:
                parts = consumer.partitions_for_topic(topic)
                if not parts:
                    time.sleep(0.1)
            if not parts:
                raise RuntimeError(f"topic {topic} not found on {self.config.bootstrap}")
            tps += [TopicPartition(topic, p) for p in sorted(parts)]
        self._check_shard({tp.topic: 0 for tp in tps}, tps)
        consumer.assign(tps)
        for tp in tps:
            offset = self.projector.offsets.get((tp.topic, tp.partition), 0)
            consumer.seek(tp, offset)
            self._buffers[tp] = deque()
            self._fetched[tp] = offset
        self._consumer = consumer

    def _check_shard(self, counts: dict[str, int], tps: list[Any]) -> None:
        for tp in tps:
            counts[tp.topic] += 1
        owned = self.config.partitions
        stored = store.shard_partitions(self.con)
        if owned is None:
            if stored is not None:
                raise ShardMismatch(
                    f"{self.config.db_path} is the database of the shard owning partitions "
                    f"{sorted(stored[0])}, not of a projector owning all"
                )
            return
        if len(set(counts.values())) != 1:
            raise ShardMismatch(f"shards need topics of one partition count: {counts}")
        partitions = next(iter(counts.values()))
        if not owned or max(owned) >= partitions:
            raise ShardMismatch(f"partitions {sorted(owned)} not among 0..{partitions - 1}")
        if stored is None:
            if self.projector.offsets:
                raise ShardMismatch(
                    f"{self.config.db_path} was built by a projector owning every partition"
                )
            store.set_shard_partitions(self.con, owned, partitions)
        elif stored != (owned, partitions):
            raise ShardMismatch(
                f"{self.config.db_path} belongs to the shard owning partitions {sorted(stored[0])}"
                f" of {stored[1]}, not {sorted(owned)} of {partitions}: move partitions by "
                "handing over a whole database or replaying a new one (see README, Shards)"
            )

    def owns(self, tp: Any) -> bool:
        owned = self.config.partitions
        return owned is None or tp.partition in owned

    # -- the loop --------------------------------------------------------------------------------
    def run(
        self,
        until: Callable[[LedgerService], bool] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> None:
        """Consume until stop() or `until(self)` is true (checked after every pass)."""
        if self._consumer is None:
            self.connect()
        self._loop_error = None
        try:
            while not self._stop.is_set():
                self._pass_at = time.monotonic()
                self._fetch()
                changed = self._process()
                if changed:
                    if not self._commit():
                        break  # stopping while mesh.dead did not answer: those are re-read
                    self._staged = 0
                    if on_progress:
                        on_progress(self.progress)
                self._close_due_epochs()
                if until is not None and until(self):
                    break
        except BaseException as exc:
            self._loop_error = exc
            raise
        finally:
            self._pass_at = None

    def loop_check(self) -> str | None:
        """The /health check of the consume loop: None while it runs (or was stopped cleanly)."""
        if self._loop_error is not None:
            return f"the consume loop stopped: {self._loop_error!r}"
        at = self._pass_at
        if at is not None and time.monotonic() - at > self.config.health_stall_s:
            return f"the consume loop made no pass for {time.monotonic() - at:.0f} s"
        return None

    def _commit(self) -> bool:
        """Commit tables and offsets once the dead letters of the records decided are written;
        False (nothing committed) when told to stop before mesh.dead answered."""
        if not self._dead_letters_written():
            return False
        with self.commit_seconds.time():
            self.projector.commit()
        return True

    def _fetch(self) -> None:
        consumer = self._consumer
        batches = consumer.poll(timeout_ms=self.config.poll_timeout_ms, max_records=100_000)
        self.idle_polls = 0 if batches else self.idle_polls + 1
        for tp, records in batches.items():
            done = self.projector.ahead.get((tp.topic, tp.partition), set())
            # an entry: [message, its Record (or a Verdict) once prepared, its last WAIT verdict]
            self._buffers[tp].extend([msg, None, None] for msg in records if msg.offset not in done)
            self._fetched[tp] = records[-1].offset + 1
        for tp, buf in self._buffers.items():
            high = consumer.highwater(tp)  # from the last fetch response: no request
            if high is not None:
                self.high_watermarks[(tp.topic, tp.partition)] = high
            if len(buf) >= self.config.max_buffered_records and tp not in self._paused:
                consumer.pause(tp)
                self._paused.add(tp)
            elif len(buf) < self.config.max_buffered_records // 2 and tp in self._paused:
                consumer.resume(tp)
                self._paused.discard(tp)

    def _process(self) -> bool:
        """Offer every buffered record; a waiting record stays and only holds back its own source
        (a later record of that source waits on its seq). Passes repeat while anything moves."""
        changed = False
        progressed = True
        while progressed:
            progressed = False
            for tp, buf in self._buffers.items():
                if self._process_partition(tp, buf):
                    progressed = changed = True
        waits = [e[2] for buf in self._buffers.values() for e in buf if e[1] is not _DONE and e[2]]
        self.progress.waits = {}
        for verdict in waits:
            self.progress.waits[verdict.reason] = self.progress.waits.get(verdict.reason, 0) + 1
        if not waits or changed:
            self._stalled_since = None
            return changed
        return self._resolve_gaps()

    def _process_partition(self, tp: Any, buf: deque[list[Any]]) -> bool:
        projector = self.projector
        owned = self.owns(tp)
        limit = self.limits.get((tp.topic, tp.partition))
        ahead = self.limits_ahead.get((tp.topic, tp.partition), set())
        remaining: deque[list[Any]] = deque()
        decided: set[int] = set(projector.ahead.get((tp.topic, tp.partition), ()))
        moved = False
        while buf:
            entry = buf.popleft()
            msg = entry[0]
            if entry[1] is _DONE:  # decided while parked (its offset is among the decided ones)
                moved = True  # the partition's position moves past it
                continue
            if limit is not None and msg.offset >= limit and msg.offset not in ahead:
                # replay: beyond the audited position, and not applied ahead of it there
                remaining.append(entry)
                continue
            if not isinstance(entry[1], Record | Verdict):
                entry[1] = projector.prepare(msg.value)
            prepared = entry[1]
            verdict = (
                prepared
                if isinstance(prepared, Verdict)
                else projector.offer_record(prepared, owned)
            )
            if verdict.outcome is Outcome.WAIT:  # keep the verified record for the next pass
                entry[2] = verdict
                remaining.append(entry)
                if verdict.reason == "seq_gap":
                    self._parked[(prepared.source, prepared.seq)] = (tp, entry)
                continue
            self._decided(owned, entry, verdict)
            if isinstance(prepared, Record):
                self._wake(prepared.source)
            decided.add(msg.offset)
            moved = True
            self._staged += 1
            if self._staged >= self.config.commit_every_records:  # a bounded transaction
                self._stage_offsets(tp, remaining, buf, decided, limit)
                if not self._commit():
                    return moved  # stopping: run() ends without committing
                self._staged = 0
        # records of this pass that a wake decided meanwhile are decided offsets, not remaining
        remaining = deque(e for e in remaining if e[1] is not _DONE)
        buf.extend(remaining)
        if moved:
            self._stage_offsets(tp, remaining, deque(), decided, limit)
        return moved

    def _stage_offsets(
        self,
        tp: Any,
        remaining: deque[list[Any]],
        unread: deque[list[Any]],
        decided: set[int],
        limit: int | None,
    ) -> None:
        """Stage the partition's position: below the first record not decided yet, plus the
        decided ones above it (a wake may have decided some of `remaining`)."""
        key = (tp.topic, tp.partition)
        decided.update(self.projector.ahead.get(key, ()))
        waiting = next((e[0].offset for e in remaining if e[1] is not _DONE), None)
        low = waiting if waiting is not None else unread[0][0].offset if unread else None
        if low is None:
            low = self._fetched.get(tp, 0)
            if limit is not None:
                low = min(low, limit)
        self.projector.set_offset(tp.topic, tp.partition, low, decided)

    def _decided(self, owned: bool, entry: list[Any], verdict: Verdict) -> None:
        """Count a decided record (in the shard that owns it); the caller wakes its source."""
        record, entry[1] = entry[1], _DONE
        if not owned:
            pass  # followed: its shard counts it
        elif verdict.outcome is Outcome.REJECTED:
            self.projector.reject(verdict.reason)
            self.progress.rejected += 1
            self._dead_letter(entry[0], verdict.reason, verdict.detail)
        else:
            self.progress.records += 1
            self.progress.events += record.count

    def _wake(self, source: str) -> None:
        """Offer the parked record that continues `source`'s chain, and the one after it, …: a
        chain that alternates between partitions moves in one pass, not one pass a record."""
        projector = self.projector
        while True:
            state = projector.sources.get(source)
            parked = self._parked.pop((source, state.last_seq + 1 if state else 1), None)
            if parked is None:
                return
            tp, entry = parked
            if entry[1] is _DONE:
                continue
            owned = self.owns(tp)
            verdict = projector.offer_record(entry[1], owned)
            if verdict.outcome is Outcome.WAIT:
                entry[2] = verdict  # another wait (the chain head, marks): its partition retries
                return
            key = (tp.topic, tp.partition)
            msg = entry[0]
            projector.set_offset(
                tp.topic,
                tp.partition,
                projector.offsets.get(key, 0),
                {*projector.ahead[key], msg.offset},
            )
            self._staged += 1
            self._decided(owned, entry, verdict)  # the loop goes on with the next seq

    def _resolve_gaps(self) -> bool:
        """Declare a seq gap once nothing can progress and every partition is fully fetched for
        gap_timeout_ms; only a gap that no held record of the same source can fill."""
        if not self.caught_up():
            self._stalled_since = None
            return False
        now = time.monotonic()
        if self._stalled_since is None:
            self._stalled_since = now
        if (now - self._stalled_since) * 1000 < self.config.gap_timeout_ms:
            return False
        held = [
            (entry[1], entry[2], tp)
            for tp, buf in self._buffers.items()
            for entry in buf
            if isinstance(entry[1], Record) and entry[2] is not None
        ]
        seqs = {(rec.source, rec.seq) for rec, _, _ in held if isinstance(rec, Record)}
        gaps = [
            (rec, tp)
            for rec, verdict, tp in held
            if isinstance(rec, Record)
            and verdict.reason == "seq_gap"
            and not any(src == rec.source and q < rec.seq for src, q in seqs)
        ]
        if not gaps:
            return False
        record, tp = min(gaps, key=lambda g: (g[0].source, g[0].seq))
        log.warning("declaring seq gap for %s before seq %d", record.source, record.seq)
        self.projector.declare_gap(record, self.owns(tp))
        # decide the record in the gap's own commit: a snapshot between the two would show a gap
        # whose record its offsets do not hold, which no replay to those offsets declares
        self._wake(record.source)
        self._stalled_since = None
        return True

    def caught_up(self, exclude: set[Any] | None = None) -> bool:
        """Every partition (but `exclude`) consumed to its end offset; False while the broker
        cannot say (a broker down is never "caught up": no gap is declared across an outage)."""
        consumer = self._consumer
        try:
            ends = consumer.end_offsets(list(self._buffers), self.config.offsets_timeout_ms)
        except KafkaError as exc:
            if not self._offsets_unavailable:  # once an outage, not once a pass
                log.warning("end offsets unavailable (%s): not caught up, retrying", exc)
            self._offsets_unavailable = True
            return False
        if self._offsets_unavailable:
            log.info("end offsets available again")
            self._offsets_unavailable = False
        for tp, end in ends.items():
            if exclude and tp in exclude:
                continue
            limit = self.limits.get((tp.topic, tp.partition))
            if limit is not None:
                ahead = self.limits_ahead.get((tp.topic, tp.partition))
                wanted = max(limit, max(ahead) + 1) if ahead else limit
                if self._fetched.get(tp, 0) < min(end, wanted):
                    return False
                continue
            if consumer.position(tp) < end:
                return False
        return True

    def _dead_letter(self, msg: Any, reason: str, detail: str) -> None:
        """Rejected records go to mesh.dead with the reason and their original bytes, keyed by
        their origin, so a re-delivery after a crash is recognisable (at-least-once)."""
        if not self.config.dead_letters:
            return
        origin = f"{msg.topic}/{msg.partition}/{msg.offset}"
        value = orjson.dumps(
            {
                "reason": reason,
                "detail": detail,
                "origin": origin,
                "key": (msg.key or b"").decode(errors="replace"),
                "original": base64.b64encode(msg.value or b"").decode(),
            }
        )
        letter = [origin, value, None]
        self._dead_unacked.append(letter)
        self._send_dead_letter(letter)
        log.info("rejected %s: %s (%s)", origin, reason, detail)

    def _send_dead_letter(self, letter: list[Any]) -> None:
        if self._dead_producer is None:
            from kafka import KafkaProducer

            self._dead_producer = KafkaProducer(
                bootstrap_servers=self.config.bootstrap,
                acks="all",
                max_request_size=16 << 20,
                max_block_ms=self.config.dead_letter_block_ms,
            )
        try:
            letter[2] = self._dead_producer.send(
                DEAD_TOPIC, key=letter[0].encode(), value=letter[1]
            )
        except KafkaTimeoutError:
            letter[2] = None  # no metadata or a full buffer: sent again before the commit

    def _dead_letters_written(self) -> bool:
        """Wait until every dead letter since the last commit is acknowledged by the broker
        (retried while it does not answer); False when told to stop meanwhile. A letter the
        broker refuses for good is logged and counted: its record stays at its origin."""
        while self._dead_unacked:
            for letter in self._dead_unacked:
                if letter[2] is None:
                    self._send_dead_letter(letter)
            with contextlib.suppress(KafkaTimeoutError):  # judged per letter below
                self._dead_producer.flush(timeout=self.config.dead_letter_block_ms / 1000)
            waiting = []
            for letter in self._dead_unacked:
                future = letter[2]
                if future is None or not future.is_done:
                    waiting.append(letter)
                elif future.failed():
                    if getattr(future.exception, "retriable", False):
                        letter[2] = None
                        waiting.append(letter)
                    else:
                        self.dead_letters_failed += 1
                        log.error("dead letter of %s refused: %s", letter[0], future.exception)
            self._dead_unacked = waiting
            if waiting:
                self.dead_letter_stalls += 1
                log.warning("mesh.dead does not answer: commit held, %d letters", len(waiting))
                if self._stop.is_set():
                    return False
        return True

    def flush_dead_letters(self) -> None:
        if self._dead_producer is not None:
            self._dead_letters_written()

    def _close_due_epochs(self) -> None:
        if self.emitter is None:
            return
        if not self._payouts_resent and self.idle_polls >= 1 and self.caught_up():
            # an epoch closed and committed whose PayoutsComputed never reached the log (the
            # process died before the emitter spooled it) must still become settleable
            self._payouts_resent = True
            for payouts in self.projector.unconfirmed_payouts():
                if (payouts.realm, payouts.epoch) in self._emitted_payouts:
                    continue  # closed by this process: its PayoutsComputed is on its way
                log.warning(
                    "re-emitting PayoutsComputed for %s epoch %d", payouts.realm, payouts.epoch
                )
                self.emitter.emit(payouts)
        for event in self.projector.due_epochs(
            self.config.grace_blocks, self.config.inactive_after_blocks
        ):
            if self._requested_close.get(event.realm, -1) >= event.epoch:
                continue
            self._requested_close[event.realm] = event.epoch
            log.info("closing %s epoch %d", event.realm, event.epoch)
            self.emitter.emit(event)

    def _emit_payouts(self, payouts: PayoutsComputed) -> None:
        assert self.emitter is not None
        self._emitted_payouts.add((payouts.realm, payouts.epoch))
        self.emitter.emit(payouts)

    def closed_epochs(self) -> dict[str, int]:
        return {name: r.closed_epoch for name, r in self.projector.realms.items()}


def replay(
    bootstrap: str,
    db_path: Path,
    trust: Trust,
    targets: dict[tuple[str, int], int] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    ahead: dict[tuple[str, int], set[int]] | None = None,
    partitions: frozenset[int] | None = None,
    consumer: Any = None,
) -> LedgerService:
    """Replay the topics from offset 0 into a fresh database, up to `targets` (default: the end)
    plus, beyond a target, exactly the `ahead` offsets (what a live projector had applied while
    a record at its target offset waited); as the shard owning `partitions` when given.
    `consumer`: as for LedgerService.connect (the projector simulation passes its own)."""
    if db_path.exists():
        db_path.unlink()
    service = LedgerService(
        ServiceConfig(
            bootstrap=bootstrap,
            db_path=db_path,
            trust=trust,
            gap_timeout_ms=0,
            query_port=None,
            dead_letters=False,
            partitions=partitions,
        )
    )
    service.connect(consumer)
    # Tansu reports a partition's end as its last batch's base offset + 1, so without targets the
    # replay runs until the log stops yielding records rather than trusting end offsets
    service.limits = dict(targets or {})
    if targets is not None:
        # a partition the live side never decided a record of has no offsets row: its target is
        # 0, not "no limit" (which would replay records the live tables do not reflect)
        for tp in service._buffers:
            service.limits.setdefault((tp.topic, tp.partition), 0)
    service.limits_ahead = {tp: set(offsets) for tp, offsets in (ahead or {}).items()}

    def done(svc: LedgerService) -> bool:
        if targets is not None:
            offsets = svc.projector.offsets
            decided = svc.projector.ahead
            if all(offsets.get(tp, 0) >= end for tp, end in targets.items()) and all(
                o < offsets.get(tp, 0) or o in decided.get(tp, ())
                for tp, wanted in service.limits_ahead.items()
                for o in wanted
            ):
                return True
        return svc.idle_polls >= 3 and svc.caught_up()

    with contextlib.suppress(KeyboardInterrupt):
        service.run(until=done, on_progress=on_progress)
    return service


def trust_from(ledger: list[str], indexer: list[str], settlement: list[str]) -> Trust:
    return Trust(frozenset(ledger), frozenset(indexer), frozenset(settlement))


__all__ = ["LedgerService", "ServiceConfig", "replay"]

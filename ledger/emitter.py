"""The emitter: batches a source's events into signed records and produces them to Kafka.

Metered messages go to ``mesh.usage`` in columnar records, every other event to
``mesh.ledger``; records are keyed by realm. A realm has at most one open batch; it is sealed
(seqs assigned, hashed, signed) when it would exceed ``batch_max_events`` or its encoded size would
exceed ``record_max_bytes``, when it is ``linger_ms`` old, or when order demands it (below). A
sealed record is appended to the local spool (ledger/spool.py) *before* it is sent, and the spool
is trimmed only once the broker acknowledged it. Hence:

* **emit order is seq order where it matters** — a watermark (``ChainHead``) first seals every open
  batch of the source, oldest first, and is then sealed on its own: everything the source emitted
  before a watermark has a lower seq, everything after it a higher one. Within a realm, emit order
  is seq order (an event of the other kind seals the realm's open batch first). So a consumer that
  decides by a source's seq order (the projector authorizes a router only once the indexer's head
  passed its blocks) decides the same whatever the timing of sealing.
* **crash window** — a crash loses at most the events not yet sealed: per realm, at most
  ``batch_max_events`` metered messages / ledger events, no older than ``linger_ms``. A sealed
  record is never lost (process crash) and is re-sent after a restart under its original seq.
* **never two seqs** — seqs are assigned once, at sealing, and persisted with the record; a
  re-send carries the same bytes, so consumers see at worst a duplicate (source, seq). The spool
  refuses to start on damage it cannot explain (``SpoolDamaged``) rather than guess a tip.
* **bounded records** — a record is never larger than ``record_max_bytes`` (default below a stock
  Kafka's 1 MB ``message.max.bytes``); one event too big for any record is refused at ``emit``.
  A record the broker refuses for a permanent reason (too large, invalid) goes to ``mesh.dead``
  with the reason and its original bytes, and the records after it flow on: consumers see a seq gap
  where it was, which they declare after their gap timeout.
* **broker down** — the sender retries with capped back-off while records accumulate in the
  spool; when ``spool_max_bytes`` of unacknowledged records are waiting, ``meter``/``emit``
  block the caller (back-pressure) until the broker takes records again.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from domain.envelope import (
    INT_LIMIT,
    KIND_INDEX,
    MAGIC,
    SIG_BYTES,
    MeteredBuilder,
    Signer,
    seal,
    string_bytes,
)
from domain.events import METER_KINDS, ChainHead, Event, event_to_dict
from domain.topics import DEAD_TOPIC, LEDGER_TOPIC, USAGE_TOPIC
from ledger.spool import OS_FS, FileSystem, Frame, Spool

log = logging.getLogger(__name__)

#: a stock Kafka broker refuses record batches over ~1 MiB (``message.max.bytes`` = 1048588)
KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
_INT_LIMIT = INT_LIMIT
#: bytes a metered message adds to a binary record at most (its strings aside)
_ROW_BYTES = MeteredBuilder.ROW_BYTES
#: a dead letter's parts are halved down to this many original bytes while the broker refuses them
_MIN_DEAD_PART = 4096


@dataclass
class EmitterConfig:
    bootstrap: str
    spool_dir: Path
    batch_max_events: int = 4096
    #: a sealed record's encoded size never exceeds this; the rest of the 1 MiB is Kafka overhead
    record_max_bytes: int = 900_000
    linger_ms: int = 50
    spool_max_bytes: int = 256 << 20
    segment_bytes: int = 64 << 20
    fsync: bool = True
    max_in_flight: int = 64
    request_timeout_ms: int = 3000
    retry_backoff_max_ms: int = 2000
    producer_options: dict[str, Any] = field(default_factory=dict)


class EmitterClosed(RuntimeError):
    pass


class EventTooLarge(ValueError):
    """One event (or metered message) whose record would exceed ``record_max_bytes`` on its own."""


class NotAccepted(RuntimeError):
    """The spool could not take a record (disk full, I/O error): the event was not accepted."""


#: broker refusals that no retry can cure: the record goes to mesh.dead instead
PERMANENT_ERRORS = (
    "MessageSizeTooLargeError",
    "RecordListTooLargeError",
    "InvalidRecordError",
    "CorruptRecordError",
    "InvalidTimestampError",
)


def is_permanent(exc: BaseException) -> bool:
    return type(exc).__name__ in PERMANENT_ERRORS


_METERED, _EVENTS = 0, 1


class _Batch:
    __slots__ = ("kind", "metered", "events", "n", "room", "size", "opened", "watermark")

    def __init__(self, kind: int, base_bytes: int) -> None:
        self.kind = kind
        self.n = 0  # metered messages in it (MeteredBuilder's len is a Python call)
        #: metered: n stays below this (batch_max_events, and rows that fit beside the strings)
        self.room = 0
        self.metered = MeteredBuilder()
        self.events: list[Event] = []
        #: a bound of the record's encoded size, never below it; of a metered batch: without
        #: its rows (each adds at most _ROW_BYTES)
        self.size = base_bytes
        self.opened = time.monotonic()
        self.watermark = False

    def __len__(self) -> int:
        return self.n if self.kind == _METERED else len(self.events)


def _new_string_bytes(
    builder: MeteredBuilder | None, from_peer: str, to_peer: str, uri: str
) -> int:
    """Encoded bytes of the strings a message adds to a batch's string tables."""
    peers: Any = builder.peers if builder is not None else ()
    uris: Any = builder.uris if builder is not None else ()
    cost = 0
    if from_peer not in peers:
        cost += string_bytes(from_peer)
    if to_peer not in peers and to_peer != from_peer:
        cost += string_bytes(to_peer)
    if uri not in uris:
        cost += string_bytes(uri)
    return cost


class Emitter:
    def __init__(self, signer: Signer, config: EmitterConfig, fs: FileSystem = OS_FS) -> None:
        self.signer = signer
        self.source = signer.address
        self.config = config
        # the spool's lock comes first: a second emitter on this directory must fail before it
        # reads anything (Spool.open raises SpoolLocked / SpoolDamaged)
        self._spool = Spool.open(
            config.spool_dir, self.source, config.segment_bytes, config.fsync, fs
        )
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        #: realm -> its one open batch; insertion order is the order batches were opened
        self._open: dict[str, _Batch] = {}
        self._outbox: deque[Frame] = deque(self._spool.unacked())
        self._unacked_bytes = sum(f.size for f in self._outbox)
        self._last_seq, self._last_hash = self._spool.tip_seq, self._spool.tip_hash
        self._closed = False
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._max_events = config.batch_max_events
        self._max_bytes = config.record_max_bytes
        self._dead_producer: Any = None
        self.counters = {
            "sealed_records": 0,
            "sealed_events": 0,
            "acked_records": 0,
            "dead_records": 0,
            "send_errors": 0,
            "blocked_ms": 0,
        }
        #: whether the last exchange with the broker succeeded (a permanent refusal of a record is
        #: an answer: the broker is reachable); None until the first exchange
        self.broker_reachable: bool | None = None
        self.last_send_error = ""
        self._sender = threading.Thread(
            target=self._send_loop, name=f"emitter-{self.source[:8]}", daemon=True
        )
        self._sender.start()

    @property
    def _base_bytes(self) -> int:
        return len(MAGIC) + SIG_BYTES + 256

    def _record_base(self, realm: str) -> int:
        """Envelope bytes of a record: magic, signature, src/seq/n/prev/realm and the framing."""
        return self._base_bytes + len(orjson.dumps(realm))

    # -- producing side ---------------------------------------------------------------------------
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
        """Record one routed message (thread-safe; blocks only under spool back-pressure): one
        row of indices appended to the realm's open batch, which is encoded when sealed."""
        k = KIND_INDEX.get(kind)
        if not (
            k is not None
            and type(payload_bytes) is int
            and type(block) is int
            and 0 <= payload_bytes < _INT_LIMIT
            and 0 <= block < _INT_LIMIT
        ):  # one bad value would make the projector refuse the whole record
            if k is None:
                raise ValueError(f"unknown meter kind {kind!r} (one of {METER_KINDS})")
            raise ValueError(f"payload_bytes {payload_bytes!r} / block {block!r} out of range")
        with self._lock:
            batch = self._open.get(realm)
            if batch is not None and batch.kind == _METERED:
                builder = batch.metered
                peers = builder.peers
                f, t, u = peers.get(from_peer), peers.get(to_peer), builder.uris.get(uri)
                n = batch.n
                if f is not None and t is not None and u is not None and n < batch.room:
                    # the common case: every string interned already, room left
                    builder.rows.extend((f, t, k, u, payload_bytes, block))
                    batch.n = n = n + 1
                    if n >= self._max_events:
                        self._seal_now(realm, batch)
                    return
            self._meter_slow(realm, batch, from_peer, to_peer, kind, uri, payload_bytes, block)

    def _meter_slow(
        self,
        realm: str,
        batch: _Batch | None,
        from_peer: str,
        to_peer: str,
        kind: str,
        uri: str,
        payload_bytes: int,
        block: int,
    ) -> None:
        """A message with a string new to its batch, or one that needs a new batch. Caller
        holds the lock."""
        if batch is not None and batch.kind == _METERED:
            strings = _new_string_bytes(batch.metered, from_peer, to_peer, uri)
            rows_after = (batch.n + 1) * _ROW_BYTES
            if batch.n < self._max_events and batch.size + strings + rows_after <= self._max_bytes:
                self._add_metered(
                    realm, batch, strings, from_peer, to_peer, kind, uri, payload_bytes, block
                )
                return
        # a new batch: the realm's open one (full, or of the other kind) is sealed first
        strings = _new_string_bytes(None, from_peer, to_peer, uri)
        self._room(realm, _ROW_BYTES + strings)
        batch = self._batch(realm, _METERED)
        self._add_metered(
            realm, batch, strings, from_peer, to_peer, kind, uri, payload_bytes, block
        )

    def _add_metered(
        self,
        realm: str,
        batch: _Batch,
        strings: int,
        from_peer: str,
        to_peer: str,
        kind: str,
        uri: str,
        payload_bytes: int,
        block: int,
    ) -> None:
        batch.metered.add(from_peer, to_peer, kind, uri, payload_bytes, block)
        batch.size += strings
        batch.n += 1
        batch.room = min(self._max_events, (self._max_bytes - batch.size) // _ROW_BYTES)
        if batch.n >= self._max_events:
            self._seal_now(realm, batch)

    def emit(self, event: Event) -> None:
        """Queue one domain event for ``mesh.ledger`` (sealed within ``linger_ms``)."""
        self.emit_many((event,))

    def emit_many(self, events: Iterable[Event]) -> None:
        """Queue events in order; a ``ChainHead`` is a watermark (see the module docstring)."""
        sized = []
        for event in events:  # fail in the caller, not later in the sealing thread
            size = len(orjson.dumps(event_to_dict(event))) + 1
            if self._record_base(event.realm) + size > self.config.record_max_bytes:
                raise EventTooLarge(
                    f"{event.TYPE} event of {size} encoded bytes cannot fit in a record of "
                    f"record_max_bytes={self.config.record_max_bytes}"
                )
            sized.append((event, size))
        with self._lock:
            for event, size in sized:
                realm = event.realm
                if isinstance(event, ChainHead):
                    self._room(realm, size, seal_all=True)  # all before it: lower seqs
                    batch = self._batch(realm, _EVENTS)
                    batch.events.append(event)
                    batch.size += size
                    batch.watermark = True
                    self._seal_now(realm, batch)  # and everything after it a higher one
                    continue
                current = self._open.get(realm)
                if (
                    current is None
                    or current.kind != _EVENTS
                    or len(current.events) >= self.config.batch_max_events
                    or current.size + size > self.config.record_max_bytes
                ):
                    self._room(realm, size)
                batch = self._batch(realm, _EVENTS)
                batch.events.append(event)
                batch.size += size
                if len(batch.events) >= self.config.batch_max_events:
                    self._seal_now(realm, batch)

    def _batch(self, realm: str, kind: int) -> _Batch:
        batch = self._open.get(realm)
        if batch is None:
            batch = self._open[realm] = _Batch(kind, self._record_base(realm))
        return batch

    def _room(self, realm: str, cost: int, seal_all: bool = False) -> None:
        """Make room for one more item in `realm`: seal the realm's open batch (every open batch
        with `seal_all`). Raises, and the item is not accepted, when a seal fails. Caller holds
        the lock."""
        if self._closed:
            raise EmitterClosed("emitter is closed")
        if self._record_base(realm) + cost > self.config.record_max_bytes:
            raise EventTooLarge(
                f"an item of {cost} encoded bytes cannot fit in a record of "
                f"record_max_bytes={self.config.record_max_bytes}"
            )
        try:
            if seal_all or self._spool.failed is not None:  # a failed seal is retried first
                self._seal_all()
            batch = self._open.get(realm)
            if batch is not None:
                self._seal(realm, batch)
        except OSError as exc:
            raise NotAccepted(
                f"the spool cannot take records ({exc}); the event was not accepted"
            ) from exc

    def _seal_now(self, realm: str, batch: _Batch) -> None:
        """Seal a full batch after its last item was accepted; a failure is retried later."""
        try:
            self._seal(realm, batch)
        except OSError as exc:
            log.error("emitter %s: spool write failed (%s); will retry", self.source, exc)

    def _seal(self, realm: str, batch: _Batch) -> None:
        """Seal one batch; an older batch holding a watermark (left by a failed seal) goes
        first. Caller holds the lock."""
        if any(b.watermark for b in self._open.values() if b is not batch):
            self._seal_all()
            return
        self._seal_one(realm, batch)

    def _seal_all(self) -> None:
        for realm, batch in list(self._open.items()):
            self._seal_one(realm, batch)

    def _seal_one(self, realm: str, batch: _Batch) -> None:
        """Assign seqs, sign, spool, queue for sending. Caller holds the lock."""
        if self._open.get(realm) is not batch:
            return  # sealed already, by an earlier pass
        if not len(batch):
            del self._open[realm]
            return
        started = time.monotonic()
        while self._unacked_bytes >= self.config.spool_max_bytes:
            self._space.wait(timeout=0.5)  # back-pressure: wait for the broker to take records
        if (waited := time.monotonic() - started) > 0.001:
            self.counters["blocked_ms"] += int(waited * 1000)
        if batch.kind == _METERED:
            topic = USAGE_TOPIC
            wire, record = seal(
                self.signer,
                self._last_seq + 1,
                self._last_hash,
                realm,
                metered=batch.metered.build(),
            )
        else:
            topic = LEDGER_TOPIC
            wire, record = seal(
                self.signer, self._last_seq + 1, self._last_hash, realm, events=batch.events
            )
        if len(wire) > self.config.record_max_bytes:  # the size bound is wrong: never send it
            raise AssertionError(f"record of {len(wire)} bytes over {self.config.record_max_bytes}")
        frame = self._spool.append(
            topic, realm.encode(), wire, record.seq, record.count, record.prev, record.hash_hex
        )
        # only a record in the spool has taken its seqs
        self._last_seq, self._last_hash = record.last_seq, record.hash_hex
        del self._open[realm]
        self._outbox.append(frame)
        self._unacked_bytes += frame.size
        self.counters["sealed_records"] += 1
        self.counters["sealed_events"] += record.count
        self._wake.set()

    def seal_all(self) -> None:
        with self._lock:
            self._seal_all()

    def _seal_expired(self) -> None:
        linger_s = self.config.linger_ms / 1000
        now = time.monotonic()
        with self._lock:
            if any(now - b.opened >= linger_s for b in self._open.values()) or (
                self._spool.failed is not None and self._open
            ):
                # oldest first; those younger than the linger wait, unless order needs them
                for realm, batch in list(self._open.items()):
                    if now - batch.opened >= linger_s or batch.watermark:
                        self._seal(realm, batch)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Seal everything buffered and wait until the broker acknowledged it all. When the spool
        cannot be written (ENOSPC, I/O error) its OSError is raised: the events stay buffered and
        are sealed once the spool takes writes again."""
        self.seal_all()
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self.pending_records():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"{self.pending_records()} records not acknowledged after {timeout_s}s"
                        + (f" (last error: {self.last_send_error})" if self.last_send_error else "")
                    )
                self._idle.wait(timeout=min(remaining, 0.2))

    def pending_records(self) -> int:
        return len(self._outbox)

    def stats(self) -> dict[str, Any]:
        return {
            **self.counters,
            "pending_records": self.pending_records(),
            "unacked_bytes": self._unacked_bytes,
            "last_seq": self._last_seq,
            "broker_reachable": self.broker_reachable,
            "last_send_error": self.last_send_error,
        }

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush (best effort within `timeout_s`) and stop; unsent records stay in the spool."""
        with contextlib.suppress(TimeoutError, OSError):
            self.flush(timeout_s)
        self._closed = True
        self._wake.set()
        self._sender.join(timeout=10)
        self._spool.close()

    # -- sending side ---------------------------------------------------------------------------
    def _producer_config(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "bootstrap_servers": cfg.bootstrap,
            "acks": "all",
            "linger_ms": 2,
            # a produce batch never holds more than one full record: it stays under the broker's
            # message.max.bytes whenever a single record does
            "batch_size": cfg.record_max_bytes,
            "max_request_size": cfg.record_max_bytes + (64 << 10),
            "request_timeout_ms": cfg.request_timeout_ms,
            "delivery_timeout_ms": cfg.request_timeout_ms * 2 + 10,
            "max_block_ms": cfg.request_timeout_ms,
            # kafka-python waits 30 s for a broker that is down before it gives up: a close or a
            # send loop must not hang that long
            "bootstrap_timeout_ms": cfg.request_timeout_ms,
            "retry_backoff_ms": 100,
        }

    def _producer(self) -> Any:
        from kafka import KafkaProducer

        return KafkaProducer(
            enable_idempotence=True, **{**self._producer_config(), **self.config.producer_options}
        )

    def _send_loop(self) -> None:
        producer = None
        backoff_ms = 100
        linger_s = max(self.config.linger_ms / 2000, 0.001)
        while True:
            self._wake.wait(timeout=linger_s)
            self._wake.clear()
            try:
                self._seal_expired()
            except Exception:  # an unsealable batch must not kill the sender; it stays buffered
                log.exception("emitter %s: sealing failed", self.source)
            if self._closed and not self._outbox:
                break
            if not self._outbox:
                continue
            try:
                if producer is None:
                    producer = self._producer()
                refused = self._send_outbox(producer)
                backoff_ms = 100
                self.broker_reachable = True
                if refused:  # a fresh producer: the idempotent sequence skipped a refused batch
                    with contextlib.suppress(Exception):
                        producer.close(timeout=1)
                    producer = None
            except Exception as exc:  # any other send failure: resend from the first unacked frame
                self.counters["send_errors"] += 1
                self.broker_reachable = False
                self.last_send_error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "emitter %s: broker send failed (%s); retrying in %d ms",
                    self.source,
                    exc,
                    backoff_ms,
                )
                if producer is not None:
                    with contextlib.suppress(Exception):
                        producer.close(timeout=1)
                    producer = None
                if self._closed:
                    break
                time.sleep(backoff_ms / 1000)
                backoff_ms = min(backoff_ms * 2, self.config.retry_backoff_max_ms)
        for p in (producer, self._dead_producer):
            if p is not None:
                with contextlib.suppress(Exception):
                    p.close(timeout=2)

    def _send_outbox(self, producer: Any) -> bool:
        """Send queued frames in order, up to `max_in_flight` at once; ack in order. True when a
        frame was refused for good (dead-lettered) and the producer must be replaced."""
        in_flight: deque[tuple[Frame, Any]] = deque()
        index = 0
        while True:
            with self._lock:
                # only the next few frames: the outbox may hold a full spool's worth
                stop = index + self.config.max_in_flight - len(in_flight)
                frames = list(itertools.islice(self._outbox, index, stop))
            for frame in frames:
                in_flight.append(
                    (frame, producer.send(frame.topic, key=frame.key, value=frame.value))
                )
            index += len(frames)
            if not in_flight:
                return False
            flush_error: Exception | None = None
            try:
                producer.flush(timeout=self.config.request_timeout_ms / 1000 * 2)
            except Exception as exc:  # kafka-python raises here when a batch was aborted
                flush_error = exc  # the futures say which frames failed and why
            acked = 0
            last = None
            refused = False
            while in_flight and in_flight[0][1].is_done:
                frame, future = in_flight.popleft()
                if future.failed() and is_permanent(future.exception):
                    self._dead_letter(frame, future.exception)
                    refused = True
                else:
                    future.get(timeout=0)  # raises the send error, if any
                acked += 1
                last = frame
                if refused:
                    break
            if acked:
                assert last is not None
                self._ack(acked, last)
                index -= acked
            elif in_flight:
                raise flush_error or TimeoutError("no acknowledgement within the flush timeout")
            if refused:
                return True

    def _dead_letter(self, frame: Frame, exc: BaseException) -> None:
        """A record the broker refuses for good: to mesh.dead with the reason and its original
        bytes (in parts if they do not fit one record), so the source's later records can flow."""
        from kafka import KafkaProducer

        reason = type(exc).__name__
        log.error(
            "emitter %s: the broker refused seq %d..%d for good (%s: %s); sent to %s",
            self.source,
            frame.seq,
            frame.last_seq,
            reason,
            exc,
            DEAD_TOPIC,
        )
        # the broker's limit is unknown: halve the parts while it refuses them for their size
        part_bytes = max(_MIN_DEAD_PART, self.config.record_max_bytes // 2)
        while True:
            if self._dead_producer is None:
                self._dead_producer = KafkaProducer(
                    **{**self._producer_config(), **self.config.producer_options}
                )
            refusal = self._send_dead_letter(frame, f"{reason}: {exc}", part_bytes)
            if refusal is None:
                break
            with contextlib.suppress(Exception):  # a refused batch can poison the producer
                self._dead_producer.close(timeout=1)
            self._dead_producer = None
            if not is_permanent(refusal) or part_bytes <= _MIN_DEAD_PART:
                raise refusal  # retried with the frame, like any failed send
            part_bytes //= 2
        self.counters["dead_records"] += 1

    def _send_dead_letter(self, frame: Frame, detail: str, part_bytes: int) -> BaseException | None:
        parts = [frame.value[i : i + part_bytes] for i in range(0, len(frame.value), part_bytes)]
        futures = []
        for i, part in enumerate(parts):
            letter = {
                "reason": "broker_refused",
                "detail": detail,
                "origin": "emitter",
                "source": self.source,
                "seq": frame.seq,
                "last_seq": frame.last_seq,
                "hash": frame.hash,
                "topic": frame.topic,
                "key": frame.key.decode(errors="replace"),
                "part": i,
                "parts": len(parts),
                "original": base64.b64encode(part).decode(),
            }
            key = f"emitter/{self.source}/{frame.seq}".encode()
            futures.append(
                self._dead_producer.send(DEAD_TOPIC, key=key, value=orjson.dumps(letter))
            )
        with contextlib.suppress(Exception):  # the futures say what happened
            self._dead_producer.flush(timeout=self.config.request_timeout_ms / 1000 * 2)
        for future in futures:
            try:
                future.get(timeout=self.config.request_timeout_ms / 1000 * 3)
            except Exception as exc:  # noqa: BLE001 - the caller decides: halve, or retry later
                return exc
        return None

    def _ack(self, count: int, last: Frame) -> None:
        with self._lock:
            self._spool.ack(last)
            snapshot = self._spool.checkpoint_snapshot()
        # the checkpoint's file I/O (fsyncs, a rename) happens outside the lock `meter` takes;
        # the frames leave the outbox (and flush returns) only once it is written
        try:
            self._spool.write_checkpoint(snapshot)
        except OSError as exc:  # the checkpoint stays behind: a restart re-sends, never loses
            log.error("emitter %s: checkpoint write failed (%s)", self.source, exc)
        with self._lock:
            for _ in range(count):
                frame = self._outbox.popleft()
                self._unacked_bytes -= frame.size
            self.counters["acked_records"] += count
            self._space.notify_all()
        with self._idle:
            self._idle.notify_all()

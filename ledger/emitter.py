"""The emitter: batches a source's events into signed records and produces them to Kafka.

Metered messages go to ``mesh.usage`` in columnar records, every other event to
``mesh.ledger``; records are keyed by realm. A batch is sealed (seq assigned, hashed, signed)
when it reaches ``batch_max_events`` or ``batch_max_bytes`` or is ``linger_ms`` old; a sealed
record is appended to the local spool *before* it is sent, and the spool is trimmed only once the
broker acknowledged it. Hence:

* **crash window** — a crash loses at most the events not yet sealed: per realm, fewer than
  ``batch_max_events`` metered messages / ledger events, no older than ``linger_ms``. A sealed
  record is never lost (process crash) and is re-sent after a restart under its original seq.
* **never two seqs** — seqs are assigned once, at sealing, and persisted with the record; a
  re-send carries the same bytes, so consumers see at worst a duplicate (source, seq).
* **broker down** — the sender retries with capped back-off while records accumulate in the
  spool; when ``spool_max_bytes`` of unacknowledged records are waiting, ``meter``/``emit``
  block the caller (back-pressure) until the broker takes records again.
"""

from __future__ import annotations

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

from domain.envelope import ZERO_HASH, MeteredBuilder, Signer, seal
from domain.events import Event, event_to_dict
from domain.topics import LEDGER_TOPIC, USAGE_TOPIC
from ledger.spool import Frame, Spool

log = logging.getLogger(__name__)


@dataclass
class EmitterConfig:
    bootstrap: str
    spool_dir: Path
    batch_max_events: int = 4096
    batch_max_bytes: int = 512 << 10
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


class _Batch:
    __slots__ = ("metered", "events", "event_bytes", "opened")

    def __init__(self) -> None:
        self.metered = MeteredBuilder()
        self.events: list[Event] = []
        self.event_bytes = 0
        self.opened = time.monotonic()


class Emitter:
    def __init__(self, signer: Signer, config: EmitterConfig) -> None:
        self.signer = signer
        self.source = signer.address
        self.config = config
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._spool = Spool(config.spool_dir, config.segment_bytes, config.fsync)
        self._batches: dict[str, _Batch] = {}
        self._outbox: deque[Frame] = deque(self._spool.unacked())
        self._unacked_bytes = sum(f.size for f in self._outbox)
        self._last_seq, self._last_hash = self._recover_tip()
        self._closed = False
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self.counters = {
            "sealed_records": 0,
            "sealed_events": 0,
            "acked_records": 0,
            "send_errors": 0,
            "blocked_ms": 0,
        }
        self.broker_reachable = True
        self._sender = threading.Thread(
            target=self._send_loop, name=f"emitter-{self.source[:8]}", daemon=True
        )
        self._sender.start()

    def _recover_tip(self) -> tuple[int, str]:
        from domain.envelope import decode

        cp = self._spool.checkpoint
        seq, tip = cp.last_seq, cp.last_hash or ZERO_HASH
        if self._outbox:  # the spool holds sealed records newer than the checkpoint's tip
            rec = decode(self._outbox[-1].value)
            if rec.last_seq > seq:
                seq, tip = rec.last_seq, rec.hash_hex
        return seq, tip

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
        """Record one routed message (thread-safe; blocks only under spool back-pressure)."""
        with self._lock:
            batch = self._batches.get(realm)
            if batch is None:
                batch = self._batches[realm] = _Batch()
            batch.metered.add(from_peer, to_peer, kind, uri, payload_bytes, block)
            if len(batch.metered) >= self.config.batch_max_events:
                self._seal_metered(realm, batch)

    def emit(self, event: Event) -> None:
        """Queue one domain event for ``mesh.ledger`` (sealed within ``linger_ms``)."""
        self.emit_many((event,))

    def emit_many(self, events: Iterable[Event]) -> None:
        events = list(events)
        for event in events:  # fail in the caller, not later in the sealing thread
            orjson.dumps(event_to_dict(event))
        with self._lock:
            for event in events:
                batch = self._batches.get(event.realm)
                if batch is None:
                    batch = self._batches[event.realm] = _Batch()
                batch.events.append(event)
                batch.event_bytes += 256
                if (
                    len(batch.events) >= self.config.batch_max_events
                    or batch.event_bytes >= self.config.batch_max_bytes
                ):
                    self._seal_events(event.realm, batch)

    def _seal_metered(self, realm: str, batch: _Batch) -> None:
        if len(batch.metered):
            cols = batch.metered.build()
            batch.metered = MeteredBuilder()
            self._seal(realm, USAGE_TOPIC, metered=cols)

    def _seal_events(self, realm: str, batch: _Batch) -> None:
        if batch.events:
            events, batch.events, batch.event_bytes = batch.events, [], 0
            self._seal(realm, LEDGER_TOPIC, events=events)

    def _seal(self, realm: str, topic: str, **content: Any) -> None:
        """Assign seqs, sign, spool, queue for sending. Caller holds the lock."""
        if self._closed:
            raise EmitterClosed("emitter is closed")
        started = time.monotonic()
        while self._unacked_bytes >= self.config.spool_max_bytes:
            self._space.wait(timeout=0.5)  # back-pressure: wait for the broker to take records
        if (waited := time.monotonic() - started) > 0.001:
            self.counters["blocked_ms"] += int(waited * 1000)
        wire, record = seal(self.signer, self._last_seq + 1, self._last_hash, realm, **content)
        frame = self._spool.append(topic, realm.encode(), wire)
        self._last_seq, self._last_hash = record.last_seq, record.hash_hex
        self._spool.checkpoint.last_seq, self._spool.checkpoint.last_hash = (
            self._last_seq,
            self._last_hash,
        )
        self._outbox.append(frame)
        self._unacked_bytes += frame.size
        self.counters["sealed_records"] += 1
        self.counters["sealed_events"] += record.count
        self._wake.set()

    def seal_all(self) -> None:
        with self._lock:
            for realm, batch in list(self._batches.items()):
                self._seal_metered(realm, batch)
                self._seal_events(realm, batch)
                batch.opened = time.monotonic()

    def _seal_expired(self) -> None:
        linger_s = self.config.linger_ms / 1000
        now = time.monotonic()
        with self._lock:
            for realm, batch in list(self._batches.items()):
                if now - batch.opened >= linger_s:
                    self._seal_metered(realm, batch)
                    self._seal_events(realm, batch)
                    batch.opened = now
                    if not len(batch.metered) and not batch.events:
                        del self._batches[realm]

    def flush(self, timeout_s: float = 30.0) -> None:
        """Seal everything buffered and wait until the broker acknowledged it all."""
        self.seal_all()
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self.pending_records():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"{self.pending_records()} records not acknowledged after {timeout_s}s"
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
        }

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush (best effort within `timeout_s`) and stop; unsent records stay in the spool."""
        with contextlib.suppress(TimeoutError):
            self.flush(timeout_s)
        self._closed = True
        self._wake.set()
        self._sender.join(timeout=10)
        self._spool.close()

    # -- sending side ---------------------------------------------------------------------------
    def _producer(self) -> Any:
        from kafka import KafkaProducer

        cfg = self.config
        return KafkaProducer(
            bootstrap_servers=cfg.bootstrap,
            enable_idempotence=True,
            acks="all",
            linger_ms=2,
            batch_size=1 << 20,
            max_request_size=8 << 20,
            request_timeout_ms=cfg.request_timeout_ms,
            delivery_timeout_ms=cfg.request_timeout_ms * 2 + 10,
            max_block_ms=cfg.request_timeout_ms,
            retry_backoff_ms=100,
            **cfg.producer_options,
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
                self._send_outbox(producer)
                backoff_ms = 100
                self.broker_reachable = True
            except Exception as exc:  # any send failure: resend from the first unacked frame
                self.counters["send_errors"] += 1
                self.broker_reachable = False
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
        if producer is not None:
            with contextlib.suppress(Exception):
                producer.close(timeout=2)

    def _send_outbox(self, producer: Any) -> None:
        """Send queued frames in order, up to `max_in_flight` at once; ack in order."""
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
                return
            producer.flush(timeout=self.config.request_timeout_ms / 1000 * 2)
            acked = 0
            while in_flight and in_flight[0][1].is_done:
                frame, future = in_flight.popleft()
                future.get(timeout=0)  # raises the send error, if any
                acked += 1
                last = frame
            if acked:
                self._ack(acked, last)
                index -= acked
            elif in_flight:
                raise TimeoutError("no acknowledgement within the flush timeout")

    def _ack(self, count: int, last: Frame) -> None:
        with self._lock:
            for _ in range(count):
                frame = self._outbox.popleft()
                self._unacked_bytes -= frame.size
            self._spool.ack(last)
            self._spool.commit_acks()
            self.counters["acked_records"] += count
            self._space.notify_all()
        with self._idle:
            self._idle.notify_all()

"""The one hand-off from the router's event loop to the ledger emitter, which runs elsewhere.

`LedgerHandoff` is the loop's `UsageSink`. `meter` extends the open *chunk* (a flat list, seven
slots per item) and returns; `emit` puts an event in the same chunk, so the order of metered
messages and events is kept. A chunk is shipped to a `Drain` when it holds `chunk_items` items or
is `linger_ms` old; the drain reports each chunk once the emitter holds it sealed (`acked`), and
only then is the chunk forgotten. Shipped but unacknowledged chunks are kept so that a drain that
died can be given them again (`unacked`). When `high_water` items wait (open chunk plus unacked),
`on_full` is called (the router stops reading from every session: back-pressure, nothing dropped);
once acknowledgements bring them below `low_water`, `on_space` is called. Data already read from
sockets is still routed while paused, so the count may pass `high_water` by at most that much.

Drains: `ThreadDrain` feeds an in-process sink from a thread (tests, tools);
`router_core.meter_child.ChildDrain` feeds an emitter in a supervised child process (the router).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from domain.events import ChainHead, Event
from router_core.metering import UsageSink

log = logging.getLogger("router_core.handoff")

#: kinds of routed messages (router_core.broker, router_core.dealer), counted for /metrics
ROUTED_KINDS = ("event", "invocation", "result", "error")
#: slots of one item in a chunk: realm, from_peer, to_peer, kind, uri, payload_bytes, block.
#: An event is (realm, EVENT, <Event>, "" or WATERMARK, "", 0, 0).
SLOTS = 7
EVENT = ""
#: marks a `ChainHead`: sealed after everything handed over before it, before everything after
WATERMARK = "watermark"


@dataclass(slots=True)
class Chunk:
    id: int
    items: list[Any]
    #: slot index of each event's object (index of the item * SLOTS + 2)
    events: list[int]

    @property
    def count(self) -> int:
        return len(self.items) // SLOTS


def replay(chunk_items: list[Any], sink: UsageSink) -> None:
    """Hand a chunk's items to a sink, in order (events as Event objects)."""
    for i in range(0, len(chunk_items), SLOTS):
        realm, from_peer, to_peer, kind, uri, nbytes, block = chunk_items[i : i + SLOTS]
        if from_peer == EVENT:
            sink.emit(to_peer)
        else:
            sink.meter(realm, from_peer, to_peer, kind, uri, nbytes, block)


class Drain(Protocol):
    """Where shipped chunks go; it calls `handoff.acked(chunk_id)` in the loop once a chunk is
    sealed by the emitter, in chunk order."""

    def attach(self, handoff: LedgerHandoff) -> None: ...

    def ship(self, chunk: Chunk) -> None:
        """Take a chunk (from the loop; never blocks)."""

    def flush(self, timeout_s: float) -> None:
        """Wait (not from the loop) until everything shipped is sealed by the emitter."""

    def close(self, timeout_s: float) -> None:
        """Seal everything shipped and stop (not from the loop)."""


class LedgerHandoff:
    def __init__(
        self,
        drain: Drain,
        loop: asyncio.AbstractEventLoop,
        high_water: int = 65_536,
        low_water: int = 16_384,
        chunk_items: int = 4_096,
        linger_ms: int = 20,
    ) -> None:
        if not 0 < low_water < high_water:
            raise ValueError("need 0 < low_water < high_water")
        if not 0 < chunk_items <= low_water:
            raise ValueError("need 0 < chunk_items <= low_water")
        self.drain = drain
        self.high_water = high_water
        self.low_water = low_water
        self._loop = loop
        self._slots = chunk_items * SLOTS
        self._linger_s = linger_ms / 1000
        self._items: list[Any] = []
        self._events: list[int] = []
        self._timer: asyncio.TimerHandle | None = None
        self._next_id = 1
        #: shipped, not yet acknowledged, oldest first
        self.unacked: deque[Chunk] = deque()
        self._unacked_items = 0
        self.added = 0
        self.acked_items = 0
        self.paused = False
        self.pauses = 0
        #: metered messages sealed into the ledger, by kind: the drain reports them with its
        #: acknowledgements (the child counts them), so the loop adds nothing per message
        self.routed_by_kind: dict[str, int] = dict.fromkeys(ROUTED_KINDS, 0)
        self.on_full: Callable[[], None] = lambda: None
        self.on_space: Callable[[], None] = lambda: None
        self.drain.attach(self)

    # -- the loop's side (never blocks) ----------------------------------------------------------
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
        items = self._items
        if not items:
            self._opened()
        items.extend((realm, from_peer, to_peer, kind, uri, payload_bytes, block))
        if len(items) >= self._slots:
            self.ship()

    def emit(self, event: Event) -> None:
        items = self._items
        if not items:
            self._opened()
        self._events.append(len(items) + 2)
        mark = WATERMARK if type(event) is ChainHead else ""
        items.extend((event.realm, EVENT, event, mark, "", 0, 0))
        if len(items) >= self._slots:
            self.ship()

    def _opened(self) -> None:
        self._timer = self._loop.call_later(self._linger_s, self.ship)

    def ship(self) -> None:
        """Hand the open chunk to the drain now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._items:
            return
        chunk = Chunk(self._next_id, self._items, self._events)
        self._next_id += 1
        self._items, self._events = [], []
        count = chunk.count
        self.added += count
        self.unacked.append(chunk)
        self._unacked_items += count
        self.drain.ship(chunk)
        if self._unacked_items >= self.high_water and not self.paused:
            self.paused = True
            self.pauses += 1
            log.warning("ledger hand-off full (%d waiting): pausing reads", self._unacked_items)
            self.on_full()

    def acked(self, chunk_id: int) -> None:
        """The drain sealed every chunk up to `chunk_id` (called in the loop)."""
        unacked = self.unacked
        while unacked and unacked[0].id <= chunk_id:
            count = unacked.popleft().count
            self._unacked_items -= count
            self.acked_items += count
        if self.paused and self._unacked_items < self.low_water:
            self.paused = False
            self.on_space()

    def count_routed(self, by_kind: dict[str, int]) -> None:
        """The drain sealed these metered messages (by kind) with its last acknowledgement."""
        for kind, count in by_kind.items():
            self.routed_by_kind[kind] = self.routed_by_kind.get(kind, 0) + count

    def waiting(self) -> int:
        """Items not yet sealed by the emitter: the open chunk and the unacknowledged ones."""
        return self._unacked_items + len(self._items) // SLOTS

    # -- any thread but the loop's ----------------------------------------------------------------
    def flush(self, timeout_s: float = 30.0) -> None:
        """Ship the open chunk and wait until the emitter sealed every item handed over."""
        self._in_loop(self.ship)
        self.drain.flush(timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Ship the open chunk, seal everything, stop the drain."""
        self._in_loop(self.ship)
        self.drain.close(timeout_s)

    def _in_loop(self, fn: Callable[[], None]) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop or self._loop.is_closed() or not self._loop.is_running():
            fn()
            return
        done = threading.Event()

        def call() -> None:
            try:
                fn()
            finally:
                done.set()

        try:
            self._loop.call_soon_threadsafe(call)
        except RuntimeError:  # the loop stopped: nothing else touches the hand-off
            fn()
            return
        if not done.wait(timeout=10):
            raise TimeoutError("the router's loop did not ship the open chunk")


class ThreadDrain:
    """Feeds an in-process sink (which may block: an emitter under back-pressure) from a thread;
    a chunk is acknowledged once the sink took all its items (for an `Emitter`, once sealed:
    `seal_all` follows each chunk)."""

    def __init__(self, sink: UsageSink) -> None:
        self.sink = sink
        self._queue: deque[Chunk] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._shipped = 0
        self._done = 0
        self._handoff: LedgerHandoff | None = None
        self._thread = threading.Thread(target=self._run, name="ledger-handoff", daemon=True)

    def attach(self, handoff: LedgerHandoff) -> None:
        self._handoff = handoff
        self._thread.start()

    def ship(self, chunk: Chunk) -> None:
        with self._wake:
            self._queue.append(chunk)
            self._shipped = chunk.id
            self._wake.notify_all()

    def _run(self) -> None:
        handoff = self._handoff
        assert handoff is not None
        seal_all = getattr(self.sink, "seal_all", None)
        while True:
            with self._wake:
                while not self._queue and not self._closed:
                    self._wake.wait()
                if not self._queue:
                    return
                chunk = self._queue.popleft()
            try:
                replay(chunk.items, self.sink)
                if seal_all is not None:
                    seal_all()
            except Exception:  # a sink error must not stop the drain
                log.exception("ledger hand-off: the sink refused an item of chunk %d", chunk.id)
            with self._wake:
                self._done = chunk.id
                self._wake.notify_all()
            loop = handoff._loop
            if not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody counts
                    loop.call_soon_threadsafe(handoff.acked, chunk.id)

    def flush(self, timeout_s: float) -> None:
        with self._wake:
            target = self._shipped
            if not self._wake.wait_for(lambda: self._done >= target, timeout=timeout_s):
                raise TimeoutError(f"chunks up to {target} not handed off in {timeout_s}s")

    def close(self, timeout_s: float) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        self._thread.join(timeout=timeout_s)

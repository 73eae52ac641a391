"""The one hand-off from the router's event loop to the ledger emitter, which may block.

`LedgerHandoff` is the loop's `UsageSink`: `meter` and `emit` append to a bounded in-loop buffer
and return at once; one thread drains it, in order, into the emitter (whose `meter`/`emit` block
while its spool is full). When `high_water` items wait, `on_full` is called (the router stops
reading from every session: back-pressure, nothing dropped); once the thread has drained the
buffer below `low_water`, `on_space` is called in the loop. Data already read from sockets is
still routed while paused, so the buffer may pass `high_water` by at most that much.
Moving sealing into a child process later replaces only the drain side of this class.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from domain.events import Event
from router_core.metering import UsageSink

log = logging.getLogger("router_core.handoff")


class LedgerHandoff:
    def __init__(
        self,
        sink: UsageSink,
        loop: asyncio.AbstractEventLoop,
        high_water: int = 65_536,
        low_water: int = 16_384,
        drain_batch: int = 4_096,
    ) -> None:
        if not 0 < low_water < high_water:
            raise ValueError("need 0 < low_water < high_water")
        self.sink = sink
        self.high_water = high_water
        self.low_water = low_water
        self._loop = loop
        self._batch = drain_batch
        self._buffer: deque[Any] = deque()
        self.added = 0
        self.handed = 0
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._closed = False
        self.paused = False
        self.pauses = 0
        self.on_full: Callable[[], None] = lambda: None
        self.on_space: Callable[[], None] = lambda: None
        self._thread = threading.Thread(target=self._drain, name="ledger-handoff", daemon=True)
        self._thread.start()

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
        self._buffer.append((realm, from_peer, to_peer, kind, uri, payload_bytes, block))
        self._added()

    def emit(self, event: Event) -> None:
        self._buffer.append(event)
        self._added()

    def _added(self) -> None:
        self.added += 1
        if not self._wake.is_set():
            self._wake.set()
        if len(self._buffer) >= self.high_water and not self.paused:
            self.paused = True
            self.pauses += 1
            log.warning("ledger hand-off full (%d waiting): pausing reads", len(self._buffer))
            self.on_full()

    def _space(self) -> None:
        if self.paused and len(self._buffer) < self.low_water:
            self.paused = False
            self.on_space()

    def waiting(self) -> int:
        return len(self._buffer)

    # -- the drain thread ------------------------------------------------------------------------
    def _drain(self) -> None:
        buffer, sink = self._buffer, self.sink
        while True:
            self._wake.wait(timeout=0.05)
            self._wake.clear()
            while buffer:
                for _ in range(min(self._batch, len(buffer))):
                    item = buffer.popleft()
                    try:
                        if type(item) is tuple:
                            sink.meter(*item)
                        else:
                            sink.emit(item)
                    except Exception:  # an emitter error must not stop the drain
                        log.exception("ledger hand-off: the emitter refused an item")
                    self.handed += 1
                if self.paused and len(buffer) < self.low_water:
                    self._loop.call_soon_threadsafe(self._space)
            with self._idle:
                self._idle.notify_all()
            if self._closed and not buffer:
                return

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait (from any thread but the loop's) until every item reached the emitter."""
        with self._idle:
            target = self.added
            if not self._idle.wait_for(lambda: self.handed >= target, timeout=timeout_s):
                raise TimeoutError(f"{len(self._buffer)} items not handed off in {timeout_s}s")

    def close(self, timeout_s: float = 30.0) -> None:
        """Hand off what is buffered and stop the thread."""
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=timeout_s)

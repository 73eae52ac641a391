"""Metering: the routing observer that turns every routed message into a MessageMetered event.

It calls the sink's `meter()` (in the router, `router_core.handoff.LedgerHandoff`: an append to
a list, never blocking; the emitter runs in a child process). The block comes from the chain
clock.

Crash window: see `router_core.handoff` and the README (a SIGKILL of the router loses at most the
hand-off's open chunk). Nothing is double-counted: every message gets exactly one
`(source, seq)` when sealed, and consumers deduplicate re-sent records by it.
"""

from __future__ import annotations

from typing import Protocol

from domain.events import Event
from router_core.chain_clock import ChainClock
from router_core.messages import ROUTER_ROLE
from router_core.session import Session


class UsageSink(Protocol):
    """What the router needs of the ledger emitter (`ledger.emitter.Emitter`)."""

    def meter(
        self,
        realm: str,
        from_peer: str,
        to_peer: str,
        kind: str,
        uri: str,
        payload_bytes: int,
        block: int,
    ) -> None: ...

    def emit(self, event: Event) -> object: ...


class MeteringObserver:
    __slots__ = ("_meter", "_clock")

    def __init__(self, sink: UsageSink, clock: ChainClock) -> None:
        self._meter = sink.meter
        self._clock = clock

    def routed(
        self, realm: str, kind: str, sender: Session, receiver: Session, uri: str, nbytes: int
    ) -> None:
        # getattr: the router's own stand-in callers (market verification) carry no role
        if getattr(receiver, "authrole", "") == ROUTER_ROLE:
            kind = "link_out"  # an answer sent back over a link to the router that asked
        self._meter(realm, sender.authid, receiver.authid, kind, uri, nbytes, self._clock.block)


class NullSink:
    """Metering off (dev without a broker): drops usage, keeps domain events in a bounded list."""

    def __init__(self, keep_events: int = 10_000) -> None:
        self.events: list[Event] = []
        self._keep = keep_events
        self._seq = 0

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
        return None

    def emit(self, event: Event) -> int:
        self._seq += 1
        if len(self.events) < self._keep:
            self.events.append(event)
        return self._seq

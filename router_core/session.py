"""One WAMP session: its state machine, identity, and the per-session bookkeeping of its realm.

The session decodes and shape-checks every frame, then hands it to the router (before WELCOME)
or to its realm (after). Any protocol violation aborts only this session.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from router_core import messages as m
from router_core.serializer import SerializationError, Serializer

if TYPE_CHECKING:
    from router_core.realm import Realm
    from router_core.reservation import BandwidthGate
    from router_core.swap import PeerSwap

log = logging.getLogger("router_core.session")


class Transport(Protocol):
    """What a session needs from its connection."""

    peer: str | None

    def send_frame(self, payload: bytes) -> None: ...

    def close_transport(self) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def buffered_bytes(self) -> int: ...

    def admitted(self) -> None:
        """The session was welcomed (lifts the limits of an unauthenticated connection)."""


class State(enum.Enum):
    NEW = "new"
    CHALLENGED = "challenged"
    ESTABLISHED = "established"
    CLOSING = "closing"
    CLOSED = "closed"


class SessionHandler(Protocol):
    """The router: handles what arrives before WELCOME, and sessions that end."""

    def on_hello(self, session: Session, realm: str, details: dict[str, Any]) -> None: ...

    def on_authenticate(self, session: Session, signature: str, extra: dict[str, Any]) -> None: ...

    def on_closed(self, session: Session) -> None: ...


class Session:
    __slots__ = (
        "id",
        "transport",
        "serializer",
        "handler",
        "max_frame_bytes",
        "state",
        "realm",
        "authid",
        "authrole",
        "authmethod",
        "roles",
        "hello_details",
        "challenge",
        "subscriptions",
        "registrations",
        "pending_calls",
        "swap",
        "gate",
        "held",
        "max_write_buffer_bytes",
        "suspended",
        "closing_timer",
    )

    #: how long a session in CLOSING waits for the peer's GOODBYE before the transport is closed
    closing_timeout_s = 2.0

    def __init__(
        self,
        session_id: int,
        transport: Transport,
        serializer: Serializer,
        handler: SessionHandler,
        max_frame_bytes: int,
        max_write_buffer_bytes: int,
    ) -> None:
        self.id = session_id
        self.transport = transport
        self.serializer = serializer
        self.handler = handler
        self.max_frame_bytes = max_frame_bytes
        self.max_write_buffer_bytes = max_write_buffer_bytes
        self.state = State.NEW
        self.realm: Realm | None = None
        self.authid = ""
        self.authrole = ""
        self.authmethod = ""
        self.roles: dict[str, Any] = {}
        self.hello_details: dict[str, Any] = {}
        self.challenge: dict[str, Any] = {}
        self.subscriptions: set[int] = set()
        self.registrations: set[int] = set()
        self.pending_calls = 0
        self.swap: PeerSwap | None = None
        self.gate: BandwidthGate | None = None
        self.held: deque[tuple[int, list[Any], int]] = deque()
        #: why nothing is routed from or to this session ("" = served); it may still call the
        #: router's own procedures (e.g. pay a cheque)
        self.suspended = ""
        self.closing_timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.authid or '?'} {self.state.value}>"

    # -- inbound ----------------------------------------------------------------------------------

    def receive(self, payload: bytes) -> None:
        """One WebSocket message from the peer."""
        state = self.state
        if state is State.CLOSED:
            return
        nbytes = len(payload)
        if nbytes > self.max_frame_bytes:
            self.violation(f"frame of {nbytes} bytes exceeds the limit of {self.max_frame_bytes}")
            return
        try:
            msg = self.serializer.decode(payload)
            code = m.check_shape(msg)
            if state is State.ESTABLISHED:
                realm = self.realm
                assert realm is not None
                realm.dispatch(self, code, msg, nbytes)
            elif state is State.CLOSING:
                if code == m.GOODBYE:
                    self.close_transport()
            else:
                self._before_welcome(code, msg)
        except SerializationError as exc:
            self.violation(str(exc))
        except m.ProtocolViolation as exc:
            self.violation(str(exc))

    def _before_welcome(self, code: int, msg: list[Any]) -> None:
        if code == m.HELLO and self.state is State.NEW:
            self.handler.on_hello(self, msg[1], msg[2])
        elif code == m.AUTHENTICATE and self.state is State.CHALLENGED:
            self.handler.on_authenticate(self, msg[1], msg[2])
        elif code == m.ABORT:
            self.close_transport()
        else:
            raise m.ProtocolViolation(f"message {code} not allowed in state {self.state.value}")

    # -- outbound ---------------------------------------------------------------------------------

    def send(self, msg: list[Any]) -> None:
        self.send_frame(self.serializer.encode(msg))

    def send_frame(self, payload: bytes) -> None:
        if self.state is State.CLOSED:
            return
        transport = self.transport
        transport.send_frame(payload)
        if transport.buffered_bytes() > self.max_write_buffer_bytes:
            # a peer that does not read is dropped rather than growing the router's memory
            log.warning(
                "session %s: write buffer over %d bytes, closing",
                self.id,
                self.max_write_buffer_bytes,
            )
            self.abort(m.SLOW_CONSUMER, "write buffer limit exceeded")

    def error(self, request_type: int, request: int, uri: str, message: str | None = None) -> None:
        msg: list[Any] = [m.ERROR, request_type, request, {}, uri]
        if message is not None:
            msg.append([message])
        self.send(msg)

    # -- ending -----------------------------------------------------------------------------------

    def violation(self, reason: str) -> None:
        log.warning("session %s (%s): protocol violation: %s", self.id, self.transport.peer, reason)
        if self.state is State.ESTABLISHED or self.state is State.CLOSING:
            # an established WAMP client (autobahn) accepts no ABORT, only GOODBYE with a reason
            self._end(m.GOODBYE, m.PROTOCOL_VIOLATION, reason)
        else:
            self.abort(m.PROTOCOL_VIOLATION, reason)

    def abort(self, uri: str, message: str) -> None:
        """ABORT and close the connection (protocol violations, refused joins)."""
        self._end(m.ABORT, uri, message)

    def _end(self, code: int, uri: str, message: str) -> None:
        if self.state is State.CLOSED:
            return
        try:
            self.transport.send_frame(self.serializer.encode([code, {"message": message}, uri]))
        finally:
            self.close_transport()

    def goodbye(self, uri: str, message: str) -> None:
        """Router-initiated close of an established session; waits for the peer's GOODBYE."""
        if self.state is not State.ESTABLISHED:
            self.abort(uri, message)
            return
        self.state = State.CLOSING
        self.transport.send_frame(self.serializer.encode([m.GOODBYE, {"message": message}, uri]))
        # a peer that never answers does not hold its connection (or its routes) open
        self.closing_timer = asyncio.get_running_loop().call_later(
            self.closing_timeout_s, self.close_transport
        )

    def close_transport(self) -> None:
        if self.state is State.CLOSED:
            return
        self.closed()
        self.transport.close_transport()

    def closed(self) -> None:
        """The connection is gone (called once, by either side)."""
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        if self.closing_timer is not None:
            self.closing_timer.cancel()
            self.closing_timer = None
        self.handler.on_closed(self)

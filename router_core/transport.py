"""WebSocket transport (autobahn's asyncio server): subprotocol negotiation, framing, and the
limits an unauthenticated client meets before anything is buffered.

Inbound frames go to the connection's `Session`; outbound frames bypass autobahn's general
`sendMessage` path (compression, fragmentation and statistics we never use) and are written as
single unmasked frames, which is what a server sends.

Until its session is welcomed a connection is *pending*: at most `max_pending_per_address` per
source address and `max_pending` in all (more are closed at accept), its HTTP upgrade request
may not exceed `max_handshake_bytes` (cut before it is buffered or parsed), and its frames may
not exceed `max_pending_frame_bytes` (refused at the frame header, close code 1009). Once
welcomed (`admitted`) its frames may be up to `max_frame_bytes`.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass

from autobahn.asyncio.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest

from router_core.serializer import Serializer
from router_core.session import Session

log = logging.getLogger("router_core.transport")

_STATE_OPEN = WebSocketProtocol.STATE_OPEN
_pack_16 = struct.Struct("!BBH").pack
_pack_64 = struct.Struct("!BBQ").pack

SessionFactory = Callable[["WampServerProtocol", Serializer], Session]


@dataclass(frozen=True, slots=True)
class TransportLimits:
    max_frame_bytes: int = 1 << 20
    max_pending_frame_bytes: int = 64 << 10
    max_handshake_bytes: int = 16 << 10
    handshake_timeout_s: float = 10.0
    max_pending: int = 1024
    max_pending_per_address: int = 32


def frame_header(length: int, binary: bool) -> bytes:
    """Header of one final, unmasked WebSocket data frame of `length` payload bytes."""
    first = 0x82 if binary else 0x81
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return _pack_16(first, 126, length)
    return _pack_64(first, 127, length)


class WampServerProtocol(WebSocketServerProtocol):
    """One WebSocket connection carrying one WAMP session."""

    factory: WampServerFactory
    session: Session | None = None
    _binary = False
    #: the source address while the connection is pending (counted), "" once admitted
    _pending_from = ""
    _refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        factory = self.factory
        limits = factory.limits
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        if (
            factory.pending >= limits.max_pending
            or factory.pending_by_address.get(address, 0) >= limits.max_pending_per_address
        ):
            self._refused = True
            log.warning("refusing a connection from %s: too many unauthenticated", address)
            if isinstance(transport, asyncio.Transport):
                transport.abort()
            else:
                transport.close()
            return
        factory.pending += 1
        factory.pending_by_address[address] = factory.pending_by_address.get(address, 0) + 1
        self._pending_from = address
        # per connection: autobahn copies factory options only where the instance has none
        self.maxFramePayloadSize = limits.max_pending_frame_bytes
        self.maxMessagePayloadSize = limits.max_pending_frame_bytes
        super().connection_made(transport)  # type: ignore[no-untyped-call]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._release()
        super().connection_lost(exc)  # type: ignore[no-untyped-call]

    def _release(self) -> None:
        address = self._pending_from
        if not address:
            return
        self._pending_from = ""
        factory = self.factory
        factory.pending -= 1
        left = factory.pending_by_address.get(address, 1) - 1
        if left > 0:
            factory.pending_by_address[address] = left
        else:
            factory.pending_by_address.pop(address, None)

    def _dataReceived(self, data: bytes) -> None:  # noqa: N802 (autobahn API)
        if (
            self.state == WebSocketProtocol.STATE_CONNECTING
            and len(self.data) + len(data) > self.factory.limits.max_handshake_bytes
        ):
            # cut before buffering: autobahn rescans the whole buffer on every chunk
            log.warning("closing %s: upgrade request over the header limit", self.peer)
            self.data = b""
            if self.transport is not None:
                self.transport.abort()
            return
        super()._dataReceived(data)

    def admitted(self) -> None:
        """The session was welcomed: no longer pending, frames up to `max_frame_bytes`."""
        self._release()
        limit = self.factory.limits.max_frame_bytes
        self.maxFramePayloadSize = limit
        self.maxMessagePayloadSize = limit

    def onConnect(self, request: ConnectionRequest) -> str:  # noqa: N802 (autobahn API)
        for proto in request.protocols:
            serializer = self.factory.serializers.get(proto)
            if serializer is not None:
                self._serializer = serializer
                self._binary = serializer.binary
                return proto
        raise ConnectionDeny(ConnectionDeny.NOT_ACCEPTABLE, "no supported WAMP subprotocol offered")

    def onOpen(self) -> None:  # noqa: N802
        self.session = self.factory.new_session(self, self._serializer)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802, N803
        session = self.session
        if session is not None:
            session.receive(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:  # noqa: N802, N803
        session = self.session
        if session is not None:
            self.session = None
            session.closed()

    # -- the session's view of the transport (router_core.session.Transport) --------------------

    def send_frame(self, payload: bytes) -> None:
        transport = self.transport
        if self.state != _STATE_OPEN or transport is None:
            return
        transport.writelines((frame_header(len(payload), self._binary), payload))

    def close_transport(self) -> None:
        if self.state == _STATE_OPEN:
            self.sendClose(1000)
        elif self.transport is not None:
            self.transport.close()

    def pause(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def buffered_bytes(self) -> int:
        transport = self.transport
        return transport.get_write_buffer_size() if transport is not None else 0


class WampServerFactory(WebSocketServerFactory):
    protocol = WampServerProtocol

    def __init__(
        self,
        new_session: SessionFactory,
        serializers: dict[str, Serializer],
        limits: TransportLimits,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(loop=loop, protocols=list(serializers))
        self.new_session = new_session
        self.serializers = serializers
        self.limits = limits
        self.pending = 0
        self.pending_by_address: dict[str, int] = {}
        # frame limits are set per connection (pending / admitted); these are the defaults
        self.setProtocolOptions(
            maxMessagePayloadSize=limits.max_pending_frame_bytes,
            maxFramePayloadSize=limits.max_pending_frame_bytes,
            utf8validateIncoming=False,
            autoFragmentSize=0,
            tcpNoDelay=True,
            openHandshakeTimeout=limits.handshake_timeout_s,
            closeHandshakeTimeout=2,
            perMessageCompressionAccept=lambda offers: None,
        )

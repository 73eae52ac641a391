"""WebSocket transport (autobahn's asyncio server): subprotocol negotiation and framing.

Inbound frames go to the connection's `Session`; outbound frames bypass autobahn's general
`sendMessage` path (compression, fragmentation and statistics we never use) and are written as
single unmasked frames, which is what a server sends.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable

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
        max_frame_bytes: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(loop=loop, protocols=list(serializers))
        self.new_session = new_session
        self.serializers = serializers
        # The WAMP layer enforces `max_frame_bytes` with a protocol violation; the WebSocket layer
        # has a hard cap above it so a huge frame is never buffered in full.
        self.setProtocolOptions(
            maxMessagePayloadSize=4 * max_frame_bytes,
            maxFramePayloadSize=4 * max_frame_bytes,
            utf8validateIncoming=False,
            autoFragmentSize=0,
            tcpNoDelay=True,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=2,
            perMessageCompressionAccept=lambda offers: None,
        )

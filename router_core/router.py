"""The router: accepts WebSocket connections, runs HELLO → (CHALLENGE → AUTHENTICATE) → WELCOME,
authorizes by reservation stake, runs the SWAP handshake, and hands sessions to their realm.

Observers of routed messages (metering, SWAP) are plugged into every realm here, in one place.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from domain.events import ChainHead
from router_core import messages as m
from router_core.auth import ANONYMOUS, ETH_EIP191, AuthFailed, Challenge, EthEip191Auth
from router_core.chain_clock import ChainClock
from router_core.client import ChequeJournal, SwapOffer
from router_core.links import (
    LINK_OUT,
    ROUTER_ROLE,
    Federation,
    LinkCharge,
    LinkLimits,
    LinkMeter,
    LinkPeer,
    link_proof,
)
from router_core.market import MarketService
from router_core.meta import SessionMeta
from router_core.metering import MeteringObserver, UsageSink
from router_core.realm import Realm, RoutingObserver
from router_core.reservation import BandwidthGate
from router_core.serializer import Serializer, serializers
from router_core.session import Session, State
from router_core.stakes import StakeView
from router_core.swap import BALANCE_PROCEDURE, CHEQUE_PROCEDURE, SwapService
from router_core.transport import TransportLimits, WampServerFactory, WampServerProtocol

log = logging.getLogger("router_core.router")

ROUTER_ROLES: dict[str, Any] = {
    "broker": {
        "features": {
            "publisher_exclusion": True,
            "subscriber_blackwhite_listing": True,
            "pattern_based_subscription": True,
            "session_meta_api": True,
        }
    },
    "dealer": {
        "features": {"call_timeout": True, "call_canceling": True, "progressive_call_results": True}
    },
}


@dataclass(frozen=True, slots=True)
class RealmOptions:
    name: str
    allow_anonymous: bool = False
    #: throttle/refuse peers sending more than their reserved messages per block
    enforce_bandwidth: bool = False
    #: messages per block held (throttled) beyond the reservation before refusing
    burst_messages: int = 0


@dataclass(frozen=True, slots=True)
class Limits:
    max_frame_bytes: int = 1 << 20
    max_write_buffer_bytes: int = 64 << 20
    call_timeout_ms: int = 30_000
    max_pending_calls_per_session: int = 10_000
    #: welcomed sessions; unauthenticated connections are limited apart (below)
    max_sessions: int = 10_000
    max_subscriptions_per_session: int = 1_000
    max_registrations_per_session: int = 1_000
    #: before WELCOME: the WebSocket upgrade request, then HELLO..WELCOME, each in bounded time
    handshake_timeout_s: float = 10.0
    hello_timeout_s: float = 10.0
    max_handshake_bytes: int = 16 << 10
    max_pending_frame_bytes: int = 64 << 10
    max_pending: int = 1_024
    max_pending_per_address: int = 32

    def transport(self) -> TransportLimits:
        return TransportLimits(
            max_frame_bytes=self.max_frame_bytes,
            max_pending_frame_bytes=min(self.max_pending_frame_bytes, self.max_frame_bytes),
            max_handshake_bytes=self.max_handshake_bytes,
            handshake_timeout_s=self.handshake_timeout_s,
            max_pending=self.max_pending,
            max_pending_per_address=self.max_pending_per_address,
        )


class Router:
    def __init__(
        self,
        address: str,
        realms: Sequence[RealmOptions],
        stakes: StakeView,
        clock: ChainClock,
        sink: UsageSink | None = None,
        swap: SwapService | None = None,
        limits: Limits | None = None,
        chain_id: int = 0,
        watermark_every_blocks: int = 0,
        peers: dict[str, list[LinkPeer]] | None = None,
        link_key: bytes | None = None,
        link_limits: LinkLimits | None = None,
        link_swap: SwapOffer | None = None,
        link_journal: ChequeJournal | None = None,
        market: MarketService | None = None,
        discovering: Collection[str] = (),
    ) -> None:
        self.address = address
        self.market = market
        #: peer routers per realm (router-to-router links); `link_key` is this router's operator
        #: key, which logs in to them and proves this router to routers dialing it. A realm in
        #: `discovering` links too, to peers set while running (`Federation.set_peers`)
        self.peers = {
            realm: list(found)
            for realm, found in (peers or {}).items()
            if found or realm in discovering
        }
        if self.peers and link_key is None:
            raise ValueError("router links need the router's key (link_key)")
        self._link_key = link_key or b""
        self.link_limits = link_limits or LinkLimits()
        self._link_swap = link_swap
        self._link_journal = link_journal
        self.federations: dict[str, Federation] = {}
        self.chain_id = chain_id
        #: emit ChainHead(block - 1) for each realm at least this often (0: never)
        self.watermark_every_blocks = watermark_every_blocks
        self._last_watermark = -(2**62)
        self._reading_paused = False
        self.options = {r.name: r for r in realms}
        self.stakes = stakes
        self.clock = clock
        self.sink = sink
        self.swap = swap
        self.limits = limits or Limits()
        self.realms: dict[str, Realm] = {}
        self.sessions: dict[int, Session] = {}
        self._eth = EthEip191Auth(address)
        self._serializers: dict[str, Serializer] = serializers()
        self._server: asyncio.Server | None = None
        self._joining: set[asyncio.Task[None]] = set()
        self.port = 0

    def pause_reading(self) -> None:
        """Back-pressure from the ledger hand-off: read nothing more from any session."""
        self._reading_paused = True
        for session in self.sessions.values():
            session.transport.pause()

    def resume_reading(self) -> None:
        self._reading_paused = False
        for session in self.sessions.values():
            if not session.held:  # a throttled session stays paused until its next block
                session.transport.resume()

    def _on_block(self, block: int) -> None:
        self._check_reservations(block)
        self._watermark(block)

    def _check_reservations(self, block: int) -> None:
        """A reservation is checked at every block, not only at join: a session whose stake
        ended is served nothing more and closed; a changed stake changes its budget."""
        for realm in self.realms.values():
            for session in list(realm.sessions.values()):
                if (
                    session.authmethod != ETH_EIP191
                    or session.state is not State.ESTABLISHED
                    or session.authrole == ROUTER_ROLE
                ):
                    continue
                mpb = self.stakes.reserved_mpb(realm.name, session.authid, block)
                if mpb <= 0:
                    text = f"{session.authid} no longer holds a reservation in {realm.name!r}"
                    realm.suspend(session, text)
                    session.goodbye(m.NO_RESERVATION, text)
                elif session.gate is not None:
                    session.gate.mpb = mpb

    def _watermark(self, block: int) -> None:
        every = self.watermark_every_blocks
        if self.sink is None or every <= 0 or block - self._last_watermark < every:
            return
        # everything of the blocks before `block` is metered: a signed watermark per realm, so
        # an idle router never holds an epoch open
        self._last_watermark = block
        for name in self.realms:
            self.sink.emit(ChainHead(realm=name, chain_id=self.chain_id, block=block - 1))

    def _link_meter(self, realm: str) -> LinkMeter | None:
        sink, clock = self.sink, self.clock
        if sink is None:
            return None
        meter = sink.meter

        def metered(kind: str, from_peer: str, to_peer: str, uri: str, nbytes: int) -> None:
            meter(realm, from_peer, to_peer, kind, uri, nbytes, clock.block)

        return metered

    def _link_charge(self, realm: str) -> LinkCharge | None:
        swap = self.swap
        if swap is None:
            return None

        def charge(sender: Session, uri: str, nbytes: int) -> None:
            swap.routed(realm, LINK_OUT, sender, sender, uri, nbytes)

        return charge

    def observers(self) -> list[RoutingObserver]:
        found: list[RoutingObserver] = []
        if self.sink is not None:
            found.append(MeteringObserver(self.sink, self.clock))
        if self.swap is not None:
            found.append(self.swap)
        return found

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        observers = self.observers()
        for name in self.options:
            realm = Realm(name, loop, observers, self.limits)
            SessionMeta(realm, self.address)
            if self.swap is not None:
                realm.dealer.meta[CHEQUE_PROCEDURE] = self.swap.cheque
                realm.dealer.meta[BALANCE_PROCEDURE] = self.swap.balance
            if self.market is not None:
                self.market.attach(realm)
            self.realms[name] = realm
            self.clock.on_block(realm.on_block)
            if name in self.peers:
                self.federations[name] = Federation(
                    realm,
                    self.address,
                    self._link_key,
                    self.peers[name],
                    self.link_limits,
                    self._link_meter(name),
                    self._link_swap,
                    self._link_journal,
                    self._link_charge(name),
                )
        self.clock.on_block(self._on_block)
        if self.swap is not None:
            self.swap.start()
        factory = WampServerFactory(
            self._new_session, self._serializers, self.limits.transport(), loop
        )
        self._server = await loop.create_server(factory, host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("router %s listening on ws://%s:%d", self.address, host, self.port)
        for federation in self.federations.values():
            federation.start()
        return self.port

    async def stop(self) -> None:
        for task in list(self._joining):
            task.cancel()
        for federation in self.federations.values():
            await federation.stop()
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions.values()):
            session.goodbye(m.CLOSE_SYSTEM_SHUTDOWN, "router stopping")
            session.close_transport()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self.swap is not None:
            await self.swap.stop()

    # -- sessions ---------------------------------------------------------------------------------

    def _new_session(self, protocol: WampServerProtocol, serializer: Serializer) -> Session:
        session = Session(
            random.randint(1, m.MAX_ID),
            protocol,
            serializer,
            self,
            self.limits.max_frame_bytes,
            self.limits.max_write_buffer_bytes,
        )
        self.sessions[session.id] = session
        if self._reading_paused:
            protocol.pause()
        asyncio.get_running_loop().call_later(
            self.limits.hello_timeout_s, self._hello_deadline, session
        )
        return session

    def _hello_deadline(self, session: Session) -> None:
        if session.state is State.NEW or session.state is State.CHALLENGED:
            session.abort(
                m.AUTHENTICATION_FAILED,
                f"no completed login within {self.limits.hello_timeout_s:g}s",
            )

    def established(self) -> int:
        return sum(len(realm.sessions) for realm in self.realms.values())

    def on_hello(self, session: Session, realm: str, details: dict[str, Any]) -> None:
        try:
            self._hello(session, realm, details)
        except AuthFailed as exc:
            log.info("session %s refused: %s %s", session.id, exc.uri, exc.message)
            session.abort(exc.uri, exc.message)

    def _hello(self, session: Session, realm: str, details: dict[str, Any]) -> None:
        options = self.options.get(realm)
        if options is None:
            raise AuthFailed(m.NO_SUCH_REALM, f"no realm {realm!r} on this router")
        session.hello_details = details
        roles = details.get("roles")
        session.roles = roles if isinstance(roles, dict) else {}
        methods = details.get("authmethods") or [ANONYMOUS]
        if not isinstance(methods, list):
            raise m.ProtocolViolation("HELLO.Details.authmethods must be a list")
        if ETH_EIP191 in methods:
            challenge = self._eth.challenge(realm, details)
            session.challenge = {"realm": realm, "challenge": challenge}
            session.state = State.CHALLENGED
            session.send([m.CHALLENGE, challenge.method, challenge.extra])
        elif ANONYMOUS in methods and options.allow_anonymous:
            self._welcome(session, realm, f"anonymous-{session.id}", "anonymous", ANONYMOUS)
        else:
            raise AuthFailed(m.NO_AUTH_METHOD, f"none of {methods} is accepted in realm {realm!r}")

    def on_authenticate(self, session: Session, signature: str, extra: dict[str, Any]) -> None:
        try:
            realm = session.challenge["realm"]
            challenge: Challenge = session.challenge["challenge"]
            address = self._eth.verify(session.hello_details, challenge, signature)
            link = (session.hello_details.get("authextra") or {}).get("link")
            if link is not None:
                self._link_welcome(session, realm, address, link)
                return
            if not self.stakes.has_reservation(realm, address, self.clock.block):
                raise AuthFailed(
                    m.NO_RESERVATION,
                    f"{address} holds no reservation stake in realm {realm!r}: stake on the realm first",
                )
            if self.swap is None:
                self._welcome(session, realm, address, "user", ETH_EIP191)
                return
            # the peer's SWAP state is read off the loop before WELCOME
            task = asyncio.get_running_loop().create_task(
                self._swap_welcome(session, realm, address)
            )
            self._joining.add(task)
            task.add_done_callback(self._joining.discard)
        except AuthFailed as exc:
            log.info("session %s refused: %s %s", session.id, exc.uri, exc.message)
            session.abort(exc.uri, exc.message)

    def _link_welcome(self, session: Session, realm: str, address: str, link: Any) -> None:
        """A peer router logs in: role `router` if this realm lists it as a peer; the answer
        signs its nonce, so the dialer knows it reached the operator it meant."""
        federation = self.federations.get(realm)
        if federation is None or not federation.accepts(address):
            raise AuthFailed(
                m.NOT_AUTHORIZED, f"{address} is not a peer router of realm {realm!r} here"
            )
        nonce = link.get("nonce") if isinstance(link, dict) else None
        if not isinstance(nonce, str) or not 16 <= len(nonce) <= 128:
            raise AuthFailed(m.AUTHENTICATION_FAILED, "a link login needs authextra.link.nonce")
        proof = {"signature": link_proof(self._link_key, realm, address, nonce)}
        if self.swap is None:
            self._welcome(session, realm, address, ROUTER_ROLE, ETH_EIP191, proof)
            return
        # operators settle with each other as clients do with a router: the same handshake
        task = asyncio.get_running_loop().create_task(
            self._swap_welcome(session, realm, address, proof)
        )
        self._joining.add(task)
        task.add_done_callback(self._joining.discard)

    async def _swap_welcome(
        self, session: Session, realm: str, address: str, link: dict[str, Any] | None = None
    ) -> None:
        assert self.swap is not None
        try:
            await self.swap.prepare(realm, address, session.hello_details)
            if session.state is State.CHALLENGED:  # it may have gone meanwhile
                role = "user" if link is None else ROUTER_ROLE
                self._welcome(session, realm, address, role, ETH_EIP191, link)
        except AuthFailed as exc:
            log.info("session %s refused: %s %s", session.id, exc.uri, exc.message)
            session.abort(exc.uri, exc.message)
        except Exception:
            log.exception("session %s: loading its SWAP state failed", session.id)
            session.abort(m.CLOSE_SYSTEM_SHUTDOWN, "the router could not load its SWAP state")

    def _welcome(
        self,
        session: Session,
        realm_name: str,
        authid: str,
        authrole: str,
        authmethod: str,
        link: dict[str, Any] | None = None,
    ) -> None:
        realm = self.realms[realm_name]
        options = self.options[realm_name]
        if self.established() >= self.limits.max_sessions:
            raise AuthFailed(m.CLOSE_SYSTEM_SHUTDOWN, "router is full")
        session.authid = authid
        session.authrole = authrole
        session.authmethod = authmethod
        authextra: dict[str, Any] = {"router": self.address}
        if link is not None:
            authextra["link"] = link
        nonce = (session.hello_details.get("authextra") or {}).get("router_nonce")
        if self._link_key and isinstance(nonce, str) and 16 <= len(nonce) <= 128:
            # a client that found this router on chain checks it reached that operator
            authextra["router_proof"] = link_proof(self._link_key, realm_name, authid, nonce)
        if authmethod == ETH_EIP191 and self.swap is not None:
            authextra["swap"] = self.swap.join(session, realm_name, session.hello_details)
        if options.enforce_bandwidth and authmethod == ETH_EIP191 and link is None:
            mpb = self.stakes.reserved_mpb(realm_name, authid, self.clock.block)
            session.gate = BandwidthGate(mpb, options.burst_messages, self.clock)
        realm.join(session)
        session.transport.admitted()
        if self.swap is not None:
            self.swap.admit(session)
        session.send(
            [
                m.WELCOME,
                session.id,
                {
                    "realm": realm_name,
                    "authid": authid,
                    "authrole": authrole,
                    "authmethod": authmethod,
                    "authprovider": "meshledger",
                    "authextra": authextra,
                    "roles": ROUTER_ROLES,
                },
            ]
        )
        if realm.meta is not None:
            realm.meta.joined(session)

    def on_closed(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        realm = session.realm
        if realm is not None:
            realm.leave(session)
        if self.swap is not None:
            self.swap.leave(session)

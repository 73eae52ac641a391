"""Router-to-router links of one realm: the outbound WAMP session to each peer router, link-state
flooding, and forwarding of publications and calls across links (with origin and trail).

A link between routers A and B is two WAMP sessions: A dials B and B dials A (each logs in with
its operator key, `eth-eip191`, and gets auth role `router` if the other side lists it as a peer).
A router sends what it forwards over the session it dialed; answers to a forwarded call come
back over the session the call went out on. Routes come from `router_core.topology`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from autobahn.asyncio.websocket import WebSocketClientFactory, WebSocketClientProtocol
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils import to_checksum_address

from domain.events import METER_KINDS
from router_core import messages as m
from router_core.auth import ETH_EIP191, login_message, sign_challenge
from router_core.client import ChequeJournal, SwapOffer, next_cheque
from router_core.serializer import JsonSerializer, SerializationError
from router_core.session import Session, State
from router_core.swap import BALANCE_PROCEDURE, CHEQUE_PROCEDURE, PAYMENT_DUE_TOPIC
from router_core.topology import BadLinkState, LinkState, Topology

if TYPE_CHECKING:
    from router_core.realm import Realm

log = logging.getLogger("router_core.links")

ROUTER_ROLE = m.ROUTER_ROLE
#: link state announcements travel as PUBLISH on this topic over a link session
STATE_TOPIC = "mesh.link.state"
#: meta procedure: this router's links, reachable routers and forwarding counters in the realm
STATUS_PROCEDURE = "mesh.link.status"
LINK_LOST = "mesh.error.link_lost"
NO_ROUTE = "mesh.error.no_route"
#: a message counted when it crosses a link (observer kind): sent and received
LINK_OUT, LINK_IN = METER_KINDS[4], METER_KINDS[5]
assert (LINK_OUT, LINK_IN) == ("link_out", "link_in")


#: (kind, from_peer, to_peer, uri, frame bytes) of one metered message
LinkMeter = Callable[[str, str, str, str, int], None]
#: (sender, uri, frame bytes): one copy sent over a link on `sender`'s behalf, owed to this
#: router by SWAP (the router's SWAP observer; None when SWAP is off)
LinkCharge = Callable[[Session, str, int], None]


@dataclass(frozen=True, slots=True)
class LinkPeer:
    """A peer router of a realm: where to dial it and the operator address it must prove."""

    url: str
    address: str


@dataclass(frozen=True, slots=True)
class LinkLimits:
    #: first wait before re-dialing a dropped link; doubles per failed attempt up to the max
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0
    #: HELLO..WELCOME of a link session within this
    login_timeout_s: float = 10.0
    #: a link whose unsent bytes exceed this is closed (and re-dialed) rather than growing memory
    max_write_buffer_bytes: int = 64 << 20
    #: routers one router keeps link state of, per realm
    max_routers: int = 256
    #: a publication or call crossing more routers than this is not forwarded further
    max_hops: int = 16
    #: publication ids remembered per origin to drop a duplicate (during topology changes)
    dedup_window_publications: int = 65_536
    #: origins (router incarnations) remembered by the duplicate filter
    dedup_max_origins: int = 1_024
    #: calls forwarded over links and waiting for an answer, per realm
    max_pending_calls: int = 100_000


class SeenPublications:
    """Duplicate filter: the last `window` publication ids of each origin (bounded origins).

    An id older than every remembered one of its origin counts as seen: after `window` later
    publications of the same origin it is not delivered (counted in `stale`), never twice."""

    def __init__(self, window: int, max_origins: int) -> None:
        self.window = window
        self.max_origins = max_origins
        self._origins: OrderedDict[str, tuple[set[int], deque[int], list[int]]] = OrderedDict()
        self.duplicates = 0
        self.stale = 0

    def first_time(self, origin: str, pub: int) -> bool:
        entry = self._origins.get(origin)
        if entry is None:
            entry = self._origins[origin] = (set(), deque(), [-1])
            if len(self._origins) > self.max_origins:
                self._origins.popitem(last=False)
        else:
            self._origins.move_to_end(origin)
        seen, order, floor = entry
        if pub in seen:
            self.duplicates += 1
            return False
        if pub <= floor[0]:
            self.stale += 1
            return False
        seen.add(pub)
        order.append(pub)
        if len(order) > self.window:
            oldest = order.popleft()
            seen.discard(oldest)
            floor[0] = max(floor[0], oldest)
        return True


class RemoteCall:
    """A call sent over a link: who waits for its answer, and under which request id."""

    __slots__ = ("caller", "request", "link", "link_request", "uri", "timer")

    def __init__(
        self, caller: Session, request: int, link: Link, link_request: int, uri: str
    ) -> None:
        self.caller = caller
        self.request = request
        self.link = link
        self.link_request = link_request
        self.uri = uri
        self.timer: asyncio.TimerHandle | None = None


class _LinkFactory(WebSocketClientFactory):  # type: ignore[misc]
    def __init__(self, link: Link) -> None:
        super().__init__(url=link.peer.url, protocols=["wamp.2.json"])
        self.link = link


class _LinkProtocol(WebSocketClientProtocol):  # type: ignore[misc]
    factory: _LinkFactory

    def onOpen(self) -> None:  # noqa: N802 (autobahn API)
        self.factory.link.opened(self)

    def onMessage(self, payload: bytes, is_binary: bool) -> None:  # noqa: N802
        self.factory.link.received(payload)

    def onClose(self, was_clean: bool, code: int | None, reason: str | None) -> None:  # noqa: N802
        self.factory.link.closed(self, reason or f"connection closed (code {code})")


_LinkFactory.protocol = _LinkProtocol


class Link:
    """The outbound session to one peer router: dials, logs in, re-dials with bounded back-off."""

    def __init__(self, federation: Federation, peer: LinkPeer) -> None:
        self.federation = federation
        self.peer = peer
        self.serializer = JsonSerializer()
        self.up = False
        self.protocol: _LinkProtocol | None = None
        self.ids = itertools.count(1)
        self.connects = 0
        #: why the link last went down or was refused ("" while never)
        self.last_error = ""
        #: the peer's SWAP terms from WELCOME (empty: the peer runs no SWAP)
        self.swap_terms: dict[str, Any] = {}
        #: answers to this link's own calls (cheques), by request id
        self._own: dict[int, asyncio.Future[Any]] = {}
        self._pay_lock = asyncio.Lock()
        self.payments: list[dict[str, Any]] = []
        self._nonce = ""
        self._welcomed: asyncio.Future[None] | None = None
        self._closed: asyncio.Event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, reason: str = "router stopping") -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.drop(reason)

    async def _run(self) -> None:
        limits = self.federation.limits
        backoff = limits.backoff_initial_s
        while True:
            try:
                await self._connect(limits.login_timeout_s)
                backoff = limits.backoff_initial_s
                await self._closed.wait()
            except (OSError, TimeoutError, LinkRefused) as exc:
                log.info("link %s -> %s: %s", self.federation.me, self.peer.url, exc)
                self.drop(str(exc))
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, limits.backoff_max_s)

    async def _connect(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        self._closed = asyncio.Event()
        self._welcomed = loop.create_future()
        url = urlparse(self.peer.url)
        factory = _LinkFactory(self)
        async with asyncio.timeout(timeout_s):
            await loop.create_connection(factory, url.hostname or "127.0.0.1", url.port or 80)
            await self._welcomed
        self.connects += 1
        self.up = True
        if self.swap_terms:
            # the peer asks for payment on this topic; a debt already due is paid at once
            self._send([m.SUBSCRIBE, next(self.ids), {}, PAYMENT_DUE_TOPIC])
            terms = self.swap_terms
            if int(terms.get("debt", 0)) >= int(terms.get("payment_threshold", 1)):
                self._pay_soon(int(terms["debt"]), int(terms["last_cumulative"]))
        self.federation.link_up(self)

    # -- transport callbacks ----------------------------------------------------------------------

    def opened(self, protocol: _LinkProtocol) -> None:
        self.protocol = protocol
        self._nonce = secrets.token_hex(32)
        fed = self.federation
        authextra: dict[str, Any] = {"link": {"nonce": self._nonce}}
        if fed.swap_offer is not None:
            authextra["swap"] = asdict(fed.swap_offer)
        self._send(
            [
                m.HELLO,
                fed.realm.name,
                {
                    "authmethods": [ETH_EIP191],
                    "authid": fed.me,
                    "roles": {
                        "publisher": {},
                        "subscriber": {},
                        "caller": {"features": {"call_canceling": True}},
                    },
                    "authextra": authextra,
                },
            ]
        )

    def received(self, payload: bytes) -> None:
        try:
            msg = self.serializer.decode(payload)
            code = msg[0]
            if code == m.RESULT or code == m.ERROR:
                request = msg[1] if code == m.RESULT else msg[2]
                own = self._own.pop(request, None)
                if own is None:
                    self.federation.answer(self, msg, len(payload))
                elif not own.done():
                    own.set_result(msg)
            elif code == m.EVENT:
                due = msg[5] if len(msg) > 5 else {}
                self._pay_soon(int(due["debt"]), int(due["last_cumulative"]))
            elif code == m.CHALLENGE:
                self._send([m.AUTHENTICATE, sign_challenge(self.federation.key, msg[2]), {}])
            elif code == m.WELCOME:
                self._welcome(msg[2])
            elif code == m.GOODBYE:
                self._send([m.GOODBYE, {}, m.CLOSE_GOODBYE_AND_OUT])
                self.drop(f"peer said goodbye: {msg[2]}")
            elif code == m.ABORT:
                self._refused(f"{msg[2]}: {msg[1].get('message', '')}")
        except (SerializationError, IndexError, KeyError, TypeError, AttributeError) as exc:
            self.drop(f"malformed message from the peer router: {exc}")

    def _pay_soon(self, debt: int, last_cumulative: int) -> None:
        task = asyncio.get_running_loop().create_task(self.pay(debt, last_cumulative))
        task.add_done_callback(_log_failure)

    async def pay(self, debt: int, router_last_cumulative: int) -> dict[str, Any] | None:
        """Pay the peer router a cumulative cheque for `debt` (client SWAP rules: journaled
        before it is sent, a cheque the peer has not seen is resent unchanged). A cheque the
        peer had already accepted (its answer lost with a dropped link) is answered by reading
        the balance again and paying what is still owed, once."""
        fed = self.federation
        if fed.journal is None or not self.swap_terms:
            return None
        async with self._pay_lock:
            for _ in range(2):
                claim = next_cheque(
                    fed.journal, self.swap_terms, fed.key, debt, router_last_cumulative
                )
                if claim is None or not self.up:
                    return None
                msg = await self._call(CHEQUE_PROCEDURE, claim)
                if msg[0] == m.RESULT:
                    result: dict[str, Any] = msg[3][0] if len(msg) > 3 and msg[3] else {}
                    self.payments.append(result)
                    return result
                reason = (msg[6] if len(msg) > 6 else {}).get("reason")
                if reason != "not_increasing":
                    raise LinkRefused(f"cheque refused by {self.peer.address}: {msg[4:]}")
                balance = await self._call(BALANCE_PROCEDURE, {})
                if balance[0] != m.RESULT:
                    raise LinkRefused(f"balance refused by {self.peer.address}: {balance[4:]}")
                debt = int(balance[3][0]["debt"])
                router_last_cumulative = int(balance[3][0]["last_cumulative"])
            return None

    async def _call(self, procedure: str, kwargs: dict[str, Any]) -> list[Any]:
        """One call of this link's own (the peer's SWAP procedures): RESULT or ERROR."""
        request = next(self.ids)
        answer = self._own[request] = asyncio.get_running_loop().create_future()
        self._send([m.CALL, request, {}, procedure, [], kwargs])
        msg: list[Any] = await asyncio.wait_for(answer, self.federation.limits.login_timeout_s)
        return msg

    def _welcome(self, details: dict[str, Any]) -> None:
        # the peer proves its operator key by signing our nonce: a link never forwards to an
        # impostor at the peer's address
        extra = details.get("authextra") or {}
        proof = (extra.get("link") or {}).get("signature", "")
        text = login_message(self.federation.realm.name, self.federation.me, self._nonce)
        try:
            signer = Account.recover_message(encode_defunct(text=text), signature=proof)
        except Exception as exc:
            self._refused(f"peer router sent no valid link signature: {exc}")
            return
        if signer.lower() != self.peer.address.lower():
            self._refused(f"peer router signed as {signer}, expected {self.peer.address}")
            return
        self.swap_terms = extra.get("swap") or {}
        if self._welcomed is not None and not self._welcomed.done():
            self._welcomed.set_result(None)

    def _refused(self, reason: str) -> None:
        if self._welcomed is not None and not self._welcomed.done():
            self._welcomed.set_exception(LinkRefused(reason))
        self.drop(reason)

    def closed(self, protocol: _LinkProtocol, reason: str) -> None:
        if self.protocol is not protocol and self.protocol is not None:
            return  # an earlier connection of this link, already dropped
        self.protocol = None
        if self._welcomed is not None and not self._welcomed.done():
            self._welcomed.set_exception(LinkRefused(f"closed before WELCOME: {reason}"))
        self._lost(reason)

    def drop(self, reason: str) -> None:
        self.last_error = reason
        protocol, self.protocol = self.protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()
        self._lost(reason)

    def _lost(self, reason: str) -> None:
        was_up, self.up = self.up, False
        for waiting in self._own.values():
            if not waiting.done():
                waiting.set_exception(LinkRefused(f"link lost: {reason}"))
        self._own.clear()
        self._closed.set()
        if was_up:
            log.warning("link %s -> %s lost: %s", self.federation.me, self.peer.address, reason)
            self.federation.link_down(self, reason)

    # -- sending ----------------------------------------------------------------------------------

    def _send(self, msg: list[Any]) -> int:
        protocol = self.protocol
        if protocol is None:
            return 0
        frame = self.serializer.encode(msg)
        protocol.sendMessage(frame, False)
        transport = protocol.transport
        if transport is not None and (
            transport.get_write_buffer_size() > self.federation.limits.max_write_buffer_bytes
        ):
            self.drop(f"over {self.federation.limits.max_write_buffer_bytes} unsent bytes")
        return len(frame)

    def send(self, msg: list[Any]) -> int:
        """Send over the link when up; the frame's size, 0 when not sent."""
        return self._send(msg) if self.up else 0


class LinkRefused(Exception):
    """The peer router refused or could not prove the link."""


class Federation:
    """One realm's links: link state, forwarding of publications and calls, link sessions."""

    def __init__(
        self,
        realm: Realm,
        me: str,
        key: bytes,
        peers: list[LinkPeer],
        limits: LinkLimits | None = None,
        meter: LinkMeter | None = None,
        swap_offer: SwapOffer | None = None,
        journal: ChequeJournal | None = None,
        charge: LinkCharge | None = None,
    ) -> None:
        self.realm = realm
        self.me = me
        self.key = key
        self.limits = limits or LinkLimits()
        peers = [LinkPeer(p.url, to_checksum_address(p.address)) for p in peers]
        self.peers = {p.address.lower(): p for p in peers}
        self.links: dict[str, Link] = {p.address.lower(): Link(self, p) for p in peers}
        self.topology = Topology(me.lower(), self.limits.max_routers)
        self.seen = SeenPublications(
            self.limits.dedup_window_publications, self.limits.dedup_max_origins
        )
        #: metering of each message crossing a link (link_out / link_in) and of answers
        #: delivered to callers here
        self.meter = meter
        #: this operator's side of the SWAP handshake with peer routers, and the journal of the
        #: cheques it issued them (None: it offers none; a peer running SWAP refuses the link)
        self.swap_offer = swap_offer
        self.journal = journal
        #: each copy sent over a link is owed by whoever sent it here (a client, or the peer
        #: router that forwarded it): every hop is paid by the one before it
        self.charge = charge
        self._incarnation = time.time_ns()
        self._version = 0
        self._pub_ids = itertools.count(1)
        self._calls: dict[tuple[int, int], RemoteCall] = {}  # (id(link), link request)
        self._by_caller: dict[tuple[int, int], RemoteCall] = {}  # (caller session, request)
        self._announce_soon: asyncio.Handle | None = None
        self._started = False
        self.forwarded = 0
        self.received_forwarded = 0
        realm.links = self
        realm.dealer.links = self
        realm.broker.on_interest = self.interest_changed
        realm.dealer.on_interest = self.interest_changed
        realm.dealer.meta[STATUS_PROCEDURE] = lambda caller, args, kwargs: self.stats(
            str(kwargs.get("topic", "")), str(kwargs.get("rpc", ""))
        )
        self._announce()

    def accepts(self, address: str) -> bool:
        return address.lower() in self.peers

    def start(self) -> None:
        self._started = True
        for link in self.links.values():
            link.start()

    def set_peers(self, peers: list[LinkPeer]) -> None:
        """Change the realm's peer routers while running (routers found on chain): a new peer
        is dialed, a peer gone is unlinked (its session here closed too: it may not forward
        any more), a peer at a new URL is re-dialed there. This router itself is skipped."""
        me = self.me.lower()
        wanted = {
            p.address.lower(): LinkPeer(p.url, to_checksum_address(p.address))
            for p in peers
            if p.address.lower() != me
        }
        for address, link in list(self.links.items()):
            peer = wanted.get(address)
            if peer is None or peer.url != link.peer.url:
                del self.links[address]
                task = asyncio.get_running_loop().create_task(
                    link.stop("no longer a router of the realm" if peer is None else "moved")
                )
                task.add_done_callback(_log_failure)
        for session in list(self.realm.sessions.values()):
            if session.authrole == ROUTER_ROLE and session.authid.lower() not in wanted:
                session.close_transport()
        self.peers = wanted
        for address, peer in wanted.items():
            if address not in self.links:
                link = self.links[address] = Link(self, peer)
                if self._started:
                    link.start()
        self._announce()

    async def stop(self) -> None:
        for link in self.links.values():
            await link.stop()

    # -- link state -------------------------------------------------------------------------------

    def _own_state(self) -> LinkState:
        broker, dealer = self.realm.broker, self.realm.dealer
        # router topics (mesh.*: SWAP payment requests of link sessions) are nobody's interest
        self._version += 1
        return LinkState(
            self.me.lower(),
            self._incarnation,
            self._version,
            frozenset(a for a, link in self.links.items() if link.up),
            frozenset(t for t in broker.exact_topics() if not t.startswith("mesh.")),
            frozenset(broker.prefix_topics()),
            frozenset(dealer.procedures()),
        )

    def interest_changed(self) -> None:
        # many subscriptions at once are announced once
        if self._announce_soon is None:
            self._announce_soon = asyncio.get_running_loop().call_soon(self._announce)

    def _announce(self) -> None:
        self._announce_soon = None
        state = self._own_state()
        self.topology.update(state)
        self._flood(state, skip="")

    def _flood(self, state: LinkState, skip: str) -> None:
        msg = [m.PUBLISH, 0, {}, STATE_TOPIC, [], state.to_wire()]
        for address, link in self.links.items():
            if address != skip and address != state.origin and link.up:
                msg[1] = next(link.ids)
                link.send(msg)

    def _on_state(self, session: Session, kwargs: dict[str, Any]) -> None:
        try:
            state = LinkState.from_wire(kwargs)
            if state.origin == self.me.lower():
                return  # our own, come back around
            stored = self.topology.update(state)
        except BadLinkState as exc:
            log.warning("link state from %s refused: %s", session.authid, exc)
            return
        if stored:
            self._flood(state, skip=session.authid.lower())

    def link_up(self, link: Link) -> None:
        # the new neighbour learns every state we hold, then our new neighbour list spreads
        for state in list(self.topology.states.values()):
            if state.origin != link.peer.address.lower():
                link.send([m.PUBLISH, next(link.ids), {}, STATE_TOPIC, [], state.to_wire()])
        self._announce()

    def link_down(self, link: Link, reason: str) -> None:
        for call in [c for c in self._calls.values() if c.link is link]:
            self._fail(call, LINK_LOST, f"link to router {link.peer.address} lost: {reason}")
        self._announce()

    # -- what a peer router sends ------------------------------------------------------------------

    def from_peer(self, session: Session, code: int, msg: list[Any], nbytes: int) -> None:
        """A message on a peer router's session (it dialed us): link state, a forwarded
        PUBLISH or CALL, a CANCEL, its SWAP subscription, GOODBYE."""
        realm = self.realm
        if code == m.PUBLISH:
            if msg[3] == STATE_TOPIC:
                self._on_state(session, msg[5] if len(msg) > 5 else {})
            else:
                self._forwarded_publish(session, msg, nbytes)
        elif code == m.CALL:
            if msg[3] not in realm.dealer.meta:  # paying a cheque is between the two routers
                self._metered(LINK_IN, session.authid, self.me, msg[3], nbytes)
            realm.dealer.call(session, msg, nbytes)
        elif code == m.CANCEL:
            realm.dealer.cancel(session, msg)
        elif code == m.SUBSCRIBE and msg[3].startswith("mesh."):
            realm.broker.subscribe(session, msg)  # the SWAP payment requests
        elif code == m.GOODBYE:
            session.send([m.GOODBYE, {}, m.CLOSE_GOODBYE_AND_OUT])
            session.close_transport()
        else:
            session.violation(f"message {code} is not part of a router link")

    # -- publications -----------------------------------------------------------------------------

    def publish(self, session: Session, msg: list[Any]) -> None:
        """A client's PUBLISH: delivered here, then forwarded with this router as its origin."""
        self.realm.broker.publish(session, msg)
        topic = msg[3]
        fanout = self.topology.fanout(self.topology.me, topic)
        if fanout and not session.suspended:
            options = {
                k: v
                for k, v in msg[2].items()
                if k not in ("acknowledge", "exclude", "eligible", "exclude_me")
            }
            options["forward_for"] = [{"authid": self.topology.me, "authrole": ROUTER_ROLE}]
            options["_mesh_pub"] = [self._incarnation, next(self._pub_ids)]
            self._forward(session, fanout, [m.PUBLISH, 0, options, topic, *msg[4:]], topic)

    def _forwarded_publish(self, session: Session, msg: list[Any], nbytes: int) -> None:
        """Deduplicate, deliver here, forward on along the origin's tree."""
        options = msg[2]
        trail = _trail(options)
        pub = options.get("_mesh_pub")
        if (
            trail is None
            or type(pub) is not list
            or len(pub) != 2
            or not all(type(x) is int for x in pub)
        ):
            session.violation("a forwarded PUBLISH needs forward_for and _mesh_pub")
            return
        self.received_forwarded += 1
        self._metered(LINK_IN, session.authid, self.me, msg[3], nbytes)
        origin = trail[0]
        if not self.seen.first_time(f"{origin}:{pub[0]}", pub[1]):
            return
        self.realm.broker.publish(session, msg)
        if len(trail) >= self.limits.max_hops:
            return
        fanout = tuple(a for a in self.topology.fanout(origin, msg[3]) if a not in trail)
        if fanout:
            forwarded = dict(options)
            forwarded["forward_for"] = [
                *options["forward_for"],
                {"authid": self.topology.me, "authrole": ROUTER_ROLE},
            ]
            self._forward(session, fanout, [m.PUBLISH, 0, forwarded, msg[3], *msg[4:]], msg[3])

    def _forward(self, sender: Session, fanout: tuple[str, ...], msg: list[Any], uri: str) -> None:
        for address in fanout:
            link = self.links.get(address)
            if link is None:
                continue
            msg[1] = next(link.ids)
            nbytes = link.send(msg)
            if nbytes:
                self.forwarded += 1
                self._metered(LINK_OUT, self.me, link.peer.address, uri, nbytes)
                if self.charge is not None:
                    self.charge(sender, uri, nbytes)

    def _metered(self, kind: str, from_peer: str, to_peer: str, uri: str, nbytes: int) -> None:
        if self.meter is not None:
            self.meter(kind, from_peer, to_peer, uri, nbytes)

    # -- calls ------------------------------------------------------------------------------------

    def call(self, caller: Session, msg: list[Any], timeout_s: float) -> bool:
        """A CALL with no local callee: forward it towards a router registering it. False when
        no router of the realm has it (the dealer answers no_such_procedure)."""
        request, options, uri = msg[1], msg[2], msg[3]
        from_router = getattr(caller, "authrole", "") == ROUTER_ROLE  # stand-ins have no role
        trail = _trail(options) if from_router else []
        if trail is None:
            caller.violation("a forwarded CALL needs forward_for")
            return True
        hop = self.topology.next_hop(uri)
        if hop is None:
            return False
        if hop in trail or len(trail) >= self.limits.max_hops:
            caller.error(m.CALL, request, NO_ROUTE, f"no loop-free route to a callee of {uri}")
            return True
        link = self.links.get(hop)
        if link is None or not link.up:
            caller.error(m.CALL, request, LINK_LOST, f"link to router {hop} is down")
            return True
        if len(self._calls) >= self.limits.max_pending_calls:
            caller.error(m.CALL, request, m.CANCELED, "too many calls pending over links")
            return True
        key = (caller.id, request)
        if key in self._by_caller:
            caller.violation(f"CALL request id {request} is already pending")
            return True
        forwarded = {k: v for k, v in options.items() if k in ("receive_progress", "timeout")}
        timeout = options.get("timeout")
        if type(timeout) is int and timeout > 0:
            timeout_s = timeout / 1000
        if timeout_s > 0:
            forwarded["timeout"] = max(1, int(timeout_s * 1000))
        forwarded["forward_for"] = [
            *(options.get("forward_for") or []),
            {"authid": self.topology.me, "authrole": ROUTER_ROLE},
        ]
        if not from_router:
            forwarded["forward_for"] = forwarded["forward_for"][-1:]
        link_request = next(link.ids)
        out = [m.CALL, link_request, forwarded, uri, *msg[4:]]
        nbytes = link.send(out)
        if not nbytes:
            caller.error(m.CALL, request, LINK_LOST, f"link to router {hop} is down")
            return True
        self._metered(LINK_OUT, self.me, link.peer.address, uri, nbytes)
        if self.charge is not None:
            self.charge(caller, uri, nbytes)
        pending = RemoteCall(caller, request, link, link_request, uri)
        self._calls[(id(link), link_request)] = pending
        self._by_caller[key] = pending
        if timeout_s > 0:
            pending.timer = asyncio.get_running_loop().call_later(
                timeout_s, self._timed_out, pending
            )
        return True

    def answer(self, link: Link, msg: list[Any], nbytes: int) -> None:
        """RESULT or ERROR from a peer router for a call we forwarded."""
        if msg[0] == m.ERROR:
            if msg[1] != m.CALL:
                return  # an ERROR for a publication we forwarded (none asks for one)
            request = msg[2]
        else:
            request = msg[1]
        pending = self._calls.get((id(link), request))
        if pending is None:
            return  # answered already (timed out, canceled)
        self._metered(LINK_IN, link.peer.address, self.me, pending.uri, nbytes)
        if msg[0] == m.RESULT:
            progress = msg[2].get("progress") is True
            if not progress:
                self._finish(pending)
            answer = [m.RESULT, pending.request, {"progress": True} if progress else {}, *msg[3:]]
        else:
            self._finish(pending)
            answer = [m.ERROR, m.CALL, pending.request, {}, *msg[4:]]
        caller = pending.caller
        if caller.state is State.ESTABLISHED:
            frame = self.realm.dealer.reply(caller, answer, pending.request)
            if getattr(caller, "authrole", "") != ROUTER_ROLE:  # a client here: its own kind
                kind = "result" if msg[0] == m.RESULT else "error"
                self._metered(kind, link.peer.address, caller.authid, pending.uri, len(frame))
            else:
                self._metered(LINK_OUT, self.me, caller.authid, pending.uri, len(frame))

    def cancel(self, caller: Session, request: int) -> bool:
        pending = self._by_caller.get((caller.id, request))
        if pending is None:
            return False
        self._fail(pending, m.CANCELED, "canceled by the caller")
        return True

    def _timed_out(self, pending: RemoteCall) -> None:
        pending.timer = None
        if self._by_caller.get((pending.caller.id, pending.request)) is pending:
            self._fail(pending, m.TIMEOUT, "call timed out")

    def _finish(self, pending: RemoteCall) -> None:
        self._calls.pop((id(pending.link), pending.link_request), None)
        self._by_caller.pop((pending.caller.id, pending.request), None)
        if pending.timer is not None:
            pending.timer.cancel()
            pending.timer = None

    def _fail(self, pending: RemoteCall, uri: str, message: str) -> None:
        self._finish(pending)
        # the peer stops the call too (its callee gets an INTERRUPT); a lost link sends nothing
        pending.link.send([m.CANCEL, pending.link_request, {"mode": "killnowait"}])
        if pending.caller.state is State.ESTABLISHED:
            pending.caller.send([m.ERROR, m.CALL, pending.request, {}, uri, [message]])

    def session_left(self, session: Session) -> None:
        if not self._by_caller:
            return
        for pending in [c for c in self._by_caller.values() if c.caller is session]:
            self._finish(pending)
            pending.link.send([m.CANCEL, pending.link_request, {"mode": "killnowait"}])

    def stats(self, topic: str = "", procedure: str = "") -> dict[str, Any]:
        """Links, reachable routers and counters; with `topic` the peers a publication on it
        goes to from here, with `procedure` the next hop of a call to it."""
        found: dict[str, Any] = {}
        if topic:
            found["fanout"] = sorted(self.topology.fanout(self.topology.me, topic))
        if procedure:
            found["next_hop"] = self.topology.next_hop(procedure)
        return found | {
            "links_up": sorted(a for a, link in self.links.items() if link.up),
            "link_errors": {a: link.last_error for a, link in self.links.items()},
            "cheques_paid": sum(len(link.payments) for link in self.links.values()),
            "reachable": sorted(self.topology.reachable()),
            "edges": self.topology.edges(),
            "forwarded": self.forwarded,
            "received_forwarded": self.received_forwarded,
            "duplicates": self.seen.duplicates,
            "stale": self.seen.stale,
            "pending_calls": len(self._calls),
        }


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("link payment failed: %s", task.exception())


def _trail(options: dict[str, Any]) -> list[str] | None:
    """The routers a forwarded message passed (origin first), or None when malformed."""
    entries = options.get("forward_for")
    if type(entries) is not list or not entries:
        return None
    trail = []
    for entry in entries:
        authid = entry.get("authid") if type(entry) is dict else None
        if type(authid) is not str:
            return None
        trail.append(authid.lower())
    return trail


def link_proof(key: bytes, realm: str, client: str, nonce: str) -> str:
    """The accepting router's answer to a link nonce: proves its operator key to the dialer."""
    return sign_challenge(key, {"realm": realm, "router": client, "nonce": nonce})

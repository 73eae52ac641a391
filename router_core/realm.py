"""A realm: its sessions, its broker and dealer, and the one place routing observers plug in.

Every routed message (EVENT delivered, INVOCATION, RESULT, ERROR) passes through
`Realm.routed`, which calls the observers (metering, SWAP) in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from router_core import messages as m
from router_core.broker import Broker
from router_core.dealer import Dealer
from router_core.reservation import ADMIT, HOLD
from router_core.session import Session, State

if TYPE_CHECKING:
    from router_core.links import Federation
    from router_core.meta import SessionMeta

log = logging.getLogger("router_core.realm")

#: messages whose content is routed to another session
_ROUTING = frozenset((m.PUBLISH, m.CALL, m.YIELD, m.ERROR))
#: topics only the router publishes on (meta events, SWAP payment requests): a client's
#: publication there could forge a payment request that other clients answer with a cheque
RESERVED_TOPICS = ("wamp.", "mesh.")


class SessionLimits(Protocol):
    """Per-session limits of routing (`router_core.router.Limits`)."""

    @property
    def call_timeout_ms(self) -> int: ...
    @property
    def max_pending_calls_per_session(self) -> int: ...
    @property
    def max_subscriptions_per_session(self) -> int: ...
    @property
    def max_registrations_per_session(self) -> int: ...


@dataclass(frozen=True, slots=True)
class _Defaults:
    call_timeout_ms: int = 30_000
    max_pending_calls_per_session: int = 10_000
    max_subscriptions_per_session: int = 1_000
    max_registrations_per_session: int = 1_000


_DEFAULT_LIMITS = _Defaults()


class RoutingObserver(Protocol):
    def routed(
        self, realm: str, kind: str, sender: Session, receiver: Session, uri: str, nbytes: int
    ) -> None:
        """One message routed from `sender` to `receiver`; must not block."""


class Realm:
    def __init__(
        self,
        name: str,
        loop: asyncio.AbstractEventLoop,
        observers: Sequence[RoutingObserver] = (),
        limits: SessionLimits | None = None,
    ) -> None:
        limits = limits or _DEFAULT_LIMITS
        self.name = name
        self.sessions: dict[int, Session] = {}
        self._throttled: set[Session] = set()
        #: router-to-router links of this realm (router_core.links.Federation), if any
        self.links: Federation | None = None
        #: the session meta API (router_core.meta.SessionMeta), if the router serves it
        self.meta: SessionMeta | None = None
        self.set_observers(observers)
        self.broker = Broker(self.routed, limits.max_subscriptions_per_session)
        self.dealer = Dealer(
            self.routed,
            loop,
            limits.call_timeout_ms,
            limits.max_pending_calls_per_session,
            limits.max_registrations_per_session,
        )
        self._handlers = {
            m.PUBLISH: self._publish,
            m.SUBSCRIBE: self.broker.subscribe,
            m.UNSUBSCRIBE: self.broker.unsubscribe,
            m.CALL: self._call,
            m.YIELD: self.dealer.yield_,
            m.ERROR: self.dealer.error,
            m.REGISTER: self.dealer.register,
            m.UNREGISTER: self.dealer.unregister,
            m.CANCEL: self.dealer.cancel,
            m.GOODBYE: self._goodbye,
        }

    def set_observers(self, observers: Sequence[RoutingObserver]) -> None:
        name = self.name
        calls = tuple(o.routed for o in observers)
        if not calls:

            def routed(
                kind: str, sender: Session, receiver: Session, uri: str, nbytes: int
            ) -> None:
                return None
        elif len(calls) == 1:
            (only,) = calls

            def routed(
                kind: str, sender: Session, receiver: Session, uri: str, nbytes: int
            ) -> None:
                only(name, kind, sender, receiver, uri, nbytes)
        else:

            def routed(
                kind: str, sender: Session, receiver: Session, uri: str, nbytes: int
            ) -> None:
                for call in calls:
                    call(name, kind, sender, receiver, uri, nbytes)

        self.routed = routed

    # -- membership -------------------------------------------------------------------------------

    def join(self, session: Session) -> None:
        session.realm = self
        session.state = State.ESTABLISHED
        self.sessions[session.id] = session

    def leave(self, session: Session) -> None:
        if self.sessions.pop(session.id, None) is None:
            return
        self._throttled.discard(session)
        session.held.clear()
        self.broker.session_left(session)
        self.dealer.session_left(session)
        if self.links is not None:
            self.links.session_left(session)
        if self.meta is not None:
            self.meta.left(session)

    # -- dispatch ---------------------------------------------------------------------------------

    def dispatch(self, session: Session, code: int, msg: list[Any], nbytes: int) -> None:
        handler = self._handlers.get(code)
        if handler is None:
            raise m.ProtocolViolation(f"message {code} not allowed in an established session")
        if session.suspended and code in _ROUTING and not self._may_while_suspended(code, msg):
            self._refuse_suspended(session, code, msg)
            return
        if session.authrole == m.ROUTER_ROLE and self.links is not None:
            self.links.from_peer(session, code, msg, nbytes)
            return
        if (code == m.PUBLISH or code == m.CALL) and session.gate is not None:
            verdict = session.gate.admit()
            if verdict != ADMIT:
                self._over_budget(session, verdict, code, msg, nbytes)
                return
        handler(session, msg)

    def _may_while_suspended(self, code: int, msg: list[Any]) -> bool:
        return code == m.CALL and msg[3] in self.dealer.meta  # the router's own: pay, balance

    def _refuse_suspended(self, session: Session, code: int, msg: list[Any]) -> None:
        reason = session.suspended
        if code == m.CALL or (code == m.PUBLISH and msg[2].get("acknowledge") is True):
            session.error(code, msg[1], m.PAYMENT_REQUIRED, reason)
        elif code == m.YIELD or code == m.ERROR:
            self.dealer.refuse_result(session, msg, reason)

    def suspend(self, session: Session, reason: str) -> None:
        """Route nothing from or to `session` from now on (it may still pay)."""
        session.suspended = reason
        self._throttled.discard(session)
        session.held.clear()

    def resume(self, session: Session) -> None:
        if session.state is State.ESTABLISHED:
            session.suspended = ""

    def _publish(self, session: Session, msg: list[Any]) -> None:
        if type(msg[3]) is str and msg[3].startswith(RESERVED_TOPICS):
            if msg[2].get("acknowledge") is True:
                session.error(
                    m.PUBLISH,
                    msg[1],
                    m.NOT_AUTHORIZED,
                    f"{msg[3]}: only the router publishes there",
                )
            return
        links = self.links
        if links is None:
            self.broker.publish(session, msg)
        else:
            links.publish(session, msg)

    def _call(self, session: Session, msg: list[Any]) -> None:
        self.dealer.call(session, msg, 0)

    def _goodbye(self, session: Session, msg: list[Any]) -> None:
        session.send([m.GOODBYE, {}, m.CLOSE_GOODBYE_AND_OUT])
        session.close_transport()

    # -- reservation enforcement ------------------------------------------------------------------

    def _over_budget(
        self, session: Session, verdict: int, code: int, msg: list[Any], nbytes: int
    ) -> None:
        if verdict == HOLD:
            # throttle: hold the message for the next block and stop reading from this peer
            session.held.append((code, msg, nbytes))
            if session not in self._throttled:
                self._throttled.add(session)
                session.transport.pause()
            return
        gate = session.gate
        assert gate is not None
        text = f"over the reserved {gate.mpb} messages per block (+{gate.burst} held)"
        if code == m.CALL or msg[2].get("acknowledge") is True:
            session.error(code, msg[1], m.BANDWIDTH_EXCEEDED, text)

    def on_block(self, block: int) -> None:
        """A new block: release held messages (they count in the new block's budget)."""
        if not self._throttled:
            return
        throttled, self._throttled = self._throttled, set()
        for session in throttled:
            if session.state is not State.ESTABLISHED:
                continue
            held = list(session.held)
            session.held.clear()
            session.transport.resume()
            for code, msg, nbytes in held:
                self.dispatch(session, code, msg, nbytes)

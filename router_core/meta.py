"""WAMP session meta API of one realm: `wamp.session.on_join` / `on_leave` events, published by
the router and carried across router links, and the router-local `wamp.session.count/list/get`.

The events follow the WAMP spec's shapes. Session ids are unique per router only, so each event
also names the router the session is on (`router` in the join details, in the leave kwargs):
a subscriber on router A learns of sessions joining router B. Link sessions between routers are
infrastructure, not members of the realm: they get no events and are not counted.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from router_core import messages as m
from router_core.dealer import MetaError
from router_core.session import Session, State

if TYPE_CHECKING:
    from router_core.realm import Realm

ON_JOIN = "wamp.session.on_join"
ON_LEAVE = "wamp.session.on_leave"
COUNT = "wamp.session.count"
LIST = "wamp.session.list"
GET = "wamp.session.get"
NO_SUCH_SESSION = "wamp.error.no_such_session"

#: ids of the router's own publisher stand-ins (apart from WAMP session ids, which are <= 2**53)
_publisher_ids = itertools.count(2**53 + 2**40)


class RouterPublisher:
    """The router itself as the publisher of meta events: what the broker and the links need of
    a session. It runs no SWAP and is never suspended, so nobody is charged for a meta event;
    its deliveries are metered like any event (the subscriber asked for them)."""

    authrole = m.ROUTER_ROLE
    authmethod = "router"
    swap = None
    suspended = ""
    state = State.ESTABLISHED

    def __init__(self, address: str) -> None:
        self.id = next(_publisher_ids)
        self.authid = address


class SessionMeta:
    """Publishes the realm's joins and leaves and serves the session meta procedures."""

    def __init__(self, realm: Realm, router: str) -> None:
        self.realm = realm
        self.router = router
        self.publisher = RouterPublisher(router)
        self._requests = itertools.count(1)
        realm.meta = self
        realm.dealer.meta[COUNT] = self.count
        realm.dealer.meta[LIST] = self.list_ids
        realm.dealer.meta[GET] = self.get

    @staticmethod
    def _member(session: Session) -> bool:
        return session.authrole != m.ROUTER_ROLE

    def details(self, session: Session) -> dict[str, Any]:
        return {
            "session": session.id,
            "authid": session.authid,
            "authrole": session.authrole,
            "authmethod": session.authmethod,
            "authprovider": "meshledger",
            "transport": {"type": "websocket", "serializer": session.serializer.subprotocol},
            "router": self.router,
        }

    def joined(self, session: Session) -> None:
        """After the session's WELCOME: `on_join` with its details."""
        if self._member(session):
            self._publish(ON_JOIN, [self.details(session)], {})

    def left(self, session: Session) -> None:
        if self._member(session):
            args = [session.id, session.authid, session.authrole]
            self._publish(ON_LEAVE, args, {"router": self.router})

    def _publish(self, topic: str, args: list[Any], kwargs: dict[str, Any]) -> None:
        # through the realm's own path: delivered here and forwarded to interested routers
        msg = [m.PUBLISH, next(self._requests), {}, topic, args, kwargs]
        links = self.realm.links
        if links is None:
            self.realm.broker.publish(self.publisher, msg)  # type: ignore[arg-type]
        else:
            links.publish(self.publisher, msg)  # type: ignore[arg-type]

    # -- meta procedures (this router's sessions of the realm) --------------------------------------

    def _members(self, authroles: Any) -> list[Session]:
        if authroles is not None and (
            type(authroles) is not list or not all(type(r) is str for r in authroles)
        ):
            raise MetaError(m.INVALID_ARGUMENT, "authroles must be a list of role names")
        return [
            s
            for s in self.realm.sessions.values()
            if self._member(s) and (authroles is None or s.authrole in authroles)
        ]

    def count(self, caller: Session, args: list[Any], kwargs: dict[str, Any]) -> int:
        return len(self._members(args[0] if args else None))

    def list_ids(self, caller: Session, args: list[Any], kwargs: dict[str, Any]) -> list[int]:
        return [s.id for s in self._members(args[0] if args else None)]

    def get(self, caller: Session, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        session_id = args[0] if args else None
        session = self.realm.sessions.get(session_id) if type(session_id) is int else None
        if session is None or not self._member(session):
            raise MetaError(NO_SUCH_SESSION, f"no session {session_id!r} on this router")
        return self.details(session)

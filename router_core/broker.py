"""Publish/subscribe of one realm: subscriptions (exact and prefix match) and event delivery.

An EVENT is serialised once per subscription and serializer, then written to every subscriber;
each delivery is reported to the realm's routing observer. Prefix matching looks up the topic's
prefixes of the lengths some subscription has (at most `MAX_URI_CHARS` lookups), so its cost per
publish does not grow with the number of prefix subscriptions.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from router_core import messages as m
from router_core.serializer import SerializationError
from router_core.session import Session

#: observer of one routed message: (kind, sender, receiver, uri, frame bytes)
Routed = Callable[[str, Session, Session, str, int], None]

_ids = itertools.count(1)


class Subscription:
    __slots__ = ("id", "topic", "match", "subscribers")

    def __init__(self, topic: str, match: str) -> None:
        self.id = next(_ids)
        self.topic = topic
        self.match = match
        self.subscribers: dict[int, Session] = {}


class Broker:
    def __init__(self, routed: Routed, max_subscriptions_per_session: int = 1_000) -> None:
        self._routed = routed
        self._max_subscriptions = max_subscriptions_per_session
        self._exact: dict[str, Subscription] = {}
        self._prefix: dict[str, Subscription] = {}
        #: the distinct lengths of the prefix subscriptions, ascending
        self._prefix_lengths: tuple[int, ...] = ()
        self._by_id: dict[int, Subscription] = {}
        self._publication_ids = itertools.count(1)
        #: called when a topic gains its first or loses its last subscriber (router links)
        self.on_interest: Callable[[], None] | None = None

    def subscribe(self, session: Session, msg: list[Any]) -> None:
        request, options, topic = msg[1], msg[2], msg[3]
        match = options.get("match", "exact")
        if match not in ("exact", "prefix"):
            session.error(
                m.SUBSCRIBE, request, m.INVALID_ARGUMENT, f"match policy {match!r} not supported"
            )
            return
        if not m.valid_uri(topic, prefix=match == "prefix"):
            session.error(m.SUBSCRIBE, request, m.INVALID_URI, f"invalid topic URI {topic!r}")
            return
        if len(session.subscriptions) >= self._max_subscriptions:
            session.error(
                m.SUBSCRIBE,
                request,
                m.INVALID_ARGUMENT,
                f"too many subscriptions (limit {self._max_subscriptions} per session)",
            )
            return
        table = self._exact if match == "exact" else self._prefix
        sub = table.get(topic)
        if sub is None:
            sub = table[topic] = Subscription(topic, match)
            self._by_id[sub.id] = sub
            if match == "prefix":
                self._index_prefixes()
            if self.on_interest is not None:
                self.on_interest()
        sub.subscribers[session.id] = session
        session.subscriptions.add(sub.id)
        session.send([m.SUBSCRIBED, request, sub.id])

    def unsubscribe(self, session: Session, msg: list[Any]) -> None:
        request, sub_id = msg[1], msg[2]
        sub = self._by_id.get(sub_id)
        if sub is None or session.id not in sub.subscribers:
            session.error(m.UNSUBSCRIBE, request, m.NO_SUCH_SUBSCRIPTION)
            return
        self._drop(session, sub)
        session.send([m.UNSUBSCRIBED, request])

    def _drop(self, session: Session, sub: Subscription) -> None:
        sub.subscribers.pop(session.id, None)
        session.subscriptions.discard(sub.id)
        if not sub.subscribers:
            del self._by_id[sub.id]
            table = self._exact if sub.match == "exact" else self._prefix
            table.pop(sub.topic, None)
            if sub.match == "prefix":
                self._index_prefixes()
            if self.on_interest is not None:
                self.on_interest()

    def exact_topics(self) -> list[str]:
        return list(self._exact)

    def prefix_topics(self) -> list[str]:
        return list(self._prefix)

    def _index_prefixes(self) -> None:
        self._prefix_lengths = tuple(sorted({len(p) for p in self._prefix}))

    def session_left(self, session: Session) -> None:
        for sub_id in list(session.subscriptions):
            sub = self._by_id.get(sub_id)
            if sub is not None:
                self._drop(session, sub)

    def publish(self, session: Session, msg: list[Any]) -> None:
        request, options, topic = msg[1], msg[2], msg[3]
        acknowledge = options.get("acknowledge") is True
        if not m.valid_uri(topic):
            if acknowledge:
                session.error(m.PUBLISH, request, m.INVALID_URI, f"invalid topic URI {topic!r}")
            return
        publication = next(self._publication_ids)
        refused: set[str] = set()
        exact = self._exact.get(topic)
        if exact is not None:
            self._deliver(session, options, exact, publication, {}, msg, refused)
        if self._prefix_lengths:
            size = len(topic)
            for length in self._prefix_lengths:
                if length > size:
                    break
                sub = self._prefix.get(topic[:length])
                if sub is not None:
                    self._deliver(
                        session, options, sub, publication, {"topic": topic}, msg, refused
                    )
        if not acknowledge:
            return
        if refused:
            session.error(
                m.PUBLISH,
                request,
                m.INVALID_ARGUMENT,
                f"not delivered to subscribers speaking {', '.join(sorted(refused))}: "
                "the payload is not representable there",
            )
        else:
            session.send([m.PUBLISHED, request, publication])

    def _deliver(
        self,
        publisher: Session,
        options: dict[str, Any],
        sub: Subscription,
        publication: int,
        details: dict[str, Any],
        msg: list[Any],
        refused: set[str],
    ) -> None:
        skip = publisher.id if options.get("exclude_me", True) is not False else -1
        exclude = options.get("exclude")
        eligible = options.get("eligible")
        event = [m.EVENT, sub.id, publication, details, *msg[4:]]
        routed = self._routed
        topic = sub.topic if sub.match == "exact" else msg[3]
        # one encoding per serializer in use (usually one or two), shared by all subscribers
        first_ser: Any = None
        first_frame = b""
        frames: dict[Any, bytes] | None = None
        for sid, receiver in list(sub.subscribers.items()):
            if publisher.suspended:
                return  # went past its disconnect threshold with an earlier delivery
            if sid == skip or receiver.suspended:
                continue
            if exclude is not None and type(exclude) is list and sid in exclude:
                continue
            if eligible is not None and type(eligible) is list and sid not in eligible:
                continue
            ser = receiver.serializer
            if ser is first_ser:
                frame = first_frame
            elif first_ser is None:
                first_ser = ser
                frame = first_frame = _encode(ser, event)
            else:
                if frames is None:
                    frames = {}
                found = frames.get(ser)
                if found is None:
                    found = frames[ser] = _encode(ser, event)
                frame = found
            if not frame:  # this serializer cannot carry the payload (a big int in msgpack)
                refused.add(ser.subprotocol)
                continue
            receiver.send_frame(frame)
            routed("event", publisher, receiver, topic, len(frame))

    def notify(self, session: Session, topic: str, kwargs: dict[str, Any]) -> bool:
        """Router-originated EVENT to one session, if it subscribed to `topic` (exact)."""
        sub = self._exact.get(topic)
        if sub is None or session.id not in sub.subscribers:
            return False
        session.send([m.EVENT, sub.id, next(self._publication_ids), {}, [], kwargs])
        return True


def _encode(ser: Any, event: list[Any]) -> bytes:
    """The frame, or b"" when the serializer cannot represent the message."""
    try:
        return ser.encode(event)  # type: ignore[no-any-return]
    except SerializationError:
        return b""

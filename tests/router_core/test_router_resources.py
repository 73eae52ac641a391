"""Unauthenticated and greedy clients cannot exhaust the router: connection floods, slowloris
headers, oversized frames before login, subscription/registration floods, huge URIs; and prefix
matching stays correct (and independent of how many prefix subscriptions there are)."""

from __future__ import annotations

import asyncio
import contextlib
import random

import pytest
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import SubscribeOptions
from hypothesis import given, settings
from hypothesis import strategies as st
from router_harness import Harness, run, until
from websockets.asyncio.client import connect as ws_connect

from router_core.broker import Broker
from router_core.client import JoinRefused
from router_core.messages import MAX_URI_CHARS
from router_core.router import Limits

UPGRADE = (
    "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Protocol: wamp.2.json\r\n"
)


async def closed_by_peer(reader: asyncio.StreamReader, timeout_s: float) -> bool:
    """True once the router closed the connection (EOF or reset), False on timeout."""
    try:
        async with asyncio.timeout(timeout_s):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


def test_slowloris_header_is_cut_at_the_limit(harness: Harness) -> None:
    async def body() -> None:
        router = await harness.start(swap=False, limits=Limits(max_handshake_bytes=4096))
        reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
        writer.write(UPGRADE.encode())
        sent = len(UPGRADE)
        with contextlib.suppress(ConnectionError):
            for _ in range(64):  # a header line that never ends, 1 KiB at a time
                writer.write(b"X-Slow: " + b"a" * 1016)
                sent += 1024
                await writer.drain()
                await asyncio.sleep(0.005)
        assert await closed_by_peer(reader, 5)
        assert sent > 4096
        writer.close()
        # the loop was not stalled: a client logs in and is served right away
        session = await harness.connect(router, harness.peer(), swap=False)
        await session.register(lambda: 1, "com.example.one")
        assert await asyncio.wait_for(session.call("com.example.one"), 5) == 1
        await router.stop()

    run(body)


def test_pending_connections_are_limited_and_never_lock_out_staked_clients(
    harness: Harness,
) -> None:
    async def body() -> None:
        limits = Limits(max_sessions=2, max_pending_per_address=3, hello_timeout_s=1.5)
        router = await harness.start(swap=False, limits=limits)
        url = f"ws://127.0.0.1:{router.port}/ws"
        idle = [await ws_connect(url, subprotocols=["wamp.2.json"]) for _ in range(3)]  # type: ignore[list-item]
        # the 4th unauthenticated connection from this address is closed at accept
        reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
        assert await closed_by_peer(reader, 5)
        writer.close()
        # the idle ones never say HELLO: the deadline closes them
        for ws in idle:
            await asyncio.wait_for(ws.wait_closed(), 10)
        assert router.sessions == {}
        # pending connections never counted against max_sessions: two staked clients join
        first = await harness.connect(router, harness.peer(), swap=False)
        second = await harness.connect(router, harness.peer(), swap=False)
        with pytest.raises(JoinRefused) as refused:
            await harness.connect(router, harness.peer(), swap=False)
        assert refused.value.message == "router is full"
        await first.leave()
        await second.leave()
        await router.stop()

    run(body)


def test_oversized_frame_before_login_is_refused_at_its_header(harness: Harness) -> None:
    async def body() -> None:
        router = await harness.start(swap=False)
        reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
        writer.write(UPGRADE.encode() + b"\r\n")
        response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b" 101 " in response
        # a masked text frame announcing 4 MiB: only its header and a few bytes are sent
        header = bytes([0x81, 0x80 | 127]) + (4 << 20).to_bytes(8, "big") + b"\x00" * 4
        writer.write(header + b"x" * 1024)
        assert await closed_by_peer(reader, 5)
        writer.close()
        await router.stop()

    run(body)


def test_subscription_registration_and_uri_limits(harness: Harness) -> None:
    async def body() -> None:
        limits = Limits(max_subscriptions_per_session=5, max_registrations_per_session=3)
        router = await harness.start(swap=False, limits=limits)
        greedy = await harness.connect(router, harness.peer(), swap=False)
        for i in range(5):
            await greedy.subscribe(lambda: None, f"com.example.t{i}")
        with pytest.raises(ApplicationError) as err:
            await greedy.subscribe(lambda: None, "com.example.t5")
        assert "too many subscriptions (limit 5" in str(err.value)
        for i in range(3):
            await greedy.register(lambda: None, f"com.example.p{i}")
        with pytest.raises(ApplicationError) as err:
            await greedy.register(lambda: None, "com.example.p3")
        assert "too many registrations (limit 3" in str(err.value)
        long_uri = "com." + "x" * MAX_URI_CHARS
        other = await harness.connect(router, harness.peer(), swap=False)
        for attempt in (
            other.register(lambda: None, long_uri),
            other.subscribe(lambda: None, long_uri),
        ):
            with pytest.raises(ApplicationError) as err:
                await attempt
            assert err.value.error == "wamp.error.invalid_uri"
        # the greedy session's own subscriptions still work
        got: list[int] = []
        await other.subscribe(got.append, "com.example", options=SubscribeOptions(match="prefix"))
        greedy.publish("com.example.t0", 1)
        await until(lambda: got == [1], "the prefix subscriber got the event")
        await router.stop()

    run(body)


class _Session:
    """The least a Broker needs of a subscriber in a unit test."""

    def __init__(self, sid: int) -> None:
        self.id = sid
        self.subscriptions: set[int] = set()
        self.suspended = ""
        self.serializer = self
        self.subprotocol = "test"
        self.frames: list[bytes] = []

    def encode(self, msg: list[object]) -> bytes:
        return repr(msg).encode()

    def send(self, msg: list[object]) -> None:
        pass

    def send_frame(self, frame: bytes) -> None:
        self.frames.append(frame)


segments = st.sampled_from(["a", "ab", "b", "com", "x1"])
uris = st.lists(segments, min_size=1, max_size=4).map(".".join)


@settings(max_examples=60, deadline=None)
@given(prefixes=st.lists(uris, max_size=12), topic=uris, cut=st.integers(0, 3))
def test_prefix_matching_equals_a_scan_of_every_subscription(
    prefixes: list[str], topic: str, cut: int
) -> None:
    delivered: list[str] = []
    broker = Broker(lambda kind, s, r, uri, n: delivered.append(str(r.id)))
    subs = {}
    for i, prefix in enumerate({p[: max(1, len(p) - cut)] for p in prefixes}):
        session = _Session(i + 1)
        subs[session.id] = prefix
        broker.subscribe(session, [32, i, {"match": "prefix"}, prefix])  # type: ignore[arg-type]
    broker.publish(_Session(999), [16, 1, {}, topic])  # type: ignore[arg-type]
    expected = sorted(str(sid) for sid, prefix in subs.items() if topic.startswith(prefix))
    assert sorted(delivered) == expected


def test_prefix_matching_cost_does_not_grow_with_subscriptions() -> None:
    """10,000 prefix subscriptions of one length: a publish makes one lookup per distinct
    length, not one per subscription (the realm-wide slowdown of issue 9)."""
    broker = Broker(lambda *a: None, max_subscriptions_per_session=20_000)
    session = _Session(1)
    rng = random.Random(7)
    for i in range(10_000):
        broker.subscribe(session, [32, i, {"match": "prefix"}, f"com.s{rng.randrange(10**6):06d}"])  # type: ignore[arg-type]
    assert len(broker._prefix_lengths) == 1

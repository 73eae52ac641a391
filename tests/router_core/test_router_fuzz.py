"""Malformed frames (hypothesis) never crash the router and never disturb other sessions."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from router_harness import Harness, Key, decode, encode, login
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from router_core.client import MeshSession
from router_core.router import Limits, Router

MAX_FRAME = 4096


class Live:
    """A router with two well-behaved sessions, shared by all examples."""

    def __init__(self, tmp_path: Path) -> None:
        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.harness = Harness(tmp_path)
        self.router: Router = self.loop.run_until_complete(
            # no SWAP: the well-behaved sessions make many calls and have no chequebook to pay
            self.harness.start(swap=False, limits=Limits(max_frame_bytes=MAX_FRAME))
        )
        self.key: Key = self.harness.peer()
        self.caller: MeshSession = self.loop.run_until_complete(
            self.harness.connect(self.router, self.harness.peer(), swap=False)
        )
        self.callee: MeshSession = self.loop.run_until_complete(
            self.harness.connect(self.router, self.harness.peer(), swap=False)
        )
        self.loop.run_until_complete(self.callee.register(lambda x: x, "com.example.echo"))

    def healthy(self) -> bool:
        return bool(
            self.loop.run_until_complete(
                asyncio.wait_for(self.caller.call("com.example.echo", 7), 5)
            )
            == 7
        )

    def close(self) -> None:
        self.loop.run_until_complete(self.router.stop())
        self.loop.close()
        asyncio.set_event_loop(None)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    node = Live(tmp_path_factory.mktemp("fuzz"))
    yield node
    node.close()


async def send_and_observe(
    port: int, proto: str, key: Key, established: bool, frames: list[bytes | str]
) -> list[Any]:
    replies: list[Any] = []
    async with connect(f"ws://127.0.0.1:{port}/ws", subprotocols=[proto], max_size=None) as ws:  # type: ignore[list-item]
        if established:
            await login(ws, proto, key)
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            for frame in frames:
                await ws.send(frame)
            while True:
                replies.append(decode(proto, await asyncio.wait_for(ws.recv(), 0.3)))
    return replies


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)
codes = st.sampled_from(
    [0, 1, 2, 3, 4, 5, 6, 8, 16, 17, 32, 34, 36, 48, 49, 50, 64, 66, 68, 70, 99, -1, 2**60]
)
wamp_like = st.tuples(codes, st.lists(json_values, max_size=6)).map(lambda t: [t[0], *t[1]])


@st.composite
def frames(draw: st.DrawFn, proto: str) -> list[bytes | str]:
    out: list[bytes | str] = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["raw", "wamp", "value"]))
        if kind == "raw":
            raw = draw(st.binary(max_size=64))
            out.append(raw if proto == "wamp.2.msgpack" else raw.decode("latin-1"))
        elif kind == "wamp":
            out.append(encode(proto, draw(wamp_like)))
        else:
            out.append(encode(proto, draw(json_values)))
    return out


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.data(),
    proto=st.sampled_from(["wamp.2.json", "wamp.2.msgpack"]),
    established=st.booleans(),
)
def test_malformed_frames_never_crash_nor_disturb(
    live: Live, data: st.DataObject, proto: str, established: bool
) -> None:
    sent = data.draw(frames(proto))
    replies = live.loop.run_until_complete(
        send_and_observe(live.router.port, proto, live.key, established, sent)
    )
    for reply in replies:
        assert isinstance(reply, list) and reply and isinstance(reply[0], int)
        if reply[0] in (3, 6):  # ABORT / GOODBYE carry a proper error URI
            assert reply[2].startswith(("wamp.error.", "mesh.error.", "wamp.close."))
    assert live.healthy()


def test_oversized_frame_closes_the_connection(live: Live) -> None:
    big = encode("wamp.2.json", [16, 1, {}, "com.example.big", ["x" * MAX_FRAME]])

    async def send_big() -> int | None:
        async with connect(
            f"ws://127.0.0.1:{live.router.port}/ws", subprotocols=["wamp.2.json"], max_size=None
        ) as ws:  # type: ignore[list-item]
            await login(ws, "wamp.2.json", live.key)
            await ws.send(big)
            with contextlib.suppress(ConnectionClosed, TimeoutError):
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            return ws.close_code

    # autobahn sends 1009 "message too big" and drops the connection (the client may see 1006)
    assert live.loop.run_until_complete(send_big()) in (1009, 1006)
    assert live.healthy()


def test_message_before_welcome_aborts(live: Live) -> None:
    replies = live.loop.run_until_complete(
        send_and_observe(
            live.router.port,
            "wamp.2.json",
            live.key,
            False,
            [encode("wamp.2.json", [32, 1, {}, "com.x"])],
        )
    )
    assert replies == [
        [3, {"message": "message 32 not allowed in state new"}, "wamp.error.protocol_violation"]
    ]
    assert live.healthy()

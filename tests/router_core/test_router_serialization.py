"""Serialization edge cases with stock autobahn clients: integers beyond 64 bits stay exact in
JSON (autobahn's JSON serializer is the reference), a message msgpack cannot carry is refused
with a clear error, and a msgpack peer's binary map key is a clean protocol error."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import PublishOptions
from router_harness import Harness, run, until

from router_core.serializer import JsonSerializer, MsgPackSerializer, SerializationError

BIG = [123456789012345678901, 2**64, -(2**70), 2**255 - 19]


def test_json_integers_beyond_64_bits_decode_exactly() -> None:
    ser = JsonSerializer()
    for value in BIG:
        msg = ser.decode(ser.encode([16, 1, {}, "com.x", [value]]))
        assert msg[4] == [value] and type(msg[4][0]) is int
    # digits inside a string take the exact path too and stay a string
    assert ser.decode(b'[16,1,{},"com.x",["1234567890123456789012"]]')[4] == [
        "1234567890123456789012"
    ]
    with pytest.raises(SerializationError):
        ser.decode(b"[16,1,{},NaN,12345678901234567890]")


def test_msgpack_refuses_what_it_cannot_carry() -> None:
    ser = MsgPackSerializer()
    with pytest.raises(SerializationError, match="not representable in msgpack"):
        ser.encode([36, 1, 2, {}, [2**64]])
    with pytest.raises(SerializationError, match="is not a string"):
        ser.decode(bytes.fromhex("93") + b"\x10\x01" + bytes.fromhex("81c4016101"))
    with pytest.raises(SerializationError, match="not allowed for map key"):
        ser.decode(bytes.fromhex("93") + b"\x10\x01" + bytes.fromhex("810101"))


def test_big_integers_reach_json_subscribers_exactly(harness: Harness) -> None:
    async def body() -> None:
        router = await harness.start(swap=False)
        got: list[Any] = []
        arrived = asyncio.Event()

        def on_event(*args: Any, **kwargs: Any) -> None:
            got.append((args, kwargs))
            arrived.set()

        sub = await harness.connect(router, harness.peer(), swap=False)
        await sub.subscribe(on_event, "com.example.amounts")
        pub = await harness.connect(router, harness.peer(), swap=False)
        await pub.publish(
            "com.example.amounts", *BIG, total=sum(BIG), options=PublishOptions(acknowledge=True)
        )
        await asyncio.wait_for(arrived.wait(), 5)
        assert got == [(tuple(BIG), {"total": sum(BIG)})]
        assert all(type(v) is int for v in got[0][0])

        callee = await harness.connect(router, harness.peer(), swap=False)
        await callee.register(lambda a: a * 3, "com.example.triple")
        assert await pub.call("com.example.triple", BIG[0]) == 3 * BIG[0]
        await router.stop()

    run(body)


def test_msgpack_subscriber_cannot_get_a_big_integer_and_the_publisher_is_told(
    harness: Harness,
) -> None:
    async def body() -> None:
        router = await harness.start(swap=False)
        packed: list[Any] = []
        texts: list[Any] = []
        sub_mp = await harness.connect(router, harness.peer(), swap=False, serializer="msgpack")
        await sub_mp.subscribe(packed.append, "com.example.amounts")
        sub_json = await harness.connect(router, harness.peer(), swap=False)
        await sub_json.subscribe(texts.append, "com.example.amounts")
        pub = await harness.connect(router, harness.peer(), swap=False)
        with pytest.raises(ApplicationError) as err:
            await pub.publish(
                "com.example.amounts", 2**64, options=PublishOptions(acknowledge=True)
            )
        assert err.value.error == "wamp.error.invalid_argument"
        assert "wamp.2.msgpack" in (err.value.args[0] if err.value.args else "")
        await pub.publish("com.example.amounts", 7, options=PublishOptions(acknowledge=True))
        await until(lambda: len(packed) == 1 and len(texts) == 2, "both subscribers got theirs")
        assert packed == [7] and texts == [2**64, 7]
        # a callee speaking msgpack cannot be invoked with one: the caller gets the reason
        callee = await harness.connect(router, harness.peer(), swap=False, serializer="msgpack")
        await callee.register(lambda a: a, "com.example.echo")
        with pytest.raises(ApplicationError) as err:
            await pub.call("com.example.echo", 2**64)
        assert err.value.error == "wamp.error.invalid_argument"
        assert await pub.call("com.example.echo", 5) == 5
        await router.stop()

    run(body)


def test_binary_map_key_from_a_msgpack_peer_is_a_protocol_violation(harness: Harness) -> None:
    async def body() -> None:
        router = await harness.start(swap=False)
        texts: list[Any] = []
        sub_json = await harness.connect(router, harness.peer(), swap=False)
        await sub_json.subscribe(texts.append, "com.example.keys")
        pub = await harness.connect(router, harness.peer(), swap=False, serializer="msgpack")
        pub.publish("com.example.keys", {b"binary-key": 1})
        await asyncio.wait_for(pub.left, 5)
        assert pub.close_reason == "wamp.error.protocol_violation"
        assert "is not a string" in (pub.close_message or "")
        # the router and the other session are unaffected
        again = await harness.connect(router, harness.peer(), swap=False, serializer="msgpack")
        await again.publish(
            "com.example.keys", {"text-key": 1}, options=PublishOptions(acknowledge=True)
        )
        await until(lambda: bool(texts), "the JSON subscriber got the event")
        assert texts == [{"text-key": 1}]
        await router.stop()

    run(body)

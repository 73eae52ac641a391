"""Pub/sub and RPC through the router with stock autobahn clients, on both serializers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import CallOptions, PublishOptions, SubscribeOptions
from router_harness import REALM, Harness, run, until

from router_core.router import Limits

SERIALIZERS = ["json", "msgpack"]


@pytest.mark.parametrize(
    "pub_ser,sub_ser", [("json", "json"), ("msgpack", "msgpack"), ("json", "msgpack")]
)
def test_publish_reaches_subscribers_but_not_the_publisher(
    harness: Harness, pub_ser: str, sub_ser: str
) -> None:
    async def body() -> None:
        router = await harness.start()
        pub = await harness.connect(router, harness.peer(), serializer=pub_ser)
        sub = await harness.connect(router, harness.peer(), serializer=sub_ser)
        received: list[Any] = []
        own: list[Any] = []
        await sub.subscribe(lambda *a, **kw: received.append((a, kw)), "com.example.topic")
        await pub.subscribe(lambda *a, **kw: own.append(a), "com.example.topic")
        for i in range(3):
            pub_ack = await pub.publish(
                "com.example.topic", i, key=f"v{i}", options=PublishOptions(acknowledge=True)
            )
            assert pub_ack.id > 0
        await pub.publish(
            "com.example.topic", 99, options=PublishOptions(acknowledge=True, exclude_me=False)
        )
        await until(lambda: len(received) == 4 and own == [(99,)], "all four events arrived")
        assert received == [
            ((0,), {"key": "v0"}),
            ((1,), {"key": "v1"}),
            ((2,), {"key": "v2"}),
            ((99,), {}),
        ]
        assert own == [(99,)]
        await router.stop()

    run(body)


def test_prefix_subscription_and_unsubscribe(harness: Harness) -> None:
    async def body() -> None:
        router = await harness.start()
        pub = await harness.connect(router, harness.peer())
        sub = await harness.connect(router, harness.peer())
        got: list[int] = []
        subscription = await sub.subscribe(
            lambda x: got.append(x), "com.prefix", options=SubscribeOptions(match="prefix")
        )
        await pub.publish("com.prefix.a", 1, options=PublishOptions(acknowledge=True))
        await until(lambda: got == [1], "the prefix-matched event arrived")
        await subscription.unsubscribe()
        await pub.publish("com.prefix.b", 2, options=PublishOptions(acknowledge=True))
        # a marker on an exact subscription of the same session, published after: once it is
        # in, the unsubscribed event would have been too (one connection, in order)
        marker: list[int] = []
        await sub.subscribe(marker.append, "com.marker")
        await pub.publish("com.marker", 3, options=PublishOptions(acknowledge=True))
        await until(lambda: marker == [3], "the marker arrived")
        assert got == [1]
        await router.stop()

    run(body)


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_rpc_result_and_application_error(harness: Harness, serializer: str) -> None:
    async def body() -> None:
        router = await harness.start()
        caller = await harness.connect(router, harness.peer(), serializer=serializer)
        callee = await harness.connect(router, harness.peer(), serializer=serializer)

        def divide(a: int, b: int) -> float:
            if b == 0:
                raise ApplicationError("com.example.division_by_zero", "b is zero")
            return a / b

        await callee.register(divide, "com.example.divide")
        assert await caller.call("com.example.divide", 10, 4) == 2.5
        with pytest.raises(ApplicationError) as err:
            await caller.call("com.example.divide", 1, 0)
        assert err.value.error == "com.example.division_by_zero"
        with pytest.raises(ApplicationError) as err:
            await caller.call("com.example.nothing")
        assert err.value.error == "wamp.error.no_such_procedure"
        with pytest.raises(ApplicationError) as err:
            await callee.register(divide, "com.example.divide")
        assert err.value.error == "wamp.error.procedure_already_exists"
        await router.stop()

    run(body)


def test_call_timeout_fails_the_call(harness: Harness) -> None:
    async def body() -> None:
        router = await harness.start(limits=Limits(call_timeout_ms=5_000))
        caller = await harness.connect(router, harness.peer())
        callee = await harness.connect(router, harness.peer())

        async def slow() -> str:
            await asyncio.sleep(30)  # far beyond the call's timeout, whatever the machine's load
            return "late"

        await callee.register(slow, "com.example.slow")
        started = asyncio.get_running_loop().time()
        with pytest.raises(ApplicationError) as err:
            await caller.call("com.example.slow", options=CallOptions(timeout=200))
        assert err.value.error == "wamp.error.timeout"
        # the call's own 200 ms, not the router's 5 s default nor the callee's 30 s
        assert asyncio.get_running_loop().time() - started < 4.5
        await router.stop()

    run(body)


def test_callee_leaving_mid_call_fails_pending_calls(harness: Harness) -> None:
    async def body() -> None:
        router = await harness.start()
        caller = await harness.connect(router, harness.peer())
        callee = await harness.connect(router, harness.peer())
        entered = asyncio.Event()

        async def hang() -> None:
            entered.set()
            await asyncio.sleep(30)

        await callee.register(hang, "com.example.hang")
        calls = [asyncio.ensure_future(caller.call("com.example.hang")) for _ in range(3)]
        await entered.wait()
        callee.disconnect()  # transport drops without GOODBYE
        for call in calls:
            with pytest.raises(ApplicationError) as err:
                await asyncio.wait_for(call, 5)
            assert err.value.error == "wamp.error.canceled"
        # the procedure is gone with its callee
        with pytest.raises(ApplicationError) as err:
            await caller.call("com.example.hang")
        assert err.value.error == "wamp.error.no_such_procedure"
        await router.stop()

    run(body)


def test_goodbye_closes_cleanly_and_other_sessions_continue(harness: Harness) -> None:
    async def body() -> None:
        router = await harness.start()
        a = await harness.connect(router, harness.peer())
        b = await harness.connect(router, harness.peer())
        await b.register(lambda: "pong", "com.example.ping")
        await a.leave()
        await asyncio.wait_for(a.left, 5)
        assert a.close_reason == "wamp.close.goodbye_and_out"
        c = await harness.connect(router, harness.peer())
        assert await c.call("com.example.ping") == "pong"
        assert len(router.realms[REALM].sessions) == 2
        await router.stop()

    run(body)

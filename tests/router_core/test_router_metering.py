"""Metering end to end: what the clients actually received equals what reaches Kafka, per peer
and kind, in count and bytes, also across a broker stop and restart (the emitter spools)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import orjson
import pytest
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import PublishOptions
from router_harness import Harness, run

from domain.envelope import Signer, decode
from domain.topics import USAGE_TOPIC
from infra.broker import Broker, restart_broker
from ledger.emitter import Emitter, EmitterConfig
from router_core.client import MeshSession

pytestmark = pytest.mark.integration

KINDS = {36: "event", 68: "invocation", 50: "result", 8: "error"}
Tally = Counter[tuple[str, str]]


def tap(session: MeshSession, counts: Tally, sizes: Tally, serializer: str) -> None:
    """Count every metered-kind frame this client receives, with its size on the wire."""
    proto: Any = session._transport
    original = proto.onMessage

    def on_message(payload: bytes, is_binary: bool) -> None:
        msg = msgpack.unpackb(payload) if serializer == "msgpack" else orjson.loads(payload)
        kind = KINDS.get(msg[0])
        if kind is not None:
            counts[(session.address, kind)] += 1
            sizes[(session.address, kind)] += len(payload)
        original(payload, is_binary)

    proto.onMessage = on_message


def read_usage(bootstrap: str, source: str, into: dict[int, tuple[str, str, int]]) -> None:
    """Add every metered message of `source` in mesh.usage to `into`, keyed by seq (dedup)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tp = TopicPartition(USAGE_TOPIC, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        while consumer.position(tp) < end:
            for records in consumer.poll(timeout_ms=500).values():
                for rec in records:
                    record = decode(rec.value)
                    record.verify()
                    if record.source != source:
                        continue
                    for seq, event in record.iter_events():
                        into[seq] = (event.to_peer, event.kind, event.payload_bytes)  # type: ignore[attr-defined]
    finally:
        consumer.close()


def totals(usage: dict[int, tuple[str, str, int]]) -> tuple[Tally, Tally]:
    counts: Tally = Counter()
    sizes: Tally = Counter()
    for to_peer, kind, nbytes in usage.values():
        counts[(to_peer, kind)] += 1
        sizes[(to_peer, kind)] += nbytes
    return counts, sizes


async def traffic(harness: Harness, router: Any, counts: Tally, sizes: Tally, rounds: int) -> None:
    pub = await harness.connect(router, harness.peer(), serializer="json", swap=False)
    subs = []
    for ser in ("json", "msgpack"):
        sub = await harness.connect(router, harness.peer(), serializer=ser, swap=False)
        tap(sub, counts, sizes, ser)
        await sub.subscribe(lambda *a, **kw: None, "com.example.metered")
        subs.append(sub)
    callee = await harness.connect(router, harness.peer(), serializer="msgpack", swap=False)
    caller = await harness.connect(router, harness.peer(), serializer="json", swap=False)
    tap(callee, counts, sizes, "msgpack")
    tap(caller, counts, sizes, "json")

    def work(n: int) -> str:
        if n % 5 == 0:
            raise ApplicationError("com.example.five", n)
        return "x" * n

    await callee.register(work, "com.example.work")
    for i in range(rounds):
        await pub.publish(
            "com.example.metered", i, "payload" * i, options=PublishOptions(acknowledge=True)
        )
        with contextlib.suppress(ApplicationError):
            await caller.call("com.example.work", i)
    await asyncio.sleep(0.1)
    for s in (pub, *subs, callee, caller):
        s.leave()
    await asyncio.sleep(0.1)


def make_emitter(harness: Harness, bootstrap: str, spool: Path) -> Emitter:
    return Emitter(
        Signer(harness.router_key.private),
        EmitterConfig(
            bootstrap=bootstrap, spool_dir=spool, linger_ms=20, fsync=False, request_timeout_ms=1500
        ),
    )


def test_metered_usage_in_kafka_matches_routed_messages(harness: Harness, broker: Broker) -> None:
    emitter = make_emitter(harness, broker.bootstrap, harness.tmp_path / "spool")
    counts: Tally = Counter()
    sizes: Tally = Counter()

    async def body() -> None:
        router = await harness.start(swap=False, sink=emitter)
        await traffic(harness, router, counts, sizes, rounds=40)
        await router.stop()

    run(body)
    emitter.flush(timeout_s=20)
    emitter.close()
    usage: dict[int, tuple[str, str, int]] = {}
    read_usage(broker.bootstrap, harness.router_key.address, usage)
    kafka_counts, kafka_sizes = totals(usage)
    assert sum(counts.values()) == 40 * 2 + 40 + 32 + 8  # events, invocations, results, errors
    assert kafka_counts == counts
    assert kafka_sizes == sizes
    assert sorted(usage) == list(range(1, len(usage) + 1))  # gap-free seqs


def test_broker_stop_and_restart_mid_traffic_loses_nothing(
    harness: Harness, fresh_broker: Broker
) -> None:
    emitter = make_emitter(harness, fresh_broker.bootstrap, harness.tmp_path / "spool")
    counts: Tally = Counter()
    sizes: Tally = Counter()
    usage: dict[int, tuple[str, str, int]] = {}
    node = fresh_broker

    async def body() -> None:
        nonlocal node
        router = await harness.start(swap=False, sink=emitter)
        await traffic(harness, router, counts, sizes, rounds=15)
        await asyncio.to_thread(emitter.flush, 20)
        await asyncio.to_thread(read_usage, node.bootstrap, harness.router_key.address, usage)
        node.stop()  # memory storage: what the broker held is gone
        await traffic(harness, router, counts, sizes, rounds=15)  # routed while the broker is down
        node = await asyncio.to_thread(restart_broker, node)
        await traffic(harness, router, counts, sizes, rounds=10)
        await router.stop()

    try:
        run(body)
        deadline = time.monotonic() + 60
        emitter.flush(timeout_s=60)
        while time.monotonic() < deadline:
            read_usage(node.bootstrap, harness.router_key.address, usage)
            if len(usage) >= sum(counts.values()):
                break
            time.sleep(0.5)
    finally:
        emitter.close()
        node.stop()
    kafka_counts, kafka_sizes = totals(usage)
    assert kafka_counts == counts
    assert kafka_sizes == sizes
    assert sorted(usage) == list(range(1, len(usage) + 1))

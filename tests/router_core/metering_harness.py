"""Helpers of the metering tests: WAMP traffic whose every metered frame the clients count as
they receive it, and readers of what one router source put in the log."""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any

import msgpack
import orjson
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import PublishOptions
from router_harness import Harness, until

from domain.envelope import decode
from domain.events import Event, MessageMetered
from domain.topics import USAGE_TOPIC
from router_core.client import MeshSession

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


def read_source(
    bootstrap: str, source: str, topics: tuple[str, ...] = (USAGE_TOPIC,)
) -> dict[int, Event]:
    """Every event of `source` in `topics` (all partitions), verified, keyed by seq (a re-sent
    record counts once, as consumers deduplicate it); fails on one seq with two contents."""
    from kafka import KafkaConsumer, TopicPartition

    found: dict[int, Event] = {}
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic) or {0})
        ]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            for records in consumer.poll(timeout_ms=500).values():
                for rec in records:
                    record = decode(rec.value)
                    if record.source != source:
                        continue
                    record.verify()
                    for seq, event in record.iter_events():
                        assert found.setdefault(seq, event) == event, f"seq {seq} sealed twice"
    finally:
        consumer.close()
    return found


def usage_of(bootstrap: str, source: str) -> dict[int, tuple[str, str, int]]:
    """(to_peer, kind, payload bytes) of every metered message of `source`, keyed by seq."""
    return {
        seq: (e.to_peer, e.kind, e.payload_bytes)  # type: ignore[attr-defined]
        for seq, e in read_source(bootstrap, source).items()
        if isinstance(e, MessageMetered)
    }


def totals(usage: dict[int, tuple[str, str, int]]) -> tuple[Tally, Tally]:
    counts: Tally = Counter()
    sizes: Tally = Counter()
    for to_peer, kind, nbytes in usage.values():
        counts[(to_peer, kind)] += 1
        sizes[(to_peer, kind)] += nbytes
    return counts, sizes


async def traffic(harness: Harness, router: Any, counts: Tally, sizes: Tally, rounds: int) -> None:
    """Publishes to a JSON and a msgpack subscriber and calls (every fifth one fails), `rounds`
    times; returns once every client received all it will and every session left."""
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
    before = {s.address: counts[(s.address, "event")] for s in subs}
    for i in range(rounds):
        await pub.publish(
            "com.example.metered", i, "payload" * i, options=PublishOptions(acknowledge=True)
        )
        with contextlib.suppress(ApplicationError):
            await caller.call("com.example.work", i)
    # PUBLISHED may overtake the EVENTs on their way to the subscribers: wait for every one
    await until(
        lambda: all(counts[(s.address, "event")] == before[s.address] + rounds for s in subs),
        "every subscriber received every event",
    )
    clients = (pub, *subs, callee, caller)
    established = router.established()
    for s in clients:
        s.leave()
    await until(lambda: router.established() == established - len(clients), "every session left")

"""Nothing blocks the router's loop on the ledger: a stalled emitter pauses reading (nothing
dropped, nothing unbounded) while the loop keeps serving; and an idle router still emits its
signed watermark (ChainHead per realm) every `watermark_every_blocks`, read back from the broker."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from autobahn.wamp.types import PublishOptions
from router_harness import REALM, Harness, RecordingSink, run, until

from domain.envelope import Signer, decode
from domain.events import ChainHead
from domain.topics import LEDGER_TOPIC
from infra.broker import Broker
from ledger.emitter import Emitter, EmitterConfig
from router_core.handoff import LedgerHandoff, ThreadDrain
from router_core.router import RealmOptions, Router


class StalledSink(RecordingSink):
    """An emitter whose spool is full: `meter` blocks until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def meter(self, *args: Any) -> None:
        self.release.wait(30)
        super().meter(*args)


def test_stalled_emitter_pauses_reading_and_the_loop_keeps_serving(harness: Harness) -> None:
    stalled = StalledSink()

    async def body() -> None:
        handoff = LedgerHandoff(
            ThreadDrain(stalled),
            asyncio.get_running_loop(),
            high_water=50,
            low_water=10,
            chunk_items=5,
        )
        router = await harness.start(swap=False, sink=handoff)
        handoff.on_full, handoff.on_space = router.pause_reading, router.resume_reading
        got: list[int] = []
        sub = await harness.connect(router, harness.peer(), swap=False)
        await sub.subscribe(lambda i, **_pad: got.append(i), "com.example.flood")
        pub = await harness.connect(router, harness.peer(), swap=False)
        # ~1 MB in all, more than one read of the socket carries: the frames of one read are
        # handled at once, so only then does pausing reading stop the router short of the last
        for i in range(400):
            pub.publish("com.example.flood", i, pad="x" * 2500)
        await until(lambda: handoff.paused, "the hand-off filled up and paused reading")
        # the loop is not blocked: a timer fires on time while the emitter is stalled
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(0.05)
        # a loop blocked by the stalled emitter would not come back before the release below;
        # a loaded machine may delay a free one by a second or two
        assert loop.time() - started < 5.0
        waiting = handoff.waiting()
        assert 50 <= waiting < 400  # bounded: reading stopped near high_water
        stalled.release.set()
        await pub.publish("com.example.flood", 400, options=PublishOptions(acknowledge=True))
        await until(lambda: len(got) == 401, "every message delivered after the stall")
        await asyncio.to_thread(handoff.flush, 10)
        assert len(stalled.metered) == 401  # nothing dropped
        assert not handoff.paused and handoff.pauses >= 1
        await router.stop()
        handoff.close()

    run(body)


def read_router_heads(bootstrap: str, source: str) -> list[tuple[str, int]]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    heads: list[tuple[str, int]] = []
    try:
        parts = consumer.partitions_for_topic(LEDGER_TOPIC) or {0}
        tps = [TopicPartition(LEDGER_TOPIC, p) for p in sorted(parts)]
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
                    for _, event in record.iter_events():
                        if isinstance(event, ChainHead):
                            heads.append((event.realm, event.block))
    finally:
        consumer.close()
    return heads


def test_idle_router_emits_a_signed_watermark_every_n_blocks(
    harness: Harness, broker: Broker
) -> None:
    emitter = Emitter(
        Signer(harness.router_key.private),
        EmitterConfig(
            bootstrap=broker.bootstrap, spool_dir=harness.tmp_path / "spool", linger_ms=20
        ),
    )

    async def body() -> None:
        handoff = LedgerHandoff(ThreadDrain(emitter), asyncio.get_running_loop())
        router = Router(
            harness.router_key.address,
            [RealmOptions(REALM), RealmOptions("realm2")],
            harness.stakes,
            harness.clock,
            sink=handoff,
            chain_id=31337,
            watermark_every_blocks=10,
        )
        await router.start("127.0.0.1", 0)
        for _ in range(25):  # no traffic at all
            harness.clock.advance()
        await router.stop()
        await asyncio.to_thread(handoff.close)

    try:
        run(body)
        emitter.flush(timeout_s=20)
    finally:
        emitter.close()
    heads = read_router_heads(broker.bootstrap, harness.router_key.address)
    # blocks 1..25 seen: a watermark at the first block, then every 10 blocks, each saying
    # "everything before this block is metered" (block - 1)
    expected = [(realm, block - 1) for realm in (REALM, "realm2") for block in (1, 11, 21)]
    assert sorted(heads) == expected

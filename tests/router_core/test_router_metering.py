"""Metering end to end: what the clients actually received equals what reaches Kafka, per peer
and kind, in count and bytes, also across a broker stop and restart (the emitter spools)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest
from metering_harness import Tally, totals, traffic, usage_of
from router_harness import Harness, run

from domain.envelope import Signer
from infra.broker import Broker, restart_broker
from ledger.emitter import Emitter, EmitterConfig

pytestmark = pytest.mark.integration


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
    usage = usage_of(broker.bootstrap, harness.router_key.address)
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
        usage.update(await asyncio.to_thread(usage_of, node.bootstrap, harness.router_key.address))
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
            usage.update(usage_of(node.bootstrap, harness.router_key.address))
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

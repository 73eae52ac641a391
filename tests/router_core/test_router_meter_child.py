"""The emitter child of a router: metering sealed outside the router's process, exactly once
across the child's death (killed from outside, or mid-round through the crash seam), and one
writer per spool."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from pathlib import Path

import pytest
from metering_harness import Tally, read_source, totals, traffic, usage_of
from router_harness import Harness, new_key, run, until

from domain.events import ChainHead, MessageMetered
from domain.topics import LEDGER_TOPIC, USAGE_TOPIC
from infra.broker import Broker
from router_core.handoff import SLOTS, LedgerHandoff
from router_core.meter_child import CRASH_FILE_ENV, ChildDrain, ChildFailed, ChildSpec, sealed_order

pytestmark = pytest.mark.integration


def spec(tmp: Path, bootstrap: str, **overrides: object) -> ChildSpec:
    values: dict[str, object] = dict(
        bootstrap=bootstrap, spool_dir=str(tmp / "spool"), state_dir=str(tmp), fsync=False
    )
    values.update(overrides)
    return ChildSpec(**values)  # type: ignore[arg-type]


def test_sealed_order_groups_realms_splits_kinds_and_keeps_watermarks_in_place() -> None:
    items: list[object] = []
    kinds = ["m", "m", "m", "e", "m", "w", "m", "m"]
    for realm, kind in zip("abaabab" + "a", kinds, strict=True):
        event = kind != "m"
        items += [realm, "" if event else "x", "y", "watermark" if kind == "w" else "", "u", 1, 1]
    runs = sealed_order(items)
    # realms grouped, kinds split, but nothing crosses the watermark (item 5)
    assert [[i // SLOTS for i in run] for run in runs] == [[0, 2], [3], [1, 4], [5], [6], [7]]


def test_child_crash_mid_round_seals_every_item_exactly_once(
    tmp_path: Path, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two realms and watermarks interleaved make several seals per round; the child exits after
    its third seal (mid-round), the router notices, restarts it and resends the round: the
    new child skips what the spool already holds."""
    key = new_key()
    crash = tmp_path / "crash-after"
    crash.write_text("3")
    monkeypatch.setenv(CRASH_FILE_ENV, str(crash))
    sent: Counter[tuple[str, str, int]] = Counter()
    heads = 0

    async def body() -> None:
        nonlocal heads
        loop = asyncio.get_running_loop()
        drain = ChildDrain(spec(tmp_path, broker.bootstrap), key.private, loop)
        handoff = LedgerHandoff(drain, loop, chunk_items=64)
        await drain.start()
        assert not crash.exists()  # the first child armed the seam
        for block in range(1, 41):
            for i in range(50):
                realm = ("realm-a", "realm-b")[i % 2]
                handoff.meter(realm, "0xfrom", f"0xto{i % 3}", "event", "com.x", i, block)
                sent[(realm, f"0xto{i % 3}", i)] += 1
            handoff.emit(ChainHead(realm="realm-a", chain_id=1, block=block))
            heads += 1
        await asyncio.to_thread(handoff.flush, 60)
        assert drain.deaths == 1 and drain.starts == 2  # noticed and restarted once
        await asyncio.to_thread(handoff.close, 60)

    run(body)
    log = read_source(broker.bootstrap, key.address, (USAGE_TOPIC, LEDGER_TOPIC))
    assert sorted(log) == list(range(1, len(log) + 1))  # gap-free, each seq once
    metered = Counter(
        (e.realm, e.to_peer, e.payload_bytes)  # type: ignore[attr-defined]
        for e in log.values()
        if isinstance(e, MessageMetered)
    )
    assert metered == sent
    assert sum(isinstance(e, ChainHead) for e in log.values()) == heads


def test_child_killed_during_traffic_loses_nothing(harness: Harness, broker: Broker) -> None:
    counts: Tally = Counter()
    sizes: Tally = Counter()

    async def body() -> None:
        loop = asyncio.get_running_loop()
        drain = ChildDrain(
            spec(harness.tmp_path, broker.bootstrap), harness.router_key.private, loop
        )
        handoff = LedgerHandoff(drain, loop, chunk_items=16)
        await drain.start()
        router = await harness.start(swap=False, sink=handoff)
        await traffic(harness, router, counts, sizes, rounds=20)
        child = drain.proc
        assert child is not None and child.poll() is None  # alive when killed
        os.kill(child.pid, signal.SIGKILL)
        await traffic(harness, router, counts, sizes, rounds=20)  # routed while it restarts
        await until(lambda: drain.starts == 2, "the router restarted its emitter child")
        await traffic(harness, router, counts, sizes, rounds=10)
        await asyncio.to_thread(handoff.flush, 60)
        assert child.returncode == -signal.SIGKILL
        await router.stop()
        await asyncio.to_thread(handoff.close, 60)

    run(body)
    usage = usage_of(broker.bootstrap, harness.router_key.address)
    assert totals(usage) == (counts, sizes)
    assert sum(counts.values()) == 50 * 2 + 50 + 40 + 10
    assert sorted(usage) == list(range(1, len(usage) + 1))


def test_a_second_child_on_one_spool_is_refused(tmp_path: Path, broker: Broker) -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        first = ChildDrain(spec(tmp_path, broker.bootstrap), new_key().private, loop)
        LedgerHandoff(first, loop)
        await first.start()
        second = ChildDrain(
            spec(tmp_path, broker.bootstrap, lock_wait_s=0.5), new_key().private, loop
        )
        LedgerHandoff(second, loop)
        with pytest.raises(ChildFailed, match="held by another emitter child"):
            await second.start()
        await asyncio.to_thread(first.close, 30)

    run(body)

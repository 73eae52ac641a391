"""Broker faults between the emitter and a real broker: dropped and stalled connections, a paused
broker, records the broker refuses for their size. Nothing acknowledged is lost, nothing doubled:
checked in the log itself and in the projector's tables.

Seeds and duration: FAULT_SEEDS (comma-separated) and FAULT_DURATION_S; `make fault` runs long."""

from __future__ import annotations

import base64
import os
import random
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka_proxy import ProxiedBroker

from domain.envelope import decode
from domain.events import ChequeRejected
from domain.topics import DEAD_TOPIC, USAGE_TOPIC
from ledger.simulate import emitter

sys.path.insert(0, str(Path(__file__).parents[1] / "ledger"))
from ledger_world import World, caught_up, run_until, table  # noqa: E402

SEEDS = [int(s) for s in os.environ.get("FAULT_SEEDS", "1").split(",")]
DURATION_S = float(os.environ.get("FAULT_DURATION_S", "4"))


def _log(bootstrap: str, topic: str) -> list[bytes]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    values: list[bytes] = []
    quiet = 0
    while quiet < 3:
        batches = consumer.poll(timeout_ms=300)
        quiet = 0 if batches else quiet + 1
        values += [m.value for msgs in batches.values() for m in msgs]
    consumer.close()
    return values


def _everything_once(
    world: World, bootstrap: str, sent: int, context: str = "", no_gaps: bool = True
) -> None:
    """The log holds the router's seqs 1..sent, each (source, seq) always with the same bytes,
    and a projector counts every message exactly once (and, with `no_gaps`, declares no gap)."""
    hashes: dict[int, set[str]] = defaultdict(set)
    counts: dict[int, int] = {}
    for value in _log(bootstrap, USAGE_TOPIC):
        record = decode(value)
        if record.source == world.router.address:
            hashes[record.seq].add(record.hash_hex)
            counts[record.seq] = record.count
    assert all(len(h) == 1 for h in hashes.values()), "a seq with two different records"
    covered = sorted(s + i for s, n in counts.items() for i in range(n))
    assert covered == list(range(1, sent + 1)), context

    service = world.service()
    run_until(
        service,
        lambda s: (
            caught_up(s)
            and s.projector.sources.get(world.router.address) is not None
            and s.projector.sources[world.router.address].last_seq == sent
        ),
        60,
    )
    service.projector.commit()
    source = world.router.address
    assert table(
        service, f"SELECT sum(messages)::BIGINT FROM usage_blocks WHERE source = '{source}'"
    ) == [(sent,)]
    if no_gaps:
        assert table(service, "SELECT count(*) FROM seq_gaps") == [(0,)]
    service.close()


@pytest.mark.parametrize("seed", SEEDS)
def test_dropped_stalled_and_paused_broker_lose_nothing_and_double_nothing(
    proxied_broker: ProxiedBroker, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    world = World(proxied_broker.bootstrap, tmp_path, head=1_000_000)
    em = emitter(
        world.router,
        proxied_broker.bootstrap,
        tmp_path / "spool",
        batch_max_events=rng.choice([20, 100, 500]),
        linger_ms=rng.choice([1, 20, 100]),
        request_timeout_ms=800,
        retry_backoff_max_ms=300,
    )
    sent = 0
    faults: list[str] = []
    deadline = time.monotonic() + DURATION_S
    while time.monotonic() < deadline:
        fault = rng.choice(["pass", "drop", "stall", "pause"])
        faults.append(fault)
        if fault == "pause":
            os.kill(proxied_broker.pid, signal.SIGSTOP)
        else:
            proxied_broker.proxy.set_mode(fault)
        until = time.monotonic() + rng.uniform(0.1, 0.8)
        while time.monotonic() < until:
            for _ in range(rng.randint(1, 200)):
                em.meter("r1", world.user, "0xpeer", "event", "t", 10, sent // 100)
                sent += 1
            time.sleep(0.01)
        if fault == "pause":
            os.kill(proxied_broker.pid, signal.SIGCONT)
        proxied_broker.proxy.set_mode("pass")
    em.flush(timeout_s=120)
    stats = em.stats()
    em.close()
    assert "drop" in faults or "stall" in faults or "pause" in faults or DURATION_S < 1

    assert stats["broker_reachable"] is True
    _everything_once(world, proxied_broker.bootstrap, sent, f"faults {faults}; stats {stats}")


class _Consuming:
    """A projector's consume loop in a thread until `stop()` (which returns what ended it)."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.done = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.service.run(until=lambda _s: self.done.is_set())
        except BaseException as exc:  # the test fails on it
            self.errors.append(exc)

    def wait(self, check: Callable[[], Any], what: str, deadline: float) -> None:
        """Until `check()` holds, the loop alive all along, by `deadline` (monotonic)."""
        while not check():
            assert self.thread.is_alive(), f"the projector died: {self.errors}"
            assert time.monotonic() < deadline, what
            time.sleep(0.05)

    def stop(self) -> list[BaseException]:
        self.done.set()
        self.thread.join(timeout=60)
        return self.errors


def test_the_projector_outlasts_a_broker_that_cannot_answer(
    proxied_broker: ProxiedBroker, tmp_path: Path
) -> None:
    """A live projector whose broker stops answering (every connection dropped for longer than an
    end-offsets request may take) keeps running, declares no gap, and projects what comes after."""
    world = World(proxied_broker.bootstrap, tmp_path, head=1_000_000)
    service = world.service(live=True, offsets_timeout_ms=500)
    run_until(service, caught_up, 60)
    loop = _Consuming(service)
    try:
        proxied_broker.proxy.set_mode("drop")
        # the service asked and the broker did not answer
        loop.wait(
            lambda: service._offsets_unavailable,
            "the service never asked for end offsets",
            time.monotonic() + 60,
        )
        time.sleep(1.5)  # three timeouts more without a broker
        assert loop.thread.is_alive() and not loop.errors, loop.errors
        proxied_broker.proxy.set_mode("pass")
        world.send_raw(world.crafted_metered(7, block=10))
        loop.wait(
            lambda: service.projector.sources.get(world.crafted.address) is not None,
            "the record after the outage was not projected",
            time.monotonic() + 60,
        )
        assert service.projector.sources[world.crafted.address].last_seq == 7
    finally:
        errors = loop.stop()
    assert not errors, errors
    assert not service._offsets_unavailable  # it said so when the broker answered again
    assert table(service, "SELECT count(*) FROM seq_gaps") == [(0,)]
    service.close()


def test_a_rejected_records_offset_is_committed_only_after_its_dead_letter(
    proxied_broker: ProxiedBroker, tmp_path: Path
) -> None:
    """While mesh.dead does not take produce requests, the projector decides a malformed record
    and the good one after it but commits neither offset: a crash then would re-read both and
    write the letter again. When the broker takes produce requests again, the letter is written
    and the offsets pass the record."""
    world = World(proxied_broker.bootstrap, tmp_path, head=1_000_000)
    world.send_raw(b"\x00 not a record")
    world.send_raw(world.crafted_metered(3, block=10))
    service = world.service(dead_letter_block_ms=300)
    proxied_broker.proxy.stall_produce = True

    def committed() -> list[tuple[int, int]]:
        cur = service.con.cursor()
        try:
            rows = cur.execute(
                "SELECT part, next_offset FROM offsets WHERE topic = ? ORDER BY part", [USAGE_TOPIC]
            ).fetchall()
        finally:
            cur.close()
        return [(int(p), int(o)) for p, o in rows if o]

    loop = _Consuming(service)
    try:
        deadline = time.monotonic() + 60
        # both decided in memory, and then a commit (wrong) or three waits on mesh.dead (right)
        loop.wait(
            lambda: (
                service.progress.rejected == 1
                and service.projector.sources.get(world.crafted.address) is not None
                and (service.dead_letter_stalls >= 3 or bool(committed()))
            ),
            f"not decided: {service.progress}",
            deadline,
        )
        assert committed() == [], "an offset was committed before its record's dead letter"
        proxied_broker.proxy.stall_produce = False
        loop.wait(committed, "the commit never happened", deadline)
    finally:
        proxied_broker.proxy.stall_produce = False
        errors = loop.stop()
    assert not errors, errors
    assert [o for _, o in committed()] == [2]  # both records of the one partition they share
    letters = [orjson.loads(v) for v in _log(proxied_broker.bootstrap, DEAD_TOPIC)]
    assert [(item["reason"], item["origin"].split("/")[2]) for item in letters] == [
        ("undecodable", "0")
    ]
    assert base64.b64decode(letters[0]["original"]) == b"\x00 not a record"
    assert service.dead_letters_failed == 0
    service.close()


def test_a_record_the_broker_refuses_goes_to_mesh_dead_and_the_rest_flows(
    proxied_broker: ProxiedBroker, tmp_path: Path
) -> None:
    """A stock Kafka refuses batches over message.max.bytes: the refused record is dead-lettered
    with its bytes, later records flow, and consumers see (and declare) one seq gap."""
    proxied_broker.proxy.max_message_bytes = 40_000
    world = World(proxied_broker.bootstrap, tmp_path, head=1_000_000)
    em = emitter(
        world.router, proxied_broker.bootstrap, tmp_path / "spool", request_timeout_ms=1000
    )
    # flushed in between: the proxy judges a whole produce request, a broker each partition's batch
    for _ in range(10):
        em.meter("r1", world.user, "0xpeer", "event", "t", 10, 5)
    em.flush()
    em.emit(  # a peer-chosen string that makes the record too big for this broker
        ChequeRejected(
            realm="r1", peer="0xp", chequebook="c" * 100_000, cumulative=1, reason="x", block=5
        )
    )
    em.flush(timeout_s=60)  # returns: the refused record does not block the source
    for _ in range(10):
        em.meter("r1", world.user, "0xpeer", "event", "t", 10, 6)
    em.flush(timeout_s=60)
    stats = em.stats()
    em.close()
    assert proxied_broker.proxy.refused >= 1
    assert stats["dead_records"] == 1 and stats["broker_reachable"] is True
    assert stats["last_seq"] == 21

    letters = [orjson.loads(v) for v in _log(proxied_broker.bootstrap, DEAD_TOPIC)]
    mine = [item for item in letters if item.get("source") == world.router.address]
    assert {item["seq"] for item in mine} == {11}
    assert all(item["reason"] == "broker_refused" for item in mine)
    assert "MessageSizeTooLargeError" in mine[0]["detail"]
    parts = {item["part"]: item for item in mine}
    original = b"".join(base64.b64decode(parts[i]["original"]) for i in range(mine[0]["parts"]))
    refused = decode(original)
    assert (refused.seq, refused.source) == (11, world.router.address)
    assert isinstance(refused.events[0], ChequeRejected)

    service = world.service(gap_timeout_ms=300)
    run_until(
        service,
        lambda s: (
            caught_up(s)
            and s.projector.sources.get(world.router.address) is not None
            and s.projector.sources[world.router.address].last_seq == 21
        ),
        30,
    )
    service.projector.commit()
    assert table(service, "SELECT from_seq, to_seq FROM seq_gaps") == [(11, 11)]
    assert table(
        service,
        f"SELECT sum(messages)::BIGINT FROM usage_blocks WHERE source = '{world.router.address}'",
    ) == [(20,)]
    service.close()


@pytest.mark.parametrize("seed", SEEDS)
def test_a_durable_broker_killed_and_restarted_loses_nothing_acknowledged(
    tmp_path: Path, seed: int
) -> None:
    """Tansu over SeaweedFS (infra/broker.py's durable mode), SIGKILLed and restarted on the same
    ports while a router keeps metering: every seq arrives once, none twice."""
    from infra.broker import restart_broker, start_broker

    rng = random.Random(seed)
    node = start_broker(data_dir=tmp_path / "broker")
    try:
        world = World(node.bootstrap, tmp_path, head=1_000_000)
        em = emitter(
            world.router,
            node.bootstrap,
            tmp_path / "spool",
            batch_max_events=rng.choice([20, 200]),
            request_timeout_ms=1000,
            retry_backoff_max_ms=500,
        )
        sent = 0
        for phase in range(3):
            for _ in range(rng.randint(300, 1500)):
                em.meter("r1", world.user, "0xpeer", "event", "t", 10, sent // 100)
                sent += 1
            if phase == 0:
                em.flush(timeout_s=60)  # acknowledged before the kill: must survive it
                acked = sent
                node.kill()
            elif phase == 1:
                node = restart_broker(node)
        em.flush(timeout_s=120)
        em.close()
        assert acked > 0
        _everything_once(world, node.bootstrap, sent, no_gaps=False)
    finally:
        node.stop()

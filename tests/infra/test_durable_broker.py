"""The durable broker (Tansu s3:// over SeaweedFS): acknowledged records survive every stop and
kill of either process or both, at the same offsets with the same bytes; clients carry on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from domain.topics import LEDGER_TOPIC
from infra.broker import Broker, restart_broker, start_broker
from infra.procs import wait_until

pytestmark = pytest.mark.integration

PARTITION = TopicPartition(LEDGER_TOPIC, 0)
Entry = tuple[int, bytes, bytes]  # offset, key, value
# each step: which process(es) get which signal; then what is down is started again (a running
# Tansu carries on over a restarted store)
STEPS = [
    ("tansu", signal.SIGTERM),
    ("tansu", signal.SIGKILL),
    ("seaweed", signal.SIGTERM),
    ("seaweed", signal.SIGKILL),
    ("both", signal.SIGTERM),
    ("both", signal.SIGKILL),
]


@pytest.fixture
def durable(tmp_path: Path) -> Iterator[list[Broker]]:
    """A durable broker; the test replaces holder[0] on each restart, the fixture stops the last."""
    holder = [start_broker(data_dir=tmp_path / "broker")]
    yield holder
    holder[0].stop()


def produce(producer: KafkaProducer, step: str, n: int = 5) -> list[Entry]:
    """n records acknowledged by all in-sync replicas; their offsets as the broker gave them."""
    out = []
    for i in range(n):
        key, value = f"{step}-{i}".encode(), os.urandom(64) + step.encode()
        meta = producer.send(LEDGER_TOPIC, key=key, value=value, partition=0).get(timeout=60)
        out.append((meta.offset, key, value))
    return out


def consume(consumer: KafkaConsumer, want: int) -> list[Entry]:
    out: list[Entry] = []
    for _ in range(60):
        for records in consumer.poll(timeout_ms=1000).values():
            out += [(r.offset, r.key, r.value) for r in records]
        if len(out) >= want:
            break
    return out


def read_all(bootstrap: str) -> list[Entry]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        consumer.assign([PARTITION])
        consumer.seek_to_beginning(PARTITION)
        end = consumer.end_offsets([PARTITION])[PARTITION]
        return consume(consumer, end)
    finally:
        consumer.close()


def victims(broker: Broker, target: str) -> list[tuple[int, Callable[[], bool]]]:
    """(pid, is it running) of the process(es) a step signals."""
    store = broker.seaweed
    assert store is not None
    return {
        "tansu": [(broker.pid, broker.alive)],
        "seaweed": [(store.pid, store.alive)],
        "both": [(broker.pid, broker.alive), (store.pid, store.alive)],
    }[target]


def test_acknowledged_records_survive_every_stop_and_kill(durable: list[Broker]) -> None:
    broker = durable[0]
    assert broker.durable and broker.seaweed is not None and broker.seaweed.alive()
    # reconnect backoff capped at 1 s (default 30 s): the clients live through every restart
    producer = KafkaProducer(
        bootstrap_servers=broker.bootstrap,
        acks="all",
        retries=10,
        request_timeout_ms=30_000,
        reconnect_backoff_max_ms=1000,
    )
    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        enable_auto_commit=False,
        reconnect_backoff_max_ms=1000,
    )
    consumer.assign([PARTITION])
    consumer.seek_to_beginning(PARTITION)
    acked: list[Entry] = []
    try:
        for target, sig in STEPS:
            step = f"{target}-{sig.name}"
            batch = produce(producer, step)
            assert [o for o, _, _ in batch] == list(range(len(acked), len(acked) + len(batch)))
            acked += batch
            # the long-lived consumer carries on where it was, across the earlier restarts
            assert consume(consumer, len(batch)) == batch, step
            procs = victims(broker, target)
            assert all(running() for _, running in procs), f"{step}: a victim was not running"
            for pid, _ in procs:
                os.kill(pid, sig)
            # Tansu lets connected clients go for up to 5 s after SIGTERM before it exits
            wait_until(
                lambda v=procs: not any(running() for _, running in v), 30, f"{step}: victims exit"
            )
            broker = durable[0] = restart_broker(broker)
            assert broker.alive() and broker.seaweed is not None and broker.seaweed.alive()
            assert read_all(broker.bootstrap) == acked, f"records changed after {step}"
        # the producer and consumer of the first run still work against the restarted pair
        last = produce(producer, "after")
        assert last[0][0] == len(acked)
        assert consume(consumer, len(last)) == last
    finally:
        producer.close(timeout=5)
        consumer.close()


def test_broker_start_refuses_memory_with_data(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ledger.cli",
            "broker",
            "start",
            "--memory",
            "--data",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--memory and --data exclude each other" in result.stderr
    assert list(tmp_path.iterdir()) == []

"""`meshledger bench ingest`: metered messages/s end to end (emitter process -> broker ->
projector -> DuckDB) against a one-record-per-message kafka-python baseline in the same run, and
each stage on its own: emit (meter calls to sealed, signed records), broker (records produced and
fetched back), project (records fetched to committed tables) and replay, with the CPU time per
event of the processes doing each stage (getrusage of our processes, /proc of the broker's)."""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from domain.envelope import peek_count
from domain.topics import USAGE_TOPIC
from infra.broker import start_broker
from ledger.service import LedgerService, ServiceConfig, replay, trust_from
from ledger.simulate import TOKEN, IndexerSim, RealmSetup, emitter, new_signer

REALM = "bench.realm"
BROKER_TOPIC = "bench.broker"


def cpu_s() -> float:
    """CPU seconds (user + system) of this process, every thread included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pid_cpu_s(pid: int) -> float:
    """CPU seconds of another process (the broker) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Stage:
    events: int
    wall_s: float
    cpu_s: float

    @property
    def per_s(self) -> int:
        return round(self.events / self.wall_s)

    @property
    def cpu_us_per_event(self) -> float:
        return round(self.cpu_s / self.events * 1e6, 3)


def _meter_all(em: Any, events: int, conn: Connection) -> tuple[float, float]:
    """Once the parent says go: meter `events` messages (16 peers, 4,096 a block) and seal them.
    Returns the (wall, CPU) clocks at the start, for the caller's stage figures."""
    meter = em.meter
    peers = [f"0x{i:040x}" for i in range(16)]
    conn.send("ready")
    conn.recv()
    started, cpu = time.perf_counter(), cpu_s()
    for i in range(events):
        meter(REALM, peers[i & 15], peers[(i >> 4) & 15], "event", "bench.topic", 100, i >> 12)
    em.seal_all()
    return started, cpu


def _emit_worker(bootstrap: str, key: bytes, events: int, spool: str, conn: Connection) -> None:
    """Meter `events` messages (the emit stage: until every one is in a sealed, signed record),
    then send them all. Reports (wall, cpu) of the emit stage, then the CPU of the sending."""
    from domain.envelope import Signer
    from ledger.emitter import Emitter, EmitterConfig

    em = Emitter(
        Signer(key), EmitterConfig(bootstrap=bootstrap, spool_dir=Path(spool), fsync=False)
    )
    started, cpu = _meter_all(em, events, conn)
    conn.send((time.perf_counter() - started, cpu_s() - cpu))
    em.flush(timeout_s=300)
    em.close()
    conn.send(cpu_s() - cpu)


def _produce_worker(bootstrap: str, records: int, conn: Connection) -> None:
    """The broker stage's producer: fetch the usage records (untimed), then produce them again."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tp = TopicPartition(USAGE_TOPIC, 0)
    consumer.assign([tp])
    consumer.seek(tp, 0)
    values: list[bytes] = []
    while len(values) < records:
        for batch in consumer.poll(timeout_ms=500, max_records=100_000).values():
            values.extend(m.value for m in batch)
    consumer.close()
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=2,
        batch_size=1 << 20,
        max_request_size=2 << 20,
    )
    conn.send("ready")
    conn.recv()
    cpu = cpu_s()
    for value in values[:records]:
        producer.send(BROKER_TOPIC, key=REALM.encode(), value=value)
    producer.flush()
    conn.send(cpu_s() - cpu)
    producer.close()


def _baseline_worker(bootstrap: str, events: int) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, acks="all", enable_idempotence=True
    )
    for i in range(events):
        value = orjson.dumps(
            {
                "realm": REALM,
                "from": "0xa",
                "to": "0xb",
                "kind": "event",
                "bytes": 100,
                "block": i >> 12,
            }
        )
        producer.send("bench.baseline", key=REALM.encode(), value=value)
    producer.flush()
    producer.close()


def _baseline(bootstrap: str, events: int) -> float:
    from kafka import KafkaConsumer, TopicPartition

    from infra.broker import create_topics

    create_topics(bootstrap, ("bench.baseline",))
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tp = TopicPartition("bench.baseline", 0)
    consumer.assign([tp])
    consumer.seek(tp, 0)
    ctx = mp.get_context("spawn")
    started = time.perf_counter()
    proc = ctx.Process(target=_baseline_worker, args=(bootstrap, events))
    proc.start()
    seen = 0
    while seen < events:
        for records in consumer.poll(timeout_ms=500, max_records=100_000).values():
            for record in records:
                orjson.loads(record.value)
                seen += 1
    elapsed = time.perf_counter() - started
    proc.join()
    consumer.close()
    return events / elapsed


def _emit_stage_worker(
    bootstrap: str, dead_port: str, key: bytes, events: int, spool: str, conn: Connection
) -> None:
    """The emit stage alone: meter `events` messages into sealed, signed, spooled records with
    the broker out of reach (no sending competes), then hand the spool to an emitter that sends."""
    from domain.envelope import Signer
    from ledger.emitter import Emitter, EmitterConfig

    signer = Signer(key)
    em = Emitter(signer, EmitterConfig(bootstrap=dead_port, spool_dir=Path(spool), fsync=False))
    started, cpu = _meter_all(em, events, conn)
    conn.send((time.perf_counter() - started, cpu_s() - cpu, em.counters["sealed_records"]))
    em.close(timeout_s=0.1)
    sender = Emitter(signer, EmitterConfig(bootstrap=bootstrap, spool_dir=Path(spool), fsync=False))
    sender.flush(timeout_s=300)
    sender.close()
    conn.send("sent")


def _spawn(target: Any, *args: Any) -> tuple[Any, Connection]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(*args, child))
    proc.start()
    assert parent.recv() == "ready"
    return proc, parent


def run_ingest_bench(
    events: int, baseline_events: int, console: Console | None = None
) -> dict[str, Any]:
    from kafka import KafkaConsumer, TopicPartition

    from infra.broker import create_topics
    from infra.procs import free_port

    say = console.print if console else (lambda *_: None)
    work = Path(tempfile.mkdtemp(prefix="meshledger-bench-"))
    broker = start_broker()
    stages: dict[str, Stage] = {}
    try:
        indexer_key, router1, router2 = new_signer(), new_signer(), new_signer()
        trust = trust_from([], [indexer_key.address], [])
        indexer = IndexerSim(indexer_key, emitter(indexer_key, broker.bootstrap, work / "spool"))
        stake = 10**9 * TOKEN
        indexer.create_realm(RealmSetup(REALM, routers=[(router1, stake), (router2, stake)]), 0)
        indexer.head((events >> 12) + 1)
        indexer.em.flush()
        indexer.em.close()
        service = LedgerService(
            ServiceConfig(
                bootstrap=broker.bootstrap,
                db_path=work / "bench.duckdb",
                trust=trust,
                query_port=None,
                dead_letters=False,
                commit_every_records=4096,
            )
        )
        service.connect()
        service.run(until=lambda s: s.progress.records >= 1)  # the indexer's records
        base_events = service.progress.events

        say(f"emit: {events:,} meter calls into sealed, signed records (broker out of reach)")
        dead = f"127.0.0.1:{free_port('127.0.0.1')}"
        proc, conn = _spawn(
            _emit_stage_worker,
            broker.bootstrap,
            dead,
            router1.private_key,
            events,
            str(work / "e1"),
        )
        conn.send("go")
        wall, cpu, records = conn.recv()
        stages["emit"] = Stage(events, wall, cpu)
        assert conn.recv() == "sent"
        proc.join()

        say("project: fetched records to committed tables")
        started, cpu, broker_cpu = time.perf_counter(), cpu_s(), pid_cpu_s(broker.pid)
        service.run(until=lambda s: s.progress.events - base_events >= events)
        stages["project"] = Stage(
            events,
            time.perf_counter() - started,
            cpu_s() - cpu + pid_cpu_s(broker.pid) - broker_cpu,
        )

        say("end to end: an emitter process meters while the projector runs")
        proc, conn = _spawn(
            _emit_worker, broker.bootstrap, router2.private_key, events, str(work / "e2")
        )
        started, cpu, broker_cpu = time.perf_counter(), cpu_s(), pid_cpu_s(broker.pid)
        conn.send("go")
        service.run(until=lambda s: s.progress.events - base_events >= 2 * events)
        wall = time.perf_counter() - started
        conn.recv()  # the emit phase's figures
        emitter_cpu = conn.recv()
        stages["metered"] = Stage(
            events, wall, cpu_s() - cpu + pid_cpu_s(broker.pid) - broker_cpu + emitter_cpu
        )
        proc.join()
        stored = service.con.execute("SELECT sum(messages)::BIGINT FROM usage_blocks").fetchone()
        assert stored is not None and stored[0] == 2 * events, f"projected {stored} of {2 * events}"
        service.close()

        say("broker: the emitted records produced again and fetched back")
        create_topics(broker.bootstrap, (BROKER_TOPIC,))
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
        tp = TopicPartition(BROKER_TOPIC, 0)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        proc, conn = _spawn(_produce_worker, broker.bootstrap, records)
        started, cpu, broker_cpu = time.perf_counter(), cpu_s(), pid_cpu_s(broker.pid)
        conn.send("go")
        counted = 0
        while counted < events:
            for batch in consumer.poll(timeout_ms=200, max_records=100_000).values():
                counted += sum(peek_count(m.value) for m in batch)
        wall = time.perf_counter() - started
        producer_cpu = conn.recv()
        stages["broker"] = Stage(
            events, wall, cpu_s() - cpu + pid_cpu_s(broker.pid) - broker_cpu + producer_cpu
        )
        proc.join()
        consumer.close()

        say(f"baseline: {baseline_events:,} messages, one record each")
        baseline_per_s = _baseline(broker.bootstrap, baseline_events)

        say("replay: the whole log into a fresh database")
        started, cpu, broker_cpu = time.perf_counter(), cpu_s(), pid_cpu_s(broker.pid)
        replayed = replay(broker.bootstrap, work / "replay.duckdb", trust)
        replay_events = replayed.progress.events
        stages["replay"] = Stage(
            replay_events,
            time.perf_counter() - started,
            cpu_s() - cpu + pid_cpu_s(broker.pid) - broker_cpu,
        )
        replayed.close()
    finally:
        broker.stop()
    result: dict[str, Any] = {
        "metered_per_s": stages["metered"].per_s,
        "baseline_per_s": round(baseline_per_s),
        "replay_per_s": stages["replay"].per_s,
        "events": events,
    }
    for name in ("emit", "broker", "project"):
        result[f"{name}_per_s"] = stages[name].per_s
    for name in ("metered", "emit", "broker", "project", "replay"):
        result[f"cpu_us_per_event_{name}"] = stages[name].cpu_us_per_event
    return result


# -- epoch close against history ----------------------------------------------------------------


def _close_cost_ms(history_epochs: int, records_per_epoch: int, repeats: int) -> float:
    """Median CPU time to apply and commit one EpochClosed after `history_epochs` closed epochs."""
    import statistics

    from domain.envelope import ZERO_HASH, MeteredBuilder, seal
    from domain.events import REALM_TARGET, ChainHead, EpochClosed, RealmCreated, RealmParams
    from domain.events import StakeChanged as Stake
    from ledger import store
    from ledger.projector import Projector

    indexer, router, ledger = new_signer(), new_signer(), new_signer()
    chains: dict[str, tuple[int, str]] = {
        s.address: (1, ZERO_HASH) for s in (indexer, router, ledger)
    }
    params = RealmParams(epoch_blocks=100, funding_period_blocks=100, stake_per_mpb=TOKEN)
    db = Path(tempfile.mkdtemp(prefix="meshledger-close-")) / "close.duckdb"
    projector = Projector(store.connect(db), trust_from([ledger.address], [indexer.address], []))

    def offer(signer: Any, realm: str, **content: Any) -> None:
        seq, prev = chains[signer.address]
        _, record = seal(signer, seq, prev, realm, **content)
        chains[signer.address] = (record.last_seq + 1, record.hash_hex)
        verdict = projector.offer_record(record)
        assert verdict.outcome.value == "applied", verdict

    offer(
        indexer,
        REALM,
        events=[
            RealmCreated(realm=REALM, keeper=indexer.address, params=params, block=0),
            Stake(realm=REALM, staker=router.address, role="router_operator",
                  target=REALM_TARGET, amount=10**6 * TOKEN, tx_hash="0x", block=0, log_index=0),
        ],
    )  # fmt: skip
    peers = [f"0x{i:040x}" for i in range(64)]
    timings = []
    for epoch in range(history_epochs + repeats):
        offer(indexer, "", events=[ChainHead(realm="", chain_id=1, block=epoch * 100 + 199)])
        for r in range(records_per_epoch):
            cols = MeteredBuilder()
            for i in range(4096):
                kind = "invocation" if i % 3 == 0 else "event"
                cols.add(peers[i % 64], peers[(i + r) % 64], kind, f"api.{i % 16}.call", 100,
                         epoch * 100 + i % 100)  # fmt: skip
            offer(router, REALM, metered=cols.build())
        projector.commit()
        marks = {s: chains[s][0] - 1 for s in (indexer.address, router.address)}
        close = EpochClosed(
            realm=REALM,
            epoch=epoch,
            first_block=epoch * 100,
            last_block=epoch * 100 + 99,
            marks=marks,
        )
        # CPU time, not wall time: the machine may be busy with others' work
        started = time.process_time()
        offer(ledger, REALM, events=[close])
        projector.commit()
        if epoch >= history_epochs:
            timings.append((time.process_time() - started) * 1000)
    projector.con.close()
    return statistics.median(timings)


def run_epoch_close_bench(
    history_epochs: int = 10, records_per_epoch: int = 8, repeats: int = 9
) -> dict[str, Any]:
    """Closing an epoch after 10x the history must cost about what it costs after 1x: the close
    reads only the usage not yet counted."""
    _close_cost_ms(1, 1, 1)  # warm up imports, DuckDB and caches before either measurement
    small = _close_cost_ms(1, records_per_epoch, repeats)
    large = _close_cost_ms(history_epochs, records_per_epoch, repeats)
    return {
        "close_cpu_ms_1x": round(small, 2),
        f"close_cpu_ms_{history_epochs}x": round(large, 2),
        "ratio": round(large / small, 3),
        "records_per_epoch": records_per_epoch,
        "events_per_epoch": records_per_epoch * 4096,
    }


# -- replay with projector shards ---------------------------------------------------------------

#: realms of the shards benchmark: two on each of two partitions (murmur2 of the key, as the
#: producer places them); each router serves one realm on each partition, so every shard must
#: follow its chain through the other shard's partitions
SHARD_REALMS = (("shard.c", "shard.a"), ("shard.f", "shard.b"))


def _replay_worker(
    bootstrap: str, db: str, trust: Any, partitions: frozenset[int] | None, conn: Connection
) -> None:
    conn.send("ready")
    conn.recv()
    started, cpu = time.perf_counter(), cpu_s()
    service = replay(bootstrap, Path(db), trust, partitions=partitions)
    events = service.progress.events
    service.close()
    conn.send((events, time.perf_counter() - started, cpu_s() - cpu))


def _replay_shards(
    bootstrap: str, work: Path, trust: Any, owners: list[frozenset[int] | None], tag: str
) -> tuple[Stage, list[Path]]:
    dbs = [work / f"{tag}-{i}.duckdb" for i in range(len(owners))]
    workers = [
        _spawn(_replay_worker, bootstrap, str(db), trust, owned)
        for db, owned in zip(dbs, owners, strict=True)
    ]
    started = time.perf_counter()
    for _, conn in workers:
        conn.send("go")
    results = [conn.recv() for _, conn in workers]
    wall = time.perf_counter() - started
    for proc, _ in workers:
        proc.join()
    events = sum(r[0] for r in results)
    return Stage(events, wall, sum(r[2] for r in results)), dbs


def run_shards_bench(events: int, repeats: int, console: Console | None = None) -> dict[str, Any]:
    """Replay of one log by one projector and by two shards (two processes, one partition each),
    alternately `repeats` times; the shards' merged tables are checked against the projector's."""
    from ledger.shards import FileReader, fingerprints, merged_tables, open_shards

    say = console.print if console else (lambda *_: None)
    work = Path(tempfile.mkdtemp(prefix="meshledger-shards-"))
    broker = start_broker(partitions=2)
    try:
        indexer_key = new_signer()
        routers = [new_signer() for _ in SHARD_REALMS]
        trust = trust_from([], [indexer_key.address], [])
        indexer = IndexerSim(indexer_key, emitter(indexer_key, broker.bootstrap, work / "spool"))
        per_realm = events // (2 * len(routers))
        for router, realms in zip(routers, SHARD_REALMS, strict=True):
            for realm in realms:
                indexer.create_realm(RealmSetup(realm, routers=[(router, 10**9 * TOKEN)]), 0)
        indexer.head((per_realm >> 12) + 1)
        indexer.em.flush()
        indexer.em.close()
        say(f"shards: {per_realm * 2 * len(routers):,} metered messages in 4 realms, 2 partitions")
        ctx = mp.get_context("spawn")
        procs = [
            ctx.Process(
                target=_shard_emit_worker,
                args=(broker.bootstrap, r.private_key, realms, per_realm, str(work / f"em{i}")),
            )
            for i, (r, realms) in enumerate(zip(routers, SHARD_REALMS, strict=True))
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
            assert proc.exitcode == 0, "an emitter process failed"
        one: list[Stage] = []
        two: list[Stage] = []
        for run in range(repeats):
            say(f"run {run + 1}/{repeats}: one projector, then two shards")
            stage, single = _replay_shards(broker.bootstrap, work, trust, [None], f"one{run}")
            one.append(stage)
            stage, dbs = _replay_shards(
                broker.bootstrap, work, trust, [frozenset({0}), frozenset({1})], f"two{run}"
            )
            two.append(stage)
        readers = [FileReader(db) for db in dbs]
        alone = FileReader(single[0])
        try:
            shards_match = fingerprints(merged_tables(open_shards(readers))) == fingerprints(
                merged_tables(open_shards([alone]))
            )
        finally:
            for reader in (*readers, alone):
                reader.close()
    finally:
        broker.stop()
    best_1 = max(one, key=lambda s: s.per_s)
    best_2 = max(two, key=lambda s: s.per_s)
    return {
        "replay_per_s_1": best_1.per_s,
        "replay_per_s_2": best_2.per_s,
        "ratio": round(best_2.per_s / best_1.per_s, 3),
        "cpu_us_per_event_1": best_1.cpu_us_per_event,
        "cpu_us_per_event_2": best_2.cpu_us_per_event,
        "runs_1": [s.per_s for s in one],
        "runs_2": [s.per_s for s in two],
        "shards_match": shards_match,
        "events": best_1.events,
    }


def _shard_emit_worker(
    bootstrap: str, key: bytes, realms: tuple[str, ...], per_realm: int, spool: str
) -> None:
    from domain.envelope import Signer
    from ledger.emitter import Emitter, EmitterConfig

    em = Emitter(
        Signer(key), EmitterConfig(bootstrap=bootstrap, spool_dir=Path(spool), fsync=False)
    )
    peers = [f"0x{i:040x}" for i in range(16)]
    for i in range(per_realm):
        for realm in realms:  # one router, one seq chain through both partitions
            em.meter(
                realm, peers[i & 15], peers[(i >> 4) & 15], "event", "bench.topic", 100, i >> 12
            )
    em.flush(timeout_s=300)
    em.close()

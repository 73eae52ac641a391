"""`meshledger bench ingest`: end-to-end metered messages/s against a one-record-per-message
kafka-python baseline, measured side by side on the same broker in the same run, and audit replay
speed. Emitter and baseline producer run in their own processes; the projector in this one."""

from __future__ import annotations

import multiprocessing as mp
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from infra.broker import start_broker
from ledger.service import LedgerService, ServiceConfig, replay, trust_from
from ledger.simulate import TOKEN, IndexerSim, RealmSetup, emitter, new_signer

REALM = "bench.realm"


def _emit_worker(bootstrap: str, key: bytes, events: int, spool: str) -> None:
    from domain.envelope import Signer
    from ledger.emitter import Emitter, EmitterConfig

    em = Emitter(
        Signer(key), EmitterConfig(bootstrap=bootstrap, spool_dir=Path(spool), fsync=False)
    )
    meter = em.meter
    peers = [f"0x{i:040x}" for i in range(16)]
    for i in range(events):
        meter(REALM, peers[i & 15], peers[(i >> 4) & 15], "event", "bench.topic", 100, i >> 12)
    em.flush(timeout_s=300)
    em.close()


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


def run_ingest_bench(
    events: int, baseline_events: int, console: Console | None = None
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="meshledger-bench-"))
    broker = start_broker()
    try:
        indexer_key, router = new_signer(), new_signer()
        trust = trust_from([], [indexer_key.address], [])
        indexer = IndexerSim(indexer_key, emitter(indexer_key, broker.bootstrap, work / "spool"))
        indexer.create_realm(RealmSetup(REALM, routers=[(router, 10**9 * TOKEN)]), block=0)
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
        ctx = mp.get_context("spawn")
        if console:
            console.print(
                f"ingest: {events:,} metered messages, emitter process -> broker -> projector -> DuckDB"
            )
        started = time.perf_counter()
        proc = ctx.Process(
            target=_emit_worker,
            args=(broker.bootstrap, router.private_key, events, str(work / "em")),
        )
        proc.start()
        service.run(until=lambda s: s.progress.events - base_events >= events)
        metered_s = time.perf_counter() - started
        proc.join()
        stored = service.con.execute("SELECT sum(messages)::BIGINT FROM usage_blocks").fetchone()
        assert stored is not None and stored[0] == events, f"projected {stored} of {events}"
        service.close()
        if console:
            console.print(
                f"  {events / metered_s:,.0f} metered/s; baseline: {baseline_events:,} one-record-per-message"
            )
        baseline_per_s = _baseline(broker.bootstrap, baseline_events)
        started = time.perf_counter()
        replayed = replay(broker.bootstrap, work / "replay.duckdb", trust)
        replay_s = time.perf_counter() - started
        replay_events = replayed.progress.events
        replayed.close()
        return {
            "metered_per_s": round(events / metered_s),
            "baseline_per_s": round(baseline_per_s),
            "replay_per_s": round(replay_events / replay_s),
            "events": events,
        }
    finally:
        broker.stop()


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

"""`meshledger demo --simulated`: a quick look without chain or WAMP router: simulated indexer and
routers (signed records on a memory broker), the real projector and epoch closer; then the tables
and an audit that must reproduce them (non-zero exit otherwise)."""

from __future__ import annotations

import random
import tempfile
import threading
import time
from pathlib import Path

from kafka import KafkaProducer
from rich.console import Console

from domain.envelope import ZERO_HASH, MeteredBuilder, Signer, seal
from domain.events import RealmParams
from domain.topics import USAGE_TOPIC
from infra.broker import start_broker
from ledger.audit import LiveSide, run_audit
from ledger.query import QueryClient
from ledger.render import print_audit, print_query
from ledger.service import LedgerService, ServiceConfig, trust_from
from ledger.simulate import (
    TOKEN,
    IndexerSim,
    RealmSetup,
    emitter,
    heartbeat,
    new_signer,
    skewed_traffic,
)

console = Console()


def run_simulated_demo(data_dir: Path | None = None, blocks: int = 600, seed: int = 7) -> int:
    rng = random.Random(seed)
    work = data_dir or Path(tempfile.mkdtemp(prefix="meshledger-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]meshledger demo --simulated")
    broker = start_broker(log_path=work / "broker.log")
    console.print(f"broker (tansu) on [cyan]{broker.bootstrap}[/], data in {work}")
    try:
        return _run(broker.bootstrap, work, rng, blocks)
    finally:
        broker.stop()


def _run(bootstrap: str, work: Path, rng: random.Random, blocks: int) -> int:
    indexer_key, ledger_key = new_signer(), new_signer()
    trust = trust_from([ledger_key.address], [indexer_key.address], [])
    spool = work / "spool"
    indexer = IndexerSim(indexer_key, emitter(indexer_key, bootstrap, spool))
    routers = [new_signer() for _ in range(4)]
    params = RealmParams(epoch_blocks=100, funding_period_blocks=100, stake_per_mpb=TOKEN)
    realms = [
        RealmSetup(
            "com.example.chat",
            params=params,
            users=[(new_signer().address, 400 * TOKEN), (new_signer().address, 100 * TOKEN)],
            routers=[(routers[0], 30 * TOKEN), (routers[1], 8 * TOKEN)],
            services=[(new_signer().address, 20 * TOKEN)],
            apis=[("com.example.chat.api", new_signer().address)],
        ),
        RealmSetup(
            "io.crossbar.market",
            params=params,
            users=[(new_signer().address, 1000 * TOKEN)],
            routers=[(routers[1], 20 * TOKEN), (routers[2], 20 * TOKEN), (routers[3], 2 * TOKEN)],
            services=[(new_signer().address, 50 * TOKEN), (new_signer().address, 5 * TOKEN)],
            apis=[
                ("io.crossbar.market.quotes", new_signer().address),
                ("io.crossbar.market.orders", new_signer().address),
            ],
        ),
    ]
    for realm in realms:
        indexer.create_realm(realm, block=0)
    indexer.head(0)

    ledger_emitter = emitter(ledger_key, bootstrap, spool)
    service = LedgerService(
        ServiceConfig(
            bootstrap=bootstrap,
            db_path=work / "ledger.duckdb",
            trust=trust,
            grace_blocks=3,
            gap_timeout_ms=2000,
        ),
        emitter=ledger_emitter,
    )
    url = f"http://127.0.0.1:{service.start_query_server()}"
    thread = threading.Thread(target=service.run, name="projector", daemon=True)
    thread.start()
    console.print(f"projector running, query endpoint {url}")

    router_emitters = {r.address: emitter(r, bootstrap, spool) for r in routers}
    metered = 0
    late_router = routers[3]
    held_back_block = 42  # the late router keeps one record of epoch 0 until epoch 0 is closed
    with console.status("routers metering traffic…"):
        for start in range(0, blocks, 10):
            window = range(start, start + 10)
            for realm in realms:
                for router, _ in realm.routers:
                    em = router_emitters[router.address]
                    clients = [a for a, _ in realm.users] + [a for a, _ in realm.services]
                    services = [a for a, _ in realm.services]
                    uris = [api + ".call" for api, _ in realm.apis]
                    per_block = 1 + int(4 * rng.random() ** 2) + (6 if router is routers[0] else 0)
                    metered += skewed_traffic(
                        em, realm.name, clients, services, uris, window, per_block, rng
                    )
                    heartbeat(em, realm.name, start + 10)
            if start == 300:  # a stake change mid-way: a user doubles its reservation
                indexer.stake(
                    realms[0], realms[0].users[1][0], "user", 200 * TOKEN, block=start + 5
                )
            indexer.head(start + 10)
            time.sleep(0.01)
        for em in router_emitters.values():
            em.flush()
        indexer.em.flush()
        _wait(lambda: service.closed_epochs().get(realms[1].name, -1) >= 0, 60)
        # the late record: blocks of the closed epoch 0 arrive now and count in a later epoch, flagged late
        late_em = router_emitters[late_router.address]
        for _ in range(25):
            late_em.meter(
                realms[1].name,
                realms[1].users[0][0],
                realms[1].services[0][0],
                "invocation",
                "io.crossbar.market.quotes.get",
                120,
                held_back_block,
            )
        metered += 25
        late_em.flush()
        _inject_bad_records(bootstrap, routers[0], realms[0].name)
        for start in range(blocks, blocks + 200, 10):
            for realm in realms:
                for router, _ in realm.routers:
                    heartbeat(router_emitters[router.address], realm.name, start + 10)
            indexer.head(start + 10)
        for em in router_emitters.values():
            em.flush()
        indexer.em.flush()
    last_epoch = (blocks // 100) - 1
    with console.status("waiting for epoch close and payouts…"):
        _wait(lambda: all(v >= last_epoch for v in service.closed_epochs().values()), 120)
        _wait(lambda: _confirmed(url), 60)
        _wait(lambda: service.caught_up(), 60)
    console.print(
        f"metered [bold]{metered:,}[/] messages from {len(routers)} routers in {len(realms)} realms"
    )

    client = QueryClient(url)
    print_query(
        console,
        "bandwidth (every 50th block)",
        [r for r in client.rows("bandwidth") if r["block"] % 50 == 0],
    )
    print_query(
        console,
        "usage per operator per epoch (first two epochs)",
        [r for r in client.rows("usage") if r["epoch"] < 2],
    )
    print_query(console, "epochs", client.rows("epochs"), drop=("marks",))
    print_query(console, "payouts (last epoch)", client.rows("payouts", epoch=last_epoch))
    print_query(console, "rejected records", client.rows("dead"))

    console.rule("[bold]audit: replay from offset 0 into a fresh DuckDB")
    report = run_audit(bootstrap, trust, LiveSide(url=url), work / "audit")
    print_audit(console, report)
    service.stop()
    thread.join(timeout=30)
    service.close()
    for em in [*router_emitters.values(), indexer.em, ledger_emitter]:
        em.close(timeout_s=5)
    if report.matches:
        console.print("[bold green]audit reproduces the live tables[/]")
    else:
        console.print("[bold red]audit does NOT reproduce the live tables[/]")
    return report.exit_code if not report.matches else 0


def _confirmed(url: str) -> bool:
    rows = QueryClient(url).rows("epochs")
    return bool(rows) and all(r["confirmed_digest"] == r["digest"] for r in rows)


def _inject_bad_records(bootstrap: str, router: Signer, realm: str) -> None:
    """A duplicate (a record re-sent as is) and a forged record (a router's address, another key)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tp = TopicPartition(USAGE_TOPIC, 0)
    consumer.assign([tp])
    consumer.seek(tp, 0)
    first = None
    while first is None:
        for records in consumer.poll(timeout_ms=1000, max_records=1).values():
            first = records[0]
    consumer.close()
    forger = new_signer()
    cols = MeteredBuilder()
    cols.add("0xattacker", "0xattacker", "event", "mesh.demo.topic", 10**6, 50)
    wire, _ = seal(forger, 1, ZERO_HASH, realm, metered=cols.build())
    forged = (
        wire[:4] + wire[4:69] + wire[69:].replace(forger.address.encode(), router.address.encode())
    )
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    producer.send(USAGE_TOPIC, key=first.key, value=first.value)
    producer.send(USAGE_TOPIC, key=realm.encode(), value=forged)
    producer.flush()
    producer.close()


def _wait(check: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise TimeoutError(f"demo: condition not reached within {timeout_s}s")

"""Issue 15: a watermark never overtakes what its source emitted before it; within a realm emit order
is seq order; so the same chain and traffic give the same ledger whatever the emitter's timing."""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from eth_hash.auto import keccak
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledger_world import World, caught_up, run_until, table

from domain.envelope import Signer, decode
from domain.events import ChainHead, PeerDisconnected, RealmParams
from infra.broker import Broker, start_broker
from ledger.service import LedgerService, ServiceConfig, trust_from
from ledger.simulate import TOKEN, IndexerSim, RealmSetup, emitter
from ledger.spool import iter_frames

REALMS = ("r0", "r1", "r2")
#: (what, realm index, pause after it in ms): "meter" / "event" in a realm, "head" a watermark
ops = st.lists(
    st.tuples(
        st.sampled_from(["meter", "meter", "event", "head"]),
        st.integers(0, len(REALMS)),
        st.sampled_from([0, 0, 0, 0, 1, 3]),
    ),
    min_size=1,
    max_size=40,
)


def _emitted_seqs(spool_dir: Path) -> dict[int, int]:
    """emit index -> seq, read back from every record the emitter sealed into its spool."""
    seqs: dict[int, int] = {}
    for frame in iter_frames(spool_dir):
        for seq, event in decode(frame.value).iter_events():
            index = event.payload_bytes if hasattr(event, "payload_bytes") else None
            if isinstance(event, PeerDisconnected):
                index = event.balance
            elif isinstance(event, ChainHead):
                index = event.block
            assert index is not None and index not in seqs, f"event {index} sealed twice"
            seqs[index] = seq
    return seqs


@given(
    ops,
    st.sampled_from([0, 1, 2, 10]),
    st.integers(1, 6),
    st.sampled_from([1200, 2000, 900_000]),
)
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_seq_order_is_emit_order_within_a_realm_and_around_every_watermark(
    broker: Broker, script: list[tuple[str, int, int]], linger_ms: int, batch: int, max_bytes: int
) -> None:
    spool = Path(tempfile.mkdtemp(prefix="order-"))
    signer = Signer(keccak(spool.name.encode()))
    em = emitter(
        signer,
        broker.bootstrap,
        spool,
        linger_ms=linger_ms,
        batch_max_events=batch,
        record_max_bytes=max_bytes,
    )
    realm_of: dict[int, str] = {}
    heads: list[int] = []
    for index, (what, r, pause_ms) in enumerate(script):
        realm = REALMS[r % len(REALMS)] if what != "head" or r < len(REALMS) else ""
        if what == "meter":
            em.meter(realm, "0xa", "0xb", "event", "t", index, 7)
        elif what == "event":
            em.emit(
                PeerDisconnected(
                    realm=realm, router="0xr", peer="0xp", reason="", balance=index, block=7
                )
            )
        else:
            em.emit(ChainHead(realm=realm, chain_id=1, block=index))
            heads.append(index)
        realm_of[index] = realm
        if pause_ms:
            time.sleep(pause_ms / 1000)  # lets the sender's linger pass seal some batches
    em.flush()
    em.close()
    seqs = _emitted_seqs(spool / signer.address)
    assert sorted(seqs) == list(range(len(script))), "every emitted event is sealed exactly once"
    for realm in {*REALMS, ""}:
        in_realm = [i for i in sorted(realm_of) if realm_of[i] == realm]
        assert [seqs[i] for i in in_realm] == sorted(seqs[i] for i in in_realm), realm
    for head in heads:
        assert all(seqs[i] < seqs[head] for i in seqs if i < head), f"head {head} overtook"
        assert all(seqs[i] > seqs[head] for i in seqs if i > head), f"head {head} overtaken"


def test_an_unstake_is_never_overtaken_by_the_head_after_it(
    fresh_broker: Broker, tmp_path: Path
) -> None:
    """The issue's scenario: unstake at block 94 (realm r1's batch lingering), head at 100 right
    after; the router's records for blocks 95..99 must be refused, whatever the emitter timing."""
    world = World(fresh_broker.bootstrap, tmp_path, head=60)
    world.indexer.em.close()
    # a long linger and a batch limit the head reaches first: before the fix the head's batch was
    # sealed (and numbered) while the unstake still lingered in its realm's batch
    indexer = emitter(
        world.indexer_key,
        fresh_broker.bootstrap,
        tmp_path / "spool",
        linger_ms=60_000,
        batch_max_events=2,
    )
    world.indexer.em = indexer
    world.indexer.head(70)
    world.indexer.stake(world.realm, world.router.address, "router_operator", 0, block=94)
    world.indexer.head(100)
    router = emitter(world.router, fresh_broker.bootstrap, tmp_path / "spool")
    for block in range(95, 100):
        router.meter("r1", world.user, "0xpeer", "event", "t", 10, block)
    router.flush()
    service = world.service()
    router_state = service.projector.sources
    # decided either way: applied (the bug) or refused; the indexer is flushed only afterwards
    run_until(
        service,
        lambda s: (
            router_state.get(world.router.address) is not None
            or s.projector.rejected.get("unauthorized_router", 0) > 0
        ),
        30,
    )
    indexer.flush()
    run_until(service, caught_up, 30)
    service.projector.commit()
    assert service.projector.rejected.get("unauthorized_router") == 1
    assert table(
        service,
        f"SELECT count(*) FROM usage_blocks WHERE source = '{world.router.address}'",
    ) == [(0,)]
    stakes = table(service, "SELECT block, amount FROM stakes WHERE role = 'router_operator'")
    assert (94, 0) in stakes
    service.close()
    router.close()
    indexer.close()


# -- two runs, same script, different timings --------------------------------------------------------
def _key(name: str) -> Signer:
    return Signer(keccak(name.encode()))


def _scripted_run(bootstrap: str, work: Path, timing: dict[str, Any]) -> dict[str, list[Any]]:
    """Chain and traffic fixed by the script; only the emitters' linger and batch limits vary."""
    indexer_key, ledger_key = _key("indexer"), _key("ledger")
    a, b = _key("router-a"), _key("router-b")
    user, service_op = _key("user").address, _key("service").address
    spool = work / "spool"
    indexer = IndexerSim(indexer_key, emitter(indexer_key, bootstrap, spool, **timing))
    params = RealmParams(epoch_blocks=20, funding_period_blocks=20, stake_per_mpb=TOKEN)
    realms = [
        RealmSetup(
            "chat",
            keeper=_key("k1"),
            params=params,
            users=[(user, 50 * TOKEN)],
            routers=[(a, 5 * TOKEN)],
        ),
        RealmSetup(
            "market",
            keeper=_key("k2"),
            params=params,
            users=[(user, 80 * TOKEN)],
            routers=[(a, 3 * TOKEN), (b, 3 * TOKEN)],
            services=[(service_op, 2 * TOKEN)],
        ),
    ]
    for realm in realms:
        indexer.create_realm(realm, block=0)
    indexer.head(0)
    routers = {r.address: emitter(r, bootstrap, spool, **timing) for r in (a, b)}
    ledger_em = emitter(ledger_key, bootstrap, spool, **timing)
    service = LedgerService(
        ServiceConfig(
            bootstrap=bootstrap,
            db_path=work / "ledger.duckdb",
            trust=trust_from([ledger_key.address], [indexer_key.address], []),
            grace_blocks=5,
            gap_timeout_ms=60_000,
            query_port=None,
        ),
        emitter=ledger_em,
    )
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        for window in range(0, 80, 5):
            for block in range(window, window + 5):
                for realm in realms:
                    for router, _ in realm.routers:
                        em = routers[router.address]
                        for i in range(3 if router is a else 2):
                            em.meter(
                                realm.name,
                                user,
                                service_op,
                                "invocation" if i else "event",
                                "api.call",
                                40 + i,
                                block,
                            )
            for realm in realms:
                for router, _ in realm.routers:
                    routers[router.address].emit(
                        ChainHead(realm=realm.name, chain_id=1, block=window + 5)
                    )
            for em in routers.values():
                em.flush()
            if window == 30:  # router b unstakes; the head right after must not overtake it
                indexer.stake(realms[1], b.address, "router_operator", 0, block=35)
            indexer.head(window + 5)
        indexer.em.flush()
        deadline = time.monotonic() + 60
        while min(service.closed_epochs().get(r.name, -1) for r in realms) < 2:
            assert time.monotonic() < deadline, f"epochs not closed: {service.closed_epochs()}"
            time.sleep(0.1)
        ledger_em.flush()
    finally:
        service.stop()
        thread.join(timeout=30)
    # every close is followed by its PayoutsComputed (emitted once the close committed): run on
    # in this thread until each epoch's digest is confirmed from the log
    service._stop.clear()
    unconfirmed = "SELECT count(*) FROM epochs WHERE confirmed_digest IS NULL"
    run_until(
        service,
        lambda s: (
            ledger_em.flush() is None
            and caught_up(s)
            and s.con.execute(unconfirmed).fetchone()[0] == 0
        ),
        60,
    )
    queries = {
        "usage": "SELECT realm, epoch, payee_class, account, messages, late_messages, capacity, credit FROM usage",
        "payouts": "SELECT * FROM payouts",
        "epochs": "SELECT realm, epoch, first_block, last_block, funding, carry_in, total, remainder, payees, digest, late_messages, confirmed_digest FROM epochs",
        "usage_per_block": "SELECT realm, block, source, sum(messages)::BIGINT, sum(bytes)::BIGINT FROM usage_blocks GROUP BY ALL",
        "stakes": "SELECT realm, staker, role, target, amount, block, log_index FROM stakes",
        "rejected": "SELECT reason FROM rejected",  # counts are per record
        "sources": "SELECT source, last_seq, events FROM sources",
    }
    out = {
        name: sorted(map(tuple, service.con.execute(q).fetchall())) for name, q in queries.items()
    }
    service.close()
    for em in (*routers.values(), indexer.em):
        em.close()
    ledger_em.close()
    return out


def test_two_timings_of_one_script_give_the_same_ledger(
    fresh_broker: Broker, tmp_path: Path
) -> None:
    other = start_broker()
    try:
        eager = _scripted_run(
            fresh_broker.bootstrap, tmp_path / "eager", {"linger_ms": 0, "batch_max_events": 2}
        )
        lazy = _scripted_run(
            other.bootstrap,
            tmp_path / "lazy",
            {"linger_ms": 300, "batch_max_events": 4096, "record_max_bytes": 4000},
        )
    finally:
        other.stop()
    assert eager["rejected"] == [("unauthorized_router",)]  # router b after its unstake
    assert [e[1] for e in eager["epochs"] if e[0] == "market"] == [0, 1, 2]
    assert eager["payouts"], "the script pays someone"
    for name in eager:
        assert eager[name] == lazy[name], name

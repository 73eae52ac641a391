"""Issue 8 through the real broker and projector: a closer that runs late still pays by the chain's
rules, and the bandwidth view, the usage table and the payouts read the same stakes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ledger_world import run_until, table

from domain.events import (
    REALM_TARGET,
    ChainHead,
    RealmCreated,
    RealmParams,
    RealmParamsChanged,
    StakeChanged,
)
from domain.stakes import value_at
from infra.broker import Broker
from ledger.service import LedgerService, ServiceConfig, trust_from
from ledger.simulate import TOKEN, emitter, heartbeat, new_signer

PARAMS = RealmParams(rfr_bps=200, stake_per_mpb=TOKEN, epoch_blocks=20, funding_period_blocks=20)
REALM = "econ"


def _stake(
    staker: str, role: str, target: str, amount: int, block: int, log_index: int
) -> StakeChanged:
    return StakeChanged(
        realm=REALM, staker=staker, role=role, target=target, amount=amount * TOKEN,
        tx_hash="0x" + f"{block:032x}{log_index:032x}", block=block, log_index=log_index,
    )  # fmt: skip


def test_a_late_closer_pays_by_the_chain_and_every_view_agrees(
    fresh_broker: Broker, tmp_path: Path
) -> None:
    bootstrap = fresh_broker.bootstrap
    indexer, ledger, router = new_signer(), new_signer(), new_signer()
    user, backer = new_signer().address, new_signer().address
    index = emitter(indexer, bootstrap, tmp_path / "spool")
    index.emit_many(
        [
            RealmCreated(realm=REALM, keeper=new_signer().address, params=PARAMS, block=0),
            _stake(user, "user", REALM_TARGET, 120, 0, 0),
            _stake(router.address, "router_operator", REALM_TARGET, 4, 0, 1),
            # two same-block changes each, emitted in reverse log order: the last by log index holds
            _stake(router.address, "router_operator", REALM_TARGET, 2, 5, 2),
            _stake(router.address, "router_operator", REALM_TARGET, 20, 5, 1),
            _stake(user, "user", REALM_TARGET, 300, 5, 4),
            _stake(user, "user", REALM_TARGET, 900, 5, 3),
            _stake(backer, "user", router.address, 3, 25, 0),  # a directed stake (C2)
            RealmParamsChanged(realm=REALM, params=replace(PARAMS, rfr_bps=1000), block=30),
        ]
    )
    index.emit(ChainHead(realm="", chain_id=1, block=100))
    routed = emitter(router, bootstrap, tmp_path / "spool")
    used = {0: 160, 1: 40, 2: 7}
    for epoch, n in used.items():
        for i in range(n):
            routed.meter(REALM, user, backer, "event", "t", 10, epoch * 20 + i % 20)
    heartbeat(routed, REALM, 100)
    for em in (index, routed):
        em.flush()
        em.close()

    # the projector starts only now: its closer sees all of the chain at once, late for every epoch
    service = LedgerService(
        ServiceConfig(
            bootstrap=bootstrap,
            db_path=tmp_path / "ledger.duckdb",
            trust=trust_from([ledger.address], [indexer.address], []),
            query_port=None,
            grace_blocks=2,
        ),
        emitter=emitter(ledger, bootstrap, tmp_path / "spool"),
    )
    run_until(service, lambda s: s.closed_epochs().get(REALM, -1) >= 3, 60)
    service.projector.commit()

    fundings = dict(table(service, f"SELECT epoch, funding FROM epochs WHERE realm = '{REALM}'"))
    assert fundings[0] == 51 * TOKEN // 10  # 5.1 tokens: 300 from block 5, not 900
    assert fundings[1] == 6 * TOKEN  # 2% of 300 a block
    assert fundings[2] == 30 * TOKEN  # the change at block 30 applies from epoch 2 (block 40)
    caps = dict(
        table(
            service,
            f"SELECT epoch, (capacity, credit) FROM usage WHERE realm = '{REALM}' AND payee_class = 'router'",
        )
    )
    assert caps[0] == (4 * 5 + 2 * 15, 50)  # not 320 and 160
    assert caps[1] == (2 * 5 + (2 + 3) * 15, 40)  # the directed stake from block 25
    assert caps[2] == (5 * 20, 7)

    # the views read the same stakes: per-block provided and reserved bandwidth, expanded over
    # each epoch, equal the capacities and the funding the payouts used
    points = table(
        service,
        f"SELECT kind, block, mpb, stake FROM stake_mpb WHERE realm = '{REALM}' ORDER BY block",
    )
    provided = [(b, mpb) for kind, b, mpb, _ in points if kind == "router"]
    reserved = [(b, int(stake)) for kind, b, _, stake in points if kind == "reserved"]
    for epoch in range(3):
        blocks = range(epoch * 20, epoch * 20 + 20)
        assert sum(value_at(provided, b) for b in blocks) == caps[epoch][0]
        rate = 200 if epoch < 2 else 1000
        assert rate * sum(value_at(reserved, b) for b in blocks) // (10_000 * 20) == fundings[epoch]
    bandwidth = dict(
        table(service, f"SELECT block, provided_mpb FROM bandwidth WHERE realm = '{REALM}'")
    )
    assert all(mpb == value_at(provided, b) for b, mpb in bandwidth.items())
    assert {b: mpb for b, mpb in bandwidth.items() if b in (0, 5, 25)} == {0: 4, 5: 2, 25: 5}
    service.close()

"""The indexer's events through the real projector (its own broker): after a backfill the stakes
and realm tables equal the contracts' view functions at the same block; after a deep reorg the
projection equals a fresh backfill of the final chain, and a closed epoch that counted a
retracted log is flagged in `reorg_flags`, not rewritten."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from indexer_harness import Harness
from mesh_chain import ZERO, MeshChain, busy_chain, rpc

from domain.events import REALM_TARGET, ROLES, RealmParams
from indexer.decoding import params_tuple
from indexer.service import SyncConfig
from infra.broker import Broker
from ledger.keys import write_new_key
from ledger.service import LedgerService, ServiceConfig, trust_from
from settlement.merkle import realm_id

pytestmark = pytest.mark.integration


def project(
    broker: Broker, db: Path, indexers: list[str], ledger_key: Any = None, timeout_s: float = 60
) -> LedgerService:
    """Run a projector over everything in the broker (closing due epochs when `ledger_key`)."""
    from ledger.emitter import Emitter, EmitterConfig

    emitter = None
    ledger = []
    if ledger_key is not None:
        emitter = Emitter(
            ledger_key,
            EmitterConfig(bootstrap=broker.bootstrap, spool_dir=db.parent / "ledger-spool"),
        )
        ledger = [ledger_key.address]
    cfg = ServiceConfig(
        bootstrap=broker.bootstrap,
        db_path=db,
        trust=trust_from(ledger, indexers, []),
        query_port=None,
        grace_blocks=0,
        gap_timeout_ms=500,
    )
    service = LedgerService(cfg, emitter=emitter)
    deadline = time.monotonic() + timeout_s
    quiet = [0]

    def done(svc: LedgerService) -> bool:
        if time.monotonic() > deadline:
            raise TimeoutError(f"projector did not catch up: {svc.progress}")
        quiet[0] = quiet[0] + 1 if svc.caught_up() and not any(svc._buffers.values()) else 0
        return quiet[0] > 10

    service.run(until=done)
    if emitter is not None:
        emitter.flush()
        emitter.close()
    return service


def rows(service: LedgerService, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in service.con.execute(sql).fetchall()]


@pytest.fixture
def own(mesh: MeshChain, fresh_broker: Broker, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(mesh, fresh_broker, tmp_path, SyncConfig(confirmations=0, poll_interval_s=0.05))
    yield h
    h.close()


def test_projected_stakes_and_realms_equal_the_contracts_view(own: Harness, tmp_path: Path) -> None:
    mesh = own.mesh
    busy_chain(mesh)
    head = mesh.head()
    own.sync_to(head)
    own.close()
    service = project(own.broker, tmp_path / "ledger.duckdb", [own.signer.address])
    try:
        assert rows(service, "SELECT reason, records FROM rejected") == []
        realms = rows(service, "SELECT * FROM realms ORDER BY realm")
        assert [r[0] for r in realms] == ["realm.one", "realm.two"]
        staking = mesh.stack.staking.functions
        for realm, keeper, *params, _created, usd_price, feed in realms:
            assert keeper == staking.keeperOf(realm_id(realm)).call(block_identifier=head)
            onchain = tuple(staking.paramsOf(realm_id(realm)).call(block_identifier=head))
            assert (*(int(p) for p in params), int(usd_price)) == onchain[:-1]
            assert (feed or "0x" + "00" * 20) == onchain[-1]
        latest = rows(
            service,
            "SELECT realm, staker, role, target, arg_max(amount, block * 100000 + log_index)"
            " FROM stakes GROUP BY ALL",
        )
        assert len(latest) == 5
        for realm, staker, role, target, amount in latest:
            onchain_target = ZERO if target == REALM_TARGET else target
            staked, _, _ = staking.positionOf(
                realm_id(realm), staker, ROLES.index(role), onchain_target
            ).call(block_identifier=head)
            assert int(amount) == staked
        ((api, vendor),) = rows(service, "SELECT api, vendor FROM apis")
        assert staking.apiVendor(realm_id("realm.one"), mesh.w3.keccak(text=api)).call() == vendor
        seen = dict(rows(service, "SELECT type, count(*) FROM chain_logs GROUP BY ALL"))
        assert seen["ChequeBounced"] == 2 and seen["SettlementClaimed"] == 1
        assert seen["ChequebookCreated"] == len(mesh.created_chequebooks()) == 2
        funded, _, paid = mesh.stack.settlement.functions.realmBudget(realm_id("realm.one")).call()
        settled = rows(
            service,
            "SELECT sum(CAST(json_extract_string(body, '$.amount') AS HUGEINT)) FROM chain_logs"
            " WHERE type IN ('SettlementPushed', 'SettlementClaimed')",
        )
        assert int(settled[0][0]) == paid and funded > 0
    finally:
        service.close()


def test_deep_reorg_retracts_undoes_and_flags_the_closed_epoch(
    own: Harness, tmp_path: Path
) -> None:
    mesh = own.mesh
    a = mesh.accounts
    params = RealmParams(epoch_blocks=5, funding_period_blocks=5)
    mesh.send(mesh.stack.staking.functions.registerRealm("r", a[1], params_tuple(params)), a[1])
    for i in range(6):
        mesh.stake("r", a[3 + i % 3], "user", ZERO, 10**18 + i)
    mesh.mine(6)  # the epochs holding the last stakes end and close
    own.sync_to(mesh.head())
    own.close()
    ledger_key = write_new_key(tmp_path / "ledger.key")
    live = project(own.broker, tmp_path / "live.duckdb", [own.signer.address], ledger_key)
    closed = rows(live, "SELECT max(epoch) FROM epochs")[0][0]
    live.close()
    assert closed is not None and closed >= 1

    rpc(mesh.w3, "anvil_reorg", 8, [])  # the last 2 stakes, counted in closed epochs, orphaned
    mesh.mine(2)
    final = mesh.head()
    own.sync_to(final)
    own.close()
    live = project(own.broker, tmp_path / "live.duckdb", [own.signer.address], ledger_key)
    fresh_key = Harness(mesh, own.broker, tmp_path / "fresh", own.sync)
    fresh_key.sync_to(final)
    fresh_key.close()
    fresh = project(own.broker, tmp_path / "fresh.duckdb", [fresh_key.signer.address])
    try:
        assert rows(live, "SELECT reason, records FROM rejected") == []
        stakes = (
            "SELECT realm, staker, role, target, amount, block, log_index FROM stakes ORDER BY ALL"
        )
        assert rows(live, stakes) == rows(fresh, stakes)
        points = "SELECT * FROM stake_points ORDER BY ALL"
        assert rows(live, points) == rows(fresh, points)
        alive = (
            "SELECT chain_id, block_hash, log_index, type FROM chain_logs"
            " WHERE retracted_seq IS NULL ORDER BY ALL"
        )
        assert rows(live, alive) == rows(fresh, alive)
        flags = rows(live, "SELECT DISTINCT epoch, retracted FROM reorg_flags ORDER BY ALL")
        assert flags and {r[1] for r in flags} == {"StakeChanged"}
        assert max(r[0] for r in flags) <= closed
        assert rows(fresh, "SELECT * FROM reorg_flags") == []
        from ledger.query import run_query

        shown = run_query(live.con, "reorgs", {"realm": "r"})
        assert len(shown["rows"]) == len(rows(live, "SELECT * FROM reorg_flags")) > 0
    finally:
        live.close()
        fresh.close()


def test_usd_values_use_the_last_price_at_the_epoch_end_or_say_stale(tmp_path: Path) -> None:
    from ledger import store
    from ledger.query import run_query

    con = store.connect(tmp_path / "usd.duckdb")
    feed = "0x" + "11" * 20
    for epoch, last_block, total in ((0, 9, 10**18), (1, 19, 20 * 10**18), (2, 29, 5 * 10**18)):
        con.execute(
            "INSERT INTO epochs VALUES (?, ?, ?, ?, '{}', 0, 0, ?, 0, 1, '0x', 0, NULL)",
            ["r", epoch, last_block - 9, last_block, total],
        )
        con.execute("INSERT INTO payouts VALUES ('r', ?, '0xa', 'router', ?)", [epoch, total])
    prices = [(12, 2 * 10**8, "valid"), (25, 3 * 10**8, "stale")]
    for block, answer, status in prices:
        con.execute(
            "INSERT INTO prices VALUES (1, ?, 1, ?, 8, 0, ?, ?, '0x', 's', ?)",
            [feed, str(answer), status, block, block],
        )
    epochs = run_query(con, "epochs_usd", {"realm": "r", "feed": feed})
    usd = {r[1]: r[epochs["columns"].index("usd")] for r in epochs["rows"]}
    assert usd == {0: "stale", 1: "40.00", 2: "stale"}  # no price yet; 20 WMP at $2; stale
    payouts = run_query(con, "payouts_usd", {"realm": "r", "epoch": 1, "feed": feed})
    assert [r[payouts["columns"].index("usd")] for r in payouts["rows"]] == ["40.00"]

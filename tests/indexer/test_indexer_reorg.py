"""Reorgs made by anvil (`anvil_reorg`, `anvil_rollback`; anvil reports no `removed` logs):
below the confirmation depth nothing orphaned is ever emitted; above it every orphaned log is
retracted, and what survives equals a fresh backfill of the final chain."""

from __future__ import annotations

from pathlib import Path

import pytest
from indexer_harness import Harness
from mesh_chain import ZERO, MeshChain, rpc

from domain.events import ChainHead, Event, LogRetracted, StakeChanged, log_identity
from indexer.service import SyncConfig
from indexer.window import ReorgTooDeep
from settlement.merkle import realm_id

pytestmark = pytest.mark.integration

CONFIRMATIONS = 2


def surviving(events: list[Event]) -> dict[tuple[int, str, int], Event]:
    """Chain-derived events minus the retracted ones: what a projection keeps."""
    alive: dict[tuple[int, str, int], Event] = {}
    for e in events:
        ident = log_identity(e)
        if isinstance(e, LogRetracted):
            assert ident in alive, f"retraction of {ident}, which is not (or no longer) emitted"
            assert e.retracted == alive.pop(ident).TYPE
        elif ident is not None:
            assert ident not in alive, f"{ident} emitted twice"
            alive[ident] = e
    return alive


def stake_calls(mesh: MeshChain, count: int, realm: str = "r") -> None:
    for i in range(count):
        mesh.stake(realm, mesh.accounts[3 + i % 3], "user", ZERO, 10 + i)


def replacement_stake(mesh: MeshChain) -> dict[str, str]:
    call = mesh.stack.staking.functions.stake(realm_id("r"), 0, ZERO, 999)
    tx = call.build_transaction({"from": mesh.accounts[6], "gas": 300_000})
    return {
        k: hex(v) if isinstance(v, int) else v
        for k, v in tx.items()
        if k in ("from", "to", "data", "gas")
    }


def fresh_backfill(
    mesh: MeshChain, broker: object, tmp: Path, head: int
) -> dict[tuple[int, str, int], Event]:
    fresh = Harness(mesh, broker, tmp, SyncConfig(confirmations=0))  # type: ignore[arg-type]
    fresh.sync_to(head)
    return surviving(fresh.events())


@pytest.mark.parametrize(
    ("depth", "how"), [(1, "reorg"), (3, "reorg"), (12, "rollback"), (64, "reorg")]
)
def test_reorg_below_and_above_the_confirmation_depth(
    harness: Harness, tmp_path: Path, depth: int, how: str
) -> None:
    mesh = harness.mesh
    harness.sync = SyncConfig(confirmations=CONFIRMATIONS, poll_interval_s=0.05)
    mesh.register("r", mesh.accounts[1])
    stake_calls(mesh, depth + 4)
    harness.sync_to(mesh.head() - CONFIRMATIONS)
    before = mesh.head()
    emitted_blocks = set(range(before - CONFIRMATIONS + 1))

    if how == "reorg":
        rpc(mesh.w3, "anvil_reorg", depth, [[replacement_stake(mesh), 0]])
    else:
        rpc(mesh.w3, "anvil_rollback", depth)
        mesh.stake("r", mesh.accounts[6], "user", ZERO, 999)
        mesh.mine(depth - 1)
    mesh.mine(CONFIRMATIONS + 1)
    final_head = mesh.head() - CONFIRMATIONS
    harness.sync_to(final_head)
    events = harness.events()

    alive = surviving(events)
    canonical = {n: mesh.w3.eth.get_block(n)["hash"].to_0x_hex() for n in range(final_head + 1)}
    assert all(canonical[e.block] == ident[1] for ident, e in alive.items()), "orphan survived"
    retracted = [e for e in events if isinstance(e, LogRetracted)]
    orphaned_emitted = depth > CONFIRMATIONS
    assert bool(retracted) == orphaned_emitted
    if orphaned_emitted:
        assert {e.block for e in retracted} <= emitted_blocks
        assert min(e.block for e in retracted) == before - depth + 1
    heads = [e.block for e in events if isinstance(e, ChainHead)]
    assert heads[-1] == final_head

    expected = fresh_backfill(mesh, harness.broker, tmp_path / "fresh", final_head)
    assert alive.keys() == expected.keys()
    assert {k: e.amount for k, e in alive.items() if isinstance(e, StakeChanged)} == {
        k: e.amount for k, e in expected.items() if isinstance(e, StakeChanged)
    }


def test_a_reorg_below_the_window_stops_the_indexer(harness: Harness) -> None:
    mesh = harness.mesh
    harness.sync = SyncConfig(confirmations=0, window_blocks=4, poll_interval_s=0.05)
    mesh.register("r", mesh.accounts[1])
    stake_calls(mesh, 8)
    harness.sync_to(mesh.head())
    rpc(mesh.w3, "anvil_reorg", 6, [])
    mesh.mine(1)
    with pytest.raises(ReorgTooDeep, match="window_blocks=4"):
        harness.sync_to(mesh.head())

"""Chequebooks created through the ChequebookFactory are followed from their creation on: also
when the chunk after the creation was fetched before the creation was seen (prefetch), across a
restart (the checkpoint keeps them), and through a reorg that orphans the creation."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from indexer_harness import Harness
from mesh_chain import MeshChain, rpc
from test_indexer_reorg import fresh_backfill, surviving

from domain.events import (
    ChequebookCreated,
    ChequebookDeposited,
    ChequeCashed,
    LogRetracted,
    log_identity,
)
from indexer.rpc import Chunk, JsonRpc, RpcSource
from indexer.service import SyncConfig
from settlement.contracts import create_chequebook_call

pytestmark = pytest.mark.integration

CHAIN_ID = 42161


class SlowCreationChunk(RpcSource):
    """Fetches the chunk holding `slow_block` a second late, so the next chunk, fetched at the
    same time, is fetched before the chequebook created there is known (the prefetch race,
    made certain); records what the sync loop had to complete."""

    def __init__(self, mesh: MeshChain, slow_block: int, span_blocks: int) -> None:
        super().__init__(
            JsonRpc(mesh.anvil.url), mesh.contracts, CHAIN_ID, span_blocks, span_blocks
        )
        self.slow_block = slow_block
        self.completed: list[list[str]] = []

    def fetch(self, first: int, last: int) -> Chunk:
        if first <= self.slow_block <= last:
            time.sleep(1.0)
        return super().fetch(first, last)

    def complete(self, chunk: Chunk, chequebooks: frozenset[str]) -> Chunk:
        self.completed.append(sorted(chequebooks))
        return super().complete(chunk, chequebooks)


def chain_ids(events: list[Any]) -> set[tuple[int, str, int]]:
    return {i for e in events if (i := log_identity(e)) is not None}


def test_a_chunk_fetched_before_the_creation_was_seen_is_completed_and_a_restart_follows_on(
    harness: Harness, tmp_path: Path
) -> None:
    mesh = harness.mesh
    harness.sync = SyncConfig(confirmations=0, prefetch_chunks=2, poll_interval_s=0.05)
    start = mesh.head()
    harness.sync_to(start)
    # chunks of two blocks from here: [start+1, start+2] creates and approves,
    # [start+3, start+4] deposits and cashes; both are fetched at once
    book = mesh.new_chequebook(issuer=7)
    mesh.deposit(800, book, issuer=7)
    mesh.cash(mesh.accounts[3], 250, book, issuer=7)
    assert mesh.head() == start + 4
    slow = SlowCreationChunk(mesh, slow_block=start + 1, span_blocks=2)
    harness.sync_to(start + 4, source=slow)

    assert slow.completed == [[book.address.lower()]], "the second chunk lacked the chequebook"
    checkpoint = json.loads((tmp_path / "checkpoint.json").read_text())
    assert checkpoint["chequebooks"][book.address.lower()] == start + 1

    # a restarted indexer (a new source) follows the chequebook from its checkpoint
    harness.close()
    mesh.cash(mesh.accounts[4], 100, book, issuer=7)
    restarted = SlowCreationChunk(mesh, slow_block=-1, span_blocks=2)
    harness.sync_to(mesh.head(), source=restarted)
    assert restarted.completed == []
    events = harness.events()

    created = [e for e in events if isinstance(e, ChequebookCreated)]
    assert [e.chequebook for e in created][-1] == book.address
    on_book = [e for e in events if getattr(e, "chequebook", "") == book.address]
    assert [type(e) for e in on_book] == [
        ChequebookCreated,
        ChequebookDeposited,
        ChequeCashed,
        ChequeCashed,
    ]
    assert [e.paid for e in on_book if isinstance(e, ChequeCashed)] == [250, 100]
    # the same as one plain backfill of the whole chain
    fresh = Harness(mesh, harness.broker, tmp_path / "fresh", SyncConfig(confirmations=0))
    fresh.sync_to(mesh.head())
    assert chain_ids(events) == chain_ids(fresh.events())


def test_a_reorg_that_orphans_the_creation_retracts_its_logs_and_follows_the_new_one(
    harness: Harness, tmp_path: Path
) -> None:
    mesh = harness.mesh
    harness.sync = SyncConfig(confirmations=0, poll_interval_s=0.05)
    book = mesh.new_chequebook(issuer=7)
    mesh.deposit(800, book, issuer=7)
    created_at = mesh.head() - 2
    harness.sync_to(mesh.head())
    orphaned = json.loads((tmp_path / "checkpoint.json").read_text())["chequebooks"]
    assert orphaned[book.address.lower()] == created_at

    # the new branch: from the creation's block on, another issuer's chequebook is created by
    # the same factory nonce, so at the same address
    s = mesh.stack
    tx = create_chequebook_call(s.chequebook_factory, s.token.address, mesh.accounts[6])
    built = tx.build_transaction({"from": mesh.accounts[6], "gas": 3_000_000})
    replacement = {k: hex(v) if isinstance(v, int) else v for k, v in built.items()}
    replacement = {k: replacement[k] for k in ("from", "to", "data", "gas")}
    rpc(mesh.w3, "anvil_reorg", mesh.head() - created_at + 1, [[replacement, 0]])
    mesh.send(s.token.functions.approve(book.address, 2**255), mesh.accounts[6])
    mesh.deposit(300, book, issuer=6)
    mesh.cash(mesh.accounts[3], 120, book, issuer=6)
    harness.sync_to(mesh.head())
    events = harness.events()

    retracted = [e.retracted for e in events if isinstance(e, LogRetracted)]
    assert "ChequebookCreated" in retracted and "ChequebookDeposited" in retracted
    alive = surviving(events)
    creations = [e for e in alive.values() if isinstance(e, ChequebookCreated)]
    assert [(e.chequebook, e.issuer) for e in creations][-1] == (book.address, mesh.accounts[6])
    cashed = [e for e in alive.values() if isinstance(e, ChequeCashed)]
    assert [(e.chequebook, e.paid) for e in cashed][-1] == (book.address, 120)
    checkpoint = json.loads((tmp_path / "checkpoint.json").read_text())
    assert checkpoint["chequebooks"][book.address.lower()] == creations[-1].block
    expected = fresh_backfill(mesh, harness.broker, tmp_path / "fresh", mesh.head())
    assert alive.keys() == expected.keys()

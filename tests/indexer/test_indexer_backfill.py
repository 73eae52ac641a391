"""Backfill of a busy chain on a real anvil into the real broker: every log becomes exactly one
event, identified by (chain_id, block_hash, log_index), with the values the contracts hold."""

from __future__ import annotations

from collections import Counter

import pytest
from indexer_harness import Harness
from mesh_chain import busy_chain, rpc
from web3 import Web3

from domain.events import (
    REALM_TARGET,
    ChainHead,
    ChequebookCreated,
    ChequeBounced,
    RealmCreated,
    StakeChanged,
    log_identity,
)
from indexer.decoding import TRANSFER_TOPIC

pytestmark = pytest.mark.integration


def test_backfill_emits_every_log_once_with_contract_values(harness: Harness) -> None:
    mesh = harness.mesh
    busy_chain(mesh)
    head = mesh.head()
    harness.sync_to(head)
    events = harness.events()

    logs = rpc(
        mesh.w3,
        "eth_getLogs",
        {"fromBlock": "0x0", "toBlock": hex(head), "address": mesh.watched()},
    )
    transfers = [
        lg
        for lg in rpc(
            mesh.w3,
            "eth_getLogs",
            {"fromBlock": "0x0", "toBlock": hex(head), "address": mesh.contracts.token},
        )
        if lg["topics"][0] == TRANSFER_TOPIC
        and {"0x" + t[-40:] for t in lg["topics"][1:3]} & {a.lower() for a in mesh.holders()}
    ]
    ignored = {
        "0x" + Web3.keccak(text=s).hex().removeprefix("0x")
        for s in ("PosterSet(address,bool)", "OwnershipTransferred(address,address)")
    }
    expected = {
        (42161, lg["blockHash"], int(lg["logIndex"], 16))
        for lg in logs + transfers
        if lg["topics"][0] not in ignored
    }
    emitted = [log_identity(e) for e in events if log_identity(e) is not None]
    assert len(emitted) == len(set(emitted)), "a log was emitted twice"
    assert set(emitted) == expected
    assert not [e for e in events if e.TYPE == "LogUnmapped"]

    types = Counter(e.TYPE for e in events)
    assert types["RealmCreated"] == 2 and types["ApiEnabled"] == 1
    assert types["SettlementPosted"] == types["SettlementPushed"] == types["SettlementClaimed"] == 1
    assert [e.block for e in events if isinstance(e, ChainHead)][-1] == head

    created = {e.realm: e for e in events if isinstance(e, RealmCreated)}
    assert created["realm.two"].params.epoch_blocks == 50
    assert created["realm.one"].keeper == mesh.accounts[1]
    last: dict[tuple[str, str, str, str], int] = {}
    for e in events:
        if isinstance(e, StakeChanged):
            last[(e.realm, e.staker, e.role, e.target)] = e.amount
    for (realm, staker, role, target), amount in last.items():
        onchain_target = "0x" + "00" * 20 if target == REALM_TARGET else target
        assert mesh.position(realm, staker, role, onchain_target) == amount
    bounced = [e for e in events if isinstance(e, ChequeBounced)]
    assert [(b.due, b.paid) for b in bounced] == [(2000, 700), (400, 300)]
    created = [e for e in events if isinstance(e, ChequebookCreated)]
    assert [e.chequebook for e in created] == mesh.created_chequebooks()
    client_book = created[-1]
    assert client_book.issuer == mesh.accounts[7] and client_book.token == mesh.contracts.token
    assert client_book.chequebook not in mesh.contracts.chequebooks  # followed, not configured
    assert types["ChequeCashed"] == 4 and types["ChequebookDeposited"] == 2

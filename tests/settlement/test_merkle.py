"""Payout trees: byte-for-byte equal to @openzeppelin/merkle-tree, verified by EpochSettlement,
and sound under tampering (hypothesis)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from eth_utils import to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st
from web3 import Web3

from infra.anvil import Anvil
from settlement.contracts import deploy_stack, transact
from settlement.merkle import (
    LEAF_ENCODING,
    ZERO_ADDRESS,
    PayoutTree,
    StandardMerkleTree,
    batch_digest,
    leaf_hash,
    pack_entry,
    plan_epoch,
    process_proof,
    realm_id,
    unpack_entry,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
OZ_SCRIPT = Path(__file__).with_name("oz_merkle_tree.js")
CHAIN_ID = 42161
CONTRACT = to_checksum_address("0x" + "ab" * 20)
REALM = realm_id("com.example.realm")


def account(i: int) -> str:
    return to_checksum_address(f"0x{(i * 0x9E3779B97F4A7C15 + 1) % 2**160:040x}")


def sample_tree(claims: int, batches: int) -> PayoutTree:
    return PayoutTree(
        CHAIN_ID,
        CONTRACT,
        REALM,
        7,
        claims=[(account(i), 10**18 + i) for i in range(claims)],
        batches=[[(account(1000 + b * 3 + j), 5 + j) for j in range(3)] for b in range(batches)],
    )


def openzeppelin(trees: list[StandardMerkleTree]) -> list[dict[str, object]]:
    """Root and proofs from the npm library, for the same leaf values."""
    request = [
        {
            "encoding": list(LEAF_ENCODING),
            "values": [
                [str(v[0]), v[1], "0x" + v[2].hex(), str(v[3]), v[4], str(v[5])] for v in t.values
            ],
        }
        for t in trees
    ]
    proc = subprocess.run(
        ["node", str(OZ_SCRIPT), str(REPO_ROOT / "node_modules")],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: list[dict[str, object]] = json.loads(proc.stdout)
    return result


def test_roots_and_proofs_match_openzeppelin_merkle_tree() -> None:
    trees = [sample_tree(c, b).tree for c, b in ((1, 0), (0, 1), (2, 0), (2, 1), (5, 2), (33, 4))]
    for ours, theirs in zip(trees, openzeppelin(trees), strict=True):
        assert "0x" + ours.root.hex() == theirs["root"]
        ours_proofs = [["0x" + p.hex() for p in ours.proof(i)] for i in range(len(ours.values))]
        assert ours_proofs == theirs["proofs"]


def test_payout_tree_proves_claims_and_batches() -> None:
    tree = sample_tree(5, 2)
    for who, cumulative in tree.claims.items():
        assert (
            process_proof(leaf_hash(tree.leaf(who, cumulative)), tree.claim_proof(who)) == tree.root
        )
    for idx, packed in enumerate(tree.batches):
        digest = int.from_bytes(batch_digest(idx, packed), "big")
        leaf = leaf_hash(tree.leaf(ZERO_ADDRESS, digest))
        assert process_proof(leaf, tree.batch_proof(idx)) == tree.root
    assert tree.pushed_total == 2 * (5 + 6 + 7)
    assert [unpack_entry(w) for w in tree.packed_batch(1)] == [
        (account(1003 + j), 5 + j) for j in range(3)
    ]


def test_payout_tree_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="two claim leaves for"):
        PayoutTree(CHAIN_ID, CONTRACT, REALM, 1, claims=[(account(1), 5), (account(1), 6)])
    with pytest.raises(ValueError, match="claim leaf for the zero address"):
        PayoutTree(CHAIN_ID, CONTRACT, REALM, 1, claims=[(ZERO_ADDRESS, 5)])
    with pytest.raises(ValueError, match="must be positive"):
        PayoutTree(CHAIN_ID, CONTRACT, REALM, 1, claims=[(account(1), 0)])
    with pytest.raises(ValueError, match=r"push amount 79228162514264337593543950336 outside"):
        pack_entry(account(1), 2**96)
    with pytest.raises(ValueError, match="push entry to the zero address"):
        pack_entry(ZERO_ADDRESS, 1)
    with pytest.raises(ValueError, match="needs at least one leaf"):
        PayoutTree(CHAIN_ID, CONTRACT, REALM, 1)


@pytest.mark.integration
def test_settlement_contract_verifies_python_proofs(anvil_l2: Anvil) -> None:
    w3 = Web3(Web3.HTTPProvider(anvil_l2.url))
    owner = Web3.to_checksum_address(w3.eth.accounts[0])
    stack = deploy_stack(w3, owner)
    settlement = stack.settlement
    payees = [account(i) for i in range(9)]
    tree = PayoutTree(
        anvil_l2.chain_id,
        settlement.address,
        REALM,
        1,
        claims=[(p, 1000 + i) for i, p in enumerate(payees)],
        batches=[[(account(100), 3)]],
    )
    values = tree.leaf(payees[4], 1004)
    onchain_leaf = settlement.functions.leafHash(REALM, 1, payees[4], 1004).call()
    assert onchain_leaf == leaf_hash(values)
    assert settlement.functions.batchDigest(0, tree.packed_batch(0)).call() == batch_digest(
        0, tree.packed_batch(0)
    )
    total = sum(tree.claims.values()) + tree.pushed_total
    transact(w3, stack.token.functions.mint(owner, total), owner)
    transact(w3, stack.token.functions.approve(settlement.address, total), owner)
    transact(w3, settlement.functions.fund(REALM, total), owner)
    transact(w3, settlement.functions.postEpoch(REALM, 1, tree.root, total), owner)
    for payee, cumulative in tree.claims.items():
        call = settlement.functions.claim(REALM, 1, payee, cumulative, tree.claim_proof(payee))
        transact(w3, call, owner)
        assert stack.token.functions.balanceOf(payee).call() == cumulative
    push = settlement.functions.pushBatch(REALM, 1, 0, tree.packed_batch(0), tree.batch_proof(0))
    transact(w3, push, owner)
    assert stack.token.functions.balanceOf(settlement.address).call() == 0


leaf_values = st.tuples(
    st.integers(min_value=1, max_value=2**160 - 1), st.integers(min_value=1, max_value=2**200)
)


@settings(max_examples=60, deadline=None)
@given(st.lists(leaf_values, min_size=1, max_size=40, unique_by=lambda v: v[0]), st.data())
def test_every_leaf_proves_and_any_tampering_fails(
    entries: list[tuple[int, int]], data: st.DataObject
) -> None:
    claims = [(to_checksum_address(f"0x{a:040x}"), amount) for a, amount in entries]
    tree = PayoutTree(CHAIN_ID, CONTRACT, REALM, 3, claims=claims)
    for who, cumulative in claims:
        assert (
            process_proof(leaf_hash(tree.leaf(who, cumulative)), tree.claim_proof(who)) == tree.root
        )
    who, cumulative = data.draw(st.sampled_from(claims))
    proof = tree.claim_proof(who)
    delta = data.draw(st.integers(min_value=1, max_value=2**64))
    assert process_proof(leaf_hash(tree.leaf(who, cumulative + delta)), proof) != tree.root
    other_epoch = PayoutTree(CHAIN_ID, CONTRACT, REALM, 4, claims=claims)
    assert process_proof(leaf_hash(other_epoch.leaf(who, cumulative)), proof) != tree.root
    if proof:
        i = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        bit = data.draw(st.integers(min_value=0, max_value=255))
        flipped = int.from_bytes(proof[i], "big") ^ (1 << bit)
        tampered = [*proof[:i], flipped.to_bytes(32, "big"), *proof[i + 1 :]]
        assert process_proof(leaf_hash(tree.leaf(who, cumulative)), tampered) != tree.root


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.integers(min_value=1, max_value=50),
        st.integers(min_value=1, max_value=10**24),
        min_size=1,
    ),
    st.sets(st.integers(min_value=1, max_value=50)),
    st.dictionaries(
        st.integers(min_value=1, max_value=50), st.integers(min_value=0, max_value=10**24)
    ),
    st.integers(min_value=1, max_value=7),
)
def test_plan_assigns_every_payout_to_exactly_one_channel(
    payouts: dict[int, int], push: set[int], before: dict[int, int], batch_max: int
) -> None:
    def addr(i: int) -> str:
        return account(i)

    plan = plan_epoch(
        {addr(i): v for i, v in payouts.items()},
        {addr(i): v for i, v in before.items()},
        {addr(i) for i in push},
        batch_max,
    )
    pushed = {a: v for batch in plan.batches for a, v in batch}
    claimed_now = {a: c - before.get(i, 0) for i in payouts for a, c in plan.claims if a == addr(i)}
    assert plan.total == sum(payouts.values()) == sum(pushed.values()) + sum(claimed_now.values())
    assert not pushed.keys() & claimed_now.keys()
    assert all(len(b) <= batch_max for b in plan.batches)
    for i, amount in payouts.items():
        if i in push:
            assert pushed[addr(i)] == amount
            assert plan.claimable_after.get(addr(i), 0) == before.get(i, 0)
        else:
            assert plan.claimable_after[addr(i)] == before.get(i, 0) + amount

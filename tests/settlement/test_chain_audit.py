"""`audit --chain-rpc`'s chain side against a real EpochSettlement on anvil: an epoch paid as the
ledger computed it matches (under the push rule the job kept in its journal); a root, a push
batch, an epoch the ledger does not know or one it says was settled, each differs and says how."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from _submitter_settle import (
    ListRecorder,
    MemoryPayouts,
    fund_realm,
    opened,
    payees,
    payouts_for,
    ready_job,
)
from web3 import Web3

from domain.economics import Payout
from ledger.audit import EXIT_CHAIN_MISMATCH, EXIT_OK, AuditReport
from settlement.audit import audit_chain
from settlement.contracts import Stack, transact
from settlement.job import JobConfig, SettlementJob
from settlement.journal import Journal
from settlement.merkle import PayoutTree, plan_epoch, realm_id

pytestmark = pytest.mark.integration
_realms = itertools.count()


@pytest.fixture(scope="module")
def stack(mining_anvil: object) -> Stack:
    from _submitter_settle import deploy

    w3 = Web3(Web3.HTTPProvider(mining_anvil.url))  # type: ignore[attr-defined]
    return deploy(w3)


def config(stack: Stack, **overrides: int) -> JobConfig:
    return JobConfig(chain_id=42161, contract=stack.settlement.address, **overrides)


def test_an_epoch_paid_as_computed_matches_under_the_journals_push_rule(
    w3: Web3, stack: Stack, tmp_path: Path
) -> None:
    realm = f"audit-{next(_realms)}"
    # pushed from 1002 on: of payouts 1000, 1001, 1002 one is pushed, two are left to claim
    ready = ready_job(w3, stack, realm, tmp_path / "j.sqlite", epoch=2, push_min_amount=1002)
    with opened(ready.job):
        ready.job.settle(realm, 2)
    source = ready.job.source
    journal = Journal(tmp_path / "j.sqlite", read_only=True)

    report = audit_chain(w3, config(stack), source, [realm], [(realm, 2)], journal)

    assert report.differences == [] and report.matches
    ((epoch,),) = [report.epochs]
    assert (epoch.realm, epoch.epoch, epoch.batches, epoch.claim_leaves) == (realm, 2, 1, 2)
    assert epoch.pushed == 1002 and epoch.total == report.ledger_total == 3003
    assert report.paid_onchain == 1002 and report.payees == 1
    # without the journal the configured rule (push everything) is all the audit can try
    blind = audit_chain(w3, config(stack), source, [realm], [(realm, 2)], None)
    root, received = blind.differences
    assert root.startswith(f"realm {realm} epoch 2: root on chain 0x")
    assert "(push >= 1, batches <= 200)" in root
    assert received.startswith("payee ") and "received 1002 from the contract" in received


def test_every_difference_between_ledger_and_chain_is_named(
    w3: Web3, stack: Stack, tmp_path: Path
) -> None:
    realm = f"audit-{next(_realms)}"
    ready = ready_job(w3, stack, realm, tmp_path / "j.sqlite", epoch=0)
    with opened(ready.job):
        ready.job.settle(realm, 0)
    honest: MemoryPayouts = ready.job.source  # type: ignore[assignment]
    # the chain: epoch 1 posted (by the deployer, a poster) but never pushed; epoch 5 posted
    # though the ledger has no payouts for it
    payouts = payouts_for(ready.accounts, base=500)
    posted = {p.account: p.amount for p in payouts}
    plan = plan_epoch(posted, {}, set(posted), 200)
    tree = PayoutTree.from_plan(42161, stack.settlement.address, realm_id(realm), 1, plan)
    fund_realm(w3, stack, realm, 10_000)
    fn = stack.settlement.functions
    transact(w3, fn.postEpoch(realm_id(realm), 1, tree.root, sum(posted.values())), stack.deployer)
    stray = PayoutTree(
        42161, stack.settlement.address, realm_id(realm), 5, [(ready.accounts[0], 7)], []
    )
    transact(w3, fn.postEpoch(realm_id(realm), 5, stray.root, 7), stack.deployer)
    # the ledger: epoch 0 computed one base unit more for a payee; epoch 1 as posted; epoch 3
    # recorded as settled in the log but never posted
    ledger = MemoryPayouts()
    tampered = [
        Payout(p.account, p.payee_class, p.amount + (i == 0))
        for i, p in enumerate(honest.payouts(realm, 0))
    ]
    ledger.add(realm, 0, tampered)
    ledger.add(realm, 1, payouts)
    ledger.add(realm, 3, payouts_for(ready.accounts, base=9))

    report = audit_chain(w3, config(stack), ledger, [realm], [(realm, 0), (realm, 3)], None)

    lines = report.differences
    assert not report.matches
    assert f"realm {realm} epoch 5: posted on chain, but the log has no payouts for it" in lines
    assert f"realm {realm} epoch 3: the log records it settled, the chain has no root" in lines
    assert any(line.startswith(f"realm {realm} epoch 0: root on chain 0x") for line in lines)
    assert f"realm {realm} epoch 0: total on chain 3003, the log computes 3004" in lines
    # epoch 1 cannot be planned: its claimable amounts continue epoch 0, which differs
    assert any(
        line.startswith(f"realm {realm} epoch 1: the log's payouts cannot be planned")
        for line in lines
    )
    # what the payees got from epoch 0's pushes is not what the tampered ledger computes
    assert any(line.startswith(f"payee {ready.accounts[0]}: received 1000") for line in lines)
    assert AuditReport(0, 0, {}, [], [], 0, chain=report).exit_code == EXIT_CHAIN_MISMATCH
    assert AuditReport(0, 0, {}, [], [], 0, chain=None).exit_code == EXIT_OK


def test_a_posted_root_whose_batches_were_never_pushed_differs(w3: Web3, stack: Stack) -> None:
    realm = f"audit-{next(_realms)}"
    ledger = MemoryPayouts()
    ledger.add(realm, 0, payouts_for(payees(3)))
    planner = SettlementJob(w3, ledger, ListRecorder(), config(stack))
    plan = planner.candidates(realm, 0)[0]
    fund_realm(w3, stack, realm, 10_000)
    call = stack.settlement.functions.postEpoch(realm_id(realm), 0, plan.tree.root, 3003)
    transact(w3, call, stack.deployer)

    report = audit_chain(w3, config(stack), ledger, [realm], [], None)

    assert report.differences == [
        f"realm {realm} epoch 0: push batch 0 (3 payees, 3003) is not pushed on chain"
    ]
    assert report.epochs == [] and report.paid_onchain == 0

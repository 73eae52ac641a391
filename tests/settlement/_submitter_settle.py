"""Settlement fixtures' helpers: deploy the stack, make job keys, payouts and jobs on anvil, and
the in-memory ledger doubles (payouts with their digest, a recorder) the job tests run against."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _submitter_chain import SETTLE_CHAIN_ID, fast_config, fund_eth
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from domain.economics import Payout, payout_digest
from domain.events import Event
from settlement.contracts import Stack, deploy_stack, transact
from settlement.job import JobConfig, SettlementJob
from settlement.journal import Journal
from settlement.merkle import PayoutTree, realm_id
from settlement.submitter import Observer, Submitter


@dataclass
class MemoryPayouts:
    """A PayoutSource held in memory: epochs' payouts and their logged digests."""

    epochs: dict[tuple[str, int], list[Payout]] = field(default_factory=dict)
    digests: dict[tuple[str, int], str] = field(default_factory=dict)

    def add(
        self, realm: str, epoch: int, payouts: Sequence[Payout], digest: str | None = None
    ) -> None:
        self.epochs[(realm, epoch)] = list(payouts)
        self.digests[(realm, epoch)] = digest or payout_digest(realm, epoch, payouts)

    def due_epochs(self, realm: str | None) -> list[tuple[str, int]]:
        keys = [k for k in self.epochs if realm is None or k[0] == realm]
        return sorted(keys, key=lambda k: (k[1], k[0]))

    def payouts(self, realm: str, epoch: int) -> list[Payout]:
        return list(self.epochs.get((realm, epoch), []))

    def logged_digest(self, realm: str, epoch: int) -> str | None:
        return self.digests.get((realm, epoch))


@dataclass
class ListRecorder:
    """A Recorder that keeps the events."""

    events: list[Event] = field(default_factory=list)

    def record(self, event: Event) -> None:
        self.events.append(event)


def deployer(w3: Web3) -> str:
    return str(w3.eth.accounts[0])  # anvil's unlocked dev account 0


def deploy(w3: Web3) -> Stack:
    return deploy_stack(w3, deployer(w3))


def job_key(w3: Web3, stack: Stack) -> LocalAccount:
    """A fresh key with ETH, allowed to post roots."""
    account: LocalAccount = Account.create()
    fund_eth(w3, account.address)
    transact(w3, stack.settlement.functions.setPoster(account.address, True), stack.deployer)
    return account


def mint(w3: Web3, stack: Stack, to: str, amount: int) -> None:
    transact(w3, stack.token.functions.mint(to, amount), stack.deployer)


def fund_realm(w3: Web3, stack: Stack, realm: str, amount: int) -> None:
    mint(w3, stack, stack.deployer, amount)
    transact(w3, stack.token.functions.approve(stack.settlement.address, amount), stack.deployer)
    transact(w3, stack.settlement.functions.fund(realm_id(realm), amount), stack.deployer)


def payees(n: int) -> list[str]:
    return [str(Account.create().address) for _ in range(n)]


def payouts_for(accounts: list[str], base: int = 1000) -> list[Payout]:
    return [Payout(a, "router", base + i) for i, a in enumerate(accounts)]


def one_epoch(realm: str, epoch: int, accounts: list[str]) -> MemoryPayouts:
    """A ledger that computed one epoch: `payouts_for(accounts)` with their logged digest."""
    source = MemoryPayouts()
    source.add(realm, epoch, payouts_for(accounts))
    return source


def balances(stack: Stack, accounts: list[str]) -> dict[str, int]:
    return {a: int(stack.token.functions.balanceOf(a).call()) for a in accounts}


def make_job(
    w3: Web3,
    stack: Stack,
    account: LocalAccount,
    journal_path: Path,
    source: MemoryPayouts,
    recorder: ListRecorder | None = None,
    observer: Observer | None = None,
    chain_id: int = SETTLE_CHAIN_ID,
    contract: str | None = None,
    submit_overrides: dict[str, Any] | None = None,
    **job_overrides: Any,
) -> SettlementJob:
    submitter = Submitter(
        w3,
        account,
        Journal(journal_path),
        fast_config(chain_id=chain_id, **(submit_overrides or {})),
        observer,
    )
    config = JobConfig(
        chain_id=chain_id, contract=contract or stack.settlement.address, **job_overrides
    )
    return SettlementJob(w3, source, recorder or ListRecorder(), config, submitter)


@dataclass
class Ready:
    """A settlement job about to pay one funded epoch: `payouts_for(accounts)`."""

    job: SettlementJob
    key: LocalAccount
    accounts: list[str]
    recorder: ListRecorder
    journal_path: Path

    def expected(self) -> dict[str, int]:
        return {p.account: p.amount for p in payouts_for(self.accounts)}


def ready_job(
    w3: Web3,
    stack: Stack,
    realm: str,
    journal_path: Path,
    *,
    epoch: int,
    n_payees: int = 3,
    funding: int = 10_000,
    **job_overrides: Any,
) -> Ready:
    """A fresh poster key and `n_payees` payees of one epoch; the realm funded with `funding`."""
    accounts = payees(n_payees)
    if funding:
        fund_realm(w3, stack, realm, funding)
    key = job_key(w3, stack)
    recorder = ListRecorder()
    source = one_epoch(realm, epoch, accounts)
    job = make_job(w3, stack, key, journal_path, source, recorder, **job_overrides)
    return Ready(job, key, accounts, recorder, journal_path)


def claim_all(w3: Web3, stack: Stack, tree: PayoutTree) -> None:
    """Claim every claim leaf of `tree` that still pays something (sent by the deployer: anyone
    may claim for a payee); raises TransactionFailed on a revert."""
    claimed = stack.settlement.functions.claimed
    for account, cumulative in tree.claims.items():
        if int(claimed(tree.realm, account).call()) < cumulative:
            call = stack.settlement.functions.claim(
                tree.realm, tree.epoch, account, cumulative, tree.claim_proof(account)
            )
            transact(w3, call, stack.deployer)


def budget(stack: Stack, realm: str) -> tuple[int, int, int]:
    """(funded, allocated, paid) of the realm on chain."""
    funded, allocated, paid = stack.settlement.functions.realmBudget(realm_id(realm)).call()
    return int(funded), int(allocated), int(paid)


def opened(job: SettlementJob) -> Submitter:
    """The job's submitter, to open as a context manager (jobs made here always have one)."""
    assert job.submitter is not None
    return job.submitter

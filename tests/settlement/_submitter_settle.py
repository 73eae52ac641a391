"""Settlement fixtures' helpers: deploy the stack, make job keys, payouts and jobs on anvil."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _submitter_chain import SETTLE_CHAIN_ID, fast_config, fund_eth
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from domain.economics import Payout
from settlement.contracts import Stack, deploy_stack, transact
from settlement.job import JobConfig, ListRecorder, MemoryPayouts, SettlementJob
from settlement.journal import Journal
from settlement.merkle import realm_id
from settlement.submitter import Observer, Submitter


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

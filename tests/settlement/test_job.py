"""The settlement job on a real anvil: plan, fund, post, push, record; idempotent reruns."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from _submitter_settle import (
    balances,
    deploy,
    fund_realm,
    job_key,
    make_job,
    mint,
    payees,
    payouts_for,
)
from web3 import Web3

from domain.economics import Payout
from domain.events import SettlementConfirmed, SettlementSubmitted
from settlement.contracts import Stack
from settlement.job import (
    EXIT_NOT_DUE,
    EXIT_UNDERFUNDED,
    DigestMismatch,
    ListRecorder,
    MemoryPayouts,
    NotDue,
    Underfunded,
    per_account,
)
from settlement.journal import Journal
from settlement.merkle import realm_id

pytestmark = pytest.mark.integration
_realm_numbers = itertools.count()


@pytest.fixture(scope="module")
def stack(mining_anvil: object) -> Stack:
    from infra.anvil import Anvil

    assert isinstance(mining_anvil, Anvil)
    return deploy(Web3(Web3.HTTPProvider(mining_anvil.url)))


@pytest.fixture
def realm() -> Iterator[str]:
    yield f"job-realm-{next(_realm_numbers)}"


def test_settles_an_epoch_and_records_it(
    w3: Web3, stack: Stack, realm: str, tmp_path: Path
) -> None:
    accounts = payees(5)
    source = MemoryPayouts()
    source.add(realm, 3, payouts_for(accounts))
    fund_realm(w3, stack, realm, 10_000)
    recorder = ListRecorder()
    job = make_job(w3, stack, job_key(w3, stack), tmp_path / "j.sqlite", source, recorder)

    with job.submitter:  # type: ignore[union-attr]
        result = job.settle(realm, 3)

    assert result.status == "settled"
    assert balances(stack, accounts) == {a: 1000 + i for i, a in enumerate(accounts)}
    root, total, pushed = stack.settlement.functions.epochRecord(realm_id(realm), 3).call()
    assert "0x" + bytes(root).hex() == result.root
    assert total == pushed == sum(1000 + i for i in range(5))
    submitted, confirmed = recorder.events
    assert isinstance(submitted, SettlementSubmitted) and isinstance(confirmed, SettlementConfirmed)
    assert (submitted.root, submitted.total, submitted.epoch) == (result.root, total, 3)
    assert confirmed.tx_hash == submitted.tx_hash == result.post_tx
    receipt = w3.eth.get_transaction_receipt(confirmed.tx_hash)  # type: ignore[arg-type]
    assert "0x" + bytes(receipt["blockHash"]).hex() == confirmed.block_hash


def test_rerun_finds_it_done_and_records_nothing_new(
    w3: Web3, stack: Stack, realm: str, tmp_path: Path
) -> None:
    accounts = payees(3)
    source = MemoryPayouts()
    source.add(realm, 1, payouts_for(accounts))
    fund_realm(w3, stack, realm, 10_000)
    recorder = ListRecorder()
    key = job_key(w3, stack)
    job = make_job(w3, stack, key, tmp_path / "j.sqlite", source, recorder)
    with job.submitter:  # type: ignore[union-attr]
        job.settle(realm, 1)
        again = job.settle(realm, 1)
    assert again.status == "already_settled"
    assert [o.status for o in again.outcomes] == ["already_done", "already_done"]
    assert len(recorder.events) == 2
    assert len(Journal(tmp_path / "j.sqlite").all()) == 2  # post + one push batch
    assert balances(stack, accounts) == {a: 1000 + i for i, a in enumerate(accounts)}


def test_batches_are_bounded_and_all_pushed(
    w3: Web3, stack: Stack, realm: str, tmp_path: Path
) -> None:
    accounts = payees(7)
    source = MemoryPayouts()
    source.add(realm, 0, payouts_for(accounts))
    fund_realm(w3, stack, realm, 10_000)
    job = make_job(
        w3, stack, job_key(w3, stack), tmp_path / "j.sqlite", source, batch_max_entries=3
    )
    plan = job.plan(realm, 0)
    assert [len(b) for b in plan.tree.batches] == [3, 3, 1]
    with job.submitter:  # type: ignore[union-attr]
        job.settle(realm, 0)
    assert all(
        stack.settlement.functions.isBatchPushed(realm_id(realm), 0, i).call() for i in range(3)
    )
    assert sum(balances(stack, accounts).values()) == sum(1000 + i for i in range(7))


def test_batch_size_fits_the_block_gas_limit(
    w3: Web3, stack: Stack, realm: str, tmp_path: Path
) -> None:
    source = MemoryPayouts()
    source.add(realm, 0, payouts_for(payees(2)))
    job = make_job(
        w3, stack, job_key(w3, stack), tmp_path / "j.sqlite", source, batch_max_entries=10**6
    )
    gas_limit = int(w3.eth.get_block("latest")["gasLimit"])
    entries = job.plan(realm, 0).batch_max_entries
    assert 1 < entries < 10**6
    assert 80_000 + entries * 32_000 <= gas_limit // 2


def test_small_payouts_accumulate_as_claims_across_epochs(
    w3: Web3, stack: Stack, realm: str, tmp_path: Path
) -> None:
    big, small = payees(2)
    source = MemoryPayouts()
    source.add(realm, 0, [Payout(big, "router", 5000), Payout(small, "vendor", 40)])
    source.add(
        realm,
        1,
        [Payout(big, "router", 6000), Payout(small, "vendor", 30), Payout(small, "service", 5)],
    )
    fund_realm(w3, stack, realm, 20_000)
    job = make_job(
        w3, stack, job_key(w3, stack), tmp_path / "j.sqlite", source, push_min_amount=1000
    )
    with job.submitter:  # type: ignore[union-attr]
        results = job.settle_all_due(realm)
    assert [r.epoch for r in results] == [0, 1]
    assert balances(stack, [big, small]) == {
        big: 11_000,
        small: 0,
    }  # small amounts wait for a claim

    plan = job.plan(realm, 1)
    assert dict(plan.plan.claims) == {Web3.to_checksum_address(small): 75}  # 40 + 30 + 5
    tx_hash = stack.settlement.functions.claim(
        realm_id(realm), 1, small, 75, plan.tree.claim_proof(small)
    ).transact({"from": w3.eth.accounts[1]})  # anyone may claim for the payee
    assert w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10)["status"] == 1
    assert balances(stack, [small]) == {small: 75}


def test_job_funds_the_realm_when_configured(
    w3: Web3, stack: Stack, realm: str, tmp_path: Path
) -> None:
    accounts = payees(2)
    source = MemoryPayouts()
    source.add(realm, 0, payouts_for(accounts))
    key = job_key(w3, stack)
    mint(w3, stack, key.address, 5_000)
    job = make_job(w3, stack, key, tmp_path / "j.sqlite", source, fund=True)
    with job.submitter:  # type: ignore[union-attr]
        result = job.settle(realm, 0)
    assert [o.status for o in result.outcomes] == ["confirmed"] * 4  # approve, fund, post, push
    funded, allocated, paid = stack.settlement.functions.realmBudget(realm_id(realm)).call()
    assert funded == allocated == paid == 2001
    assert stack.token.functions.balanceOf(key.address).call() == 5_000 - 2001


def test_underfunded_without_funding_is_refused_before_signing(
    w3: Web3, stack: Stack, realm: str, tmp_path: Path
) -> None:
    source = MemoryPayouts()
    source.add(realm, 0, payouts_for(payees(2)))
    fund_realm(w3, stack, realm, 100)
    job = make_job(w3, stack, job_key(w3, stack), tmp_path / "j.sqlite", source)
    with (
        job.submitter,
        pytest.raises(Underfunded, match="needs 2001 base units, 100 available") as err,
    ):  # type: ignore[union-attr]
        job.settle(realm, 0)
    assert err.value.exit_code == EXIT_UNDERFUNDED
    assert Journal(tmp_path / "j.sqlite").all() == []


def test_payouts_not_matching_the_logged_digest_are_refused(
    w3: Web3, stack: Stack, realm: str, tmp_path: Path
) -> None:
    source = MemoryPayouts()
    accounts = payees(2)
    source.add(realm, 0, payouts_for(accounts), digest="0x" + "ab" * 32)
    fund_realm(w3, stack, realm, 10_000)
    job = make_job(w3, stack, job_key(w3, stack), tmp_path / "j.sqlite", source)
    with job.submitter, pytest.raises(DigestMismatch) as err:  # type: ignore[union-attr]
        job.settle(realm, 0)
    assert err.value.exit_code == EXIT_NOT_DUE
    assert Journal(tmp_path / "j.sqlite").all() == []


def test_epoch_without_logged_payouts_is_not_due(
    w3: Web3, stack: Stack, realm: str, tmp_path: Path
) -> None:
    job = make_job(w3, stack, job_key(w3, stack), tmp_path / "j.sqlite", MemoryPayouts())
    with job.submitter, pytest.raises(NotDue):  # type: ignore[union-attr]
        job.settle(realm, 9)


def test_payouts_of_one_account_in_several_classes_add_up() -> None:
    account = "0x" + "12" * 20
    amounts = per_account([Payout(account, "router", 5), Payout(account, "vendor", 7)])
    assert amounts == {Web3.to_checksum_address(account): 12}

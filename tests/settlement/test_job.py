"""The settlement job on a real anvil: plan, fund, post, push, record; idempotent reruns."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _submitter_chain import SETTLE_CHAIN_ID
from _submitter_settle import (
    ListRecorder,
    MemoryPayouts,
    balances,
    budget,
    claim_all,
    deploy,
    fund_realm,
    job_key,
    make_job,
    mint,
    one_epoch,
    opened,
    payees,
    payouts_for,
    ready_job,
)
from click.testing import CliRunner, Result
from web3 import Web3

from domain.economics import Payout
from domain.events import SettlementConfirmed, SettlementSubmitted
from settlement import cli
from settlement.contracts import Stack
from settlement.job import (
    EXIT_NOT_DUE,
    EXIT_UNDERFUNDED,
    PUSH_BASE_GAS,
    PUSH_ENTRY_GAS,
    DigestMismatch,
    NotDue,
    RootConflict,
    SettlementJob,
    Underfunded,
    per_account,
)
from settlement.journal import Journal, TxState
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
    ready = ready_job(w3, stack, realm, tmp_path / "j.sqlite", epoch=3, n_payees=5)

    with opened(ready.job):
        result = ready.job.settle(realm, 3)

    assert result.status == "settled"
    assert balances(stack, ready.accounts) == ready.expected()
    root, total, pushed = stack.settlement.functions.epochRecord(realm_id(realm), 3).call()
    assert "0x" + bytes(root).hex() == result.root
    assert total == pushed == sum(ready.expected().values())
    submitted, confirmed = ready.recorder.events
    assert isinstance(submitted, SettlementSubmitted) and isinstance(confirmed, SettlementConfirmed)
    assert (submitted.root, submitted.total, submitted.epoch) == (result.root, total, 3)
    assert confirmed.tx_hash == submitted.tx_hash == result.post_tx
    receipt = w3.eth.get_transaction_receipt(confirmed.tx_hash)  # type: ignore[arg-type]
    assert "0x" + bytes(receipt["blockHash"]).hex() == confirmed.block_hash


def test_rerun_finds_it_done_and_records_nothing_new(
    w3: Web3, stack: Stack, realm: str, tmp_path: Path
) -> None:
    ready = ready_job(w3, stack, realm, tmp_path / "j.sqlite", epoch=1)
    with opened(ready.job):
        assert ready.job.settle(realm, 1).status == "settled"
        again = ready.job.settle(realm, 1)
    assert again.status == "already_settled"
    assert [o.status for o in again.outcomes] == ["already_done", "already_done"]
    assert len(ready.recorder.events) == 2
    # the post and one push batch confirmed; a slow block may add a superseded fee-bumped attempt
    rows = Journal(ready.journal_path).all()
    assert len({r.work_key for r in rows if r.state == TxState.CONFIRMED}) == 2
    assert {r.state for r in rows} <= {TxState.CONFIRMED, TxState.SUPERSEDED}
    assert balances(stack, ready.accounts) == ready.expected()


def test_batches_are_bounded_and_all_pushed(
    w3: Web3, stack: Stack, realm: str, tmp_path: Path
) -> None:
    ready = ready_job(
        w3, stack, realm, tmp_path / "j.sqlite", epoch=0, n_payees=7, batch_max_entries=3
    )
    assert [len(b) for b in ready.job.plan(realm, 0).tree.batches] == [3, 3, 1]
    told: list[tuple[str, int, str, int, int]] = []
    ready.job.on_step = lambda *step: told.append(step)  # what settle's progress bar shows
    with opened(ready.job):
        ready.job.settle(realm, 0)
    names = [name for _, _, name, _, _ in told]
    assert names == [s.name for s in ready.job.steps(ready.job.plan(realm, 0))]
    assert [(r, e, i, n) for r, e, _, i, n in told] == [
        (realm, 0, i, len(told)) for i in range(len(told))
    ]
    assert all(
        stack.settlement.functions.isBatchPushed(realm_id(realm), 0, i).call() for i in range(3)
    )
    assert balances(stack, ready.accounts) == ready.expected()


def test_batch_size_fits_the_block_gas_limit(
    w3: Web3, stack: Stack, realm: str, tmp_path: Path
) -> None:
    ready = ready_job(
        w3, stack, realm, tmp_path / "j.sqlite", epoch=0, funding=0, batch_max_entries=10**6
    )
    gas_limit = int(w3.eth.get_block("latest")["gasLimit"])
    entries = ready.job.plan(realm, 0).batch_max_entries
    assert 1 < entries < 10**6
    assert PUSH_BASE_GAS + entries * PUSH_ENTRY_GAS <= gas_limit // 2  # block_gas_fill_bps


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
    with opened(job):
        results = job.settle_all_due(realm)
    assert [r.epoch for r in results] == [0, 1]
    # small amounts wait for a claim
    assert balances(stack, [big, small]) == {big: 11_000, small: 0}

    plan = job.plan(realm, 1)
    assert dict(plan.plan.claims) == {Web3.to_checksum_address(small): 75}  # 40 + 30 + 5
    fresh = make_job(
        w3, stack, job_key(w3, stack), tmp_path / "other.sqlite", source, push_min_amount=1000
    )
    assert fresh.plan(realm, 1).root_hex == plan.root_hex  # rebuilt without the journal
    claim_all(w3, stack, plan.tree)
    assert balances(stack, [big, small]) == {big: 11_000, small: 75}
    assert budget(stack, realm) == (20_000, 11_075, 11_075)


# -- epochs settle on what was posted, in order ------------------------------------------------


def drifting_ledger(realm: str) -> tuple[MemoryPayouts, list[str]]:
    """Epoch 0 pays 100, 50, 50; epoch 1 pays 1 each. With a push minimum of 100 the first
    payee is pushed in epoch 0 and the others claim; with 1000 everybody claims."""
    accounts = payees(3)
    source = MemoryPayouts()
    source.add(
        realm, 0, [Payout(a, "router", v) for a, v in zip(accounts, (100, 50, 50), strict=True)]
    )
    source.add(realm, 1, [Payout(a, "router", 1) for a in accounts])
    return source, accounts


def claims_pay_the_drifting_entitlements(
    w3: Web3, stack: Stack, realm: str, job: SettlementJob, accounts: list[str]
) -> None:
    """After epoch 1, every claim leaf claimed: each payee holds exactly its two epochs' payouts
    and the realm paid exactly what it allocated (nobody was paid twice, nobody starved)."""
    claim_all(w3, stack, job.plan(realm, 1).tree)
    assert list(balances(stack, accounts).values()) == [101, 51, 51]
    assert budget(stack, realm) == (203, 203, 203)


def test_push_rule_changed_between_runs_pays_each_payee_its_entitlement(
    w3: Web3, stack: Stack, realm: str, tmp_path: Path
) -> None:
    source, accounts = drifting_ledger(realm)
    fund_realm(w3, stack, realm, 203)  # exactly both epochs: an overpayment starves someone
    key, journal = job_key(w3, stack), tmp_path / "j.sqlite"
    first = make_job(w3, stack, key, journal, source, push_min_amount=100)
    with opened(first):
        first.settle(realm, 0)
    assert list(balances(stack, accounts).values()) == [100, 0, 0]

    second = make_job(w3, stack, key, journal, source, push_min_amount=1000)  # the rule changed
    with opened(second):
        second.settle(realm, 1)

    claims_pay_the_drifting_entitlements(w3, stack, realm, second, accounts)


def test_a_posted_epoch_this_job_cannot_rebuild_stops_it_before_signing(
    w3: Web3, stack: Stack, realm: str, tmp_path: Path
) -> None:
    source, accounts = drifting_ledger(realm)
    fund_realm(w3, stack, realm, 203)
    first = make_job(
        w3, stack, job_key(w3, stack), tmp_path / "a.sqlite", source, push_min_amount=100
    )
    with opened(first):
        first.settle(realm, 0)

    # another machine (no journal) with another push rule cannot know how epoch 0 was split
    key = job_key(w3, stack)
    other = make_job(w3, stack, key, tmp_path / "b.sqlite", source, push_min_amount=1000)
    with opened(other), pytest.raises(RootConflict, match="epoch 0 is posted") as err:
        other.settle(realm, 1)
    assert err.value.exit_code == EXIT_NOT_DUE
    assert "push>=1000" in str(err.value)
    assert Journal(tmp_path / "b.sqlite").all() == []
    assert w3.eth.get_transaction_count(key.address) == 0

    # with the rule epoch 0 was posted with, it rebuilds it from the chain and pays epoch 1 right
    third = make_job(w3, stack, key, tmp_path / "c.sqlite", source, push_min_amount=100)
    with opened(third):
        third.settle(realm, 1)
    claims_pay_the_drifting_entitlements(w3, stack, realm, third, accounts)


def test_an_epoch_waits_until_the_one_before_it_is_posted(
    w3: Web3, stack: Stack, realm: str, tmp_path: Path
) -> None:
    a, b = payees(2)
    source = MemoryPayouts()
    source.add(realm, 0, [Payout(a, "router", 40), Payout(b, "router", 30)])
    source.add(realm, 1, [Payout(a, "router", 5), Payout(b, "router", 7)])
    fund_realm(w3, stack, realm, 82)
    key = job_key(w3, stack)
    job = make_job(w3, stack, key, tmp_path / "j.sqlite", source, push_min_amount=1000)

    with opened(job), pytest.raises(NotDue, match="epoch 0 before it is not posted"):
        job.settle(realm, 1)
    assert Journal(tmp_path / "j.sqlite").all() == []
    assert w3.eth.get_transaction_count(key.address) == 0

    with opened(job):
        assert [r.epoch for r in job.settle_all_due(realm)] == [0, 1]
    claim_all(w3, stack, job.plan(realm, 1).tree)
    assert balances(stack, [a, b]) == {a: 45, b: 37}
    assert budget(stack, realm) == (82, 82, 82)


# -- refusals --------------------------------------------------------------------------------------


def test_job_funds_the_realm_when_configured(
    w3: Web3, stack: Stack, realm: str, tmp_path: Path
) -> None:
    ready = ready_job(
        w3, stack, realm, tmp_path / "j.sqlite", epoch=0, n_payees=2, funding=0, fund=True
    )
    mint(w3, stack, ready.key.address, 5_000)
    with opened(ready.job):
        result = ready.job.settle(realm, 0)
    assert [o.status for o in result.outcomes] == ["confirmed"] * 4  # approve, fund, post, push
    assert budget(stack, realm) == (2001, 2001, 2001)
    assert stack.token.functions.balanceOf(ready.key.address).call() == 5_000 - 2001
    assert balances(stack, ready.accounts) == ready.expected()


def test_underfunded_without_funding_is_refused_before_signing(
    w3: Web3, stack: Stack, realm: str, tmp_path: Path
) -> None:
    ready = ready_job(w3, stack, realm, tmp_path / "j.sqlite", epoch=0, n_payees=2, funding=100)
    with (
        opened(ready.job),
        pytest.raises(Underfunded, match="needs 2001 base units, 100 available") as err,
    ):
        ready.job.settle(realm, 0)
    assert err.value.exit_code == EXIT_UNDERFUNDED
    assert Journal(ready.journal_path).all() == []
    assert w3.eth.get_transaction_count(ready.key.address) == 0


def test_payouts_not_matching_the_logged_digest_are_refused(
    w3: Web3, stack: Stack, realm: str, tmp_path: Path
) -> None:
    source = MemoryPayouts()
    source.add(realm, 0, payouts_for(payees(2)), digest="0x" + "ab" * 32)
    fund_realm(w3, stack, realm, 10_000)
    key = job_key(w3, stack)
    job = make_job(w3, stack, key, tmp_path / "j.sqlite", source)
    with opened(job), pytest.raises(DigestMismatch, match="the log says 0xabab") as err:
        job.settle(realm, 0)
    assert err.value.exit_code == EXIT_NOT_DUE
    assert Journal(tmp_path / "j.sqlite").all() == []
    assert w3.eth.get_transaction_count(key.address) == 0


def test_epoch_without_logged_payouts_is_not_due(
    w3: Web3, stack: Stack, realm: str, tmp_path: Path
) -> None:
    job = make_job(w3, stack, job_key(w3, stack), tmp_path / "j.sqlite", MemoryPayouts())
    with opened(job), pytest.raises(NotDue, match="no PayoutsComputed on the log"):
        job.settle(realm, 9)


def test_payouts_of_one_account_in_several_classes_add_up() -> None:
    account = "0x" + "12" * 20
    amounts = per_account([Payout(account, "router", 5), Payout(account, "vendor", 7)])
    assert amounts == {Web3.to_checksum_address(account): 12}


# -- the `settle` command ---------------------------------------------------------------------------


@pytest.fixture
def cli_env(
    w3: Web3, stack: Stack, realm: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """`settle` wired to an in-memory ledger (payouts, digest, recorder) and a real anvil."""
    accounts = payees(3)
    source = one_epoch(realm, 2, accounts)
    recorder = ListRecorder()
    monkeypatch.setattr(cli, "ledger_payouts", lambda *args: source)
    monkeypatch.setattr(cli, "ledger_recorder", lambda *args: (recorder, _Closable()))
    key = job_key(w3, stack)
    key_file = tmp_path / "settlement.key"
    key_file.write_text("0x" + bytes(key.key).hex())
    key_file.chmod(0o600)
    args = [
        "--rpc-url", str(w3.provider.endpoint_uri),  # type: ignore[attr-defined]
        "--chain-id", str(SETTLE_CHAIN_ID),
        "--contract", stack.settlement.address,
        "--journal", str(tmp_path / "journal.sqlite"),
        "--confirmations", "2",
        "--ledger-source", "0x" + "11" * 20,  # the ledger itself is replaced by `source`
    ]  # fmt: skip
    return {"args": args, "key_file": key_file, "accounts": accounts, "recorder": recorder}


class _Closable:
    def close(self) -> None:
        pass


def run_settle(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli.settle, list(args), env=env)


def test_help_documents_the_exit_codes() -> None:
    result = run_settle("--help")
    assert result.exit_code == 0
    for line in (
        "0  settled",
        "3  not due",
        "4  realm underfunded",
        "5  chain",
        "6  wrong chain id",
    ):
        assert line in result.output


def test_dry_run_shows_the_steps_and_signs_nothing(
    cli_env: dict[str, Any], w3: Web3, stack: Stack, realm: str, tmp_path: Path
) -> None:
    fund_realm(w3, stack, realm, 10_000)
    result = run_settle(*cli_env["args"], "--realm", realm, "--epoch", "2", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "post" in result.output and "push 0" in result.output and "to send" in result.output
    assert "payees pushed=3 in 1 batches" in result.output
    assert not (tmp_path / "journal.sqlite").exists()
    assert balances(stack, cli_env["accounts"]) == dict.fromkeys(cli_env["accounts"], 0)


def test_settle_then_settle_again(
    cli_env: dict[str, Any], w3: Web3, stack: Stack, realm: str
) -> None:
    fund_realm(w3, stack, realm, 10_000)
    env = {"MESHLEDGER_SETTLEMENT_KEY_FILE": str(cli_env["key_file"])}
    first = run_settle(*cli_env["args"], "--realm", realm, "--epoch", "2", env=env)
    assert first.exit_code == 0, first.output
    assert first.output.startswith(f"settled realm={realm} epoch=2 root=0x")
    second = run_settle(*cli_env["args"], "--all-due", "--realm", realm, env=env)
    assert second.exit_code == 0, second.output
    assert second.output.startswith(f"already_settled realm={realm} epoch=2")
    assert balances(stack, cli_env["accounts"]) == {
        p.account: p.amount for p in payouts_for(cli_env["accounts"])
    }
    assert [e.TYPE for e in cli_env["recorder"].events] == [
        "SettlementSubmitted",
        "SettlementConfirmed",
    ]


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--epoch", "2"], 2, "--epoch needs --realm"),
        ([], 2, "either --epoch"),
        (["--epoch", "7", "--realm", "{realm}"], 3, "no PayoutsComputed"),
        (["--epoch", "2", "--realm", "{realm}"], 4, "underfunded"),
        (["--epoch", "2", "--realm", "{realm}", "--chain-id", "10"], 6, "chain id"),
    ],
)
def test_exit_codes_a_scheduler_can_act_on(
    cli_env: dict[str, Any], realm: str, extra: list[str], code: int, message: str
) -> None:
    args = [*cli_env["args"], "--key-file", str(cli_env["key_file"])]
    result = run_settle(*args, *[a.replace("{realm}", realm) for a in extra])
    assert result.exit_code == code, result.output
    assert message in result.output


def test_key_file_readable_by_others_is_refused(cli_env: dict[str, Any], realm: str) -> None:
    cli_env["key_file"].chmod(0o644)
    args = [*cli_env["args"], "--key-file", str(cli_env["key_file"])]
    result = run_settle(*args, "--realm", realm, "--epoch", "2")
    assert result.exit_code == 2
    assert "chmod 600" in result.output

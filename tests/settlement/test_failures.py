"""Failure tests on a real anvil: SIGKILL at each crash point, reorgs, underfunding, races,
wrong chain or contract. In every case each payee is paid exactly once (token balances)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _submitter_chain import SETTLE_CHAIN_ID, bury_setup, reorg_depth, rpc
from _submitter_settle import (
    balances,
    deploy,
    fund_realm,
    job_key,
    opened,
    payees,
    payouts_for,
    ready_job,
)
from eth_account import Account
from web3 import Web3

from domain.events import SettlementConfirmed
from infra.anvil import Anvil
from settlement.contracts import Stack, transact
from settlement.job import EXIT_WRONG_DEPLOYMENT, Underfunded, WrongDeployment
from settlement.journal import Journal, JournaledTx, TxState
from settlement.merkle import realm_id
from settlement.submitter import CRASH_ENV

pytestmark = pytest.mark.integration
WORKER = Path(__file__).with_name("_submitter_worker.py")
REPO_ROOT = Path(__file__).resolve().parents[2]
_realm_numbers = itertools.count()


@pytest.fixture(scope="module")
def stack(mining_anvil: Anvil) -> Stack:
    return deploy(Web3(Web3.HTTPProvider(mining_anvil.url)))


@pytest.fixture
def realm() -> str:
    return f"failure-realm-{next(_realm_numbers)}"


def write_spec(
    tmp_path: Path, anvil: Anvil, stack: Stack, key: Any, realm: str, accounts: list[str]
) -> Path:
    spec = {
        "url": anvil.url,
        "chain_id": SETTLE_CHAIN_ID,
        "contract": stack.settlement.address,
        "key": "0x" + bytes(key.key).hex(),
        "journal": str(tmp_path / "journal.sqlite"),
        "events": str(tmp_path / "events.jsonl"),
        "realm": realm,
        "epoch": 4,
        "payouts": [[p.account, p.payee_class, p.amount] for p in payouts_for(accounts)],
    }
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def start_worker(spec: Path, crash_at: str | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(WORKER.parent)])
    if crash_at:
        env[CRASH_ENV] = crash_at
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(spec)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_worker(spec: Path, crash_at: str | None = None) -> tuple[int, str, str]:
    proc = start_worker(spec, crash_at)
    out, err = proc.communicate(timeout=90)
    return proc.returncode, out, err


def recorded_types(tmp_path: Path) -> list[str]:
    path = tmp_path / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["type"] for line in path.read_text().splitlines()]


def expected(accounts: list[str]) -> dict[str, int]:
    return {p.account: p.amount for p in payouts_for(accounts)}


@pytest.mark.parametrize(
    "crash_at",
    [
        "after_sign@post:",
        "after_broadcast@push:",
        "waiting_confirmations@push:",
        "after_sign@push:",
    ],
)
def test_sigkill_then_rerun_pays_everyone_exactly_once(
    mining_anvil: Anvil, w3: Web3, stack: Stack, realm: str, tmp_path: Path, crash_at: str
) -> None:
    accounts = payees(3)  # two push batches of <= 2 (the worker's batch size)
    fund_realm(w3, stack, realm, 10_000)
    spec = write_spec(tmp_path, mining_anvil, stack, job_key(w3, stack), realm, accounts)

    code, _, err = run_worker(spec, crash_at)
    assert code == -signal.SIGKILL, err
    open_rows = [
        r for r in Journal(tmp_path / "journal.sqlite").all() if r.state != TxState.CONFIRMED
    ]
    assert open_rows, "the crash left a journaled transaction to resume"

    code, out, err = run_worker(spec)
    assert (code, out.strip()) == (0, "settled"), err
    assert balances(stack, accounts) == expected(accounts)
    assert sorted(recorded_types(tmp_path)) == ["SettlementConfirmed", "SettlementSubmitted"]
    # a third run finds everything done and neither pays nor records again
    code, out, _ = run_worker(spec)
    assert (code, out.strip()) == (0, "already_settled")
    assert balances(stack, accounts) == expected(accounts)
    assert len(recorded_types(tmp_path)) == 2
    _, _, pushed = stack.settlement.functions.epochRecord(realm_id(realm), 4).call()
    assert pushed == sum(expected(accounts).values())


def test_two_jobs_at_once_one_pays_the_other_finds_it_done(
    mining_anvil: Anvil, w3: Web3, stack: Stack, realm: str, tmp_path: Path
) -> None:
    accounts = payees(3)
    fund_realm(w3, stack, realm, 10_000)
    spec = write_spec(tmp_path, mining_anvil, stack, job_key(w3, stack), realm, accounts)
    procs = [start_worker(spec), start_worker(spec)]
    results = [(p.communicate(timeout=90), p.returncode) for p in procs]
    assert [code for _, code in results] == [0, 0], [err for (_, err), _ in results]
    assert sorted(out.strip() for (out, _), _ in results) == ["already_settled", "settled"]
    assert balances(stack, accounts) == expected(accounts)
    assert sorted(recorded_types(tmp_path)) == ["SettlementConfirmed", "SettlementSubmitted"]


def test_reorg_dropping_the_settlement_is_detected_and_sent_again(
    w3: Web3, stack: Stack, realm: str, tmp_path: Path
) -> None:
    reorged: list[str] = []
    stages: list[str] = []

    def reorg_once(stage: str, row: JournaledTx) -> None:
        stages.append(stage)
        if stage == "mined" and row.work_key.startswith("post:") and not reorged:
            assert row.block_number is not None
            rpc(w3, "anvil_reorg", reorg_depth(w3, row.block_number), [])
            reorged.append(row.tx_hash)

    ready = ready_job(
        w3, stack, realm, tmp_path / "j.sqlite", epoch=4, n_payees=2, observer=reorg_once
    )
    bury_setup(w3)
    with opened(ready.job):
        ready.job.settle(realm, 4)

    assert reorged and "reorged" in stages
    assert balances(stack, ready.accounts) == ready.expected()
    confirmed = ready.recorder.events[-1]
    assert isinstance(confirmed, SettlementConfirmed)
    canonical = w3.eth.get_block(confirmed.block)["hash"]
    assert "0x" + bytes(canonical).hex() == confirmed.block_hash
    root, _, _ = stack.settlement.functions.epochRecord(realm_id(realm), 4).call()
    assert root != b"\x00" * 32


def test_underfunded_contract_pays_nothing_and_records_nothing(
    w3: Web3, stack: Stack, realm: str, tmp_path: Path
) -> None:
    ready = ready_job(w3, stack, realm, tmp_path / "j.sqlite", epoch=4, funding=1000)
    with (
        opened(ready.job),
        pytest.raises(Underfunded, match="needs 3003 base units, 1000 available"),
    ):
        ready.job.settle(realm, 4)
    assert ready.recorder.events == []
    assert Journal(ready.journal_path).all() == []
    assert w3.eth.get_transaction_count(ready.key.address) == 0
    assert balances(stack, ready.accounts) == dict.fromkeys(ready.accounts, 0)
    root, _, _ = stack.settlement.functions.epochRecord(realm_id(realm), 4).call()
    assert root == b"\x00" * 32

    fund_realm(w3, stack, realm, 2003)  # topped up: the next run pays in full
    with opened(ready.job):
        assert ready.job.settle(realm, 4).status == "settled"
    assert balances(stack, ready.accounts) == ready.expected()


@pytest.mark.parametrize("what", ["chain id", "contract code", "no code", "not a poster"])
def test_wrong_chain_or_contract_is_refused_before_signing(
    w3: Web3, stack: Stack, realm: str, tmp_path: Path, what: str
) -> None:
    chain_id = 1 if what == "chain id" else SETTLE_CHAIN_ID
    contract = {
        "chain id": stack.settlement.address,
        "not a poster": stack.settlement.address,
        "contract code": stack.chequebook.address,
        "no code": str(Account.create().address),
    }[what]
    ready = ready_job(
        w3,
        stack,
        realm,
        tmp_path / "j.sqlite",
        epoch=4,
        n_payees=2,
        chain_id=chain_id,
        contract=contract,
    )
    if what == "not a poster":
        transact(w3, stack.settlement.functions.setPoster(ready.key.address, False), stack.deployer)
    with pytest.raises(WrongDeployment, match=WRONG_DEPLOYMENT_MESSAGES[what]) as err:
        ready.job.settle(realm, 4)  # before the submitter is even opened
    assert err.value.exit_code == EXIT_WRONG_DEPLOYMENT
    assert Journal(ready.journal_path).all() == []
    assert w3.eth.get_transaction_count(ready.key.address) == 0


WRONG_DEPLOYMENT_MESSAGES = {
    "chain id": "node is on chain id 42161, configured chain id is 1",
    "contract code": "is not EpochSettlement's",
    "no code": "no contract code at",
    "not a poster": "may not post roots",
}

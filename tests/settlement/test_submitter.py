"""The transaction submitter on a real anvil: journal, fees, replacement, reorgs, reverts, locks."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from _submitter_chain import (
    bury_setup,
    deploy_reverter,
    fund_eth,
    make_submitter,
    reorg_depth,
    rpc,
)
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from hypothesis import given
from hypothesis import strategies as st
from web3 import Web3

from infra.anvil import Anvil
from settlement.journal import Journal, JournaledTx, TxState
from settlement.submitter import (
    FeeCapExceeded,
    FeePolicy,
    SenderBusy,
    TxRequest,
    TxReverted,
    WouldRevert,
    WrongChain,
    bumped_fees,
    fresh_fees,
)

pytestmark = pytest.mark.integration


def transfer(to: str, wei: int, key: str = "pay") -> TxRequest:
    return TxRequest(work_key=f"{key}:{to}", to=to, data=b"", value=wei, gas_limit=21_000)


def balance_reached(w3: Web3, address: str, wei: int) -> bool:
    return int(w3.eth.get_balance(Web3.to_checksum_address(address))) >= wei


def new_payee() -> ChecksumAddress:
    return Account.create().address


def test_send_is_journaled_then_confirmed(w3: Web3, sender: LocalAccount, tmp_path: Path) -> None:
    payee = new_payee()
    stages: list[tuple[str, TxState]] = []

    def observe(stage: str, row: JournaledTx) -> None:
        stages.append((stage, row.state))

    with make_submitter(w3, sender, tmp_path / "j.sqlite", observe) as sub:
        outcome = sub.submit(transfer(payee, 5), lambda: balance_reached(w3, payee, 5))

    assert outcome.status == "confirmed"
    assert w3.eth.get_balance(payee) == 5
    # signed (and journaled) strictly before it was sent
    assert [s for s, _ in stages][:2] == ["signed", "sent"]
    assert stages[0][1] == TxState.SIGNED
    rows = Journal(tmp_path / "j.sqlite").all()
    assert [(r.state, r.tx_hash) for r in rows] == [(TxState.CONFIRMED, outcome.tx_hash)]
    assert rows[0].block_hash == outcome.block_hash
    receipt = w3.eth.get_transaction_receipt(outcome.tx_hash)  # type: ignore[arg-type]
    assert w3.eth.block_number >= receipt["blockNumber"] + 2  # three confirmations


def test_work_already_done_signs_nothing(w3: Web3, sender: LocalAccount, tmp_path: Path) -> None:
    with make_submitter(w3, sender, tmp_path / "j.sqlite") as sub:
        outcome = sub.submit(transfer(new_payee(), 5), lambda: True)
    assert outcome.status == "already_done"
    assert Journal(tmp_path / "j.sqlite").all() == []
    assert w3.eth.get_transaction_count(sender.address) == 0


def test_nonces_are_tracked_locally_across_sends(
    w3: Web3, sender: LocalAccount, tmp_path: Path
) -> None:
    payees = [new_payee() for _ in range(3)]
    with make_submitter(w3, sender, tmp_path / "j.sqlite", confirmations=1) as sub:
        for payee in payees:
            sub.submit(transfer(payee, 7), lambda p=payee: balance_reached(w3, p, 7))  # type: ignore[misc]
    rows = Journal(tmp_path / "j.sqlite").all()
    # one confirmed transaction per nonce, in order; a loaded machine may add a superseded
    # replacement of a transaction that looked stuck, never a second confirmed one
    assert [r.nonce for r in rows if r.state is TxState.CONFIRMED] == [0, 1, 2]
    assert all(r.state in (TxState.CONFIRMED, TxState.SUPERSEDED) for r in rows), rows
    assert all(w3.eth.get_balance(p) == 7 for p in payees)  # type: ignore[arg-type]


def test_wrong_chain_id_is_refused_before_signing(
    w3: Web3, sender: LocalAccount, tmp_path: Path
) -> None:
    sub = make_submitter(w3, sender, tmp_path / "j.sqlite", chain_id=1)
    with pytest.raises(WrongChain, match="chain id 42161"):
        sub.open()
    assert Journal(tmp_path / "j.sqlite").all() == []


def test_fee_cap_below_base_fee_signs_nothing(
    w3: Web3, sender: LocalAccount, tmp_path: Path
) -> None:
    with (
        make_submitter(
            w3, sender, tmp_path / "j.sqlite", fees=FeePolicy(max_fee_cap_wei=1000)
        ) as sub,
        pytest.raises(FeeCapExceeded, match="exceeds the fee cap 1000 wei"),
    ):
        sub.submit(transfer(new_payee(), 5), lambda: False)
    assert Journal(tmp_path / "j.sqlite").all() == []
    assert w3.eth.get_transaction_count(sender.address) == 0


def test_fees_never_exceed_the_cap(w3: Web3, sender: LocalAccount, tmp_path: Path) -> None:
    base = int(w3.eth.get_block("latest")["baseFeePerGas"])
    cap = base + base // 4  # below 2*base + tip: the cap binds
    fees = FeePolicy(max_fee_cap_wei=cap, priority_fee_wei=10**9)
    payee = new_payee()
    with make_submitter(w3, sender, tmp_path / "j.sqlite", fees=fees, confirmations=1) as sub:
        sub.submit(transfer(payee, 1), lambda: balance_reached(w3, payee, 1))
    rows = Journal(tmp_path / "j.sqlite").all()
    # a slow block may bring a fee bump (a superseded row): every attempt stays at the cap
    assert rows and all(r.max_fee_wei <= cap and r.priority_fee_wei < cap for r in rows), rows
    assert rows[0].max_fee_wei == cap  # the first attempt already met the cap
    (row,) = [r for r in rows if r.state is TxState.CONFIRMED]
    receipt = w3.eth.get_transaction_receipt(row.tx_hash)  # type: ignore[arg-type]
    assert int(receipt["effectiveGasPrice"]) <= cap


def test_estimated_revert_signs_nothing(w3: Web3, sender: LocalAccount, tmp_path: Path) -> None:
    target = deploy_reverter(w3)
    with (
        make_submitter(w3, sender, tmp_path / "j.sqlite") as sub,
        pytest.raises(WouldRevert, match="^call: would revert"),
    ):
        sub.submit(TxRequest("call", target, b"\x01"), lambda: False)
    assert Journal(tmp_path / "j.sqlite").all() == []
    assert w3.eth.get_transaction_count(sender.address) == 0


def test_mined_revert_is_reported_and_journaled(
    w3: Web3, sender: LocalAccount, tmp_path: Path
) -> None:
    target = deploy_reverter(w3)
    with (
        make_submitter(w3, sender, tmp_path / "j.sqlite") as sub,
        pytest.raises(
            TxReverted, match="^call: transaction 0x[0-9a-f]{64} reverted in block"
        ) as err,
    ):
        sub.submit(TxRequest("call", target, b"\x01", gas_limit=50_000), lambda: False)
    (row,) = Journal(tmp_path / "j.sqlite").all()
    assert row.state == TxState.REVERTED
    assert (row.tx_hash, row.block_number) == (err.value.tx_hash, err.value.block)
    receipt = w3.eth.get_transaction_receipt(row.tx_hash)  # type: ignore[arg-type]
    assert receipt["status"] == 0


def test_stuck_transaction_is_replaced_with_bumped_fees(fresh_anvil: Anvil, tmp_path: Path) -> None:
    w3 = Web3(Web3.HTTPProvider(fresh_anvil.url))
    sender = Account.create()
    fund_eth(w3, sender.address)
    payee = new_payee()
    rpc(w3, "evm_setAutomine", False)  # nothing is mined until the replacement is out

    def observe(stage: str, row: JournaledTx) -> None:
        if stage == "replaced":
            rpc(w3, "evm_mine")

    with make_submitter(
        w3, sender, tmp_path / "j.sqlite", observe, stuck_after_s=0.3, confirmations=1
    ) as sub:
        outcome = sub.submit(transfer(payee, 9), lambda: balance_reached(w3, payee, 9))
    first, second = Journal(tmp_path / "j.sqlite").all()
    assert first.nonce == second.nonce
    assert outcome.tx_hash == second.tx_hash
    assert (first.state, second.state) == (TxState.SUPERSEDED, TxState.CONFIRMED)
    assert second.max_fee_wei * 100 >= first.max_fee_wei * 110
    assert second.priority_fee_wei * 100 >= first.priority_fee_wei * 110
    assert w3.eth.get_balance(payee) == 9  # type: ignore[arg-type]


def test_reorged_out_transaction_is_sent_again(
    w3: Web3, sender: LocalAccount, tmp_path: Path
) -> None:
    payee = new_payee()
    reorgs: list[int] = []
    stages: list[str] = []

    def observe(stage: str, row: JournaledTx) -> None:
        stages.append(stage)
        if stage == "mined" and not reorgs:
            assert row.block_number is not None
            depth = reorg_depth(w3, row.block_number)
            rpc(w3, "anvil_reorg", depth, [])  # replaces the blocks, without our transaction
            reorgs.append(depth)

    bury_setup(w3)
    with make_submitter(w3, sender, tmp_path / "j.sqlite", observe) as sub:
        outcome = sub.submit(transfer(payee, 11), lambda: balance_reached(w3, payee, 11))

    assert reorgs and "reorged" in stages
    assert outcome.status == "confirmed"
    assert w3.eth.get_balance(payee) == 11  # type: ignore[arg-type]
    rows = Journal(tmp_path / "j.sqlite").all()
    # one nonce; under load the re-sent transaction may have been replaced with bumped fees
    assert {r.nonce for r in rows} == {rows[0].nonce}
    (row,) = [r for r in rows if r.state is not TxState.SUPERSEDED]
    assert (row.state, row.tx_hash) == (TxState.CONFIRMED, outcome.tx_hash)
    canonical = w3.eth.get_block(row.block_number)["hash"]  # type: ignore[arg-type]
    assert "0x" + bytes(canonical).hex() == row.block_hash


def test_one_sender_per_key(w3: Web3, sender: LocalAccount, tmp_path: Path) -> None:
    journal = tmp_path / "j.sqlite"
    with make_submitter(w3, sender, journal):
        second = make_submitter(w3, sender, journal, lock_timeout_s=0.2)
        with pytest.raises(SenderBusy, match=f"sender {sender.address} is locked by another"):
            second.open()


def test_waiting_sender_finds_the_work_done(w3: Web3, sender: LocalAccount, tmp_path: Path) -> None:
    payee = new_payee()
    journal = tmp_path / "j.sqlite"
    outcomes = []

    def run() -> None:
        with make_submitter(w3, sender, journal) as sub:
            outcomes.append(sub.submit(transfer(payee, 3), lambda: balance_reached(w3, payee, 3)))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(o.status for o in outcomes) == ["already_done", "confirmed"]
    assert w3.eth.get_balance(payee) == 3  # type: ignore[arg-type]


# -- fee arithmetic (pure) ------------------------------------------------------------------------

wei = st.integers(min_value=1, max_value=10**13)


@given(base=wei, tip=wei, cap=wei)
def test_fresh_fees_respect_the_cap_and_cover_the_base_fee(base: int, tip: int, cap: int) -> None:
    policy = FeePolicy(max_fee_cap_wei=cap, priority_fee_wei=tip)
    if base >= cap:
        with pytest.raises(FeeCapExceeded):
            fresh_fees(base, policy)
        return
    max_fee, priority = fresh_fees(base, policy)
    assert base < max_fee <= cap
    assert 0 <= priority <= tip and base + priority <= max_fee


@given(prev_max=wei, prev_tip=wei, base=wei, cap=wei, bump=st.integers(1000, 5000))
def test_bumped_fees_are_a_valid_replacement_or_none(
    prev_max: int, prev_tip: int, base: int, cap: int, bump: int
) -> None:
    policy = FeePolicy(max_fee_cap_wei=cap, priority_fee_wei=1, bump_bps=bump)
    fees = bumped_fees(prev_max, prev_tip, base, policy)
    if fees is None:  # only when the cap forbids a 10% bump
        assert cap * 10 < prev_max * 11 or cap * 10 < prev_tip * 11
        return
    max_fee, tip = fees
    assert max_fee <= cap and tip <= max_fee
    assert max_fee * 10 >= prev_max * 11 and tip * 10 >= prev_tip * 11


# -- resuming what a crashed run left in the journal ------------------------------------------------


class Crash(Exception):
    pass


def crash_after(stage_to_crash: str) -> Any:
    def observe(stage: str, row: JournaledTx) -> None:
        if stage == stage_to_crash:
            raise Crash(stage)

    return observe


def test_signed_but_unsent_transaction_is_resumed_not_resigned(
    w3: Web3, sender: LocalAccount, tmp_path: Path
) -> None:
    payee = new_payee()
    with (
        make_submitter(w3, sender, tmp_path / "j.sqlite", crash_after("signed")) as sub,
        pytest.raises(Crash),
    ):
        sub.submit(transfer(payee, 4), lambda: balance_reached(w3, payee, 4))
    (signed,) = Journal(tmp_path / "j.sqlite").all()
    assert signed.state == TxState.SIGNED and w3.eth.get_balance(payee) == 0  # type: ignore[arg-type]

    with make_submitter(w3, sender, tmp_path / "j.sqlite") as sub:
        outcome = sub.submit(transfer(payee, 4), lambda: balance_reached(w3, payee, 4))
    assert outcome.tx_hash == signed.tx_hash  # the journaled bytes went out, nothing new signed
    assert [r.state for r in Journal(tmp_path / "j.sqlite").all()] == [TxState.CONFIRMED]
    assert w3.eth.get_balance(payee) == 4  # type: ignore[arg-type]


def test_other_work_left_unsent_is_cancelled_before_new_work(
    w3: Web3, sender: LocalAccount, tmp_path: Path
) -> None:
    abandoned, payee = new_payee(), new_payee()
    with (
        make_submitter(w3, sender, tmp_path / "j.sqlite", crash_after("signed")) as sub,
        pytest.raises(Crash),
    ):
        sub.submit(transfer(abandoned, 4), lambda: False)

    with make_submitter(w3, sender, tmp_path / "j.sqlite") as sub:
        outcome = sub.submit(transfer(payee, 6), lambda: balance_reached(w3, payee, 6))
    assert outcome.status == "confirmed"
    rows = Journal(tmp_path / "j.sqlite").all()
    final = [(r.kind, r.nonce, r.state) for r in rows if r.nonce == 0 or r.kind == "work"]
    assert final == [
        ("work", 0, TxState.SUPERSEDED),  # its nonce was filled by the cancellation
        ("cancel", 0, TxState.CONFIRMED),
        ("work", 1, TxState.CONFIRMED),
    ]
    # a loaded machine may stall the receipt long enough to try cancelling nonce 1 once the
    # work was seen done: that cancellation can only lose to the work
    assert all(r.state is TxState.SUPERSEDED for r in rows if r.nonce == 1 and r.kind == "cancel")
    assert w3.eth.get_balance(abandoned) == 0  # type: ignore[arg-type]
    assert w3.eth.get_balance(payee) == 6  # type: ignore[arg-type]

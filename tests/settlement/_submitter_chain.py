"""Chain helpers of the settlement tests: raw anvil RPC calls, ETH funding, submitter configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from settlement.journal import Journal
from settlement.submitter import FeePolicy, Observer, Submitter, SubmitterConfig

SETTLE_CHAIN_ID = 42161
FAST_POLL_S = 0.02
# init code that deploys a contract whose every call reverts (PUSH1 0 PUSH1 0 REVERT)
ALWAYS_REVERTS_INITCODE = bytes.fromhex("6005600c60003960056000f3" + "60006000fd")


def rpc(w3: Web3, method: str, *params: Any) -> Any:
    """An anvil/debug RPC call; raises on an error response."""
    response = w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
    if "error" in response:
        raise RuntimeError(f"{method}: {response['error']}")
    return response.get("result")


def reorg_depth(w3: Web3, block: int, margin: int = 3) -> int:
    """An `anvil_reorg` depth that reaches back past `block` even if the interval miner adds a
    block or two before the reorg call lands (the extra blocks are empty)."""
    return min(int(w3.eth.block_number), int(w3.eth.block_number) - block + 1 + margin)


def bury_setup(w3: Web3, blocks: int = 8) -> None:
    """Mine empty blocks so a test's `reorg_depth` reorg cannot reach its setup."""
    rpc(w3, "anvil_mine", hex(blocks))


def fund_eth(w3: Web3, address: str, wei: int = 10**20) -> None:
    rpc(w3, "anvil_setBalance", address, hex(wei))


def fast_config(chain_id: int = SETTLE_CHAIN_ID, **overrides: Any) -> SubmitterConfig:
    """Submitter settings scaled down to a 0.1 s-block test chain."""
    settings: dict[str, Any] = {
        "chain_id": chain_id,
        "fees": FeePolicy(max_fee_cap_wei=100 * 10**9),
        "confirmations": 3,
        # unmined for 30 s on a 0.1 s chain is stuck; 5 s was reached on a loaded machine, and the
        # fee-bumped replacement broke tests that count journal rows (the replacement test sets
        # its own stuck_after_s)
        "stuck_after_s": 30.0,
        "receipt_timeout_s": 90.0,
        "confirm_timeout_s": 90.0,
        "poll_interval_s": FAST_POLL_S,
        "lock_timeout_s": 60.0,
    }
    settings.update(overrides)
    return SubmitterConfig(**settings)


def make_submitter(
    w3: Web3,
    account: LocalAccount,
    journal_path: Path,
    observer: Observer | None = None,
    **overrides: Any,
) -> Submitter:
    return Submitter(w3, account, Journal(journal_path), fast_config(**overrides), observer)


def deploy_reverter(w3: Web3) -> str:
    deployer = Account.create()
    fund_eth(w3, deployer.address)
    tx = {
        "chainId": SETTLE_CHAIN_ID,
        "nonce": 0,
        "data": ALWAYS_REVERTS_INITCODE,
        "gas": 100_000,
        "maxFeePerGas": 100 * 10**9,
        "maxPriorityFeePerGas": 10**9,
    }
    signed = deployer.sign_transaction(tx)
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(signed.raw_transaction), timeout=10, poll_latency=0.02
    )
    return str(receipt["contractAddress"])

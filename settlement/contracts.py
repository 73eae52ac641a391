"""Compiled settlement contracts: load the committed artifacts and deploy them with web3.py.

Artifacts are built by `python -m infra.build_contracts` into settlement/artifacts/<Name>.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from eth_abi import decode
from eth_abi.exceptions import DecodingError
from eth_hash.auto import keccak
from web3 import Web3
from web3.contract import Contract

ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"
DEFAULT_UNSTAKE_DELAY_SECONDS = 7 * 24 * 3600
RECEIPT_TIMEOUT_S = 60.0


class TransactionFailed(RuntimeError):
    """A transaction was mined with status 0."""


@cache
def _artifact_text(name: str) -> str:
    path = ARTIFACTS_DIR / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"no artifact {path}: run `python -m infra.build_contracts`")
    return path.read_text()


def load_artifact(name: str) -> dict[str, Any]:
    """The artifact of contract `name`: keys contractName, sourceName, abi, bytecode,
    deployedBytecode (0x hex), compiler, sourceHash. A fresh dict on every call."""
    artifact: dict[str, Any] = json.loads(_artifact_text(name))
    return artifact


def at(w3: Web3, name: str, address: str) -> Contract:
    """Contract object for an already deployed `name` at `address`."""
    return w3.eth.contract(
        address=Web3.to_checksum_address(address), abi=load_artifact(name)["abi"]
    )


def send_signed(w3: Web3, call: Any, key: bytes) -> Any:
    """Sign `call` with the operator's `key` (from its key file), send it, wait for the receipt;
    TransactionFailed when it reverted (the revert reason is raised by the gas estimate)."""
    from eth_account import Account

    account = Account.from_key(key)
    tx = call.build_transaction(
        {
            "from": account.address,
            "nonce": w3.eth.get_transaction_count(account.address, "pending"),
            "chainId": w3.eth.chain_id,
        }
    )
    signed = account.sign_transaction(tx)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RECEIPT_TIMEOUT_S)
    if receipt["status"] != 1:
        raise TransactionFailed(f"transaction {tx_hash.hex()} reverted")
    return receipt


def transact(w3: Web3, call: Any, sender: str, **tx: Any) -> Any:
    """Send a contract call (e.g. `c.functions.fund(r, 5)`) from an unlocked `sender`, wait for
    the receipt and raise `TransactionFailed` unless it succeeded; returns the receipt."""
    tx_hash = call.transact({"from": Web3.to_checksum_address(sender), **tx})
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RECEIPT_TIMEOUT_S)
    if receipt["status"] != 1:
        raise TransactionFailed(f"transaction {tx_hash.hex()} reverted")
    return receipt


def deploy(w3: Web3, name: str, *args: Any, sender: str) -> Contract:
    """Deploy contract `name` with constructor `args` from an unlocked account `sender` (a dev
    node's account, e.g. anvil's); waits for the receipt and returns the deployed contract."""
    artifact = load_artifact(name)
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    receipt = transact(w3, factory.constructor(*args), sender)
    return w3.eth.contract(address=receipt["contractAddress"], abi=artifact["abi"])


@dataclass(frozen=True)
class Stack:
    """The contracts of one chain: token, staking, epoch settlement, the chequebook factory and
    the deployer's chequebook (created through the factory).

    `deployer` owns the token (may mint), owns the settlement contract and is its poster, and
    issues the chequebook's cheques.
    """

    token: Contract
    staking: Contract
    settlement: Contract
    chequebook: Contract
    deployer: str
    chequebook_factory: Contract


def deploy_chequebook(w3: Web3, token: str, issuer: str, *, sender: str) -> Contract:
    """A chequebook paying in `token` whose cheques `issuer` signs, deployed on its own (an
    indexer follows it only when configured with its address; see `create_chequebook`)."""
    return deploy(w3, "Chequebook", token, Web3.to_checksum_address(issuer), sender=sender)


def create_chequebook_call(factory: Contract, token: str, issuer: str) -> Any:
    """The `ChequebookFactory.createChequebook` call (to send from any account)."""
    return factory.functions.createChequebook(
        Web3.to_checksum_address(token), Web3.to_checksum_address(issuer)
    )


def created_chequebook(w3: Web3, factory: Contract, receipt: Any) -> Contract:
    """The chequebook a `createChequebook` transaction deployed, from its ChequebookCreated log."""
    logs = factory.events.ChequebookCreated().process_receipt(receipt)
    if len(logs) != 1:
        raise TransactionFailed(f"{len(logs)} ChequebookCreated logs in one createChequebook")
    return at(w3, "Chequebook", logs[0]["args"]["chequebook"])


def create_chequebook(
    w3: Web3, factory: Contract, token: str, issuer: str, *, sender: str
) -> Contract:
    """A chequebook paying in `token` whose cheques `issuer` signs, deployed through the factory,
    so the indexer follows its logs (cashed and bounced cheques, deposits) from its creation on."""
    receipt = transact(w3, create_chequebook_call(factory, token, issuer), sender)
    return created_chequebook(w3, factory, receipt)


def deploy_stack(
    w3: Web3,
    deployer: str,
    *,
    token: str | None = None,
    unstake_delay_seconds: int = DEFAULT_UNSTAKE_DELAY_SECONDS,
) -> Stack:
    """Deploy WMPToken (unless `token`, an existing ERC-20 address, is given), RealmStaking,
    EpochSettlement, ChequebookFactory and (through it) a Chequebook issued by `deployer`, all
    from `deployer` (unlocked)."""
    deployer = Web3.to_checksum_address(deployer)
    token_contract = (
        at(w3, "WMPToken", token) if token else deploy(w3, "WMPToken", deployer, sender=deployer)
    )
    staking = deploy(
        w3, "RealmStaking", token_contract.address, unstake_delay_seconds, sender=deployer
    )
    settlement = deploy(w3, "EpochSettlement", token_contract.address, deployer, sender=deployer)
    factory = deploy(w3, "ChequebookFactory", sender=deployer)
    chequebook = create_chequebook(w3, factory, token_contract.address, deployer, sender=deployer)
    return Stack(
        token=token_contract,
        staking=staking,
        settlement=settlement,
        chequebook=chequebook,
        deployer=deployer,
        chequebook_factory=factory,
    )


@cache
def _errors(name: str) -> dict[bytes, tuple[str, tuple[str, ...]]]:
    table: dict[bytes, tuple[str, tuple[str, ...]]] = {}
    for item in load_artifact(name)["abi"]:
        if item["type"] == "error":
            types = tuple(i["type"] for i in item["inputs"])
            table[keccak(f"{item['name']}({','.join(types)})".encode())[:4]] = (item["name"], types)
    return table


def revert_reason(name: str, data: str | None) -> str | None:
    """A custom error of contract `name` decoded from revert data (`InvalidChequeSignature(0x..,
    0x..)`), None when the data is not one of its errors."""
    raw = bytes.fromhex((data or "").removeprefix("0x"))
    known = _errors(name).get(raw[:4])
    if known is None:
        return None
    error, types = known
    try:
        values = decode(list(types), raw[4:])
    except (DecodingError, ValueError):
        return f"{error}(undecodable arguments 0x{raw[4:].hex()})"
    shown = [
        Web3.to_checksum_address(v)
        if t == "address"
        else ("0x" + v.hex() if isinstance(v, bytes) else v)
        for t, v in zip(types, values, strict=True)
    ]
    return f"{error}({', '.join(str(v) for v in shown)})"

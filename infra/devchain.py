"""Actors on a stack's dev chain: keys that hold ETH and WMP and send signed transactions to the
mesh's contracts (keepers registering realms, stakers, chequebook issuers), sent together so
that they share blocks, each checked for success.

ETH comes from anvil (`anvil_setBalance`), WMP from the token's owner (anvil's first dev
account, unlocked); every other transaction is signed by the actor's own key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import HTTPProvider, Web3
from web3.contract import Contract

from domain.events import REALM_TARGET, ROLES, RealmParams
from settlement.contracts import (
    TransactionFailed,
    at,
    create_chequebook_call,
    created_chequebook,
    transact,
)
from settlement.merkle import pack_entry, realm_id

#: gas limits of the calls actors send (fixed: a call that depends on one sent in the same
#: batch, a stake after its approve, cannot be estimated before that one is mined)
GAS = {
    "approve": 80_000,
    "stake": 250_000,
    "registerRealm": 400_000,
    "setRealmParams": 200_000,
    "enableApi": 200_000,
    "createChequebook": 2_500_000,
    "deposit": 120_000,
    "fund": 150_000,
    "registerService": 300_000,
    "setOffer": 150_000,
}
#: fee cap per gas of an actor's transaction (anvil's base fee starts at 1 gwei and falls)
MAX_FEE_WEI = 20 * 10**9
PRIORITY_FEE_WEI = 10**9
RECEIPT_TIMEOUT_S = 120.0
#: ETH each actor is given for gas
ACTOR_GAS_WEI = 10 * 10**18


@dataclass
class Actor:
    """A key that sends transactions (a keeper, a staker, a client issuing cheques)."""

    name: str
    account: LocalAccount
    nonce: int | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return str(self.account.address)

    @property
    def private_key(self) -> bytes:
        return bytes(self.account.key)

    @classmethod
    def from_key_file(cls, name: str, path: Path) -> Actor:
        from ledger.keys import load_signer

        return cls(name, Account.from_key(load_signer(path).private_key))

    @classmethod
    def new(cls, name: str, directory: Path) -> Actor:
        """A fresh key, kept in `directory/NAME.key` (mode 0600)."""
        from ledger.keys import write_new_key

        return cls(name, Account.from_key(write_new_key(directory / f"{name}.key").private_key))


Call = tuple[Actor, Any, str]  # (sender, contract call, GAS key)


class DevChain:
    """The stack's contracts on its dev chain, driven by actors."""

    def __init__(self, rpc_url: str, contracts: dict[str, str]) -> None:
        self.w3 = Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
        self.chain_id = int(self.w3.eth.chain_id)
        self.owner = self.w3.eth.accounts[0]
        self.token = at(self.w3, "WMPToken", contracts["token"])
        self.staking = at(self.w3, "RealmStaking", contracts["staking"])
        self.settlement = at(self.w3, "EpochSettlement", contracts["settlement"])
        self.factory = at(self.w3, "ChequebookFactory", contracts["chequebook_factory"])

    def head(self) -> int:
        return int(self.w3.eth.block_number)

    # -- funding ------------------------------------------------------------------------------
    def fund(self, wmp: dict[str, int], eth_wei: int = ACTOR_GAS_WEI) -> None:
        """Give each address `eth_wei` for gas and its WMP (minted to the owner, then paid out
        with one `transferBatch`)."""
        for address in wmp:
            reply = self.w3.provider.make_request(
                "anvil_setBalance",  # type: ignore[arg-type]
                [address, hex(eth_wei)],
            )
            if "error" in reply:
                raise TransactionFailed(f"anvil_setBalance {address}: {reply['error']}")
        paid = {a: v for a, v in wmp.items() if v > 0}
        if not paid:
            return
        transact(self.w3, self.token.functions.mint(self.owner, sum(paid.values())), self.owner)
        packed = [pack_entry(a, v) for a, v in paid.items()]
        transact(self.w3, self.token.functions.transferBatch(packed), self.owner)

    # -- sending -------------------------------------------------------------------------------
    def submit(self, calls: Sequence[Call]) -> list[Any]:
        """Sign and send every call (an actor's in order, by nonce), then wait for all receipts;
        TransactionFailed names the first call that reverted."""
        sent = []
        for actor, call, kind in calls:
            if actor.nonce is None:
                actor.nonce = int(
                    self.w3.eth.get_transaction_count(actor.account.address, "pending")
                )
            tx = call.build_transaction(
                {
                    "from": actor.address,
                    "nonce": actor.nonce,
                    "gas": GAS[kind],
                    "maxFeePerGas": MAX_FEE_WEI,
                    "maxPriorityFeePerGas": PRIORITY_FEE_WEI,
                    "chainId": self.chain_id,
                }
            )
            signed = actor.account.sign_transaction(tx)
            sent.append((actor, kind, self.w3.eth.send_raw_transaction(signed.raw_transaction)))
            actor.nonce += 1
        receipts = []
        for actor, kind, tx_hash in sent:
            receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RECEIPT_TIMEOUT_S)
            if receipt["status"] != 1:
                raise TransactionFailed(f"{kind} from {actor.name} ({tx_hash.hex()}) reverted")
            receipts.append(receipt)
        return receipts

    # -- the mesh's calls ----------------------------------------------------------------------
    def register_realm(self, keeper: Actor, name: str, params: RealmParams) -> Call:
        from indexer.decoding import params_tuple

        call = self.staking.functions.registerRealm(name, keeper.address, params_tuple(params))
        return (keeper, call, "registerRealm")

    def set_params(self, keeper: Actor, name: str, params: RealmParams) -> Call:
        from indexer.decoding import params_tuple

        call = self.staking.functions.setRealmParams(realm_id(name), params_tuple(params))
        return (keeper, call, "setRealmParams")

    def enable_api(self, keeper: Actor, name: str, prefix: str, vendor: str) -> Call:
        return (
            keeper,
            self.staking.functions.enableApi(realm_id(name), prefix, vendor),
            "enableApi",
        )

    def approve(self, actor: Actor, spender: str, amount: int = 2**255) -> Call:
        return (actor, self.token.functions.approve(spender, amount), "approve")

    def stake(self, actor: Actor, realm: str, role: str, amount: int, target: str = "") -> Call:
        """Stake `amount` more on `target` (the realm itself by default) in `role`."""
        call = self.staking.functions.stake(
            realm_id(realm), ROLES.index(role), target or REALM_TARGET, amount
        )
        return (actor, call, "stake")

    def fund_realm(self, actor: Actor, realm: str, amount: int) -> Call:
        return (actor, self.settlement.functions.fund(realm_id(realm), amount), "fund")

    def create_chequebook(self, issuer: Actor) -> Call:
        """The issuer's own chequebook, through the factory (so the indexer follows it)."""
        return (issuer, create_chequebook_call(self.factory, self.token.address, issuer.address),
                "createChequebook")  # fmt: skip

    def chequebook_of(self, receipt: Any) -> Contract:
        return created_chequebook(self.w3, self.factory, receipt)

    def deposit(self, issuer: Actor, chequebook: str, amount: int) -> Call:
        return (issuer, at(self.w3, "Chequebook", chequebook).functions.deposit(amount), "deposit")

    def paid_out(self, chequebook: str, beneficiary: str) -> int:
        return int(at(self.w3, "Chequebook", chequebook).functions.paidOut(beneficiary).call())

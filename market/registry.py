"""ServiceRegistry on chain: deploy it and drive it with web3 (services, offers, rewards).

What the contract says reaches the ledger through the indexer (`indexer.decoding`'s
REGISTRY_BUILDERS); these helpers are for operators, publishers, the demo and tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_hash.auto import keccak
from web3 import Web3
from web3.contract import Contract

from settlement.contracts import at, deploy, transact

ZERO_HASH = "0x" + "00" * 32


def service_id(api: str) -> str:
    """A service's id: keccak256 of its API prefix (as `ServiceRegistry.serviceIdOf`)."""
    return "0x" + keccak(api.encode()).hex()


def realm_id(name: str) -> bytes:
    return keccak(name.encode())


def deploy_registry(w3: Web3, staking: str, *, sender: str) -> Contract:
    """A ServiceRegistry whose offers and rewards name realms of the RealmStaking `staking`."""
    return deploy(w3, "ServiceRegistry", Web3.to_checksum_address(staking), sender=sender)


@dataclass(frozen=True)
class Registry:
    """One deployed ServiceRegistry, driven from unlocked accounts (a dev chain's)."""

    w3: Web3
    contract: Contract

    @classmethod
    def at(cls, w3: Web3, address: str) -> Registry:
        return cls(w3, at(w3, "ServiceRegistry", address))

    @property
    def address(self) -> str:
        return str(self.contract.address)

    def register(
        self,
        publisher: str,
        api: str,
        *,
        spec_hash: str = ZERO_HASH,
        deterministic: bool = False,
        verifier_hash: str = ZERO_HASH,
        min_requests: int = 0,
    ) -> str:
        call = self.contract.functions.registerService(
            api, bytes.fromhex(spec_hash[2:]), deterministic, bytes.fromhex(verifier_hash[2:]),
            min_requests,
        )  # fmt: skip
        transact(self.w3, call, publisher)
        return service_id(api)

    def update(
        self,
        publisher: str,
        api: str,
        *,
        spec_hash: str,
        deterministic: bool,
        verifier_hash: str = ZERO_HASH,
        min_requests: int = 0,
    ) -> Any:
        call = self.contract.functions.updateService(
            bytes.fromhex(service_id(api)[2:]), bytes.fromhex(spec_hash[2:]), deterministic,
            bytes.fromhex(verifier_hash[2:]), min_requests,
        )  # fmt: skip
        return transact(self.w3, call, publisher)

    def offer(self, server: str, realm: str, api: str, price_per_call: int) -> Any:
        sid = bytes.fromhex(service_id(api)[2:])
        call = self.contract.functions.setOffer(realm_id(realm), sid, price_per_call)
        return transact(self.w3, call, server)

    def withdraw_offer(self, server: str, realm: str, api: str) -> Any:
        sid = bytes.fromhex(service_id(api)[2:])
        return transact(
            self.w3, self.contract.functions.withdrawOffer(realm_id(realm), sid), server
        )

    def reward(self, server: str, realm: str, api: str) -> Any:
        sid = bytes.fromhex(service_id(api)[2:])
        return transact(self.w3, self.contract.functions.setReward(realm_id(realm), sid), server)

    def withdraw_reward(self, server: str, realm: str, api: str) -> Any:
        sid = bytes.fromhex(service_id(api)[2:])
        call = self.contract.functions.withdrawReward(realm_id(realm), sid)
        return transact(self.w3, call, server)

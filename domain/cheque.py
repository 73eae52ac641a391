"""SWAP cheque typed data (EIP-712): a cumulative promise bound to chain id and chequebook.

The Chequebook contract verifies exactly this struct under this domain, so a cheque signed for
another chain or another chequebook never verifies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data

EIP712_NAME = "MeshChequebook"
EIP712_VERSION = "1"

CHEQUE_TYPES: dict[str, list[dict[str, str]]] = {
    "Cheque": [
        {"name": "chequebook", "type": "address"},
        {"name": "beneficiary", "type": "address"},
        {"name": "cumulativePayout", "type": "uint256"},
    ]
}


@dataclass(frozen=True, slots=True)
class Cheque:
    chain_id: int
    chequebook: str
    beneficiary: str
    cumulative_payout: int

    def typed_data(self) -> dict[str, Any]:
        return {
            "domain": {
                "name": EIP712_NAME,
                "version": EIP712_VERSION,
                "chainId": self.chain_id,
                "verifyingContract": self.chequebook,
            },
            "types": CHEQUE_TYPES,
            "primaryType": "Cheque",
            "message": {
                "chequebook": self.chequebook,
                "beneficiary": self.beneficiary,
                "cumulativePayout": self.cumulative_payout,
            },
        }

    def sign(self, private_key: bytes | str) -> bytes:
        """65-byte signature (r, s, v) by the chequebook's issuer key."""
        td = self.typed_data()
        msg = encode_typed_data(td["domain"], td["types"], td["message"])
        return bytes(Account.sign_message(msg, private_key).signature)

    def signer(self, signature: bytes) -> str:
        """The address that signed this cheque (checksummed); raises on a malformed signature."""
        td = self.typed_data()
        msg = encode_typed_data(td["domain"], td["types"], td["message"])
        return str(Account.recover_message(msg, signature=signature))

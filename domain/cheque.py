"""SWAP cheque typed data (EIP-712): a cumulative promise bound to chain id and chequebook.

The Chequebook contract verifies exactly this struct under this domain, and `Cheque.signer`
recovers exactly as its OpenZeppelin 5 `ECDSA.recover` does (65 bytes, v 27/28, low s), so a
signature the contract would refuse never verifies here either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data
from eth_keys import keys
from eth_utils import to_checksum_address

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
#: OpenZeppelin's ECDSA refuses s above half the curve order (EIP-2: no malleable signatures)
MAX_S = SECP256K1_N // 2
SIGNATURE_BYTES = 65


class SignatureRefused(ValueError):
    """A signature `ECDSA.recover` (OpenZeppelin 5) would revert on."""


def recover_strict(digest: bytes, signature: bytes) -> str:
    """The checksummed signer of a 32-byte digest, under OpenZeppelin 5 `ECDSA.recover` rules:
    exactly 65 bytes r‖s‖v, v in {27, 28}, s ≤ n/2, and a recoverable non-zero address."""
    if len(signature) != SIGNATURE_BYTES:
        raise SignatureRefused(f"signature is {len(signature)} bytes, not {SIGNATURE_BYTES}")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    v = signature[64]
    if s > MAX_S:
        raise SignatureRefused("s is in the upper half of the curve order (malleable)")
    if v not in (27, 28):
        raise SignatureRefused(f"v is {v}, not 27 or 28")
    if not (0 < r < SECP256K1_N) or s == 0:
        raise SignatureRefused("r or s out of range")
    try:
        public = keys.Signature(vrs=(v - 27, r, s)).recover_public_key_from_msg_hash(digest)
    except Exception as exc:  # no point on the curve for this r: ecrecover returns zero
        raise SignatureRefused(f"unrecoverable signature: {exc}") from exc
    return str(to_checksum_address(public.to_canonical_address()))


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

    def digest(self) -> bytes:
        """The EIP-712 digest the contract's `chequeDigest` computes."""
        td = self.typed_data()
        return bytes(
            _hash_eip191_message(encode_typed_data(td["domain"], td["types"], td["message"]))
        )

    def signer(self, signature: bytes) -> str:
        """The address that signed this cheque (checksummed), recovered as the contract does;
        raises `SignatureRefused` for any signature the contract would refuse."""
        return recover_strict(self.digest(), signature)

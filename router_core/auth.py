"""Authentication: binds a session to an Ethereum address by an EIP-191 challenge-response.

The router sends CHALLENGE("eth-eip191", {nonce, realm, router}); the client signs
`login_message(realm, router, nonce)` with `personal_sign` (EIP-191) in autobahn's `onChallenge`
and sends the 0x-hex signature; the router recovers the address and requires it to equal the
`authid` announced in HELLO. Anonymous access exists only where a realm enables it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import encode_defunct

from router_core import messages as m

ETH_EIP191 = "eth-eip191"
ANONYMOUS = "anonymous"


class AuthFailed(Exception):
    """A refused join: ABORT with `uri` and `message`."""

    def __init__(self, uri: str, message: str) -> None:
        super().__init__(message)
        self.uri = uri
        self.message = message


def login_message(realm: str, router: str, nonce: str) -> str:
    """The exact text a client signs to log in; names realm and router so it cannot be replayed
    elsewhere, and a fresh nonce so it cannot be replayed later."""
    return f"meshledger WAMP login\nrealm: {realm}\nrouter: {router}\nnonce: {nonce}"


def sign_challenge(private_key: bytes | str, extra: dict[str, Any]) -> str:
    """Client side: answer an eth-eip191 CHALLENGE (used by router_core.client)."""
    text = login_message(str(extra["realm"]), str(extra["router"]), str(extra["nonce"]))
    return (
        "0x" + bytes(Account.sign_message(encode_defunct(text=text), private_key).signature).hex()
    )


@dataclass(frozen=True, slots=True)
class Challenge:
    method: str
    extra: dict[str, Any]


class EthEip191Auth:
    method = ETH_EIP191

    def __init__(self, router_address: str) -> None:
        self.router_address = router_address

    def challenge(self, realm: str, details: dict[str, Any]) -> Challenge:
        authid = details.get("authid")
        if not isinstance(authid, str) or not authid.startswith("0x") or len(authid) != 42:
            raise AuthFailed(m.AUTHENTICATION_FAILED, "eth-eip191 needs authid = your 0x address")
        nonce = secrets.token_hex(32)
        return Challenge(
            self.method, {"nonce": nonce, "realm": realm, "router": self.router_address}
        )

    def verify(self, details: dict[str, Any], challenge: Challenge, signature: str) -> str:
        """The authenticated address (checksummed), or AuthFailed."""
        extra = challenge.extra
        text = login_message(extra["realm"], extra["router"], extra["nonce"])
        try:
            signer = str(Account.recover_message(encode_defunct(text=text), signature=signature))
        except Exception as exc:  # malformed hex or unrecoverable signature
            raise AuthFailed(m.AUTHENTICATION_FAILED, f"bad signature: {exc}") from exc
        claimed = str(details.get("authid", ""))
        if signer.lower() != claimed.lower():
            raise AuthFailed(
                m.AUTHENTICATION_FAILED, f"signature by {signer}, not by authid {claimed}"
            )
        return signer

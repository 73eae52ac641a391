"""SWAP rules, pure: handshake terms and their validation, cheque checks, the per-peer account.

A router keeps one `PeerAccount` per (realm, peer). The peer's *debt* grows by the price of each
message it sends through the router and shrinks by each accepted cheque; the account changes only
through its `@event` methods, so its stored events are the record of every decision. Cheques are
cumulative per (chain, chequebook, beneficiary) on chain, so the last accepted cumulative lives in
one `ChequebookAccount` per chequebook, whichever realm or session presents its cheques.

A cheque is accepted only if the contract would pay it: signed (exactly as OpenZeppelin's ECDSA
recovers) by the chequebook's issuer, who is the peer, on a chequebook paying in the agreed token,
for this beneficiary, above the last cumulative, and covered by balance + paidOut.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eth_utils import to_checksum_address
from eventsourcing.domain import Aggregate, event

from domain.cheque import Cheque, SignatureRefused

SWAP_VERSION = "1"
#: bounds of what a peer may announce: nothing it sends can grow the router's events
MAX_VERSION_CHARS = 16
MAX_UINT256 = 2**256 - 1
MAX_CHAIN_ID = 2**64 - 1
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_SIGNATURE = re.compile(r"^0x[0-9a-fA-F]{130}$")


def is_address(value: Any) -> bool:
    return type(value) is str and _ADDRESS.match(value) is not None


def checksummed(value: str) -> str:
    return str(to_checksum_address(value))


class HandshakeRefused(ValueError):
    """A peer's announced SWAP terms are unacceptable; `reason` is machine-readable."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ChequeInvalid(ValueError):
    """A cheque that must be rejected; `reason` is machine-readable."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class RouterTerms:
    """What the router requires of every peer (token base units)."""

    payment_threshold: int
    disconnect_threshold: int
    price_per_message: int
    token: str
    chain_id: int
    min_payment_threshold: int = 0
    version: str = SWAP_VERSION

    def __post_init__(self) -> None:
        for name in ("payment_threshold", "disconnect_threshold", "price_per_message", "chain_id"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        # Waku SWAP: the disconnect threshold MUST lie outside the payment threshold
        if self.disconnect_threshold <= self.payment_threshold:
            raise ValueError("disconnect_threshold must exceed payment_threshold")

    def announce(self, beneficiary: str) -> dict[str, Any]:
        """The router's side of the handshake, as sent to the peer (WELCOME authextra)."""
        return {
            "payment_threshold": self.payment_threshold,
            "disconnect_threshold": self.disconnect_threshold,
            "price_per_message": self.price_per_message,
            "token": self.token,
            "chain_id": self.chain_id,
            "beneficiary": beneficiary,
            "version": self.version,
        }


@dataclass(frozen=True, slots=True)
class AgreedTerms:
    """The terms both sides run a session under (recorded as HandshakeCompleted)."""

    payment_threshold: int
    disconnect_threshold: int
    price_per_message: int
    token: str
    chain_id: int
    chequebook: str
    version: str


def _clip(value: Any) -> str:
    """A peer's value quoted in an error message, never longer than a line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _int_field(announced: dict[str, Any], name: str, limit: int = MAX_UINT256) -> int:
    value = announced.get(name)
    if type(value) is not int or not 0 <= value <= limit:
        raise HandshakeRefused(
            "malformed", f"{name} must be an integer in [0, {limit}], got {_clip(value)}"
        )
    return value


def _address_field(announced: dict[str, Any], name: str) -> str:
    value = announced.get(name)
    if not is_address(value):
        raise HandshakeRefused("malformed", f"{name} must be a 0x address, got {_clip(value)}")
    return checksummed(str(value))


def negotiate(terms: RouterTerms, announced: Any) -> AgreedTerms:
    """Validate a peer's announced handshake against the router's terms.

    The peer announces the payment threshold it accepts to be asked at, the highest price per
    message it accepts, its token, chain id, chequebook and version. A peer announcing less than
    the router's minimum threshold or price, another token, chain or version is refused.
    """
    if not isinstance(announced, dict):
        raise HandshakeRefused("missing", "no SWAP handshake in HELLO authextra.swap")
    version = announced.get("version")
    if type(version) is not str or not 0 < len(version) <= MAX_VERSION_CHARS:
        raise HandshakeRefused("malformed", f"version must be a short string, got {_clip(version)}")
    if version != terms.version:
        raise HandshakeRefused("version", f"peer speaks SWAP v{version}, router v{terms.version}")
    threshold = _int_field(announced, "payment_threshold")
    if threshold < terms.min_payment_threshold:
        raise HandshakeRefused(
            "threshold_too_low",
            f"payment_threshold {threshold} < minimum {terms.min_payment_threshold}",
        )
    price = _int_field(announced, "price_per_message")
    if price < terms.price_per_message:
        raise HandshakeRefused(
            "price_too_low", f"price_per_message {price} < router price {terms.price_per_message}"
        )
    token = _address_field(announced, "token")
    if token.lower() != terms.token.lower():
        raise HandshakeRefused("token", f"peer pays in {token}, router accepts {terms.token}")
    chain_id = _int_field(announced, "chain_id", MAX_CHAIN_ID)
    if chain_id != terms.chain_id:
        raise HandshakeRefused("chain_id", f"peer chain {chain_id}, router chain {terms.chain_id}")
    chequebook = _address_field(announced, "chequebook")
    return AgreedTerms(
        payment_threshold=terms.payment_threshold,
        disconnect_threshold=terms.disconnect_threshold,
        price_per_message=terms.price_per_message,
        token=checksummed(terms.token),
        chain_id=chain_id,
        chequebook=chequebook,
        version=version,
    )


@dataclass(frozen=True, slots=True)
class ChequeClaim:
    """A cheque as presented by a peer (addresses checksummed, signature as 0x-hex)."""

    chain_id: int
    chequebook: str
    beneficiary: str
    cumulative: int
    signature: str

    @classmethod
    def from_wire(cls, data: Any) -> ChequeClaim:
        """Validate and bound every field a peer sent: a malformed cheque is refused whole."""
        if not isinstance(data, dict):
            raise ChequeInvalid("malformed", "cheque must be an object")
        missing = [k for k in _CLAIM_FIELDS if k not in data]
        if missing:
            raise ChequeInvalid("malformed", f"missing {missing}")
        chain_id, cumulative = data["chain_id"], data["cumulative"]
        if type(chain_id) is not int or not 0 <= chain_id <= MAX_CHAIN_ID:
            raise ChequeInvalid(
                "malformed", f"chain_id must be a 64-bit integer, {_clip(chain_id)}"
            )
        if type(cumulative) is not int or not 0 <= cumulative <= MAX_UINT256:
            raise ChequeInvalid("malformed", f"cumulative must be a uint256, {_clip(cumulative)}")
        for name in ("chequebook", "beneficiary"):
            if not is_address(data[name]):
                raise ChequeInvalid("malformed", f"{name} must be a 0x address")
        signature = data["signature"]
        if type(signature) is not str or _SIGNATURE.match(signature) is None:
            raise ChequeInvalid("malformed", "signature must be 65 bytes of 0x-hex")
        return cls(
            chain_id,
            checksummed(data["chequebook"]),
            checksummed(data["beneficiary"]),
            cumulative,
            signature.lower(),
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "chequebook": self.chequebook,
            "beneficiary": self.beneficiary,
            "cumulative": self.cumulative,
            "signature": self.signature,
        }


_CLAIM_FIELDS = ("chain_id", "chequebook", "beneficiary", "cumulative", "signature")


@dataclass(frozen=True, slots=True)
class ChequebookState:
    """What the chain says about a chequebook (`issuer` and `token` are immutable in the
    contract; `balance` is its token balance, `paid_out` what it paid this beneficiary)."""

    chain_id: int
    address: str
    issuer: str
    token: str
    balance: int
    paid_out: int


def check_claim(
    claim: ChequeClaim,
    *,
    peer: str,
    beneficiary: str,
    agreed: AgreedTerms,
    last_cumulative: int,
) -> str:
    """The checks that need no chain: chain id, chequebook, beneficiary, strictly increasing
    cumulative, and the EIP-712 signature recovered as OpenZeppelin 5 does, by the peer.
    Returns the signer or raises ChequeInvalid with a reason."""
    if claim.chain_id != agreed.chain_id:
        raise ChequeInvalid(
            "wrong_chain_id", f"cheque for chain {claim.chain_id}, agreed {agreed.chain_id}"
        )
    if claim.chequebook.lower() != agreed.chequebook.lower():
        raise ChequeInvalid(
            "wrong_chequebook", f"cheque on {claim.chequebook}, agreed {agreed.chequebook}"
        )
    if claim.beneficiary.lower() != beneficiary.lower():
        raise ChequeInvalid(
            "wrong_beneficiary", f"cheque pays {claim.beneficiary}, not {beneficiary}"
        )
    if claim.cumulative <= last_cumulative:
        raise ChequeInvalid(
            "not_increasing", f"cumulative {claim.cumulative} <= last accepted {last_cumulative}"
        )
    cheque = Cheque(claim.chain_id, claim.chequebook, claim.beneficiary, claim.cumulative)
    try:
        signer = cheque.signer(bytes.fromhex(claim.signature[2:]))
    except SignatureRefused as exc:
        raise ChequeInvalid("bad_signature", f"the contract would refuse it: {exc}") from exc
    if signer.lower() != peer.lower():
        raise ChequeInvalid("bad_signature", f"signed by {signer}, expected {peer}")
    return signer


def check_cheque(
    claim: ChequeClaim,
    *,
    peer: str,
    beneficiary: str,
    agreed: AgreedTerms,
    last_cumulative: int,
    book: ChequebookState,
) -> int:
    """Return the cheque's new amount (cumulative - last) or raise ChequeInvalid with a reason:
    `check_claim`, then what the contract checks or needs: the signer is the chequebook's
    issuer, the chequebook pays in the agreed token, and balance + paidOut cover the cumulative.
    """
    signer = check_claim(
        claim, peer=peer, beneficiary=beneficiary, agreed=agreed, last_cumulative=last_cumulative
    )
    if book.chain_id != claim.chain_id or book.address.lower() != claim.chequebook.lower():
        raise ChequeInvalid("wrong_chequebook", f"chain state is of {book.address}")
    if signer.lower() != book.issuer.lower():
        raise ChequeInvalid(
            "not_issuer", f"signed by {signer}, the chequebook's issuer is {book.issuer}"
        )
    if book.token.lower() != agreed.token.lower():
        raise ChequeInvalid(
            "wrong_token", f"the chequebook pays in {book.token}, agreed {agreed.token}"
        )
    if book.balance + book.paid_out < claim.cumulative:
        raise ChequeInvalid(
            "insolvent",
            f"balance {book.balance} + paid out {book.paid_out} < cumulative {claim.cumulative}",
        )
    return claim.cumulative - last_cumulative


def payer(from_peer: str, to_peer: str) -> str:
    """Who pays for a routed message: its sender (publisher per delivered event, caller per
    invocation, callee per result or error)."""
    return from_peer


def account_id(router: str, realm: str, peer: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"meshledger:swap:{router.lower()}:{realm}:{peer.lower()}")


def chequebook_id(router: str, chain_id: int, chequebook: str) -> UUID:
    return uuid5(
        NAMESPACE_URL, f"meshledger:chequebook:{router.lower()}:{chain_id}:{chequebook.lower()}"
    )


class ChequebookAccount(Aggregate):
    """The last cumulative this router (the beneficiary) accepted from one chequebook. On chain a
    cheque pays `cumulative - paidOut[beneficiary]`, so however many realms, sessions or
    handshakes present its cheques, each unit is credited once."""

    @staticmethod
    def create_id(router: str, chain_id: int, chequebook: str) -> UUID:
        return chequebook_id(router, chain_id, chequebook)

    @event("Opened")
    def __init__(self, router: str, chain_id: int, chequebook: str) -> None:
        self.router = router
        self.chain_id = chain_id
        self.chequebook = chequebook
        self.last_cumulative = 0

    @event("ChequeAccepted")
    def accept(self, cumulative: int) -> None:
        assert cumulative > self.last_cumulative, "cumulative cheque amounts only grow"
        self.last_cumulative = cumulative


class PeerAccount(Aggregate):
    """The SWAP balance of one peer with this router in one realm. `debt` > 0: the peer owes."""

    @staticmethod
    def create_id(router: str, realm: str, peer: str) -> UUID:
        return account_id(router, realm, peer)

    @event("Opened")
    def __init__(self, router: str, realm: str, peer: str) -> None:
        self.router = router
        self.realm = realm
        self.peer = peer
        self.debt = 0
        self.messages = 0
        self.last_cumulative = 0
        self.chequebook = ""
        self.chain_id = 0
        self.rejected = 0

    @event("HandshakeCompleted")
    def complete_handshake(
        self,
        chequebook: str,
        chain_id: int,
        price_per_message: int,
        last_cumulative: int | None = None,
    ) -> None:
        if last_cumulative is not None:
            # the chequebook's own last cumulative (`ChequebookAccount`), never a fresh zero
            self.last_cumulative = last_cumulative
        elif chequebook.lower() != self.chequebook.lower() or chain_id != self.chain_id:
            self.last_cumulative = 0  # events recorded before ChequebookAccount existed
        self.chequebook = chequebook
        self.chain_id = chain_id

    @event("Charged")
    def charge(self, messages: int, amount: int) -> None:
        assert messages > 0 and amount >= 0
        self.messages += messages
        self.debt += amount

    @event("CallCharged")
    def charge_call(self, calls: int, amount: int) -> None:
        """Market calls under agreed quotes, charged to this peer (the client)."""
        assert calls > 0 and amount >= 0
        self.debt += amount

    @event("CallCredited")
    def credit_call(self, calls: int, amount: int) -> None:
        """Market calls this peer (the operator) answered, credited at the agreed price less the
        router's fee; a credit beyond the peer's debt is the router's debt to it (debt < 0)."""
        assert calls > 0 and amount >= 0
        self.debt -= amount

    @event("ChequeAccepted")
    def accept_cheque(self, cumulative: int, amount: int, signature: str) -> None:
        assert cumulative > self.last_cumulative, "cumulative cheque amounts only grow"
        assert 0 < amount <= cumulative
        self.last_cumulative = cumulative
        self.debt -= amount

    @event("ChequeRejected")
    def reject_cheque(self, cumulative: int, reason: str) -> None:
        self.rejected += 1

"""SWAP rules, pure: handshake terms and their validation, cheque checks, the per-peer account.

A router keeps one `PeerAccount` per (realm, peer). The peer's *debt* grows by the price of each
message it sends through the router and shrinks by each accepted cheque; the account changes only
through its `@event` methods, so its stored events are the record of every decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.cheque import Cheque

SWAP_VERSION = "1"


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


def _int_field(announced: dict[str, Any], name: str) -> int:
    value = announced.get(name)
    if type(value) is not int or value < 0:
        raise HandshakeRefused("malformed", f"{name} must be a non-negative integer, got {value!r}")
    return value


def _str_field(announced: dict[str, Any], name: str) -> str:
    value = announced.get(name)
    if not isinstance(value, str) or not value:
        raise HandshakeRefused("malformed", f"{name} must be a non-empty string, got {value!r}")
    return value


def negotiate(terms: RouterTerms, announced: Any) -> AgreedTerms:
    """Validate a peer's announced handshake against the router's terms.

    The peer announces the payment threshold it accepts to be asked at, the highest price per
    message it accepts, its token, chain id, chequebook and version. A peer announcing less than
    the router's minimum threshold or price, another token, chain or version is refused.
    """
    if not isinstance(announced, dict):
        raise HandshakeRefused("missing", "no SWAP handshake in HELLO authextra.swap")
    version = _str_field(announced, "version")
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
    token = _str_field(announced, "token")
    if token.lower() != terms.token.lower():
        raise HandshakeRefused("token", f"peer pays in {token}, router accepts {terms.token}")
    chain_id = _int_field(announced, "chain_id")
    if chain_id != terms.chain_id:
        raise HandshakeRefused("chain_id", f"peer chain {chain_id}, router chain {terms.chain_id}")
    chequebook = _str_field(announced, "chequebook")
    return AgreedTerms(
        payment_threshold=terms.payment_threshold,
        disconnect_threshold=terms.disconnect_threshold,
        price_per_message=terms.price_per_message,
        token=terms.token,
        chain_id=chain_id,
        chequebook=chequebook,
        version=version,
    )


@dataclass(frozen=True, slots=True)
class ChequeClaim:
    """A cheque as presented by a peer (signature as 0x-hex)."""

    chain_id: int
    chequebook: str
    beneficiary: str
    cumulative: int
    signature: str

    @classmethod
    def from_wire(cls, data: Any) -> ChequeClaim:
        if not isinstance(data, dict):
            raise ChequeInvalid("malformed", "cheque must be an object")
        try:
            claim = cls(
                chain_id=data["chain_id"],
                chequebook=data["chequebook"],
                beneficiary=data["beneficiary"],
                cumulative=data["cumulative"],
                signature=data["signature"],
            )
        except KeyError as exc:
            raise ChequeInvalid("malformed", f"missing {exc}") from exc
        if (
            type(claim.chain_id) is not int
            or type(claim.cumulative) is not int
            or claim.cumulative < 0
        ):
            raise ChequeInvalid(
                "malformed", "chain_id and cumulative must be non-negative integers"
            )
        for name in ("chequebook", "beneficiary", "signature"):
            if not isinstance(getattr(claim, name), str):
                raise ChequeInvalid("malformed", f"{name} must be a string")
        return claim

    def to_wire(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "chequebook": self.chequebook,
            "beneficiary": self.beneficiary,
            "cumulative": self.cumulative,
            "signature": self.signature,
        }


def check_cheque(
    claim: ChequeClaim,
    *,
    issuer: str,
    beneficiary: str,
    agreed: AgreedTerms,
    last_cumulative: int,
) -> int:
    """Return the cheque's new amount (cumulative - last) or raise ChequeInvalid with a reason.

    Checks, in order: chain id, chequebook, beneficiary, strictly increasing cumulative, and the
    EIP-712 signature (domain bound to chain id and chequebook) by the peer's address.
    """
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
    try:
        signature = bytes.fromhex(claim.signature.removeprefix("0x"))
        signer = Cheque(
            claim.chain_id, claim.chequebook, claim.beneficiary, claim.cumulative
        ).signer(signature)
    except Exception as exc:  # malformed hex, bad length, unrecoverable: all one reason
        raise ChequeInvalid("bad_signature", f"unrecoverable signature: {exc}") from exc
    if signer.lower() != issuer.lower():
        raise ChequeInvalid("bad_signature", f"signed by {signer}, expected {issuer}")
    return claim.cumulative - last_cumulative


def payer(from_peer: str, to_peer: str) -> str:
    """Who pays for a routed message: its sender (publisher per delivered event, caller per
    invocation, callee per result or error)."""
    return from_peer


def account_id(router: str, realm: str, peer: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"meshledger:swap:{router.lower()}:{realm}:{peer.lower()}")


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
    def complete_handshake(self, chequebook: str, chain_id: int, price_per_message: int) -> None:
        if chequebook.lower() != self.chequebook.lower() or chain_id != self.chain_id:
            # cumulative amounts are per chequebook: a new chequebook starts from zero
            self.last_cumulative = 0
        self.chequebook = chequebook
        self.chain_id = chain_id

    @event("Charged")
    def charge(self, messages: int, amount: int) -> None:
        assert messages > 0 and amount >= 0
        self.messages += messages
        self.debt += amount

    @event("ChequeAccepted")
    def accept_cheque(self, cumulative: int, amount: int, signature: str) -> None:
        assert cumulative > self.last_cumulative, "cumulative cheque amounts only grow"
        assert amount == cumulative - self.last_cumulative
        self.last_cumulative = cumulative
        self.debt -= amount

    @event("ChequeRejected")
    def reject_cheque(self, cumulative: int, reason: str) -> None:
        self.rejected += 1

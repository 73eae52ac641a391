"""The service marketplace's pure rules: what ServiceRegistry's events make of the `services`,
`offers` and `rewards` projections, how an offer ranks, and the EIP-712 quote both parties sign."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data

from domain.cheque import SignatureRefused, recover_strict
from domain.events import (
    Event,
    OfferSet,
    OfferWithdrawn,
    RewardSet,
    RewardWithdrawn,
    ServiceRegistered,
    ServiceUpdated,
)
from domain.swap import checksummed, is_address

#: the projection table each registry event adds a change row to
MARKET_TABLES: dict[type[Event], str] = {
    ServiceRegistered: "services",
    ServiceUpdated: "services",
    OfferSet: "offers",
    OfferWithdrawn: "offers",
    RewardSet: "rewards",
    RewardWithdrawn: "rewards",
}


def market_row(event: Event, source: str, seq: int) -> tuple[str, tuple[Any, ...]]:
    """(table, row) of one registry event: every table keeps one row per change, with the log
    position that orders changes (block, log_index) and the (source, seq) a retraction undoes."""
    at = (event.block, event.log_index, source, seq)  # type: ignore[attr-defined]
    if isinstance(event, ServiceRegistered):
        return "services", (
            event.realm, event.service_id, event.api, event.publisher, event.spec_hash,
            event.deterministic, event.verifier_hash, event.min_requests, "registered", *at,
        )  # fmt: skip
    if isinstance(event, ServiceUpdated):
        return "services", (
            event.realm, event.service_id, "", "", event.spec_hash, event.deterministic,
            event.verifier_hash, event.min_requests, "updated", *at,
        )  # fmt: skip
    if isinstance(event, OfferSet | OfferWithdrawn):
        price = event.price_per_call if isinstance(event, OfferSet) else 0
        active = isinstance(event, OfferSet)
        return "offers", (event.realm, event.server, event.service_id, price, active, *at)
    if isinstance(event, RewardSet | RewardWithdrawn):
        active = isinstance(event, RewardSet)
        return "rewards", (event.realm, event.server, event.service_id, active, *at)
    raise TypeError(f"{event.TYPE} is not a registry event")


# -- discovery: how offers rank -------------------------------------------------------------------

#: success ratios within one bucket rank as equals (then the lower price wins)
REPUTATION_BUCKET_BPS = 1_000
#: the success ratio of an operator nobody has assessed yet (a neutral prior, not a penalty)
UNKNOWN_SUCCESS_BPS = 5_000
#: the URI component before an operator's address in its procedure prefix
OPERATOR_MARK = "o"
#: the procedure (under an operator's prefix) where the operator answers price asks; it is not a
#: call of the service (neither assessed nor charged)
QUOTE_PROCEDURE_NAME = "_quote"


def operator_prefix(api: str, operator: str) -> str:
    """Where `operator` registers the procedures of the service under `api`: one registration
    per URI, so each operator serves the service's procedures under a prefix of its own
    (`com.example.calc.o<40 hex digits>.add`); a vendor's API prefix still matches them."""
    return f"{api}.{OPERATOR_MARK}{operator.lower().removeprefix('0x')}"


def offer_rank(offer: dict[str, Any]) -> tuple[Any, ...]:
    """Sort key of an offer (best first): not convicted, online, success ratio (in buckets of
    `REPUTATION_BUCKET_BPS`, higher first), reciprocal with the asker ("if you run my service I
    will run yours"), price, p95 latency, then the address (a total order)."""
    return (
        bool(offer["convicted"]),
        not offer["online"],
        -(int(offer["success_bps"]) // REPUTATION_BUCKET_BPS),
        not offer.get("reciprocal", False),
        int(offer["price_per_call"]),
        int(offer["p95_ms"]),
        str(offer["operator"]).lower(),
    )


# -- negotiation: the EIP-712 quote ---------------------------------------------------------------

QUOTE_EIP712_NAME = "MeshMarketQuote"
QUOTE_EIP712_VERSION = "1"
QUOTE_TYPES: dict[str, list[dict[str, str]]] = {
    "Quote": [
        {"name": "serviceId", "type": "bytes32"},
        {"name": "realm", "type": "string"},
        {"name": "client", "type": "address"},
        {"name": "operator", "type": "address"},
        {"name": "pricePerCall", "type": "uint256"},
        {"name": "expiryBlock", "type": "uint64"},
    ]
}
MAX_UINT64 = 2**64 - 1
MAX_UINT256 = 2**256 - 1
MAX_REALM_CHARS = 255
_HASH = re.compile(r"^0x[0-9a-f]{64}$")
_SIGNATURE = re.compile(r"^0x[0-9a-fA-F]{130}$")


class QuoteRefused(ValueError):
    """A quote that must not be agreed; `reason` is machine-readable."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Quote:
    """A price per call of one service, between one client and one operator in one realm, valid
    up to and including `expiry_block` on chain `chain_id`; signed by both (EIP-712)."""

    chain_id: int
    service_id: str
    realm: str
    client: str
    operator: str
    price_per_call: int
    expiry_block: int

    def typed_data(self) -> dict[str, Any]:
        return {
            "domain": {
                "name": QUOTE_EIP712_NAME,
                "version": QUOTE_EIP712_VERSION,
                "chainId": self.chain_id,
            },
            "types": QUOTE_TYPES,
            "primaryType": "Quote",
            "message": {
                "serviceId": bytes.fromhex(self.service_id[2:]),
                "realm": self.realm,
                "client": self.client,
                "operator": self.operator,
                "pricePerCall": self.price_per_call,
                "expiryBlock": self.expiry_block,
            },
        }

    def digest(self) -> bytes:
        td = self.typed_data()
        return bytes(
            _hash_eip191_message(encode_typed_data(td["domain"], td["types"], td["message"]))
        )

    @property
    def quote_id(self) -> str:
        """The quote's identity: its EIP-712 digest."""
        return "0x" + self.digest().hex()

    def sign(self, private_key: bytes) -> str:
        td = self.typed_data()
        msg = encode_typed_data(td["domain"], td["types"], td["message"])
        return "0x" + bytes(Account.sign_message(msg, private_key).signature).hex()

    def signer(self, signature: str) -> str:
        """Who signed (recovered as OpenZeppelin's ECDSA would); QuoteRefused if unusable."""
        if type(signature) is not str or _SIGNATURE.match(signature) is None:
            raise QuoteRefused("malformed", "a signature must be 65 bytes of 0x-hex")
        try:
            return recover_strict(self.digest(), bytes.fromhex(signature[2:]))
        except SignatureRefused as exc:
            raise QuoteRefused("bad_signature", str(exc)) from exc

    def to_wire(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "service_id": self.service_id,
            "realm": self.realm,
            "client": self.client,
            "operator": self.operator,
            "price_per_call": self.price_per_call,
            "expiry_block": self.expiry_block,
        }

    @classmethod
    def from_wire(cls, data: Any) -> Quote:
        """Validate and bound every field a peer sent: a malformed quote is refused whole."""
        if not isinstance(data, dict):
            raise QuoteRefused("malformed", "quote must be an object")
        missing = [k for k in _QUOTE_FIELDS if k not in data]
        if missing:
            raise QuoteRefused("malformed", f"missing {missing}")
        for name, limit in (("chain_id", MAX_UINT64), ("price_per_call", MAX_UINT256),
                            ("expiry_block", MAX_UINT64)):  # fmt: skip
            value = data[name]
            if type(value) is not int or not 0 <= value <= limit:
                raise QuoteRefused("malformed", f"{name} must be an integer in [0, {limit}]")
        service = data["service_id"]
        if type(service) is not str or _HASH.match(service.lower()) is None:
            raise QuoteRefused("malformed", "service_id must be 32 bytes of 0x-hex")
        realm = data["realm"]
        if type(realm) is not str or not 0 < len(realm) <= MAX_REALM_CHARS:
            raise QuoteRefused("malformed", f"realm must be 1..{MAX_REALM_CHARS} characters")
        for name in ("client", "operator"):
            if not is_address(data[name]):
                raise QuoteRefused("malformed", f"{name} must be a 0x address")
        return cls(
            data["chain_id"], service.lower(), realm, checksummed(data["client"]),
            checksummed(data["operator"]), data["price_per_call"], data["expiry_block"],
        )  # fmt: skip


_QUOTE_FIELDS = (
    "chain_id", "service_id", "realm", "client", "operator", "price_per_call", "expiry_block",
)  # fmt: skip


def check_quote(
    quote: Quote,
    client_signature: str,
    operator_signature: str,
    *,
    chain_id: int,
    realm: str,
    client: str,
    offer_price: int | None,
    block: int,
) -> None:
    """What a router checks before it agrees a quote for `client` (the caller) in `realm`:
    this chain and realm, the caller is the quote's client, both signatures by the right keys,
    not expired at `block`, and a standing offer (`offer_price`) the price does not exceed.
    Raises QuoteRefused with the reason."""
    if quote.chain_id != chain_id:
        raise QuoteRefused("wrong_chain", f"quote for chain {quote.chain_id}, router {chain_id}")
    if quote.realm != realm:
        raise QuoteRefused("wrong_realm", f"quote for realm {quote.realm!r}, session {realm!r}")
    if quote.client.lower() != client.lower():
        raise QuoteRefused("wrong_client", f"quote of client {quote.client}, caller {client}")
    check_signatures(quote, client_signature, operator_signature)
    if quote.expiry_block < block:
        raise QuoteRefused("expired", f"quote expired at block {quote.expiry_block}, now {block}")
    if offer_price is None:
        raise QuoteRefused(
            "no_offer", f"{quote.operator} offers service {quote.service_id} in no realm {realm!r}"
        )
    if quote.price_per_call > offer_price:
        raise QuoteRefused(
            "price_outside_offer",
            f"price per call {quote.price_per_call} > the operator's offer {offer_price}",
        )


def check_signatures(quote: Quote, client_signature: str, operator_signature: str) -> None:
    """Both parties signed exactly this quote (the ledger re-checks this on every replay)."""
    for party, signature in ((quote.client, client_signature),
                             (quote.operator, operator_signature)):  # fmt: skip
        signer = quote.signer(signature)
        if signer.lower() != party.lower():
            raise QuoteRefused("bad_signature", f"signed by {signer}, expected {party}")


# -- verification by redundant calls --------------------------------------------------------------


def majority_wrong(answers: list[bytes]) -> list[int] | None:
    """The default verifier (exact equality): the indices of answers that differ from a strict
    majority of identical answers; None when no answer has a strict majority (undecided)."""
    counts: dict[bytes, int] = {}
    for answer in answers:
        counts[answer] = counts.get(answer, 0) + 1
    best, n = max(counts.items(), key=lambda kv: kv[1], default=(b"", 0))
    if n * 2 <= len(answers):
        return None
    return [i for i, answer in enumerate(answers) if answer != best]

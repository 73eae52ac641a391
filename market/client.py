"""The client helper of the marketplace, on a `router_core.client` session (stock autobahn):

    offer = await find_service(session, "com.example.calc", max_price=2_000)
    agreed = await negotiate(session, key, offer, "com.example.calc", target_price=1_000,
                             max_price=2_000)           # a quote both signed, agreed at the router
    total = await session.call(offer.procedure("add"), 2, 3)   # charged at agreed.price_per_call

and for an operator, `await serve(session, "com.example.calc", {"add": add}, desk=QuoteDesk(key,
floor_price=1_500))` registers the service's procedures under its own prefix
(`domain.market.operator_prefix`) and answers price asks by its desk's policy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autobahn.asyncio.wamp import ApplicationSession
from eth_account import Account

from domain.market import QUOTE_PROCEDURE_NAME, Quote, QuoteRefused, offer_rank, operator_prefix
from router_core.market import OFFERS_PROCEDURE, QUOTE_PROCEDURE

#: price asks one negotiation sends at most
MAX_QUOTE_ROUNDS = 3
#: blocks a quote stays valid unless the client asks otherwise
DEFAULT_VALID_BLOCKS = 1_000


class NoOffer(LookupError):
    """No offer of the service fits (none online, none at or under the price, or convicted)."""


class NoAgreement(LookupError):
    """The operator's price stayed above the client's maximum for every round."""


@dataclass(frozen=True, slots=True)
class Offer:
    """One operator's offer of a service, as the router reports it."""

    operator: str
    price_per_call: int
    procedure_prefix: str
    online: bool
    reciprocal: bool
    success_bps: int
    calls: int
    p50_ms: int
    p95_ms: int
    convicted: bool

    def procedure(self, name: str) -> str:
        """The URI of the service's procedure `name` at this operator."""
        return f"{self.procedure_prefix}.{name}"


async def offers(
    session: ApplicationSession, service: str, max_price: int | None = None
) -> list[Offer]:
    """Every offer of `service` (API prefix or id) in the session's realm, best first."""
    kwargs: dict[str, Any] = {"service": service}
    if max_price is not None:
        kwargs["max_price"] = max_price
    reply = await session.call(OFFERS_PROCEDURE, **kwargs)
    listed = sorted(reply["offers"], key=offer_rank)
    return [Offer(**{k: o[k] for k in Offer.__slots__}) for o in listed]


async def find_service(session: ApplicationSession, service: str, max_price: int) -> Offer:
    """The best offer of `service` at or under `max_price` whose operator is online and not
    convicted: reputation first (in buckets), then price (`domain.market.offer_rank`)."""
    found = await offers(session, service, max_price)
    usable = [o for o in found if o.online and not o.convicted and o.price_per_call <= max_price]
    if not usable:
        raise NoOffer(
            f"no online offer of {service} at or under {max_price} per call "
            f"({len(found)} offer(s) at or under that price, none usable)"
        )
    return usable[0]


async def offer_of(
    session: ApplicationSession, service: str, operator: str, names: Any = None
) -> Offer:
    """The offer of `service` by one operator, given by address or by ENS name (`calc.eth`,
    resolved through `names`, an `infra.ens.Names`); NoOffer when it has none here."""
    address = operator
    if not (operator.startswith("0x") and len(operator) == 42):
        if names is None:
            raise ValueError(f"operator {operator!r} is a name: pass names= to resolve it")
        address = names.resolve(operator)
    found = [o for o in await offers(session, service) if o.operator.lower() == address.lower()]
    if not found:
        raise NoOffer(f"{operator} ({address}) offers no {service} in this realm")
    return found[0]


@dataclass(frozen=True, slots=True)
class QuoteDesk:
    """An operator's pricing policy: it signs any ask at or above `floor_price`, and answers a
    lower one with `floor_price` as its counter-offer. Stateless: every ask is judged alone."""

    private_key: bytes
    floor_price: int

    @property
    def address(self) -> str:
        return str(Account.from_key(self.private_key).address)

    def answer(self, quote: dict[str, Any], client_signature: str) -> dict[str, Any]:
        """One price ask (the quote the client signed): accepted with the operator's signature,
        or a counter-offer. A malformed ask, one not for this operator or not signed by its
        client is refused with the reason."""
        try:
            ask = Quote.from_wire(quote)
            if ask.operator.lower() != self.address.lower():
                raise QuoteRefused("wrong_operator", f"ask for {ask.operator}, not {self.address}")
            signer = ask.signer(client_signature)
            if signer.lower() != ask.client.lower():
                raise QuoteRefused("bad_signature", f"signed by {signer}, not {ask.client}")
        except QuoteRefused as exc:
            return {"accepted": False, "reason": exc.reason, "detail": exc.detail}
        if ask.price_per_call < self.floor_price:
            return {"accepted": False, "counter": self.floor_price}
        return {"accepted": True, "operator_signature": ask.sign(self.private_key)}


async def serve(
    session: ApplicationSession,
    api: str,
    procedures: dict[str, Callable[..., Any]],
    desk: QuoteDesk | None = None,
) -> str:
    """Register `procedures` (name -> handler) of the service under `api` at this operator's
    prefix, and with `desk` its price desk (`<prefix>._quote`); returns the prefix."""
    address = getattr(session, "address", None)
    if not isinstance(address, str):
        raise TypeError("serve needs a session logged in with an Ethereum key (MeshSession)")
    prefix = operator_prefix(api, address)
    for name, handler in procedures.items():
        await session.register(handler, f"{prefix}.{name}")
    if desk is not None:
        await session.register(desk.answer, f"{prefix}.{QUOTE_PROCEDURE_NAME}")
    return prefix


@dataclass(frozen=True, slots=True)
class AgreedQuote:
    quote: Quote
    quote_id: str
    client_signature: str
    operator_signature: str
    rounds: int

    @property
    def price_per_call(self) -> int:
        return self.quote.price_per_call


async def negotiate(
    session: ApplicationSession,
    private_key: bytes,
    offer: Offer,
    service: str,
    *,
    target_price: int,
    max_price: int,
    valid_blocks: int = DEFAULT_VALID_BLOCKS,
    max_rounds: int = MAX_QUOTE_ROUNDS,
) -> AgreedQuote:
    """Ask `offer`'s operator for `target_price` per call; take its counter-offer if it is at
    most `max_price`, else meet halfway, for at most `max_rounds` asks. The quote both signed is
    agreed at the router (`mesh.market.quote`), which records it as `PriceAgreed`. Raises
    NoAgreement, or the router's refusal (ApplicationError `mesh.error.quote_refused`)."""
    if not 0 <= target_price <= max_price:
        raise ValueError(f"target_price {target_price} must be in [0, max_price {max_price}]")
    listed = await session.call(OFFERS_PROCEDURE, service=service)
    client = str(Account.from_key(private_key).address)
    ask_price = target_price
    for rounds in range(1, max_rounds + 1):
        quote = Quote(
            chain_id=int(listed["chain_id"]),
            service_id=str(listed["service_id"]),
            realm=str(session.config.realm),
            client=client,
            operator=offer.operator,
            price_per_call=ask_price,
            expiry_block=int(listed["block"]) + valid_blocks,
        )
        client_signature = quote.sign(private_key)
        reply = await session.call(
            offer.procedure(QUOTE_PROCEDURE_NAME),
            quote=quote.to_wire(),
            client_signature=client_signature,
        )
        if reply.get("accepted"):
            operator_signature = str(reply["operator_signature"])
            agreed = await session.call(
                QUOTE_PROCEDURE,
                quote=quote.to_wire(),
                client_signature=client_signature,
                operator_signature=operator_signature,
            )
            return AgreedQuote(
                quote, str(agreed["quote_id"]), client_signature, operator_signature, rounds
            )
        counter = reply.get("counter")
        if type(counter) is not int:
            raise NoAgreement(f"the operator refused the ask: {reply.get('detail', reply)}")
        ask_price = counter if counter <= max_price else (ask_price + max_price + 1) // 2
    raise NoAgreement(
        f"no price at or under {max_price} agreed with {offer.operator} in {max_rounds} rounds"
    )

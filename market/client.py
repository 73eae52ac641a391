"""The client helper of the marketplace, on a `router_core.client` session (stock autobahn):

    offer = await find_service(session, "com.example.calc", max_price=2_000)
    total = await session.call(offer.procedure("add"), 2, 3)

and for an operator, `await serve(session, "com.example.calc", {"add": add})` registers the
service's procedures under its own prefix (`domain.market.operator_prefix`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autobahn.asyncio.wamp import ApplicationSession

from domain.market import offer_rank, operator_prefix
from router_core.market import OFFERS_PROCEDURE


class NoOffer(LookupError):
    """No offer of the service fits (none online, none at or under the price, or convicted)."""


@dataclass(frozen=True, slots=True)
class Offer:
    """One operator's offer of a service, as the router reports it."""

    operator: str
    price_per_call: int
    procedure_prefix: str
    online: bool
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


async def serve(
    session: ApplicationSession, api: str, procedures: dict[str, Callable[..., Any]]
) -> str:
    """Register `procedures` (name -> handler) of the service under `api` at this operator's
    prefix; returns the prefix."""
    address = getattr(session, "address", None)
    if not isinstance(address, str):
        raise TypeError("serve needs a session logged in with an Ethereum key (MeshSession)")
    prefix = operator_prefix(api, address)
    for name, handler in procedures.items():
        await session.register(handler, f"{prefix}.{name}")
    return prefix

"""The service marketplace's pure rules: what ServiceRegistry's events make of the `services`,
`offers` and `rewards` projections, and how an offer ranks (reputation first, then price)."""

from __future__ import annotations

from typing import Any

from domain.events import (
    Event,
    OfferSet,
    OfferWithdrawn,
    RewardSet,
    RewardWithdrawn,
    ServiceRegistered,
    ServiceUpdated,
)

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
            event.service_id, event.api, event.publisher, event.spec_hash, event.deterministic,
            event.verifier_hash, event.min_requests, "registered", *at,
        )  # fmt: skip
    if isinstance(event, ServiceUpdated):
        return "services", (
            event.service_id, "", "", event.spec_hash, event.deterministic, event.verifier_hash,
            event.min_requests, "updated", *at,
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


def operator_prefix(api: str, operator: str) -> str:
    """Where `operator` registers the procedures of the service under `api`: one registration
    per URI, so each operator serves the service's procedures under a prefix of its own
    (`com.example.calc.o<40 hex digits>.add`); a vendor's API prefix still matches them."""
    return f"{api}.{OPERATOR_MARK}{operator.lower().removeprefix('0x')}"


def offer_rank(offer: dict[str, Any]) -> tuple[Any, ...]:
    """Sort key of an offer (best first): not convicted, online, success ratio (in buckets of
    `REPUTATION_BUCKET_BPS`, higher first), price, p95 latency, then the address (a total order)."""
    return (
        bool(offer["convicted"]),
        not offer["online"],
        -(int(offer["success_bps"]) // REPUTATION_BUCKET_BPS),
        int(offer["price_per_call"]),
        int(offer["p95_ms"]),
        str(offer["operator"]).lower(),
    )

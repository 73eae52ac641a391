"""The router's side of the service marketplace: services and offers as the log says them
(`MarketBook`, fed by the ledger follower), and the meta procedure `mesh.market.offers`.

Each operator serves a service's procedures under its own prefix (`domain.market.operator_prefix`);
a session may register under another operator's prefix only if it is that operator. The router
keeps each operator's outcomes of the calls it routed (`CallStats`, bounded), ranks offers by
them (`domain.market.offer_rank`) and records each as a `CallAssessed` event for the ledger's
`reputation` projection.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from domain.events import (
    CallAssessed,
    Event,
    OfferSet,
    OfferWithdrawn,
    PriceAgreed,
    RewardSet,
    RewardWithdrawn,
    ServiceRegistered,
    ServiceUpdated,
    log_identity,
)
from domain.market import (
    OPERATOR_MARK,
    QUOTE_PROCEDURE_NAME,
    UNKNOWN_SUCCESS_BPS,
    Quote,
    QuoteRefused,
    check_quote,
    offer_rank,
    operator_prefix,
)
from router_core import messages as m
from router_core.chain_clock import ChainClock
from router_core.dealer import MetaError, PendingCall
from router_core.market_verify import Check, Verification
from router_core.metering import UsageSink
from router_core.session import Session
from router_core.swap import SwapService

_OPERATOR_COMPONENT = re.compile(rf"^{OPERATOR_MARK}[0-9a-fA-F]{{40}}$")
OFFERS_PROCEDURE = "mesh.market.offers"
QUOTE_PROCEDURE = "mesh.market.quote"
QUOTE_REFUSED = "mesh.error.quote_refused"
#: latencies kept per (realm, service, operator) for p50/p95
LATENCY_WINDOW_CALLS = 256
#: weight an older outcome keeps at each new one (decayed success ratio)
SUCCESS_DECAY = 0.95
#: offers one `mesh.market.offers` answer lists at most
MAX_OFFERS_LISTED = 100


@dataclass(frozen=True, slots=True)
class Service:
    service_id: str
    api: str
    deterministic: bool
    verifier_hash: str
    min_requests: int


@dataclass(frozen=True, slots=True)
class _Entry:
    """The latest change of one offer or reward (by its chain position)."""

    position: tuple[int, int]  # (block, log_index)
    active: bool
    server: str
    price_per_call: int = 0


@dataclass
class CallStats:
    """One operator's outcomes for one service as this router saw them: a decayed success
    ratio and the latencies of the last `LATENCY_WINDOW_CALLS` answered calls."""

    ok: float = 0.0
    weight: float = 0.0
    calls: int = 0
    #: calls answered with a result (what reciprocity counts)
    results: int = 0
    latencies_ms: deque[int] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW_CALLS))

    def record(self, success: bool, latency_ms: int) -> None:
        self.ok = self.ok * SUCCESS_DECAY + (1.0 if success else 0.0)
        self.weight = self.weight * SUCCESS_DECAY + 1.0
        self.calls += 1
        self.results += success
        self.latencies_ms.append(latency_ms)

    @property
    def success_bps(self) -> int:
        if self.weight == 0:
            return UNKNOWN_SUCCESS_BPS
        return int(10_000 * self.ok / self.weight)

    def percentile_ms(self, q: float) -> int:
        if not self.latencies_ms:
            return 0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


LogId = tuple[int, str, int]
#: changes kept per service and per offer or reward, so that a retraction can fall back to the
#: one before (a reorg reaches back a few blocks, never through this many changes)
MAX_CHANGES_KEPT = 64


def _entry_key(
    event: OfferSet | OfferWithdrawn | RewardSet | RewardWithdrawn,
) -> tuple[str, str, str, str]:
    kind = "offer" if isinstance(event, OfferSet | OfferWithdrawn) else "reward"
    return (kind, event.realm, event.service_id, event.server.lower())


def _position(entry: _Entry) -> tuple[int, int]:
    return entry.position


@dataclass(frozen=True, slots=True)
class _MarketCall:
    """What the marketplace keeps of a routed market call (`PendingCall.market`)."""

    service: Service
    check: Check | None


class MarketBook:
    """Services and offers from trusted indexer sources (thread-safe: fed by the follower).
    Changes apply in chain order: an offer change older than the one held is ignored (the
    follower reads partitions in any interleaving). A change whose chain log a reorg orphaned
    is undone (`retract`): the book falls back to the change before it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._services: dict[str, Service] = {}
        self._by_api: dict[str, str] = {}
        #: service id -> its versions as applied: (chain log identity, the service then)
        self._versions: dict[str, list[tuple[LogId | None, Service]]] = {}
        #: ("offer" | "reward", realm, service id, server lowercase) -> its latest change
        self._entries: dict[tuple[str, str, str, str], _Entry] = {}
        #: the same key -> its recent changes (at most `MAX_CHANGES_KEPT`), for retractions
        self._changes: dict[tuple[str, str, str, str], list[tuple[LogId | None, _Entry]]] = {}

    def apply(self, event: Event) -> bool:
        """Apply one event of a trusted source; True if it was one of the market's."""
        with self._lock:
            if isinstance(event, ServiceRegistered):
                self._add_version(event, Service(
                    event.service_id, event.api, event.deterministic, event.verifier_hash,
                    event.min_requests,
                ))  # fmt: skip
                return True
            if isinstance(event, ServiceUpdated):
                old = self._services.get(event.service_id)
                if old is not None:
                    self._add_version(event, Service(
                        old.service_id, old.api, event.deterministic, event.verifier_hash,
                        event.min_requests,
                    ))  # fmt: skip
                return True
            if isinstance(event, OfferSet | OfferWithdrawn | RewardSet | RewardWithdrawn):
                key = _entry_key(event)
                price = event.price_per_call if isinstance(event, OfferSet) else 0
                active = isinstance(event, OfferSet | RewardSet)
                entry = _Entry((event.block, event.log_index), active, event.server, price)
                changes = self._changes.setdefault(key, [])
                changes.append((log_identity(event), entry))
                if len(changes) > MAX_CHANGES_KEPT:
                    changes.remove(min(changes, key=lambda c: c[1].position))
                held = self._entries.get(key)
                if held is None or held.position <= entry.position:  # chain order, however read
                    self._entries[key] = entry
                return True
        return False

    def retract(self, event: Event) -> bool:
        """Undo a market change whose chain log was retracted; True if one was undone."""
        ident = log_identity(event)
        if ident is None:
            return False
        with self._lock:
            if isinstance(event, ServiceRegistered | ServiceUpdated):
                versions = self._versions.get(event.service_id, [])
                kept = [v for v in versions if v[0] != ident]
                if len(kept) == len(versions):
                    return False
                if kept:
                    self._versions[event.service_id] = kept
                    self._services[event.service_id] = kept[-1][1]
                else:
                    gone = self._services.pop(event.service_id)
                    del self._versions[event.service_id]
                    if self._by_api.get(gone.api) == event.service_id:
                        del self._by_api[gone.api]
                return True
            if isinstance(event, OfferSet | OfferWithdrawn | RewardSet | RewardWithdrawn):
                key = _entry_key(event)
                changes = self._changes.get(key, [])
                kept_changes = [c for c in changes if c[0] != ident]
                if len(kept_changes) == len(changes):
                    return False
                if kept_changes:
                    self._changes[key] = kept_changes
                    self._entries[key] = max((c[1] for c in kept_changes), key=_position)
                else:
                    del self._changes[key]
                    del self._entries[key]
                return True
        return False

    def _add_version(self, event: Event, service: Service) -> None:
        versions = self._versions.setdefault(service.service_id, [])
        versions.append((log_identity(event), service))
        if len(versions) > MAX_CHANGES_KEPT:
            del versions[0]
        self._services[service.service_id] = service
        self._by_api[service.api] = service.service_id

    def service(self, name: str) -> Service | None:
        """A service by its API prefix or its id."""
        with self._lock:
            sid = self._by_api.get(name, name)
            return self._services.get(sid)

    def offers(self, realm: str, service_id: str) -> list[tuple[str, int]]:
        """(server, price per call) of the service's standing offers in the realm."""
        with self._lock:
            return [
                (e.server, e.price_per_call)
                for (kind, r, sid, _), e in self._entries.items()
                if kind == "offer" and r == realm and sid == service_id and e.active
            ]

    def price(self, realm: str, service_id: str, server: str) -> int | None:
        with self._lock:
            entry = self._entries.get(("offer", realm, service_id, server.lower()))
            return entry.price_per_call if entry is not None and entry.active else None

    def rewarded(self, realm: str, server: str) -> set[str]:
        """The service ids `server` rewards in the realm."""
        server = server.lower()
        with self._lock:
            return {
                sid
                for (kind, r, sid, who), e in self._entries.items()
                if kind == "reward" and r == realm and who == server and e.active
            }

    def service_of(self, uri: str) -> tuple[Service, str] | None:
        """The service whose API prefix `uri` falls under (the longest), and the operator
        component that follows the prefix ("" if none)."""
        if not self._by_api:  # no marketplace in the log: one check on every call's path
            return None
        parts = uri.split(".")
        with self._lock:
            for cut in range(len(parts) - 1, 0, -1):
                sid = self._by_api.get(".".join(parts[:cut]))
                if sid is not None:
                    return self._services[sid], parts[cut]
        return None


class MarketService:
    """Serves `mesh.market.offers` in every realm of the router and keeps the call statistics
    discovery ranks by."""

    def __init__(
        self,
        book: MarketBook,
        router: str,
        sink: UsageSink,
        clock: ChainClock,
        *,
        chain_id: int = 0,
        swap: SwapService | None = None,
        fee_bps: int = 0,
        max_quotes: int = 100_000,
        verification: Verification | None = None,
    ) -> None:
        if not 0 <= fee_bps <= 10_000:
            raise ValueError(f"fee_bps must be in [0, 10000], got {fee_bps}")
        self.book = book
        self.router = router
        self._sink = sink
        self._clock = clock
        self.chain_id = chain_id
        self.swap = swap
        #: the router operator's fee on market calls it clears, in bps of the agreed price
        self.fee_bps = fee_bps
        #: agreed quotes held at once (expired ones are dropped first; then new ones are refused)
        self.max_quotes = max_quotes
        self.verification = verification
        self.stats: dict[tuple[str, str, str], CallStats] = {}
        #: (realm, client, operator, service id), addresses lowercase -> the agreed quote
        self.quotes: dict[tuple[str, str, str, str], Quote] = {}

    def attach(self, realm: Any) -> None:
        """Plug into one realm: its meta procedure and its dealer's market hook."""
        realm.dealer.meta[OFFERS_PROCEDURE] = partial(self.offers, realm)
        realm.dealer.meta[QUOTE_PROCEDURE] = partial(self.quote, realm)
        realm.dealer.market = self

    # -- dealer hooks -----------------------------------------------------------------------------
    def may_register(self, session: Session, uri: str) -> str | None:
        """Why `session` may not register `uri` (None: it may): under a service's API prefix,
        only the operator named by the next URI component registers."""
        found = self.book.service_of(uri)
        if found is None:
            return None
        service, component = found
        if _OPERATOR_COMPONENT.match(component) is None:
            return None  # not an operator's prefix: the realm's own API convention applies
        mine = operator_prefix(service.api, session.authid)
        if not uri.startswith(mine + "."):
            return (
                f"{uri} is under another operator's prefix of service {service.api}; "
                f"{session.authid} serves it under {mine}"
            )
        return None

    def call_started(self, pending: PendingCall, payload: list[Any]) -> None:
        """A call under its callee's operator prefix of a service is a market call (assessed,
        priced, maybe verified): remember what it is. A call of a procedure registered under the
        API prefix but outside every operator prefix is an ordinary call."""
        found = self.book.service_of(pending.uri)
        if found is None or pending.uri.endswith("." + QUOTE_PROCEDURE_NAME):
            return
        service, _ = found
        own = operator_prefix(service.api, pending.callee.authid) + "."
        if not pending.uri.startswith(own):
            return
        pending.started = time.monotonic()
        check = None
        realm = pending.caller.realm
        verify = self.verification
        if (
            service.deterministic
            and verify is not None
            and realm is not None
            and not verify.is_router(pending.caller)
        ):
            check = verify.start(
                realm, service, pending.callee.authid, pending.uri[len(own) :], payload,
                self.book.offers(realm.name, service.service_id),
            )  # fmt: skip
        pending.market = _MarketCall(service, check)

    def call_ended(self, pending: PendingCall, outcome: str) -> None:
        """Record a market call's outcome (a caller's cancel says nothing of the operator)."""
        if outcome == "canceled":
            return
        call: _MarketCall = pending.market
        service = call.service
        if call.check is not None and self.verification is not None:
            answer = pending.result if outcome == "result" else None
            self.verification.answered(call.check, pending.callee.authid, answer)
        latency_ms = int((time.monotonic() - pending.started) * 1000)
        realm = pending.caller.realm
        operator = pending.callee.authid
        key = (realm.name if realm is not None else "", service.service_id, operator.lower())
        stats = self.stats.get(key)
        if stats is None:
            stats = self.stats[key] = CallStats()
        stats.record(outcome == "result", latency_ms)
        charged, quote_id = self._charge(pending, key, outcome)
        # one event per call; the emitter batches a realm's events into records
        self._sink.emit(
            CallAssessed(
                realm=key[0],
                router=self.router,
                client=pending.caller.authid,
                operator=operator,
                service_id=service.service_id,
                outcome=outcome,
                latency_ms=latency_ms,
                charged=charged,
                quote=quote_id,
                block=self._clock.block,
            )
        )

    def _served(self, realm: str, server: str, services: set[str]) -> int:
        """Results `server` answered, through this router, of `services` in the realm."""
        server = server.lower()
        return sum(
            stats.results
            for (r, sid, operator), stats in self.stats.items()
            if r == realm and operator == server and sid in services
        )

    def _charge(
        self, pending: PendingCall, key: tuple[str, str, str], outcome: str
    ) -> tuple[int, str]:
        """An answered call under a live quote is charged at its price through SWAP (only a
        result is paid for); returns (charged, quote id)."""
        realm, service_id, operator = key
        quote = self.quotes.get((realm, pending.caller.authid.lower(), operator, service_id))
        if quote is None or outcome != "result" or quote.expiry_block < self._clock.block:
            return 0, ""
        price = quote.price_per_call
        fee = price * self.fee_bps // 10_000  # rounds down: the operator never gets less
        if self.swap is None or not self.swap.settle_call(
            pending.caller, pending.callee, price, fee
        ):
            return 0, quote.quote_id
        return price, quote.quote_id

    def quote(
        self, realm: Any, session: Session, args: list[Any], kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """`mesh.market.quote(quote, client_signature, operator_signature)`: agree a quote both
        parties signed (see `domain.market.check_quote`); the caller's later calls of the
        service at that operator are charged at its price until it expires. Refused with
        `mesh.error.quote_refused` and a reason; nothing is recorded or charged then."""
        try:
            quote = Quote.from_wire(kwargs.get("quote"))
            if self.swap is None or session.swap is None:
                raise QuoteRefused("no_swap", "calls are charged through SWAP: log in with it")
            service = self.book.service(quote.service_id)
            if service is None:
                raise QuoteRefused("no_service", f"no service {quote.service_id} is registered")
            check_quote(
                quote,
                kwargs.get("client_signature", ""),
                kwargs.get("operator_signature", ""),
                chain_id=self.chain_id,
                realm=realm.name,
                client=session.authid,
                offer_price=self.book.price(realm.name, quote.service_id, quote.operator),
                block=self._clock.block,
            )
            self._hold(quote)
        except QuoteRefused as exc:
            raise MetaError(QUOTE_REFUSED, exc.detail, {"reason": exc.reason}) from exc
        self._sink.emit(
            PriceAgreed(
                realm=realm.name,
                router=self.router,
                client=quote.client,
                operator=quote.operator,
                service_id=quote.service_id,
                price_per_call=quote.price_per_call,
                expiry_block=quote.expiry_block,
                chain_id=quote.chain_id,
                quote_id=quote.quote_id,
                client_signature=kwargs["client_signature"],
                operator_signature=kwargs["operator_signature"],
                block=self._clock.block,
            )
        )
        return {
            "quote_id": quote.quote_id,
            "price_per_call": quote.price_per_call,
            "expiry_block": quote.expiry_block,
        }

    def _hold(self, quote: Quote) -> None:
        key = (quote.realm, quote.client.lower(), quote.operator.lower(), quote.service_id)
        if key not in self.quotes and len(self.quotes) >= self.max_quotes:
            block = self._clock.block
            for old in [k for k, q in self.quotes.items() if q.expiry_block < block]:
                del self.quotes[old]
            if len(self.quotes) >= self.max_quotes:
                raise QuoteRefused(
                    "quotes_full", f"this router holds {self.max_quotes} live quotes already"
                )
        self.quotes[key] = quote

    # -- meta procedure ---------------------------------------------------------------------------
    def offers(
        self, realm: Any, session: Session, args: list[Any], kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """`mesh.market.offers(service, max_price=None)`: the service's offers in this realm,
        best first, each with its operator, price, procedure prefix, whether the operator is
        online, and its reputation here (success ratio, calls, p50/p95 latency)."""
        name = kwargs.get("service", args[0] if args else None)
        if type(name) is not str or not name:
            raise MetaError(
                m.INVALID_ARGUMENT, "service (an API prefix or a service id) is required"
            )
        max_price = kwargs.get("max_price")
        if max_price is not None and (type(max_price) is not int or max_price < 0):
            raise MetaError(
                m.INVALID_ARGUMENT, f"max_price must be a non-negative int, got {max_price!r}"
            )
        service = self.book.service(name)
        if service is None:
            raise MetaError(m.INVALID_ARGUMENT, f"no service {name!r} is registered")
        registered = realm.dealer.procedures()
        caller = session.authid
        rewarded_by_caller = self.book.rewarded(realm.name, caller)
        listed = []
        for server, price in self.book.offers(realm.name, service.service_id):
            if max_price is not None and price > max_price:
                continue
            prefix = operator_prefix(service.api, server)
            stats = self.stats.get((realm.name, service.service_id, server.lower())) or CallStats()
            listed.append(
                {
                    "operator": server,
                    "price_per_call": price,
                    "procedure_prefix": prefix,
                    "online": any(uri.startswith(prefix + ".") for uri in registered),
                    "reciprocal": server.lower() != caller.lower()
                    and self._served(realm.name, server, rewarded_by_caller) > 0
                    and self._served(realm.name, caller, self.book.rewarded(realm.name, server))
                    > 0,
                    "success_bps": stats.success_bps,
                    "calls": stats.calls,
                    "p50_ms": stats.percentile_ms(0.5),
                    "p95_ms": stats.percentile_ms(0.95),
                    "convicted": self.verification is not None
                    and self.verification.is_convicted(realm.name, service.service_id, server),
                }
            )
        listed.sort(key=offer_rank)
        return {
            "chain_id": self.chain_id,
            "block": self._clock.block,
            "service": service.api,
            "service_id": service.service_id,
            "deterministic": service.deterministic,
            "offers": listed[:MAX_OFFERS_LISTED],
        }

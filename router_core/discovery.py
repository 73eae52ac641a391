"""Routers found on chain: RouterRegistry (deploy, announce, withdraw, read a realm's endpoints)
and `RealmEndpoints`, the routers of each realm as the log says them (fed by the ledger follower
from the indexer's `RouterAnnounced` / `RouterWithdrawn`), which a router links to.

The registry's rule: an operator announces its router's `ws://` or `wss://` URL for a realm where
it holds a provision stake (RealmStaking role RouterOperator on the realm itself); at most
`MAX_ROUTERS` per realm; anyone may prune an operator whose provision stake is gone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from web3 import Web3
from web3.contract import Contract

from domain.events import Event, RouterAnnounced, RouterWithdrawn, log_identity
from settlement.contracts import at, deploy, send_signed
from settlement.merkle import realm_id

#: RouterRegistry.MAX_ROUTERS: what one realm's list holds at most
MAX_ROUTERS = 64


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A router of a realm: its operator (checksummed) and public WebSocket URL."""

    operator: str
    url: str


# -- the contract -----------------------------------------------------------------------------


def deploy_router_registry(w3: Web3, staking: str, *, sender: str) -> Contract:
    """A RouterRegistry whose announcements need provision stakes in the RealmStaking `staking`
    (from an unlocked dev account `sender`)."""
    return deploy(w3, "RouterRegistry", Web3.to_checksum_address(staking), sender=sender)


def registry_at(w3: Web3, address: str) -> Contract:
    return at(w3, "RouterRegistry", address)


def announce(w3: Web3, registry: str, realm: str, url: str, key: bytes) -> Any:
    """Announce the router of `key`'s operator at `url` in `realm` (its receipt)."""
    call = registry_at(w3, registry).functions.announce(realm_id(realm), url)
    return send_signed(w3, call, key)


def withdraw(w3: Web3, registry: str, realm: str, key: bytes) -> Any:
    call = registry_at(w3, registry).functions.withdraw(realm_id(realm))
    return send_signed(w3, call, key)


def read_endpoints(w3: Web3, registry: str, realm: str) -> list[Endpoint]:
    """The realm's announced routers, as the chain's latest block says (a client's view)."""
    operators, urls = registry_at(w3, registry).functions.endpoints(realm_id(realm)).call()
    return [
        Endpoint(Web3.to_checksum_address(o), str(u)) for o, u in zip(operators, urls, strict=True)
    ]


# -- the log's view -----------------------------------------------------------------------------


class RealmEndpoints:
    """The routers of each realm from trusted indexer events (thread-safe: fed by the follower
    thread). Changes apply in chain order per operator, whatever order partitions are read in;
    a retracted log is undone (the change before it stands again). `on_change(realm)` runs on
    the follower's thread after a realm's list changed."""

    def __init__(self, on_change: Callable[[str], None] | None = None) -> None:
        self._lock = threading.Lock()
        #: (realm, operator lowercase) -> its changes: (block, log_index, log id, endpoint|None)
        self._changes: dict[tuple[str, str], list[tuple[int, int, Any, Endpoint | None]]] = {}
        self.on_change = on_change

    def apply(self, event: Event) -> bool:
        """Apply one event of a trusted source; True if it was one of RouterRegistry's."""
        if not isinstance(event, RouterAnnounced | RouterWithdrawn):
            return False
        endpoint = (
            Endpoint(Web3.to_checksum_address(event.operator), event.url)
            if isinstance(event, RouterAnnounced)
            else None
        )
        change = (event.block, event.log_index, log_identity(event), endpoint)
        with self._lock:
            changes = self._changes.setdefault((event.realm, event.operator.lower()), [])
            if any(c[2] == change[2] for c in changes):
                return True  # the same log twice
            changes.append(change)
            changes.sort(key=lambda c: (c[0], c[1]))
            del changes[:-MAX_ROUTERS]  # a retraction reaches back a few changes, not more
        self._changed(event.realm)
        return True

    def retract(self, event: Event) -> bool:
        """Undo a change whose chain log a reorg orphaned; True if one was undone."""
        if not isinstance(event, RouterAnnounced | RouterWithdrawn):
            return False
        ident = log_identity(event)
        with self._lock:
            key = (event.realm, event.operator.lower())
            changes = self._changes.get(key, [])
            kept = [c for c in changes if c[2] != ident]
            if len(kept) == len(changes):
                return False
            self._changes[key] = kept
        self._changed(event.realm)
        return True

    def endpoints(self, realm: str) -> list[Endpoint]:
        """The realm's routers now (their latest change an announcement), by operator."""
        with self._lock:
            found = [
                changes[-1][3]
                for (r, _), changes in self._changes.items()
                if r == realm and changes and changes[-1][3] is not None
            ]
        return sorted((e for e in found if e is not None), key=lambda e: e.operator.lower())

    def _changed(self, realm: str) -> None:
        if self.on_change is not None:
            self.on_change(realm)

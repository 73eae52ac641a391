"""Realm settings as the log says them (keeper, parameters: price, `stake_per_mpb`, the USD price
and its feed), and the static values of the router's TOML for offline development.

`LedgerRealms` is fed by the ledger follower (RealmCreated, RealmParamsChanged, KeeperChanged of
trusted indexer sources; ChainHead for the ledger's rule that a change never takes effect before
its source's watermark) and answers with the parameters in force at a block, by the ledger's own
schedule (`domain.accounting.Schedule`). `RealmSettings` puts the two sources together: the log
wins; a TOML value that disagrees with the log at start-up is refused (`SettingsConflict`), one
the log does not know (a realm not on chain, no broker) applies as given.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from domain.accounting import Schedule
from domain.events import (
    DEFAULT_PRICE_PER_MESSAGE,
    ChainHead,
    Event,
    KeeperChanged,
    RealmCreated,
    RealmParams,
    RealmParamsChanged,
)
from domain.swap import RouterTerms
from router_core.chain_clock import ChainClock
from router_core.prices import PriceBook


class SettingsConflict(ValueError):
    """The router's TOML and the log disagree on a realm setting."""


@dataclass
class _Realm:
    keeper: str
    schedule: Schedule


class LedgerRealms:
    """Realms as the log says them (thread-safe: fed by the follower's thread)."""

    def __init__(self) -> None:
        self._realms: dict[str, _Realm] = {}
        self._watermarks: dict[str, int] = {}
        self._lock = threading.Lock()

    def apply(self, source: str, seq: int, event: Event) -> bool:
        """Apply one event of a trusted source; True if it was one of ours."""
        with self._lock:
            if isinstance(event, RealmCreated):
                if event.realm not in self._realms:
                    self._realms[event.realm] = _Realm(event.keeper, Schedule(event.params))
                return True
            if isinstance(event, RealmParamsChanged):
                realm = self._realms.get(event.realm)
                if realm is not None:
                    floor = self._watermarks.get(source, -1) + 1
                    realm.schedule.change(event.params, event.block, source, seq, floor)
                return True
            if isinstance(event, KeeperChanged):
                realm = self._realms.get(event.realm)
                if realm is not None:
                    realm.keeper = event.keeper
                return True
            if isinstance(event, ChainHead):
                if event.block > self._watermarks.get(source, -1):
                    self._watermarks[source] = event.block
                return False
        return False

    def retract(self, source: str, seq: int, event: Event) -> bool:
        """Undo a realm change whose chain log a reorg orphaned; True if it was one of ours."""
        with self._lock:
            realm = self._realms.get(getattr(event, "realm", ""))
            if realm is None:
                return False
            if isinstance(event, RealmCreated):
                del self._realms[event.realm]  # its later logs were retracted before it
            elif isinstance(event, RealmParamsChanged):
                realm.schedule.retract(source, seq)
            elif isinstance(event, KeeperChanged):
                realm.keeper = event.previous_keeper
            else:
                return False
            return True

    def known(self, realm: str) -> bool:
        with self._lock:
            return realm in self._realms

    def keeper(self, realm: str) -> str | None:
        with self._lock:
            found = self._realms.get(realm)
            return found.keeper if found is not None else None

    def latest(self, realm: str) -> RealmParams | None:
        """The newest parameters set (what the keeper says now)."""
        with self._lock:
            found = self._realms.get(realm)
            return found.schedule.latest() if found is not None else None

    def params_at(self, realm: str, block: int) -> RealmParams | None:
        """The parameters in force at `block` (those of the epoch that block belongs to)."""
        with self._lock:
            found = self._realms.get(realm)
            if found is None:
                return None
            schedule = found.schedule
            return schedule.span(schedule.epoch_of(block)).params


@dataclass(frozen=True)
class StaticRealm:
    """What the router's TOML says of a realm (None / "": not given)."""

    name: str
    keeper: str = ""
    price_per_message: int | None = None
    stake_per_mpb: int | None = None


class RealmSettings:
    """One answer per realm setting: the log's when it knows the realm, else the TOML's, else
    the default."""

    def __init__(self, static: Sequence[StaticRealm], ledger: LedgerRealms | None) -> None:
        self.static = {r.name: r for r in static}
        self.ledger = ledger

    def check(self) -> None:
        """Refuse a TOML value the log contradicts (call once the log was read to its end)."""
        if self.ledger is None:
            return
        for name, realm in self.static.items():
            params = self.ledger.latest(name)
            if params is None:
                continue
            keeper = self.ledger.keeper(name) or ""
            if realm.keeper and realm.keeper.lower() != keeper.lower():
                raise SettingsConflict(
                    f"realm {name!r}: keeper is {realm.keeper} in the router's configuration but "
                    f"{keeper} on chain (from the log); remove it from the configuration or fix it"
                )
            for field in ("price_per_message", "stake_per_mpb"):
                given = getattr(realm, field)
                logged = getattr(params, field)
                if given is not None and given != logged:
                    raise SettingsConflict(
                        f"realm {name!r}: {field} is {given} in the router's configuration but "
                        f"{logged} on chain (from the log); remove it from the configuration or "
                        "fix it"
                    )

    def params_at(self, realm: str, block: int) -> RealmParams | None:
        return self.ledger.params_at(realm, block) if self.ledger is not None else None

    def price_per_message(self, realm: str, block: int) -> int:
        params = self.params_at(realm, block)
        if params is not None:
            return params.price_per_message
        given = self.static[realm].price_per_message if realm in self.static else None
        return DEFAULT_PRICE_PER_MESSAGE if given is None else given

    def stake_per_mpb(self, realm: str, block: int) -> int:
        params = self.params_at(realm, block)
        if params is not None:
            return params.stake_per_mpb
        given = self.static[realm].stake_per_mpb if realm in self.static else None
        return RealmParams().stake_per_mpb if given is None else given


class RealmTerms:
    """The router's SWAP terms per realm as of the current block (`swap.TermsSource`): the price
    the realm's parameters set, in tokens or converted from USD at its feed's last valid price."""

    def __init__(
        self,
        settings: RealmSettings,
        prices: PriceBook,
        clock: ChainClock,
        base: RouterTerms,
        realms: Sequence[str],
        token_decimals: int = 18,
    ) -> None:
        self.settings = settings
        self.prices = prices
        self.clock = clock
        self.base = base
        self.realms = frozenset(realms)
        self.token_decimals = token_decimals

    def serves(self, realm: str) -> bool:
        return realm in self.realms

    def terms(self, realm: str) -> RouterTerms | None:
        if realm not in self.realms:
            return None
        block = self.clock.block
        params = self.settings.params_at(realm, block)
        if params is not None and params.usd_price_per_message:
            price = self.prices.price_per_message(
                params.price_feed, params.usd_price_per_message, self.token_decimals
            )
        else:
            price = self.settings.price_per_message(realm, block)
        return dataclasses.replace(self.base, price_per_message=price)

"""Stake views for authorization: who holds a reservation stake in a realm, and how much
bandwidth (messages per block) it reserves; what a reservation is, is `domain.stakes`'s rule."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from domain.events import REALM_TARGET, StakeChanged
from domain.stakes import RealmStakes, is_reservation, value_at


class StakeView(Protocol):
    def has_reservation(self, realm: str, address: str, block: int) -> bool: ...

    def reserved_mpb(self, realm: str, address: str, block: int) -> int: ...


class StaticStakes:
    """Reservations from configuration: realm -> {address: messages per block}."""

    def __init__(self, reservations: dict[str, dict[str, int]]) -> None:
        self._mpb = {
            realm: {a.lower(): mpb for a, mpb in table.items()}
            for realm, table in reservations.items()
        }

    def set(self, realm: str, address: str, mpb: int) -> None:
        self._mpb.setdefault(realm, {})[address.lower()] = mpb

    def has_reservation(self, realm: str, address: str, block: int) -> bool:
        return self.reserved_mpb(realm, address, block) > 0

    def reserved_mpb(self, realm: str, address: str, block: int) -> int:
        return self._mpb.get(realm, {}).get(address.lower(), 0)


class LedgerStakes:
    """Reservations from StakeChanged events (fed by `router_core.ledger_follower`), answered as
    of a block by the ledger's own rules (`domain.stakes`). Thread-safe."""

    def __init__(self, stake_per_mpb: dict[str, int] | Callable[[str, int], int]) -> None:
        """`stake_per_mpb`: per realm, or a function of (realm, block) (the realm's parameters
        in force at that block, `router_core.realm_settings`)."""
        if isinstance(stake_per_mpb, dict):
            table = dict(stake_per_mpb)
            self._stake_per_mpb: Callable[[str, int], int] = lambda realm, block: table.get(
                realm, 10**18
            )
        else:
            self._stake_per_mpb = stake_per_mpb
        self._realms: dict[str, RealmStakes] = {}
        #: (realm, chain id, block hash, block, log index): one log applied once
        self._seen: set[tuple[str, int, str, int, int]] = set()
        self._lock = threading.Lock()

    def apply(self, event: StakeChanged) -> None:
        if not is_reservation(event.role, event.target):
            return
        with self._lock:
            log_id = _log_id(event)
            if log_id in self._seen:
                return  # the same log twice: idempotent
            self._seen.add(log_id)
            stakes = self._realms.setdefault(event.realm, RealmStakes())
            stakes.apply(
                event.staker.lower(), event.role, REALM_TARGET, event.block, event.log_index,
                event.amount,
            )  # fmt: skip

    def retract(self, event: StakeChanged) -> bool:
        """Undo a change whose chain log a reorg orphaned; a replacement log (another block
        hash) applies as new."""
        if not is_reservation(event.role, event.target):
            return False
        with self._lock:
            log_id = _log_id(event)
            stakes = self._realms.get(event.realm)
            if log_id not in self._seen or stakes is None:
                return False
            self._seen.discard(log_id)
            key = (event.staker.lower(), event.role, REALM_TARGET)
            return stakes.history(key).retract(event.block, event.log_index, "", 0)

    def reserved_mpb(self, realm: str, address: str, block: int) -> int:
        with self._lock:
            stakes = self._realms.get(realm)
            if stakes is None:
                return 0
            stake = value_at(stakes.reserved_steps(client=address.lower()), block)
        return stake // self._stake_per_mpb(realm, block)

    def has_reservation(self, realm: str, address: str, block: int) -> bool:
        return self.reserved_mpb(realm, address, block) > 0


def _log_id(event: StakeChanged) -> tuple[str, int, str, int, int]:
    return (event.realm, event.chain_id, event.block_hash, event.block, event.log_index)

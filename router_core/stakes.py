"""Stake views for authorization: who holds a reservation stake in a realm, and how much
bandwidth (messages per block) it reserves. Reservation = a StakeChanged with role "user" or
"service_operator" whose target is the realm itself (REALM_TARGET); mpb = amount // stake_per_mpb."""

from __future__ import annotations

import bisect
import threading
from typing import Protocol

from domain.events import REALM_TARGET, StakeChanged

RESERVING_ROLES = ("user", "service_operator")


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
    of a block: the latest change at or before it counts. Thread-safe."""

    def __init__(self, stake_per_mpb: dict[str, int]) -> None:
        self._stake_per_mpb = stake_per_mpb
        # (realm, staker, role) -> sorted [(block, log_index)], [amount]
        self._keys: dict[tuple[str, str, str], list[tuple[int, int]]] = {}
        self._amounts: dict[tuple[str, str, str], list[int]] = {}
        self._lock = threading.Lock()

    def apply(self, event: StakeChanged) -> None:
        if event.role not in RESERVING_ROLES or event.target.lower() != REALM_TARGET:
            return
        key = (event.realm, event.staker.lower(), event.role)
        pos = (event.block, event.log_index)
        with self._lock:
            keys = self._keys.setdefault(key, [])
            amounts = self._amounts.setdefault(key, [])
            i = bisect.bisect_left(keys, pos)
            if i < len(keys) and keys[i] == pos:
                amounts[i] = event.amount  # the same log twice: idempotent
                return
            keys.insert(i, pos)
            amounts.insert(i, event.amount)

    def _amount(self, realm: str, address: str, role: str, block: int) -> int:
        key = (realm, address.lower(), role)
        with self._lock:
            keys = self._keys.get(key)
            if not keys:
                return 0
            i = bisect.bisect_right(keys, (block, 2**63)) - 1
            return self._amounts[key][i] if i >= 0 else 0

    def reserved_mpb(self, realm: str, address: str, block: int) -> int:
        per = self._stake_per_mpb.get(realm, 10**18)
        total = sum(self._amount(realm, address, role, block) for role in RESERVING_ROLES)
        return total // per

    def has_reservation(self, realm: str, address: str, block: int) -> bool:
        return self.reserved_mpb(realm, address, block) > 0

"""Stake rules of a realm, pure: which stake reserves bandwidth, which provides it, and what a
position holds at a block (several changes in one block: the last by log index holds).

A stake is a position (staker, role, target); `StakeChanged.amount` is its new total. Rules
(ARCHITECTURE "Rules that settle what the formulas leave open"):

* a user's or service operator's stake on the realm itself (C1, target `REALM_TARGET`) reserves
  bandwidth and is what funding is computed on;
* an operator's own stake on the realm (role router_operator / service_operator) is its provision;
* a stake directed at an operator backs it: a user's or service operator's stake on a router
  operator (C2), a user's on a service operator (C3). It adds to that operator's provided stake
  at every block where the operator holds a provision of its own; a user's stake on an account
  that is both counts for the router class first (one stake never counts twice).

Values over blocks are step functions: sorted ``[(from_block, value)]``, the value holding from
its block until the next step.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from domain.events import REALM_TARGET

#: roles whose stake on the realm reserves bandwidth (and funds the realm)
RESERVING_ROLES = ("user", "service_operator")
#: the provision role of each operator payee class
PROVISION_ROLES = {"router": "router_operator", "service": "service_operator"}
#: roles whose stake directed at an operator of the class backs it (WEP008 C2, C3)
BACKING_ROLES = {"router": ("user", "service_operator"), "service": ("user",)}

StakeKey = tuple[str, str, str]  # (staker, role, target)
Steps = list[tuple[int, int]]  # [(from_block, value)], sorted by block, one entry a block
Marks = Mapping[str, int]  # source -> highest seq that counts


def is_reservation(role: str, target: str) -> bool:
    """A stake that reserves bandwidth in the realm (and counts for its funding)."""
    return role in RESERVING_ROLES and target.lower() == REALM_TARGET


def provision_key(operator: str, payee_class: str) -> StakeKey:
    return (operator, PROVISION_ROLES[payee_class], REALM_TARGET)


@dataclass(frozen=True, slots=True, order=True)
class StakeChange:
    block: int
    log_index: int
    order: int  # application order: of two copies of one log, the later holds
    amount: int
    source: str = ""
    seq: int = 0


class StakeHistory:
    """The changes of one position, ordered by (block, log_index)."""

    __slots__ = ("_changes",)

    def __init__(self) -> None:
        self._changes: list[StakeChange] = []

    def add(self, change: StakeChange) -> None:
        if change.amount < 0:
            raise ValueError(f"a stake total is never negative, got {change.amount}")
        bisect.insort(self._changes, change)

    def retract(self, block: int, log_index: int, source: str, seq: int) -> bool:
        """Forget the change a retracted chain log made (a reorg orphaned it)."""
        for i, change in enumerate(self._changes):
            if (change.block, change.log_index, change.source, change.seq) == (
                block,
                log_index,
                source,
                seq,
            ):
                del self._changes[i]
                return True
        return False

    def changes(self, marks: Marks | None = None) -> list[StakeChange]:
        if marks is None:
            return list(self._changes)
        return [c for c in self._changes if c.seq <= marks.get(c.source, 0)]

    def steps(self, marks: Marks | None = None) -> Steps:
        """The position's amount over blocks; within a block the last change by log index."""
        out: Steps = []
        for change in self.changes(marks):
            if out and out[-1][0] == change.block:
                out[-1] = (change.block, change.amount)
            else:
                out.append((change.block, change.amount))
        return out

    def amount_at(self, block: int) -> int:
        return value_at(self.steps(), block)


# -- step functions -------------------------------------------------------------------------------


def value_at(steps: Steps, block: int) -> int:
    i = bisect.bisect_right(steps, (block, 1 << 255))
    return steps[i - 1][1] if i else 0


def block_sum(steps: Steps, first_block: int, last_block: int, divisor: int = 1) -> int:
    """Sum over blocks first..last of ⌊value(block) / divisor⌋."""
    if last_block < first_block:
        return 0
    total = 0
    value = value_at(steps, first_block)
    cursor = first_block
    for block, new_value in steps[bisect.bisect_right(steps, (first_block, 1 << 255)) :]:
        if block > last_block:
            break
        total += (value // divisor) * (block - cursor)
        cursor, value = block, new_value
    return total + (value // divisor) * (last_block + 1 - cursor)


def combine(parts: Sequence[Steps], fn: Callable[[Sequence[int]], int]) -> Steps:
    """The step function of `fn(part values)` at every block where any part changes."""
    blocks = sorted({b for part in parts for b, _ in part})
    out: Steps = []
    cursors = [0] * len(parts)
    values = [0] * len(parts)
    for block in blocks:
        for i, part in enumerate(parts):
            while cursors[i] < len(part) and part[cursors[i]][0] <= block:
                values[i] = part[cursors[i]][1]
                cursors[i] += 1
        value = fn(values)
        if not out or out[-1][1] != value:
            out.append((block, value))
    return out


def add_steps(parts: Iterable[Steps]) -> Steps:
    parts = list(parts)
    if len(parts) == 1:
        return parts[0]
    return combine(parts, sum)


# -- the stakes of one realm ----------------------------------------------------------------------


@dataclass
class RealmStakes:
    """Every stake position of one realm, indexed for the rules above."""

    positions: dict[StakeKey, StakeHistory] = field(default_factory=dict)
    by_target: dict[str, set[StakeKey]] = field(default_factory=dict)
    _order: int = 0

    def apply(
        self,
        staker: str,
        role: str,
        target: str,
        block: int,
        log_index: int,
        amount: int,
        source: str = "",
        seq: int = 0,
    ) -> StakeKey:
        key = (staker, role, target)
        self._order += 1
        self.positions.setdefault(key, StakeHistory()).add(
            StakeChange(block, log_index, self._order, amount, source, seq)
        )
        self.by_target.setdefault(target.lower(), set()).add(key)
        return key

    def history(self, key: StakeKey) -> StakeHistory:
        return self.positions.get(key) or StakeHistory()

    def reservations(self, client: str | None = None) -> list[StakeKey]:
        return sorted(
            k
            for k in self.by_target.get(REALM_TARGET, ())
            if k[1] in RESERVING_ROLES and (client is None or k[0] == client)
        )

    def reserved_steps(self, marks: Marks | None = None, client: str | None = None) -> Steps:
        """Reservation stake over blocks: the realm's total, or one client's."""
        parts = [self.positions[k].steps(marks) for k in self.reservations(client)]
        return add_steps(parts) if parts else []

    def provided_steps(self, payee_class: str, operator: str, marks: Marks | None = None) -> Steps:
        """The stake an operator provides in a class over blocks: its own provision plus the
        stakes backing it, while it holds a provision of its own."""
        own_router = self.history(provision_key(operator, "router")).steps(marks)
        own_service = self.history(provision_key(operator, "service")).steps(marks)
        backing = {
            role: add_steps(
                self.positions[k].steps(marks)
                for k in sorted(self.by_target.get(operator.lower(), ()))
                if k[1] == role
            )
            for role in ("user", "service_operator")
        }
        parts = [own_router, own_service, backing["user"] or [], backing["service_operator"] or []]
        if payee_class == "router":
            return combine(parts, lambda v: v[0] + v[2] + v[3] if v[0] > 0 else 0)
        if payee_class == "service":
            # a user's stake on an account that is also a router operator backs its routing
            return combine(parts, lambda v: v[1] + (v[2] if v[0] == 0 else 0) if v[1] > 0 else 0)
        raise ValueError(f"no provision in payee class {payee_class!r}")

    def series_moved_by(self, key: StakeKey) -> list[tuple[str, str]]:
        """The (kind, account) series a change of position `key` moves: "reserved" per client,
        "router"/"service" per operator (provided stake)."""
        staker, role, target = key
        moved = []
        if role in RESERVING_ROLES and target.lower() == REALM_TARGET:
            moved.append(("reserved", staker))
        if target.lower() == REALM_TARGET and role in PROVISION_ROLES.values():
            moved += [("router", staker), ("service", staker)]
        if target.lower() != REALM_TARGET and role in BACKING_ROLES["router"]:
            moved += [("router", target), ("service", target)]
        return moved

    def series(self, kind: str, account: str) -> Steps:
        if kind == "reserved":
            return self.reserved_steps(client=account)
        return self.provided_steps(kind, account)

    def holds_provision_throughout(self, operator: str, first_block: int, last_block: int) -> bool:
        """The router operator's own provision is positive at every block first..last."""
        steps = self.history(provision_key(operator, "router")).steps()
        if value_at(steps, first_block) <= 0:
            return False
        return all(v > 0 for b, v in steps if first_block < b <= last_block)

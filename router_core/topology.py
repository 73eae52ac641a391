"""The federation's view of a realm: each router's link state (its links, topics, procedures) and
the routes derived from it — which neighbours a publication goes to, the next hop of a call.

Pure: no I/O. Every router floods its own `LinkState`; all routers holding the same states
compute the same broadcast tree per origin, so a publication crosses each router exactly once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any


class BadLinkState(ValueError):
    """A link state announcement that does not have the expected shape."""


@dataclass(frozen=True, slots=True)
class LinkState:
    """What one router announces: the peers it has an outbound link to, its local subscriptions
    (exact and prefix topics) and registrations. (incarnation, version) orders announcements of
    one router: a restart starts a new, higher incarnation."""

    origin: str
    incarnation: int
    version: int
    neighbors: frozenset[str] = frozenset()
    exact: frozenset[str] = frozenset()
    prefix: frozenset[str] = frozenset()
    procedures: frozenset[str] = frozenset()
    _prefix_lengths: tuple[int, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_prefix_lengths", tuple(sorted({len(p) for p in self.prefix})))

    @property
    def order(self) -> tuple[int, int]:
        return (self.incarnation, self.version)

    def wants(self, topic: str) -> bool:
        """A local subscriber of this router matches `topic` (exact, or prefix on any length)."""
        if topic in self.exact:
            return True
        for length in self._prefix_lengths:
            if length > len(topic):
                break
            if topic[:length] in self.prefix:
                return True
        return False

    def to_wire(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "incarnation": self.incarnation,
            "version": self.version,
            "neighbors": sorted(self.neighbors),
            "exact": sorted(self.exact),
            "prefix": sorted(self.prefix),
            "procedures": sorted(self.procedures),
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> LinkState:
        try:
            origin, incarnation, version = data["origin"], data["incarnation"], data["version"]
            if (
                not isinstance(origin, str)
                or type(incarnation) is not int
                or type(version) is not int
            ):
                raise BadLinkState("origin must be a string, incarnation and version integers")
            neighbors, exact, prefix, procedures = (
                _strings(data, name) for name in ("neighbors", "exact", "prefix", "procedures")
            )
        except KeyError as exc:
            raise BadLinkState(f"missing {exc.args[0]!r}") from exc
        return cls(origin, incarnation, version, neighbors, exact, prefix, procedures)


def _strings(data: dict[str, Any], name: str) -> frozenset[str]:
    values = data[name]
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise BadLinkState(f"{name} must be a list of strings")
    return frozenset(values)


@dataclass(frozen=True, slots=True)
class Branch:
    """One child of this router in an origin's broadcast tree, with every router below it."""

    child: str
    below: tuple[str, ...]


class Topology:
    """The link states of a realm's routers as seen by router `me`, and routes computed from
    them (cached until a state changes; at most `max_cached_routes` topics and procedures)."""

    def __init__(self, me: str, max_routers: int = 256, max_cached_routes: int = 4096) -> None:
        self.me = me
        self.max_routers = max_routers
        self.max_cached_routes = max_cached_routes
        self.states: dict[str, LinkState] = {}
        self._branches: dict[str, tuple[Branch, ...]] = {}
        self._fanout: dict[tuple[str, str], tuple[str, ...]] = {}
        self._hops: dict[str, str | None] = {}

    def update(self, state: LinkState) -> bool:
        """Store `state` if it is newer than what is known of its origin; True when stored."""
        known = self.states.get(state.origin)
        if known is not None and known.order >= state.order:
            return False
        if known is None and len(self.states) >= self.max_routers:
            raise BadLinkState(
                f"more than {self.max_routers} routers in the realm: {state.origin} not added"
            )
        self.states[state.origin] = state
        self._branches.clear()
        self._fanout.clear()
        self._hops.clear()
        return True

    def _adjacent(self, router: str) -> list[str]:
        """Routers linked both ways with `router` (each side announces its outbound link)."""
        state = self.states.get(router)
        if state is None:
            return []
        found = []
        for other in state.neighbors:
            back = self.states.get(other)
            if back is not None and router in back.neighbors:
                found.append(other)
        found.sort()
        return found

    def _bfs(self, root: str) -> dict[str, str | None]:
        """Parent of each router reachable from `root` (BFS, neighbours in address order: every
        router computes the same tree)."""
        parent: dict[str, str | None] = {root: None}
        queue = deque([root])
        while queue:
            node = queue.popleft()
            for nxt in self._adjacent(node):
                if nxt not in parent:
                    parent[nxt] = node
                    queue.append(nxt)
        return parent

    def branches(self, origin: str) -> tuple[Branch, ...]:
        """This router's children in `origin`'s broadcast tree."""
        found = self._branches.get(origin)
        if found is not None:
            return found
        parent = self._bfs(origin)
        children: dict[str, list[str]] = {}
        for node, up in parent.items():
            if up is not None:
                children.setdefault(up, []).append(node)
        result = []
        for child in children.get(self.me, []) if self.me in parent else []:
            below: list[str] = []
            stack = [child]
            while stack:
                node = stack.pop()
                below.append(node)
                stack.extend(children.get(node, []))
            result.append(Branch(child, tuple(below)))
        found = tuple(result)
        self._branches[origin] = found
        return found

    def fanout(self, origin: str, topic: str) -> tuple[str, ...]:
        """The neighbours a publication of `origin` on `topic` goes to from here: children in
        the origin's tree with a subscriber somewhere below them."""
        key = (origin, topic)
        found = self._fanout.get(key)
        if found is not None:
            return found
        states = self.states
        found = tuple(
            b.child
            for b in self.branches(origin)
            if any((s := states.get(r)) is not None and s.wants(topic) for r in b.below)
        )
        if len(self._fanout) >= self.max_cached_routes:
            self._fanout.clear()
        self._fanout[key] = found
        return found

    def next_hop(self, procedure: str) -> str | None:
        """The neighbour on the shortest path to the nearest router registering `procedure`
        (ties: the lower address), or None when no reachable router has it."""
        if procedure in self._hops:
            return self._hops[procedure]
        parent = self._bfs(self.me)
        hop: str | None = None
        best: tuple[int, str] | None = None
        for router in parent:
            state = self.states.get(router)
            if router == self.me or state is None or procedure not in state.procedures:
                continue
            path = _path(parent, router)
            rank = (len(path), router)
            if best is None or rank < best:
                best, hop = rank, path[0]
        if len(self._hops) >= self.max_cached_routes:
            self._hops.clear()
        self._hops[procedure] = hop
        return hop

    def edges(self) -> int:
        """Links announced by both of their routers, as this router knows them."""
        return sum(len(self._adjacent(r)) for r in self.states) // 2

    def reachable(self) -> set[str]:
        return set(self._bfs(self.me)) - {self.me}


def _path(parent: dict[str, str | None], target: str) -> list[str]:
    """Routers from just after the root to `target`."""
    path = []
    node: str | None = target
    while node is not None and parent[node] is not None:
        path.append(node)
        node = parent[node]
    path.reverse()
    return path

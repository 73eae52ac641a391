"""Link state and routes (pure): on any connected mesh, following each router's fanout from any
origin delivers a publication once to every router with a subscriber and never twice anywhere;
calls take a shortest path; stale or malformed link states are refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router_core.links import SeenPublications
from router_core.topology import BadLinkState, LinkState, Topology


def _states(
    edges: set[tuple[int, int]],
    size: int,
    wanting: set[int],
    registering: set[int] = frozenset(),  # type: ignore[assignment]
) -> list[LinkState]:
    names = [f"r{i:02d}" for i in range(size)]
    return [
        LinkState(
            names[i],
            1,
            1,
            neighbors=frozenset(names[b] for a, b in edges if a == i)
            | frozenset(names[a] for a, b in edges if b == i),
            exact=frozenset({"t.x"}) if i in wanting else frozenset(),
            procedures=frozenset({"p.x"}) if i in registering else frozenset(),
        )
        for i in range(size)
    ]


def _views(states: list[LinkState]) -> dict[str, Topology]:
    views = {}
    for me in states:
        view = Topology(me.origin)
        for state in states:
            view.update(state)
        views[me.origin] = view
    return views


@st.composite
def connected_meshes(draw: st.DrawFn) -> tuple[int, set[tuple[int, int]]]:
    size = draw(st.integers(2, 8))
    # a random spanning tree keeps it connected, random extra edges make cycles
    edges = {(draw(st.integers(0, i - 1)), i) for i in range(1, size)}
    extra = draw(st.sets(st.tuples(st.integers(0, size - 1), st.integers(0, size - 1))))
    edges |= {(min(a, b), max(a, b)) for a, b in extra if a != b}
    return size, edges


@settings(max_examples=200, deadline=None)
@given(connected_meshes(), st.data())
def test_a_publication_reaches_each_interested_router_exactly_once(
    mesh: tuple[int, set[tuple[int, int]]], data: st.DataObject
) -> None:
    size, edges = mesh
    wanting = data.draw(st.sets(st.integers(0, size - 1)))
    origin = f"r{data.draw(st.integers(0, size - 1)):02d}"
    views = _views(_states(edges, size, wanting))
    received = {name: 0 for name in views}
    queue = [origin]
    while queue:
        at = queue.pop()
        received[at] += 1
        queue.extend(views[at].fanout(origin, "t.x"))
    assert all(n <= 1 for n in received.values())
    for i in wanting:
        assert received[f"r{i:02d}"] == 1
    if not wanting - {int(origin[1:])}:
        assert sum(received.values()) == 1  # nobody else wants it: it never leaves the origin


def test_a_call_takes_the_shortest_path_to_the_nearest_callee() -> None:
    # line r0 - r1 - r2 - r3, callee on r3 and r1: r0 goes to r1 (nearest); from r2, r1 and r3
    # are both one hop away: the lower address wins
    line = {(0, 1), (1, 2), (2, 3)}
    views = _views(_states(line, 4, set(), registering={1, 3}))
    assert views["r00"].next_hop("p.x") == "r01"
    assert views["r02"].next_hop("p.x") == "r01"
    assert views["r01"].next_hop("p.x") == "r02"  # its own registration is the dealer's
    views = _views(_states(line, 4, set(), registering={3}))
    assert views["r00"].next_hop("p.x") == "r01"
    assert views["r00"].next_hop("p.nobody") is None


def test_a_link_counts_only_when_both_sides_announce_it() -> None:
    states = _states({(0, 1)}, 2, {1})
    one_sided = LinkState("r01", 1, 2, neighbors=frozenset(), exact=frozenset({"t.x"}))
    view = Topology("r00")
    view.update(states[0])
    view.update(one_sided)
    assert view.fanout("r00", "t.x") == ()
    assert view.reachable() == set()
    assert view.edges() == 0


def test_an_older_state_is_ignored_and_a_restart_wins() -> None:
    view = Topology("r00")
    assert view.update(LinkState("r01", 5, 3, exact=frozenset({"a"})))
    assert not view.update(LinkState("r01", 5, 2, exact=frozenset({"b"})))
    assert not view.update(LinkState("r01", 5, 3, exact=frozenset({"b"})))
    assert view.states["r01"].exact == {"a"}
    assert view.update(LinkState("r01", 6, 1, exact=frozenset({"c"})))  # a new incarnation
    assert view.states["r01"].exact == {"c"}


def test_malformed_or_too_many_states_are_refused() -> None:
    good = LinkState("r01", 1, 1).to_wire()
    assert LinkState.from_wire(good) == LinkState("r01", 1, 1)
    with pytest.raises(BadLinkState, match="missing 'exact'"):
        LinkState.from_wire({k: v for k, v in good.items() if k != "exact"})
    with pytest.raises(BadLinkState, match="neighbors must be a list of strings"):
        LinkState.from_wire({**good, "neighbors": [1]})
    with pytest.raises(BadLinkState, match="incarnation and version integers"):
        LinkState.from_wire({**good, "version": "2"})
    view = Topology("r00", max_routers=2)
    view.update(LinkState("r00", 1, 1))
    view.update(LinkState("r01", 1, 1))
    with pytest.raises(BadLinkState, match="more than 2 routers"):
        view.update(LinkState("r02", 1, 1))
    assert set(view.states) == {"r00", "r01"}


def test_prefix_interest_matches_on_any_length() -> None:
    state = LinkState("r01", 1, 1, prefix=frozenset({"com.a", "org"}))
    assert state.wants("com.a.b") and state.wants("org.x") and not state.wants("com.b")


@given(st.lists(st.integers(0, 50), max_size=300))
def test_the_duplicate_filter_passes_each_id_once(ids: list[int]) -> None:
    seen = SeenPublications(window=16, max_origins=4)
    passed = [n for n in ids if seen.first_time("o", n)]
    assert len(passed) == len(set(passed))  # never twice
    assert seen.duplicates + seen.stale == len(ids) - len(passed)


def test_the_duplicate_filter_forgets_beyond_its_window_as_stale() -> None:
    seen = SeenPublications(window=4, max_origins=2)
    assert all(seen.first_time("o", n) for n in range(10))
    assert not seen.first_time("o", 3)  # older than the window: counted stale, not delivered
    assert (seen.duplicates, seen.stale) == (0, 1)
    assert not seen.first_time("o", 9)
    assert seen.duplicates == 1

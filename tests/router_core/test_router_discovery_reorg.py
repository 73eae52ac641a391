"""Routers found on chain, the cases test_router_discovery.py leaves out: a reorg on a real anvil
that orphans an announcement (the indexer retracts it, `RealmEndpoints` and the projection's
`realm_routers` fall back to the announcement before it, equal to the contract's list); a full
realm refusing one router more (`RealmFull`); and `RealmEndpoints`' retraction rule as a property."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mesh_chain import rpc
from router_harness import new_key
from test_indexer_projection import project, rows
from test_router_discovery import REALM, _refused, world

from domain.events import Event, LogRetracted, RouterAnnounced, RouterWithdrawn, log_identity
from infra.anvil import Anvil
from infra.broker import Broker
from router_core.discovery import (
    MAX_ROUTERS,
    Endpoint,
    RealmEndpoints,
    announce,
    read_endpoints,
    withdraw,
)
from settlement.merkle import realm_id


def fold(events: list[Event]) -> RealmEndpoints:
    """The log's events into RealmEndpoints, as the router's follower does: a LogRetracted
    undoes the event of the log it names."""
    book = RealmEndpoints()
    seen: dict[tuple[int, str, int], Event] = {}
    for event in events:
        ident = log_identity(event)
        if isinstance(event, LogRetracted):
            assert ident in seen, f"retraction of a log never emitted: {ident}"
            assert book.retract(seen.pop(ident))
        elif ident is not None:
            seen[ident] = event
            book.apply(event)
    return book


@pytest.mark.integration
def test_a_reorged_out_announcement_is_retracted_and_the_one_before_stands(
    fresh_anvil: Anvil, fresh_broker: Broker, tmp_path: Path
) -> None:
    w = world(fresh_anvil, fresh_broker, tmp_path, operators=2)
    w3, registry = w.mesh.w3, w.registry
    a, b = w.operators
    announce(w3, registry, REALM, w.url(0), a.private)
    announce(w3, registry, REALM, w.url(1), b.private)
    w.sync()
    # b moves its router; the block of that announcement is then reorganized away
    announce(w3, registry, REALM, "ws://127.0.0.1:1/ws", b.private)
    w.sync()
    moved_block = w.mesh.head()
    rpc(w3, "anvil_reorg", 1, [])
    w.mesh.mine(2)
    w.sync()
    events = w.harness.events()

    retracted = [e for e in events if isinstance(e, LogRetracted)]
    assert [(e.retracted, e.block) for e in retracted] == [("RouterAnnounced", moved_block)]
    found = [e for e in events if isinstance(e, RouterAnnounced | RouterWithdrawn)]
    assert [e.operator for e in found] == [a.address, b.address, b.address]
    on_chain = read_endpoints(w3, registry, REALM)
    assert sorted(on_chain, key=lambda e: e.operator.lower()) == [
        Endpoint(x.address, url)
        for x, url in sorted(
            [(a, w.url(0)), (b, w.url(1))], key=lambda pair: pair[0].address.lower()
        )
    ]
    assert fold(events).endpoints(REALM) == sorted(on_chain, key=lambda e: e.operator.lower())

    service = project(fresh_broker, tmp_path / "ledger.duckdb", [w.harness.signer.address])
    assert rows(service, "SELECT reason, records FROM rejected") == []
    assert sorted(rows(service, "SELECT operator, url FROM realm_routers")) == sorted(
        [(e.operator, e.url) for e in on_chain]
    )
    service.close()


@pytest.mark.integration
def test_a_full_realm_refuses_one_router_more(
    fresh_anvil: Anvil, fresh_broker: Broker, tmp_path: Path
) -> None:
    w = world(fresh_anvil, fresh_broker, tmp_path, operators=MAX_ROUTERS + 1)
    w3, registry = w.mesh.w3, w.registry
    for i, key in enumerate(w.operators[:MAX_ROUTERS]):
        announce(w3, registry, REALM, f"ws://127.0.0.1:{10_000 + i}/ws", key.private)
    last = w.operators[MAX_ROUTERS]
    rid = "0x" + realm_id(REALM).hex()
    reason = _refused(lambda: announce(w3, registry, REALM, "ws://127.0.0.1:9/ws", last.private))
    assert reason == f"RealmFull({rid}, {MAX_ROUTERS})"
    assert len(read_endpoints(w3, registry, REALM)) == MAX_ROUTERS  # nothing added
    # a withdrawal makes room again
    withdraw(w3, registry, REALM, w.operators[0].private)
    announce(w3, registry, REALM, "ws://127.0.0.1:9/ws", last.private)
    listed = {e.operator for e in read_endpoints(w3, registry, REALM)}
    assert len(listed) == MAX_ROUTERS
    assert last.address in listed and w.operators[0].address not in listed


OPERATORS = [new_key().address for _ in range(3)]


def _change(i: int, op: int, announced: bool) -> RouterAnnounced | RouterWithdrawn:
    ids = {"chain_id": 1, "block": i, "block_hash": f"0x{i:064x}", "log_index": 0, "tx_hash": "0x"}
    if announced:
        return RouterAnnounced(
            realm=REALM, operator=OPERATORS[op], url=f"ws://h{i}/ws", stake=1, **ids
        )
    return RouterWithdrawn(realm=REALM, operator=OPERATORS[op], **ids)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2), st.booleans(), st.booleans()), min_size=1, max_size=30),
    st.randoms(use_true_random=False),
)
def test_retracting_changes_equals_never_having_them(
    steps: list[tuple[int, bool, bool]], order: object
) -> None:
    """Whatever order the changes and retractions come in, the list is the one of the changes
    that were not retracted: per operator, its last change in chain order."""
    changes = [_change(i, op, announced) for i, (op, announced, _) in enumerate(steps)]
    gone = [c for c, (_, _, retracted) in zip(changes, steps, strict=True) if retracted]
    arrival = list(changes)
    order.shuffle(arrival)  # type: ignore[attr-defined]
    book = RealmEndpoints()
    for change in arrival:
        book.apply(change)
        book.apply(change)  # a re-read copy changes nothing
    for change in gone:
        assert book.retract(change)
        assert not book.retract(change)  # only once
    kept = [c for c in changes if c not in gone]
    last: dict[str, RouterAnnounced | RouterWithdrawn] = {}
    for change in kept:
        last[change.operator] = change
    expected = sorted(
        (Endpoint(op, c.url) for op, c in last.items() if isinstance(c, RouterAnnounced)),
        key=lambda e: e.operator.lower(),
    )
    assert book.endpoints(REALM) == expected

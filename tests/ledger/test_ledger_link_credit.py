"""A message forwarded over a router link earns routing credit once: the sending router's
`link_out` counts, the receiving router's `link_in` of the same message does not (real broker)."""

from __future__ import annotations

from pathlib import Path

import pytest
from ledger_world import World, caught_up, run_until, table

from domain.envelope import MeteredBuilder, seal
from infra.broker import Broker

pytestmark = pytest.mark.integration


def test_link_in_earns_nothing_and_link_out_earns_once(
    fresh_broker: Broker, tmp_path: Path
) -> None:
    # a broker of its own: on the session's, other tests' records held this one's projector back
    world = World(fresh_broker.bootstrap, tmp_path)
    sender, receiver = world.router, world.crafted
    # the same 4 messages: sent over the link by one router, received by the other, which
    # delivers each to 2 local subscribers
    for signer, rows in (
        (sender, [("link_out", 4), ("event", 3)]),
        (receiver, [("link_in", 4), ("event", 8)]),
    ):
        cols = MeteredBuilder()
        for kind, n in rows:
            for _ in range(n):
                cols.add(world.user, "0xpeer", kind, "com.example.t", 60, 15)
        wire, _ = seal(signer, 1, "0x" + "00" * 32, "r1", metered=cols.build())
        world.send_raw(wire)
    service = world.service()
    run_until(
        service,
        lambda s: (
            caught_up(s) and all(s.projector.sources.get(k.address) for k in (sender, receiver))
        ),
    )
    # only these two routers' rows (the world's own setup has others)
    ours = f"('{sender.address}', '{receiver.address}')"
    credit = dict(
        table(
            service,
            "SELECT account, sum(messages) FROM usage_records "
            f"WHERE payee_class = 'router' AND account IN {ours} GROUP BY account",
        )
    )
    assert credit == {sender.address: 7, receiver.address: 8}
    blocks = dict(
        table(
            service,
            f"SELECT source, sum(messages) FROM usage_blocks WHERE source IN {ours} GROUP BY source",
        )
    )
    assert blocks == {sender.address: 7, receiver.address: 12}  # metered: every message of both

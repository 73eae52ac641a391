"""The audit of a running ledger: a record that waits holds its partition's offset back while
later records are applied ahead of it; the audit replays exactly those, so a live projector
with a waiting record still matches its replay."""

from __future__ import annotations

from pathlib import Path

from ledger_world import World, run_until, table

from domain.envelope import ZERO_HASH
from infra.broker import Broker
from ledger.audit import LiveSide, run_audit


def test_a_live_ledger_with_a_waiting_record_matches_its_replay(
    fresh_broker: Broker, tmp_path: Path
) -> None:
    world = World(fresh_broker.bootstrap, tmp_path, head=100)
    # the crafted router reports block 150 while the chain is known to 100: its record waits;
    # the other router's record after it (block 50) is applied ahead of it
    world.send_raw(world.crafted_metered(3, block=150))
    world.send_raw(world.crafted_metered(2, block=50, signer=world.router, seq=1, prev=ZERO_HASH))
    service = world.service()
    try:
        run_until(service, lambda s: world.router.address in s.projector.sources)
        service.projector.commit()
        assert service.progress.waits == {"chain_behind": 1}
        assert table(service, "SELECT count(*) FROM applied_ahead") == [(1,)]
        assert table(service, "SELECT sum(messages) FROM usage_blocks") == [(2,)]
        url = f"http://127.0.0.1:{service.start_query_server()}"

        report = run_audit(fresh_broker.bootstrap, world.trust, LiveSide(url=url), tmp_path / "a")
    finally:
        service.close()

    assert report.diffs == [] and report.matches and report.exit_code == 0
    assert report.gaps == []

"""The projector's /metrics and /health on its query endpoint, against a real broker: counters
follow the records applied and rejected, lag shows fetched-but-undecided records, and /health
fails once the broker is stopped."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from ledger_world import World, caught_up, run_until

from infra.broker import Broker
from infra.metrics import read_health, scrape
from ledger.simulate import emitter, heartbeat, skewed_traffic

pytestmark = pytest.mark.integration


def health(url: str) -> tuple[int, dict[str, Any]]:
    return read_health(url)


def test_projector_metrics_follow_the_log_and_health_follows_the_broker(
    fresh_broker: Broker, tmp_path: Path
) -> None:
    world = World(fresh_broker.bootstrap, tmp_path)
    router = emitter(world.router, fresh_broker.bootstrap, tmp_path / "spool")
    rng = random.Random(7)
    metered = skewed_traffic(router, "r1", [world.user], [], ["t"], range(1, 4), 10, rng)
    heartbeat(router, "r1", 3)
    router.flush()
    world.send_raw(b"\x00garbage")  # undecodable: rejected with its reason
    service = world.service(query_port=0)
    url = f"http://127.0.0.1:{service.start_query_server()}"
    try:
        run_until(service, lambda s: caught_up(s) and s.progress.rejected == 1)
        first = scrape(url)
        # the world's indexer emitted 7 events (2 realms, 4 stakes, a head); the router its
        # metered messages and a watermark
        assert first[("meshledger_projector_events_applied_total", ())] == 7 + metered + 1
        assert first[("meshledger_projector_records_applied_total", ())] >= 2
        assert (
            first[("meshledger_projector_rejected_records_total", (("reason", "undecodable"),))]
            == 1
        )
        assert first[("meshledger_projector_commit_seconds_count", ())] >= 1
        # its dead letter was acknowledged before the commit, without a wait on a live broker
        assert first[("meshledger_projector_dead_letter_stalls_total", ())] == 0
        assert first[("meshledger_projector_dead_letters_failed_total", ())] == 0
        assert first[("meshledger_projector_chain_head", ())] == 1000
        lags = {k: v for k, v in first.items() if k[0] == "meshledger_projector_lag_records"}
        assert lags and set(lags.values()) == {0}

        more = skewed_traffic(router, "r1", [world.user], [], ["t"], range(4, 6), 10, rng)
        heartbeat(router, "r1", 5)
        router.flush()
        for _ in range(100):  # fetched, not yet decided: the usage partition lags
            service._fetch()
            if any(v > 0 for k, v in scrape(url).items() if k[0].endswith("lag_records")):
                break
        else:
            pytest.fail("no lag shown for fetched, undecided records")
        run_until(service, caught_up)
        second = scrape(url)
        assert (
            second[("meshledger_projector_events_applied_total", ())] == 7 + metered + 1 + more + 1
        )
        assert (
            second[("meshledger_projector_records_applied_total", ())]
            > first[("meshledger_projector_records_applied_total", ())]
        )
        assert {v for k, v in second.items() if k[0].endswith("lag_records")} == {0}

        status, body = health(url)
        assert (status, body["checks"]) == (200, {"broker": "ok", "loop": "ok"})

        def crash(_service: Any) -> bool:
            raise RuntimeError("a bug in a pass")

        with pytest.raises(RuntimeError, match="a bug in a pass"):
            service.run(until=crash)
        status, body = health(url)
        assert status == 503
        assert body["checks"] == {
            "broker": "ok",
            "loop": "the consume loop stopped: RuntimeError('a bug in a pass')",
        }
        run_until(service, caught_up)  # running again: healthy again
        assert health(url)[0] == 200
        assert fresh_broker.alive()
        fresh_broker.stop_tansu()
        status, body = health(url)
        assert status == 503 and body["status"] == "unhealthy"
        assert body["checks"]["broker"].startswith(f"broker {fresh_broker.bootstrap} unreachable")
    finally:
        router.close(timeout_s=1)
        service.close()

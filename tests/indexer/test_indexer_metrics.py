"""The indexer's /metrics and /health (`indexer run --metrics`) on a real anvil and broker: head,
emitted block, lag and events follow the sync, a reorg above the confirmation depth is counted,
and /health fails once the chain is stopped."""

from __future__ import annotations

import threading

import pytest
from indexer_harness import Harness
from mesh_chain import ZERO, rpc

from indexer.cli import serve_indexer_metrics
from indexer.service import SyncConfig
from infra.metrics import read_health, scrape

pytestmark = pytest.mark.integration


def samples(url: str) -> dict[str, float]:
    """The unlabelled samples of /metrics, by name."""
    return {name: value for (name, labels), value in scrape(url).items() if not labels}


def health(url: str) -> tuple[int, dict[str, str]]:
    status, body = read_health(url)
    return status, body["checks"]


def test_indexer_metrics_follow_sync_and_reorgs_and_health_follows_the_chain(
    harness: Harness,
) -> None:
    mesh = harness.mesh
    harness.sync = SyncConfig(confirmations=2, poll_interval_s=0.05)
    ix = harness.indexer()
    server = serve_indexer_metrics(ix, mesh.anvil.url, harness.broker.bootstrap, "127.0.0.1:0")
    try:
        assert "meshledger_indexer_emitted_block" not in samples(server.url)  # not opened yet
        mesh.register("r", mesh.accounts[1])
        for i in range(6):
            mesh.stake("r", mesh.accounts[3 + i % 3], "user", ZERO, 10 + i)
        target = mesh.head() - 2
        ix.run(threading.Event(), until_block=target)
        first = samples(server.url)
        assert first["meshledger_indexer_emitted_block"] == target
        assert first["meshledger_indexer_head_block"] == mesh.head()
        assert first["meshledger_indexer_lag_blocks"] == mesh.head() - target
        assert first["meshledger_indexer_events_emitted_total"] >= 7  # realm, 6 stakes, heads
        assert first["meshledger_indexer_reorgs_total"] == 0
        assert first["meshledger_indexer_emitter_sealed_events_total"] >= 7

        rpc(mesh.w3, "anvil_reorg", 4, [])  # deeper than the confirmations: logs were emitted
        mesh.mine(3)
        ix.run(threading.Event(), until_block=mesh.head() - 2)
        second = samples(server.url)
        assert second["meshledger_indexer_reorgs_total"] == 1
        assert second["meshledger_indexer_last_reorg_depth"] >= 2
        assert second["meshledger_indexer_emitted_block"] == mesh.head() - 2

        assert health(server.url) == (200, {"chain": "ok", "broker": "ok"})
        mesh.anvil.stop()
        status, checks = health(server.url)
        assert status == 503 and checks["broker"] == "ok"
        assert checks["chain"].startswith(f"chain {mesh.anvil.url} unreachable")
    finally:
        server.close()

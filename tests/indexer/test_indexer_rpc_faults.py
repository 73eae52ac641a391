"""RPC faults between the indexer and a real anvil: a node that refuses wide log ranges, lags
behind, goes down for a while and answers too slowly. The indexer waits and resumes, never emits
a block the node has not shown it, and in the end every log is emitted exactly once."""

from __future__ import annotations

import threading
import time

import pytest
from faulty_rpc import FaultyRpc
from indexer_harness import Harness, wait_for
from mesh_chain import Burst, rpc

from domain.events import ChainHead, log_identity
from indexer.rpc import JsonRpc, RpcSource
from indexer.service import SyncConfig

pytestmark = pytest.mark.integration


def test_the_indexer_waits_out_faults_and_resumes(harness: Harness) -> None:
    mesh = harness.mesh
    burst = Burst(mesh)
    for _ in range(20):
        burst.send(5)
    proxy = FaultyRpc(mesh.anvil.url)
    proxy.max_range_blocks = 3
    proxy.lag_blocks = 8
    harness.sync = SyncConfig(confirmations=0, poll_interval_s=0.05, retry_backoff_max_s=0.2)
    source = RpcSource(JsonRpc(proxy.url, timeout_s=0.5), mesh.contracts, 42161, span_blocks=50)
    ix = harness.indexer(source)
    stop = threading.Event()
    runner = threading.Thread(target=ix.run, args=(stop,))
    runner.start()
    try:
        # behind: emits up to what the node shows, and no further
        lagging_head = mesh.head() - 8
        wait_for(
            lambda: ix.cp is not None and ix.checkpoint.cursor_block == lagging_head,
            30,
            "sync to the lagging head",
        )
        time.sleep(0.5)
        assert ix.checkpoint.cursor_block == lagging_head
        assert proxy.too_wide_answers > 0 and source.span_blocks <= 2 * proxy.max_range_blocks

        # down for a while: no progress, no crash; then it resumes
        proxy.stop()
        proxy.lag_blocks = 0
        for _ in range(3):
            burst.send(5)
        time.sleep(1.0)
        assert ix.checkpoint.cursor_block == lagging_head and runner.is_alive()
        proxy.start()
        wait_for(lambda: ix.checkpoint.cursor_block == mesh.head(), 30, "resume after the outage")

        # too slow to answer (client timeout 0.5 s): retried until the node is quick again
        proxy.delay_s = 1.0
        burst.send(5)
        time.sleep(1.5)
        assert runner.is_alive()
        proxy.delay_s = 0.0
        wait_for(lambda: ix.checkpoint.cursor_block == mesh.head(), 30, "resume after timeouts")
    finally:
        stop.set()
        runner.join(timeout=30)
        proxy.stop()
    head = mesh.head()
    events = harness.events()
    heads = [e.block for e in events if isinstance(e, ChainHead)]
    assert heads == sorted(heads) and heads[-1] == head
    emitted = [log_identity(e) for e in events if log_identity(e) is not None]
    logs = rpc(
        mesh.w3,
        "eth_getLogs",
        {"fromBlock": "0x0", "toBlock": hex(head), "address": [mesh.contracts.staking]},
    )
    staked = {(42161, lg["blockHash"], int(lg["logIndex"], 16)) for lg in logs}
    assert len(emitted) == len(set(emitted)) and staked <= set(emitted)

"""The RPC source over WebSocket on a real anvil: backfill through ws:// batches, then live sync
woken by the `newHeads` subscription (the poll interval is set far beyond the test's deadline, so
only the subscription can bring a new block in time)."""

from __future__ import annotations

import threading
import time

import pytest
from indexer_harness import Harness, wait_for

from domain.events import REALM_TARGET, ROLES, ChainHead, StakeChanged
from indexer.rpc import HeadWaiter

pytestmark = pytest.mark.integration

#: far longer than the test waits for a block: a poll could never be in time
POLL_S = 120.0


def test_websocket_backfill_then_live_sync_by_new_heads(harness: Harness) -> None:
    mesh = harness.mesh
    ws_url = mesh.anvil.url.replace("http://", "ws://")
    assert ws_url.startswith("ws://127.0.0.1:")
    keeper, staker = mesh.accounts[1], mesh.accounts[2]
    mesh.register("realm.ws", keeper)
    mesh.stake("realm.ws", staker, ROLES[0], REALM_TARGET, 100)
    backfilled_to = mesh.head()

    waiter = HeadWaiter(ws_url, poll_interval_s=POLL_S)
    woken = threading.Event()

    def wait_for_head(stop: threading.Event) -> None:
        waiter.wait(stop)
        woken.set()

    ix = harness.indexer(harness.source(ws_url), wait_for_head=wait_for_head)
    stop = threading.Event()
    runner = threading.Thread(target=ix.run, args=(stop,), daemon=True)
    runner.start()
    try:
        wait_for(lambda: ix.cp is not None, 30, "the indexer opened")
        wait_for(lambda: ix.checkpoint.cursor_block >= backfilled_to, 60, "the ws backfill")
        wait_for(lambda: waiter._conn is not None, 30, "the newHeads subscription opened")
        time.sleep(0.5)  # the subscription's confirmation arrives before the block we mine

        started = time.monotonic()
        mesh.stake("realm.ws", staker, ROLES[0], REALM_TARGET, 250)  # mines a block
        live_block = mesh.head()
        assert live_block > backfilled_to
        wait_for(lambda: ix.checkpoint.cursor_block >= live_block, 30, "the live block")
        assert time.monotonic() - started < POLL_S / 4, "the block came by polling, not newHeads"
        assert woken.is_set()
    finally:
        stop.set()
        waiter.close()
        runner.join(timeout=POLL_S + 30)
    assert not runner.is_alive(), "the indexer did not stop"

    events = harness.events()
    stakes = [e.amount for e in events if isinstance(e, StakeChanged) and e.realm == "realm.ws"]
    assert stakes == [100, 350]  # each log once, backfilled then live; amount is the new total
    heads = [e.block for e in events if isinstance(e, ChainHead)]
    assert heads and heads[-1] >= live_block
    assert mesh.position("realm.ws", staker, ROLES[0], "0x" + "00" * 20) == 350

"""SWAP storage never runs on the router's loop, and a cheque is queued for cash-out before it is
credited: a full cash-out queue refuses the cheque with nothing credited."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest
from router_harness import PRICE, REALM, Harness, run, until
from test_router_swap import indebted, listener, refused, signed_claim

from domain.events import ChequeReceived, ChequeRejected
from domain.swap import ChequeClaim
from router_core.cashout import CashoutPolicy, CashoutQueue

pytestmark = pytest.mark.integration


def test_a_locked_account_store_does_not_stall_the_loop(harness: Harness) -> None:
    """Another writer holds the SWAP database locked (SQLite waits up to its lock timeout, 10 s):
    the router keeps routing and its timers fire on time; the charges are recorded once the lock
    is released, and a restarted router finds them."""
    release = threading.Event()
    locked = threading.Event()

    def hold_lock() -> None:
        db = sqlite3.connect(harness.tmp_path / "swap.sqlite", isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        locked.set()
        release.wait(30)
        db.execute("COMMIT")
        db.close()

    async def body() -> None:
        router = await harness.start()
        got = await listener(harness, router)
        key = harness.peer()
        peer = await harness.connect(router, key, auto_pay=False)
        holder = threading.Thread(target=hold_lock)
        holder.start()
        assert await asyncio.to_thread(locked.wait, 10)
        loop = asyncio.get_running_loop()
        for i in range(5):
            peer.publish("com.example.ticks", i)
        for _ in range(10):  # ten flush intervals (50 ms) pass while the store is locked
            started = loop.time()
            await asyncio.sleep(0.05)
            assert loop.time() - started < 1.0  # a save on the loop would stall it ~10 s
        await until(lambda: len(got) == 5, "messages routed while the store is locked")
        assert router.swap is not None and router.swap.debt(REALM, key.address) == 5 * PRICE
        release.set()
        await asyncio.to_thread(holder.join, 30)
        await router.stop()
        restarted = await harness.start()
        assert restarted.swap is not None
        assert restarted.swap.debt(REALM, key.address) == 5 * PRICE  # recorded after the lock
        await restarted.stop()

    run(body)


def test_full_cash_out_queue_refuses_the_cheque_before_crediting(paying: Harness) -> None:
    harness = paying
    assert harness.chain is not None
    queue = CashoutQueue(
        harness.tmp_path / "cashout.sqlite",
        CashoutPolicy(min_batch_value=10**30, max_age_s=3600, max_pending_cheques=1),
    )
    other = ChequeClaim(harness.chain_id, "0x" + "77" * 20, harness.router_key.address, 5, "0x")
    queue.add(REALM, "0x" + "88" * 20, other)  # the one cheque the queue may hold

    async def body() -> None:
        router = await harness.start(on_cheque=queue)
        await listener(harness, router)
        key = harness.peer()
        peer = await indebted(harness, router, key, 6)
        book = harness.chain.chequebook(key)  # type: ignore[union-attr]
        wire = signed_claim(
            key.private, harness.chain_id, book, harness.router_key.address, 6 * PRICE
        )
        assert await refused(peer, wire) == "cashout_full"
        swap = router.swap
        assert swap is not None
        assert swap.debt(REALM, key.address) == 6 * PRICE  # nothing credited
        assert swap.last_cumulative(REALM, key.address) == 0
        assert swap.chequebook_cumulative(harness.chain_id, book) == 0
        assert harness.sink.of_type(ChequeReceived) == []
        [rejection] = harness.sink.of_type(ChequeRejected)
        assert rejection.reason == "cashout_full"
        assert [c.cumulative for c in queue.pending()] == [5]  # the queued cheque kept
        # room again (the other cheque was cashed): the same cheque is accepted and queued
        queue.record([_Cashed(queue.pending()[0])])
        accepted = await peer.call("mesh.swap.cheque", **wire)
        assert accepted["accepted"] is True and swap.debt(REALM, key.address) == 0
        assert [c.cumulative for c in queue.pending()] == [6 * PRICE]
        await router.stop()

    try:
        run(body)
    finally:
        queue.close()


class _Cashed:
    """A cash-out outcome: the chain paid the cheque in full."""

    def __init__(self, cheque: object) -> None:
        self.cheque = cheque
        self.paid_out = cheque.cumulative  # type: ignore[attr-defined]
        self.refused = ""

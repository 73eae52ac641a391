"""Cash-out batching: threshold and age policy, cumulative replacement, persistence, failures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from domain.swap import ChequeClaim
from router_core.cashout import CashoutPolicy, CashoutQueue, QueuedCheque
from settlement.cashout import CashResult

BENEFICIARY = "0x" + "aa" * 20


def cheque(book: int, cumulative: int) -> ChequeClaim:
    return ChequeClaim(1, "0x" + f"{book:040x}", BENEFICIARY, cumulative, "0x" + "00" * 65)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sink:
    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[tuple[str, int, int]]] = []
        self.fail = fail

    def cash_out(self, batch: Sequence[QueuedCheque]) -> list[CashResult[QueuedCheque]]:
        if self.fail:
            raise RuntimeError("chain unavailable")
        self.batches.append([(c.chequebook, c.cumulative, c.value) for c in batch])
        return [CashResult(c, c.cumulative) for c in batch]


def test_batch_waits_for_the_value_threshold(tmp_path: Path) -> None:
    clock = Clock()
    queue = CashoutQueue(
        tmp_path / "q.sqlite", CashoutPolicy(min_batch_value=100, max_age_s=3600), clock
    )
    sink = Sink()
    queue.add("r", "p1", cheque(1, 40))
    queue.add("r", "p2", cheque(2, 30))
    assert queue.run_once(sink) == 0 and sink.batches == []
    queue.add("r", "p1", cheque(1, 70))  # replaces the older cheque of the same chequebook
    assert queue.run_once(sink) == 100
    assert sorted(sink.batches[0]) == [("0x" + f"{1:040x}", 70, 70), ("0x" + f"{2:040x}", 30, 30)]
    queue.add("r", "p1", cheque(1, 90))  # only the 20 it adds counts now
    assert [c.value for c in queue.pending()] == [20]


def test_batch_goes_out_when_the_oldest_cheque_is_old_enough(tmp_path: Path) -> None:
    clock = Clock()
    queue = CashoutQueue(
        tmp_path / "q.sqlite", CashoutPolicy(min_batch_value=10**6, max_age_s=60), clock
    )
    sink = Sink()
    queue.add("r", "p1", cheque(1, 5))
    clock.now += 59
    assert queue.run_once(sink) == 0
    clock.now += 2
    assert queue.run_once(sink) == 5


def test_queue_survives_a_restart_and_a_failed_cash_out(tmp_path: Path) -> None:
    clock = Clock()
    policy = CashoutPolicy(min_batch_value=10, max_age_s=3600)
    queue = CashoutQueue(tmp_path / "q.sqlite", policy, clock)
    queue.add("r", "p1", cheque(1, 2**100))  # beyond 64-bit integers
    with pytest.raises(RuntimeError, match="chain unavailable"):
        queue.run_once(Sink(fail=True))
    assert [c.cumulative for c in queue.pending()] == [2**100]  # the failed batch stays queued
    queue.close()
    reopened = CashoutQueue(tmp_path / "q.sqlite", policy, clock)
    sink = Sink()
    assert reopened.run_once(sink) == 2**100
    assert reopened.pending() == []
    reopened.add("r", "p1", cheque(1, 2**100))  # a replayed cheque adds nothing
    assert reopened.pending() == []

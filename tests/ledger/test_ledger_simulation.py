"""Deterministic simulation of the projector (issue 9's suite): several partitions, duplicated and
late records, a gap, partitions delivered with seeded chaos, and crashes at every commit point
(before, inside and after the transaction). However the log is delivered and however often the
projector dies, it ends with exactly the tables of the live run that wrote the log — what the
audit demands. Seeds: FAULT_SEEDS (comma-separated); `make fault` runs many."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sim_log import ChaosConsumer, SimEmitter, SimLog, Workload, workload

from ledger import store
from ledger.service import LedgerService, ServiceConfig, trust_from

SEEDS = [int(s) for s in os.environ.get("FAULT_SEEDS", "0,1,2,3").split(",")]
PARTITIONS = 3
MAX_PASSES = 20_000


class Crash(Exception):
    """The projector's process dies here."""


def _config(w: Workload, db: Path, commit_every: int) -> ServiceConfig:
    return ServiceConfig(
        bootstrap="simulated",
        db_path=db,
        trust=trust_from([w.ledger.address], [w.indexer.address], []),
        grace_blocks=2,
        gap_timeout_ms=0,
        inactive_after_blocks=None,
        commit_every_records=commit_every,
        query_port=None,
        dead_letters=False,
    )


def _bounded(check: Callable[[LedgerService], bool]) -> Callable[[LedgerService], bool]:
    passes = 0

    def until(service: LedgerService) -> bool:
        nonlocal passes
        passes += 1
        assert passes < MAX_PASSES, f"no end in sight: {service.progress}"
        return check(service)

    return until


def _drained(service: LedgerService) -> bool:
    return service.idle_polls >= 3 and service.caught_up() and not any(service._buffers.values())


def _settled(service: LedgerService) -> bool:
    projector = service.projector
    return (
        _drained(service)
        and not projector.due_epochs(service.config.grace_blocks)
        and not projector.unconfirmed_payouts()
    )


def live_run(seed: int, tmp: Path) -> tuple[SimLog, Workload, dict[str, Any], int]:
    """The live projector with its closer over the seed's workload; the closer's events join the
    log. Returns the log, the workload, the live tables' fingerprints and the epochs closed."""
    rng = random.Random(seed)
    w = workload(rng)
    log = SimLog(PARTITIONS)
    for record in w.records:
        log.append(*record)
    service = LedgerService(_config(w, tmp / "live.duckdb", 64), emitter=SimEmitter(log, w.ledger))
    service.connect(ChaosConsumer(log))
    service.run(until=_bounded(_settled))
    service.projector.commit()
    prints = {t: store.fingerprint(service.con, t) for t in store.AUDITED_TABLES}
    closed = sum(book.closed_epoch + 1 for book in service.projector.realms.values())
    service.close()
    return log, w, prints, closed


def chaos_replay(
    log: SimLog,
    w: Workload,
    db: Path,
    rng: random.Random | None,
    crashes: dict[int, str],
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[dict[str, Any], int]:
    """Replay the log into `db`, crashing at the given commit numbers ("before", "inside" or
    "after" the transaction) and restarting from the file each time. Returns the tables'
    fingerprints and how many commits were attempted."""
    commits = 0
    real_commit = store.commit

    def commit(con: Any, batch: store.Batch) -> None:
        nonlocal commits
        commits += 1
        kind = crashes.get(commits)
        if kind == "before":
            raise Crash
        if kind == "inside":
            con.execute("BEGIN TRANSACTION")
            store._write(con, batch)
            raise Crash  # the open transaction dies with the connection
        real_commit(con, batch)
        if kind == "after":
            raise Crash

    monkeypatch.setattr(store, "commit", commit)
    restarts = 0
    while True:
        service = LedgerService(_config(w, db, rng.choice([1, 5, 64]) if rng else 7))
        service.connect(ChaosConsumer(log, rng))
        try:
            service.run(until=_bounded(_drained))
            service.projector.commit()
        except Crash:
            service.con.close()
            restarts += 1
            assert restarts <= len(crashes)
            continue
        break
    assert restarts == len([k for k in crashes if k <= commits])
    prints = {t: store.fingerprint(service.con, t) for t in store.AUDITED_TABLES}
    service.close()
    return prints, commits


def _differing(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [t for t in store.AUDITED_TABLES if a[t] != b[t]]


@pytest.mark.parametrize("seed", SEEDS)
def test_any_delivery_and_any_crashes_end_in_the_live_tables(
    seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, w, live, closed = live_run(seed, tmp_path)
    assert closed >= 6  # the closer really closed epochs of both realms
    assert live["seq_gaps"][0] == 1  # the record never sent
    assert live["rejected"][0] >= 2  # reasons: at least the forgery and the unstaked router
    rng = random.Random(seed * 7919 + 1)
    for run in range(3):
        crashes = {rng.randint(1, 40): rng.choice(["before", "inside", "after"]) for _ in range(3)}
        prints, _ = chaos_replay(
            log, w, tmp_path / f"replay{run}.duckdb", rng, crashes, monkeypatch
        )
        assert _differing(prints, live) == [], f"seed {seed} run {run} crashes {crashes}"


def test_a_crash_at_every_commit_point_recovers_the_same_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, w, live, _ = live_run(1000, tmp_path)
    prints, commits = chaos_replay(log, w, tmp_path / "clean.duckdb", None, {}, monkeypatch)
    assert _differing(prints, live) == []
    assert commits >= 10
    kinds = ("before", "inside", "after")
    for k in range(1, commits + 1):
        db = tmp_path / f"crash{k}.duckdb"
        prints, _ = chaos_replay(log, w, db, None, {k: kinds[k % 3]}, monkeypatch)
        assert _differing(prints, live) == [], f"crash {kinds[k % 3]} commit {k}"
        db.unlink()

"""The audit's contract under the projector simulation: at any commit of a live projector fed with
chaotic delivery (parked records woken across partitions, mid-pass commits), its `snapshot`
(offsets, applied-ahead offsets, fingerprints) names exactly the records its tables reflect, so a
replay to those targets plus those ahead offsets ends in the same tables — as `run_audit` does it.
Seeds: FAULT_SEEDS (comma-separated) or MESHLEDGER_SIM_SEEDS (a count, seeds 0..N-1); the default
holds seeds that failed before the fixes of commit "audit: a replay to any live snapshot…"."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest
from sim_log import ChaosConsumer, SimEmitter, SimLog, workload
from test_ledger_simulation import PARTITIONS, _bounded, _config, _settled

from ledger import store
from ledger.query import snapshot
from ledger.service import LedgerService, replay

if "MESHLEDGER_SIM_SEEDS" in os.environ:
    SEEDS = list(range(int(os.environ["MESHLEDGER_SIM_SEEDS"])))
else:
    SEEDS = [int(s) for s in os.environ.get("FAULT_SEEDS", "0,18,27,28,35,38").split(",")]
#: snapshots taken (at random commits) per live run, each replayed
SNAPSHOTS = 4


def _live_with_snapshots(
    seed: int, tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[SimLog, Any, list[dict[str, Any]], int]:
    """A live run with chaotic delivery; after random commits the audit's snapshot of it."""
    rng = random.Random(seed)
    w = workload(rng)
    log = SimLog(PARTITIONS)
    for record in w.records:
        log.append(*record)
    chaos = random.Random(seed * 104729 + 7)
    commit_every = chaos.choice([1, 3, 8, 64])
    service = LedgerService(
        _config(w, tmp / "live.duckdb", commit_every), emitter=SimEmitter(log, w.ledger)
    )
    snaps: list[dict[str, Any]] = []
    commits = 0
    real_commit = store.commit

    def commit(con: Any, batch: store.Batch) -> None:
        nonlocal commits
        real_commit(con, batch)
        commits += 1
        if chaos.random() < 0.25:
            snaps.append(snapshot(con))  # as the query endpoint serves it, between commits

    monkeypatch.setattr(store, "commit", commit)
    service.connect(ChaosConsumer(log, chaos))
    service.run(until=_bounded(_settled))
    service.projector.commit()
    monkeypatch.setattr(store, "commit", real_commit)
    service.close()
    picked = chaos.sample(snaps, min(SNAPSHOTS, len(snaps)))
    return log, w, picked, commits


def _replay_prints(log: SimLog, w: Any, snap: dict[str, Any], db: Path, seed: int) -> Any:
    """`run_audit`'s replay of a snapshot, through a chaotic consumer of the same log."""
    targets = {(t, int(p)): int(o) for t, p, o in snap["offsets"]}
    ahead: dict[tuple[str, int], set[int]] = {}
    for t, p, o in snap["ahead"]:
        ahead.setdefault((t, int(p)), set()).add(int(o))
    trust = _config(w, db, 1).trust
    service = replay(
        "simulated",
        db,
        trust,
        targets=targets,
        ahead=ahead,
        consumer=ChaosConsumer(log, random.Random(seed)),
    )
    try:
        prints = {t: list(store.fingerprint(service.con, t)) for t in store.AUDITED_TABLES}
        gaps = service.con.execute("SELECT * FROM seq_gaps ORDER BY ALL").fetchall()
    finally:
        service.close()
    return prints, gaps


@pytest.mark.parametrize("seed", SEEDS)
def test_a_replay_to_any_live_snapshot_ends_in_its_tables(
    seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, w, snaps, commits = _live_with_snapshots(seed, tmp_path, monkeypatch)
    assert commits >= 10 and snaps, f"seed {seed}: {commits} commits, {len(snaps)} snapshots"
    for i, snap in enumerate(snaps):
        prints, gaps = _replay_prints(log, w, snap, tmp_path / f"replay{i}.duckdb", seed + i)
        differing = [t for t in store.AUDITED_TABLES if prints[t] != snap["tables"][t]]
        assert differing == [], (
            f"seed {seed} snapshot {i}: tables {differing} differ; replay's gaps {gaps}; "
            f"offsets {snap['offsets']} ahead {snap['ahead']}"
        )

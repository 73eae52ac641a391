"""Projector shards (issue 11 item 5) on the deterministic simulation: N shards, each owning some
partitions, replay the log of a live single projector with chaotic delivery and crashes; their
tables merged are exactly the single projector's. A shard's database refuses other partitions."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner
from sim_log import ChaosConsumer, SimLog, Workload
from test_ledger_simulation import PARTITIONS, Crash, _bounded, _config, _drained, live_run

from ledger import store
from ledger.cli import cli
from ledger.query import serve
from ledger.service import LedgerService, ShardMismatch
from ledger.shards import (
    FileReader,
    MergeError,
    ShardedClient,
    fingerprints,
    merged_tables,
    open_shards,
    query_client,
)


def _shard_replay(
    log: SimLog,
    w: Workload,
    db: Path,
    partitions: frozenset[int],
    rng: random.Random,
    crash_at: int,
    monkeypatch: pytest.MonkeyPatch,
) -> int:
    """Replay as the shard owning `partitions`, dying once at commit `crash_at`; returns how
    many events the shard applied (its own partitions' only)."""
    commits = 0
    real_commit = store.commit

    def commit(con: Any, batch: store.Batch) -> None:
        nonlocal commits
        commits += 1
        real_commit(con, batch)
        if commits == crash_at:
            raise Crash

    monkeypatch.setattr(store, "commit", commit)
    for _ in range(2):
        config = _config(w, db, rng.choice([1, 5, 64]))
        config.partitions = partitions
        service = LedgerService(config)
        service.connect(ChaosConsumer(log, rng))
        try:
            service.run(until=_bounded(_drained))
            service.projector.commit()
        except Crash:
            service.con.close()
            continue
        row = service.con.execute("SELECT coalesce(sum(events), 0) FROM sources").fetchone()
        service.close()
        monkeypatch.setattr(store, "commit", real_commit)
        assert commits > crash_at  # it died once and went on from its file
        assert row is not None
        return int(row[0])
    raise AssertionError("the shard crashed twice")


@pytest.mark.parametrize(
    ("seed", "owners"),
    [(0, [{0, 1}, {2}]), (1, [{0}, {1}, {2}]), (2, [{2}, {0, 1}])],
)
def test_shards_merged_are_one_projector(
    seed: int, owners: list[set[int]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert sorted(p for o in owners for p in o) == list(range(PARTITIONS))
    log, w, live, _ = live_run(seed, tmp_path)
    rng = random.Random(seed)
    dbs = [tmp_path / f"shard{i}.duckdb" for i in range(len(owners))]
    applied = [
        _shard_replay(log, w, db, frozenset(o), rng, rng.randint(1, 4), monkeypatch)
        for db, o in zip(dbs, owners, strict=True)
    ]
    # realms "", "r1" hash to partition 0, "r0" to 2 (crc32 mod 3): partition 1 stays empty
    assert [n > 0 for n in applied] == [bool(o & {0, 2}) for o in owners]
    readers = [FileReader(db) for db in dbs]
    try:
        shards = open_shards(readers)
        assert set().union(*(s.owned for s in shards)) >= {"", "r0", "r1"}
        tables = merged_tables(shards)
    finally:
        for reader in readers:
            reader.close()
    prints = fingerprints(tables)
    assert [t for t in store.AUDITED_TABLES if prints[t] != live[t]] == []
    # `meshledger query` across the shards answers as the single projector's database does
    for what in ("usage", "sources", "dead") if seed == 0 else ():
        one = CliRunner().invoke(
            cli, ["query", what, "--json", "--db", str(tmp_path / "live.duckdb")]
        )
        many = CliRunner().invoke(
            cli, ["query", what, "--json", *(a for db in dbs for a in ("--shard", str(db)))]
        )
        assert one.exit_code == 0 and many.exit_code == 0, many.output
        assert sorted(many.output.splitlines()) == sorted(one.output.splitlines()), what
        assert one.output.strip()
    if seed == 0:  # settle's view: the shards' endpoints, comma-separated
        _same_epochs_and_payouts_over_endpoints(tmp_path / "live.duckdb", dbs)
    # a shard alone is not the ledger: its own rows only
    alone = FileReader(dbs[0])
    try:
        only = fingerprints(merged_tables(open_shards([alone])))
    finally:
        alone.close()
    assert only["usage_blocks"] != live["usage_blocks"]


def test_a_shard_database_keeps_its_partitions(tmp_path: Path) -> None:
    log, w, _, _ = live_run(3, tmp_path)
    db = tmp_path / "shard.duckdb"
    config = _config(w, db, 64)
    config.partitions = frozenset({0})
    service = LedgerService(config)
    service.connect(ChaosConsumer(log))
    service.run(until=_bounded(_drained))
    service.close()
    for other, message in (
        (frozenset({0, 1}), r"belongs to the shard owning partitions \[0\] of 3, not \[0, 1\]"),
        (None, r"is the database of the shard owning partitions \[0\]"),
        (frozenset({5}), r"partitions \[5\] not among 0..2"),
    ):
        config = _config(w, db, 64)
        config.partitions = other
        service = LedgerService(config)
        with pytest.raises(ShardMismatch, match=message):
            service.connect(ChaosConsumer(log))
        service.close()
    twice = [FileReader(db), FileReader(db)]
    try:
        with pytest.raises(MergeError, match="is owned by shards 0 and 1"):
            open_shards(twice)
    finally:
        for reader in twice:
            reader.close()


def _same_epochs_and_payouts_over_endpoints(live_db: Path, dbs: list[Path]) -> None:
    cons = [duckdb.connect(str(db), read_only=True) for db in (live_db, *dbs)]
    servers = [serve(con) for con in cons]
    try:
        urls = [f"http://127.0.0.1:{s.server_address[1]}" for s in servers]
        live, sharded = query_client(urls[0]), query_client(",".join(urls[1:]))
        assert isinstance(sharded, ShardedClient)
        epochs = live.epochs()
        assert len(epochs) >= 6 and sharded.epochs() == epochs
        for row in epochs:
            realm, epoch = str(row["realm"]), int(row["epoch"])
            assert sharded.payouts(realm, epoch) == live.payouts(realm, epoch)
    finally:
        for server, con in zip(servers, cons, strict=True):
            server.shutdown()
            con.close()

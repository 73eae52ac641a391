"""Shards on a real broker (two partitions, routers whose chains run through both): two shard
projectors' merged tables equal one projector's, and the audit replays each shard in its own
process and compares it shard by shard — a damaged shard is named, the other still matches."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from infra.broker import start_broker
from ledger import store
from ledger.bench import SHARD_REALMS, _shard_emit_worker
from ledger.service import replay, trust_from
from ledger.shards import FileReader, audit_shards, fingerprints, merged_tables, open_shards
from ledger.simulate import TOKEN, IndexerSim, RealmSetup, emitter, new_signer

PER_REALM = 5000


@pytest.mark.integration
def test_shards_on_a_broker_merge_to_one_ledger_and_audit_one_by_one(tmp_path: Path) -> None:
    broker = start_broker(partitions=2)
    try:
        indexer_key = new_signer()
        routers = [new_signer() for _ in SHARD_REALMS]
        trust = trust_from([], [indexer_key.address], [])
        indexer = IndexerSim(indexer_key, emitter(indexer_key, broker.bootstrap, tmp_path / "sp"))
        for router, realms in zip(routers, SHARD_REALMS, strict=True):
            for realm in realms:
                indexer.create_realm(RealmSetup(realm, routers=[(router, 10**9 * TOKEN)]), 0)
        indexer.head((PER_REALM >> 12) + 1)
        indexer.em.flush()
        indexer.em.close()
        for i, (router, realms) in enumerate(zip(routers, SHARD_REALMS, strict=True)):
            _shard_emit_worker(
                broker.bootstrap, router.private_key, realms, PER_REALM, str(tmp_path / f"e{i}")
            )
        one = replay(broker.bootstrap, tmp_path / "one.duckdb", trust)
        assert one.progress.events == 4 * PER_REALM + indexer.log_index + 5
        one.close()
        dbs = [tmp_path / f"shard{p}.duckdb" for p in (0, 1)]
        for p, db in enumerate(dbs):
            shard = replay(broker.bootstrap, db, trust, partitions=frozenset({p}))
            assert 0 < shard.progress.events < 4 * PER_REALM  # its own partition's only
            shard.close()
        readers = [FileReader(db) for db in (*dbs, tmp_path / "one.duckdb")]
        try:
            merged = fingerprints(merged_tables(open_shards(readers[:2])))
            single = fingerprints(merged_tables(open_shards(readers[2:])))
        finally:
            for reader in readers:
                reader.close()
        assert merged == single

        reports = audit_shards(broker.bootstrap, trust, [str(db) for db in dbs], tmp_path / "a")
        assert [r.exit_code for r in reports] == [0, 0], [
            (d.table, d.only_live, d.only_replayed) for r in reports for d in r.diffs
        ]
        assert all(r.events > 0 and not r.diffs for r in reports)

        con = duckdb.connect(str(dbs[1]))
        con.execute("DELETE FROM usage_blocks WHERE rowid = (SELECT min(rowid) FROM usage_blocks)")
        con.close()
        reports = audit_shards(broker.bootstrap, trust, [str(db) for db in dbs], tmp_path / "b")
        assert [r.exit_code for r in reports] == [0, 1]
        assert [d.table for d in reports[1].diffs] == ["usage_blocks"]
        assert store.AUDITED_TABLES  # every table was compared
    finally:
        broker.stop()

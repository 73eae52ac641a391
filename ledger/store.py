"""DuckDB projections: the schema, batched columnar writes, and the consumed Kafka offsets, all
committed in one transaction so a crash at any point neither loses nor double-counts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb

SCHEMA = """
CREATE TABLE IF NOT EXISTS offsets (topic VARCHAR, part INTEGER, next_offset BIGINT, PRIMARY KEY (topic, part));
CREATE TABLE IF NOT EXISTS sources (source VARCHAR PRIMARY KEY, last_seq BIGINT, last_hash VARCHAR,
    watermark BIGINT, records BIGINT, events BIGINT);
CREATE TABLE IF NOT EXISTS realms (realm VARCHAR PRIMARY KEY, keeper VARCHAR, rfr_bps BIGINT,
    stake_per_mpb HUGEINT, epoch_blocks BIGINT, funding_period_blocks BIGINT, weight_router_bps BIGINT,
    weight_service_bps BIGINT, weight_vendor_bps BIGINT, price_per_message HUGEINT, created_block BIGINT);
CREATE TABLE IF NOT EXISTS realm_params (realm VARCHAR, source VARCHAR, seq BIGINT, rfr_bps BIGINT,
    stake_per_mpb HUGEINT, epoch_blocks BIGINT, funding_period_blocks BIGINT, weight_router_bps BIGINT,
    weight_service_bps BIGINT, weight_vendor_bps BIGINT, price_per_message HUGEINT);
CREATE TABLE IF NOT EXISTS apis (realm VARCHAR, api VARCHAR, vendor VARCHAR, block BIGINT, source VARCHAR, seq BIGINT);
CREATE TABLE IF NOT EXISTS applied_ahead (topic VARCHAR, part INTEGER, "offset" BIGINT);
CREATE TABLE IF NOT EXISTS stakes (realm VARCHAR, staker VARCHAR, role VARCHAR, target VARCHAR,
    amount HUGEINT, tx_hash VARCHAR, block BIGINT, log_index BIGINT, source VARCHAR, seq BIGINT);
CREATE TABLE IF NOT EXISTS usage_blocks (realm VARCHAR, block BIGINT, source VARCHAR, messages BIGINT, bytes BIGINT);
CREATE TABLE IF NOT EXISTS usage_records (realm VARCHAR, source VARCHAR, last_seq BIGINT, epoch BIGINT,
    payee_class VARCHAR, account VARCHAR, messages BIGINT, bytes BIGINT);
CREATE TABLE IF NOT EXISTS epochs (realm VARCHAR, epoch BIGINT, first_block BIGINT, last_block BIGINT,
    marks VARCHAR, funding HUGEINT, carry_in HUGEINT, total HUGEINT, remainder HUGEINT, payees BIGINT,
    digest VARCHAR, late_messages BIGINT, confirmed_digest VARCHAR, PRIMARY KEY (realm, epoch));
CREATE TABLE IF NOT EXISTS usage (realm VARCHAR, epoch BIGINT, payee_class VARCHAR, account VARCHAR,
    messages BIGINT, late_messages BIGINT, capacity BIGINT, credit BIGINT);
CREATE TABLE IF NOT EXISTS payouts (realm VARCHAR, epoch BIGINT, account VARCHAR, payee_class VARCHAR, amount HUGEINT);
CREATE TABLE IF NOT EXISTS swap_events (realm VARCHAR, source VARCHAR, seq BIGINT, type VARCHAR, peer VARCHAR,
    cumulative HUGEINT, amount HUGEINT, reason VARCHAR, block BIGINT);
CREATE TABLE IF NOT EXISTS settlements (realm VARCHAR, epoch BIGINT, type VARCHAR, chain_id BIGINT,
    contract VARCHAR, tx_hash VARCHAR, root VARCHAR, total HUGEINT, block BIGINT, source VARCHAR, seq BIGINT);
CREATE TABLE IF NOT EXISTS rejected (reason VARCHAR PRIMARY KEY, records BIGINT);
CREATE TABLE IF NOT EXISTS seq_gaps (source VARCHAR, from_seq BIGINT, to_seq BIGINT);
CREATE TABLE IF NOT EXISTS late_records (realm VARCHAR, source VARCHAR, last_seq BIGINT, block_epoch BIGINT,
    counted_epoch BIGINT, messages BIGINT);
"""

#: latest stake per (realm, staker, role, target) (target 0x00…00: the realm itself, REALM_TARGET) as of every block where something changed,
#: then reserved / provided bandwidth (messages per block) and metered use per realm and block.
BANDWIDTH_VIEW = """
CREATE OR REPLACE VIEW bandwidth AS
WITH last_change AS (
    SELECT realm, staker, role, target, block, arg_max(amount, log_index) AS amount
    FROM stakes GROUP BY ALL
), used AS (
    SELECT realm, block, sum(messages) AS used_mpb, sum(bytes) AS used_bytes FROM usage_blocks GROUP BY ALL
), blocks AS (
    SELECT realm, block FROM used UNION SELECT realm, block FROM last_change
), keys AS (
    SELECT DISTINCT realm, staker, role, target FROM last_change
), grid AS (
    SELECT b.realm, b.block, k.staker, k.role, k.target FROM blocks b JOIN keys k USING (realm)
), at_block AS (
    SELECT g.realm, g.block, g.role, g.target, c.amount
    FROM grid g ASOF JOIN last_change c
      ON g.realm = c.realm AND g.staker = c.staker AND g.role = c.role AND g.target = c.target AND g.block >= c.block
)
SELECT b.realm, b.block,
    coalesce((SELECT sum(a.amount // r.stake_per_mpb) FROM at_block a
              WHERE a.realm = b.realm AND a.block = b.block AND a.target = '0x0000000000000000000000000000000000000000'
                AND a.role IN ('user', 'service_operator')), 0)::BIGINT AS reserved_mpb,
    coalesce((SELECT sum(a.amount // r.stake_per_mpb) FROM at_block a
              WHERE a.realm = b.realm AND a.block = b.block AND a.target = '0x0000000000000000000000000000000000000000'
                AND a.role = 'router_operator'), 0)::BIGINT AS provided_mpb,
    coalesce(u.used_mpb, 0)::BIGINT AS used_mpb,
    coalesce(u.used_bytes, 0)::BIGINT AS used_bytes
FROM blocks b JOIN realms r USING (realm) LEFT JOIN used u USING (realm, block)
ORDER BY b.realm, b.block;
"""

#: tables an audit compares (everything but bookkeeping of this one consumer's offsets)
AUDITED_TABLES = (
    "sources",
    "realms",
    "realm_params",
    "apis",
    "stakes",
    "usage_blocks",
    "usage_records",
    "epochs",
    "usage",
    "payouts",
    "swap_events",
    "settlements",
    "rejected",
    "seq_gaps",
    "late_records",
)

COLUMNS: dict[str, list[str]] = {}
_INSERTS: dict[str, str] = {}


def connect(path: str | Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(path), read_only=read_only)
    if not read_only:
        con.execute(SCHEMA)
        con.execute(BANDWIDTH_VIEW)
    return con


def _describe(con: duckdb.DuckDBPyConnection, table: str) -> None:
    described = con.execute(f"DESCRIBE {table}").fetchall()
    COLUMNS[table] = [r[0] for r in described]
    select = ", ".join(f"unnest(${i + 1}::{r[1]}[])" for i, r in enumerate(described))
    _INSERTS[table] = f"INSERT INTO {table} SELECT {select}"


def columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    if table not in COLUMNS:
        _describe(con, table)
    return COLUMNS[table]


def append_rows(con: duckdb.DuckDBPyConnection, table: str, rows: Sequence[Sequence[Any]]) -> None:
    """Columnar insert of many rows in one statement (unnest of list parameters)."""
    if not rows:
        return
    if table not in _INSERTS:
        _describe(con, table)
    con.execute(_INSERTS[table], [list(col) for col in zip(*rows, strict=True)])


def fingerprint(con: duckdb.DuckDBPyConnection, table: str) -> tuple[int, str]:
    """Order-independent (row count, digest) of a table's contents."""
    cols = columns(con, table)
    row = con.execute(
        f"SELECT count(*), coalesce(sum(hash({', '.join(cols)})::HUGEINT), 0)::VARCHAR FROM {table}"
    ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def table_rows(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[Any, ...]]:
    cols = columns(con, table)
    return [
        tuple(r)
        for r in con.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY ALL").fetchall()
    ]

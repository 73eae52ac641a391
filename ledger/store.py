"""DuckDB projections: the schema, the projector's reads, and its batched columnar writes committed
with the consumed Kafka offsets in one transaction, so a crash at any point neither loses nor
double-counts. Every SQL statement of the projector lives here."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

SCHEMA = """
CREATE TABLE IF NOT EXISTS offsets (topic VARCHAR, part INTEGER, next_offset BIGINT, PRIMARY KEY (topic, part));
CREATE TABLE IF NOT EXISTS sources (source VARCHAR PRIMARY KEY, last_seq BIGINT, last_hash VARCHAR,
    watermark BIGINT, records BIGINT, events BIGINT);
CREATE TABLE IF NOT EXISTS realms (realm VARCHAR PRIMARY KEY, keeper VARCHAR, rfr_bps BIGINT,
    stake_per_mpb HUGEINT, epoch_blocks BIGINT, funding_period_blocks BIGINT, weight_router_bps BIGINT,
    weight_service_bps BIGINT, weight_vendor_bps BIGINT, price_per_message HUGEINT, created_block BIGINT,
    usd_price_per_message HUGEINT DEFAULT 0, price_feed VARCHAR DEFAULT '');
CREATE TABLE IF NOT EXISTS realm_params (realm VARCHAR, change VARCHAR, source VARCHAR, seq BIGINT,
    block BIGINT, start_block BIGINT, effective_epoch BIGINT, effective_block BIGINT, rfr_bps BIGINT,
    stake_per_mpb HUGEINT, epoch_blocks BIGINT, funding_period_blocks BIGINT, weight_router_bps BIGINT,
    weight_service_bps BIGINT, weight_vendor_bps BIGINT, price_per_message HUGEINT,
    usd_price_per_message HUGEINT DEFAULT 0, price_feed VARCHAR DEFAULT '');
CREATE TABLE IF NOT EXISTS apis (realm VARCHAR, api VARCHAR, vendor VARCHAR, block BIGINT, source VARCHAR, seq BIGINT);
CREATE TABLE IF NOT EXISTS applied_ahead (topic VARCHAR, part INTEGER, "offset" BIGINT);
CREATE TABLE IF NOT EXISTS stakes (realm VARCHAR, staker VARCHAR, role VARCHAR, target VARCHAR,
    amount HUGEINT, tx_hash VARCHAR, block BIGINT, log_index BIGINT, source VARCHAR, seq BIGINT);
CREATE TABLE IF NOT EXISTS stake_points (realm VARCHAR, kind VARCHAR, account VARCHAR, block BIGINT,
    stake HUGEINT);
CREATE TABLE IF NOT EXISTS usage_blocks (realm VARCHAR, block BIGINT, source VARCHAR, messages BIGINT, bytes BIGINT);
CREATE TABLE IF NOT EXISTS usage_records (realm VARCHAR, source VARCHAR, last_seq BIGINT, epoch BIGINT,
    payee_class VARCHAR, account VARCHAR, messages BIGINT, bytes BIGINT);
CREATE TABLE IF NOT EXISTS usage_pending (realm VARCHAR, source VARCHAR, last_seq BIGINT, epoch BIGINT,
    payee_class VARCHAR, account VARCHAR, messages BIGINT);
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
CREATE TABLE IF NOT EXISTS chain_logs (realm VARCHAR, chain_id BIGINT, block_hash VARCHAR, log_index BIGINT,
    type VARCHAR, block BIGINT, body VARCHAR, source VARCHAR, seq BIGINT, retracted_seq BIGINT);
CREATE TABLE IF NOT EXISTS prices (chain_id BIGINT, feed VARCHAR, round_id HUGEINT, answer VARCHAR,
    decimals INTEGER, updated_at BIGINT, status VARCHAR, block BIGINT, block_hash VARCHAR, source VARCHAR,
    seq BIGINT);
CREATE TABLE IF NOT EXISTS shard_realms (realm VARCHAR PRIMARY KEY);
CREATE TABLE IF NOT EXISTS shard_partitions (part INTEGER PRIMARY KEY, partitions INTEGER);
CREATE TABLE IF NOT EXISTS reorg_flags (realm VARCHAR, epoch BIGINT, chain_id BIGINT, block_hash VARCHAR,
    log_index BIGINT, retracted VARCHAR, block BIGINT, source VARCHAR, seq BIGINT);
CREATE TABLE IF NOT EXISTS services (realm VARCHAR, service_id VARCHAR, api VARCHAR, publisher VARCHAR, spec_hash VARCHAR,
    deterministic BOOLEAN, verifier_hash VARCHAR, min_requests INTEGER, change VARCHAR, block BIGINT,
    log_index BIGINT, source VARCHAR, seq BIGINT);
CREATE TABLE IF NOT EXISTS offers (realm VARCHAR, server VARCHAR, service_id VARCHAR, price_per_call HUGEINT,
    active BOOLEAN, block BIGINT, log_index BIGINT, source VARCHAR, seq BIGINT);
CREATE TABLE IF NOT EXISTS call_assessments (realm VARCHAR, router VARCHAR, client VARCHAR, operator VARCHAR,
    service_id VARCHAR, outcome VARCHAR, latency_ms BIGINT, charged HUGEINT, quote VARCHAR, block BIGINT,
    source VARCHAR, seq BIGINT);
CREATE TABLE IF NOT EXISTS quotes (realm VARCHAR, router VARCHAR, client VARCHAR, operator VARCHAR,
    service_id VARCHAR, price_per_call HUGEINT, expiry_block BIGINT, quote_id VARCHAR, block BIGINT,
    source VARCHAR, seq BIGINT);
CREATE TABLE IF NOT EXISTS mismatches (realm VARCHAR, router VARCHAR, service_id VARCHAR, request_digest VARCHAR,
    operator VARCHAR, compared VARCHAR, verifier VARCHAR, block BIGINT, source VARCHAR, seq BIGINT);
CREATE TABLE IF NOT EXISTS convictions (realm VARCHAR, router VARCHAR, operator VARCHAR, service_id VARCHAR,
    mismatches BIGINT, block BIGINT, source VARCHAR, seq BIGINT);
CREATE TABLE IF NOT EXISTS rewards (realm VARCHAR, server VARCHAR, service_id VARCHAR, active BOOLEAN,
    block BIGINT, log_index BIGINT, source VARCHAR, seq BIGINT);
CREATE TABLE IF NOT EXISTS router_endpoints (realm VARCHAR, operator VARCHAR, url VARCHAR, stake HUGEINT,
    active BOOLEAN, block BIGINT, log_index BIGINT, source VARCHAR, seq BIGINT);
"""

#: Bandwidth per realm and block. The stake series come from `domain.stakes` (stake_points: the
#: reservation of each client and the provided stake of each operator at every block where it
#: changes), the stake per mpb from the parameters in force in the block's epoch; so the view,
#: the usage table's capacities and the payouts read the same stakes.
BANDWIDTH_VIEW = """
CREATE OR REPLACE VIEW stake_mpb AS
SELECT p.realm, p.block, p.kind, p.account, p.stake, (p.stake // r.stake_per_mpb)::BIGINT AS mpb
FROM stake_points p ASOF JOIN realm_params r ON p.realm = r.realm AND p.block >= r.effective_block;

CREATE OR REPLACE VIEW bandwidth AS
WITH blocks AS (
    SELECT DISTINCT realm, block FROM stake_points UNION SELECT DISTINCT realm, block FROM usage_blocks
), used AS (
    SELECT realm, block, sum(messages) AS used_mpb, sum(bytes) AS used_bytes FROM usage_blocks GROUP BY ALL
), series AS (
    SELECT DISTINCT realm, kind, account FROM stake_points
), at_block AS (
    SELECT g.realm, g.block, g.kind, p.stake
    FROM (SELECT b.realm, b.block, s.kind, s.account FROM blocks b JOIN series s USING (realm)) g
    ASOF JOIN stake_points p
      ON g.realm = p.realm AND g.kind = p.kind AND g.account = p.account AND g.block >= p.block
), per_block AS (
    SELECT a.realm, a.block,
        sum(a.stake // r.stake_per_mpb) FILTER (WHERE a.kind = 'reserved') AS reserved_mpb,
        sum(a.stake // r.stake_per_mpb) FILTER (WHERE a.kind = 'router') AS provided_mpb,
        sum(a.stake // r.stake_per_mpb) FILTER (WHERE a.kind = 'service') AS service_mpb
    FROM at_block a ASOF JOIN realm_params r ON a.realm = r.realm AND a.block >= r.effective_block
    GROUP BY ALL
)
SELECT b.realm, b.block,
    coalesce(p.reserved_mpb, 0)::BIGINT AS reserved_mpb,
    coalesce(p.provided_mpb, 0)::BIGINT AS provided_mpb,
    coalesce(p.service_mpb, 0)::BIGINT AS service_mpb,
    coalesce(u.used_mpb, 0)::BIGINT AS used_mpb,
    coalesce(u.used_bytes, 0)::BIGINT AS used_bytes
FROM blocks b LEFT JOIN per_block p USING (realm, block) LEFT JOIN used u USING (realm, block)
ORDER BY b.realm, b.block;
-- the marketplace now: services, offers and rewards as their latest change says (the tables keep
-- every change, so a retracted log is undone by deleting its row)
CREATE OR REPLACE VIEW market_services AS
SELECT r.service_id, r.api, r.publisher, l.spec_hash, l.deterministic, l.verifier_hash, l.min_requests,
    r.block AS registered_block
FROM services r JOIN (
    SELECT * FROM services QUALIFY row_number() OVER (PARTITION BY service_id ORDER BY block DESC, log_index DESC) = 1
) l USING (service_id)
WHERE r.change = 'registered';

-- routers announced in RouterRegistry now (its latest change per operator; a retracted log is
-- undone by deleting its row)
CREATE OR REPLACE VIEW realm_routers AS
SELECT realm, operator, url, stake, block FROM (
    SELECT * FROM router_endpoints
    QUALIFY row_number() OVER (PARTITION BY realm, operator ORDER BY block DESC, log_index DESC) = 1
) WHERE active;

CREATE OR REPLACE VIEW market_offers AS
SELECT o.realm, s.api, o.service_id, o.server, o.price_per_call, o.block
FROM (
    SELECT * FROM offers QUALIFY row_number() OVER (PARTITION BY realm, server, service_id ORDER BY block DESC, log_index DESC) = 1
) o JOIN market_services s USING (service_id)
WHERE o.active;

-- reputation per operator and service in a realm, from the calls routers assessed: a success
-- ratio whose weights halve every 100 blocks behind the realm's newest assessment (integers, so a
-- replay gives the same numbers), and p50/p95 latency over every assessed call
CREATE OR REPLACE VIEW reputation AS
WITH heads AS (SELECT realm, max(block) AS head FROM call_assessments GROUP BY realm),
weighted AS (
    SELECT a.*, (1::HUGEINT << (62 - least(62, (h.head - a.block) // 100))::INTEGER) AS w
    FROM call_assessments a JOIN heads h USING (realm)
), assessed AS (
    SELECT realm, operator, service_id, count(*) AS calls,
        count(*) FILTER (WHERE outcome = 'result') AS results,
        count(*) FILTER (WHERE outcome = 'error') AS errors,
        count(*) FILTER (WHERE outcome = 'timeout') AS timeouts,
        (coalesce(sum(w) FILTER (WHERE outcome = 'result'), 0) * 10000 // sum(w))::BIGINT AS success_bps,
        quantile_disc(latency_ms, 0.5) AS p50_ms, quantile_disc(latency_ms, 0.95) AS p95_ms,
        sum(charged) AS charged, max(block) AS last_block
    FROM weighted GROUP BY realm, operator, service_id
), judged AS (
    SELECT realm, operator, service_id, count(*) AS mismatches, 0 AS convictions FROM mismatches GROUP BY ALL
    UNION ALL
    SELECT realm, operator, service_id, 0, count(*) FROM convictions GROUP BY ALL
), verdicts AS (
    SELECT realm, operator, service_id, sum(mismatches)::BIGINT AS mismatches,
        sum(convictions)::BIGINT AS convictions
    FROM judged GROUP BY ALL
)
-- a conviction cuts the success ratio to zero
SELECT a.realm, a.operator, a.service_id, a.calls, a.results, a.errors, a.timeouts,
    CASE WHEN coalesce(v.convictions, 0) > 0 THEN 0 ELSE a.success_bps END AS success_bps,
    a.p50_ms, a.p95_ms, a.charged, coalesce(v.mismatches, 0) AS mismatches,
    coalesce(v.convictions, 0) AS convictions, a.last_block
FROM assessed a LEFT JOIN verdicts v USING (realm, operator, service_id);

CREATE OR REPLACE VIEW market_rewards AS
SELECT w.realm, s.api, w.service_id, w.server, w.block
FROM (
    SELECT * FROM rewards QUALIFY row_number() OVER (PARTITION BY realm, server, service_id ORDER BY block DESC, log_index DESC) = 1
) w JOIN market_services s USING (service_id)
WHERE w.active;

-- reciprocity per pair of servers in a realm ("if you run my service I will run yours"): the calls
-- each answered (results, as routers assessed them) of the services the other rewards now
CREATE OR REPLACE VIEW reciprocity AS
WITH served AS (
    SELECT realm, operator, service_id, count(*) AS results FROM call_assessments
    WHERE outcome = 'result' GROUP BY ALL
), for_rewarder AS (
    SELECT w.realm, w.server AS rewarder, s.operator AS server, sum(s.results)::BIGINT AS results
    FROM market_rewards w JOIN served s
      ON s.realm = w.realm AND s.service_id = w.service_id AND lower(s.operator) <> lower(w.server)
    GROUP BY ALL
), pairs AS (
    SELECT realm, rewarder AS a, server AS b FROM for_rewarder
    UNION SELECT realm, server, rewarder FROM for_rewarder
)
SELECT p.realm, p.a AS server_a, p.b AS server_b,
    coalesce(x.results, 0) AS b_served_for_a, coalesce(y.results, 0) AS a_served_for_b,
    coalesce(x.results, 0) > 0 AND coalesce(y.results, 0) > 0 AS reciprocal
FROM pairs p
LEFT JOIN for_rewarder x ON x.realm = p.realm AND x.rewarder = p.a AND x.server = p.b
LEFT JOIN for_rewarder y ON y.realm = p.realm AND y.rewarder = p.b AND y.server = p.a
WHERE lower(p.a) < lower(p.b);
"""

#: tables an audit compares (everything but bookkeeping of this one consumer's offsets)
AUDITED_TABLES = (
    "sources",
    "realms",
    "realm_params",
    "apis",
    "stakes",
    "stake_points",
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
    "chain_logs",
    "prices",
    "reorg_flags",
    "services",
    "offers",
    "rewards",
    "call_assessments",
    "quotes",
    "mismatches",
    "convictions",
    "router_endpoints",
)

#: columns added since a table was first created (a file of an older version gains them)
MIGRATIONS = """
ALTER TABLE realms ADD COLUMN IF NOT EXISTS usd_price_per_message HUGEINT DEFAULT 0;
ALTER TABLE realms ADD COLUMN IF NOT EXISTS price_feed VARCHAR DEFAULT '';
ALTER TABLE realm_params ADD COLUMN IF NOT EXISTS usd_price_per_message HUGEINT DEFAULT 0;
ALTER TABLE realm_params ADD COLUMN IF NOT EXISTS price_feed VARCHAR DEFAULT '';
"""

COLUMNS: dict[str, list[str]] = {}
_INSERTS: dict[str, str] = {}


def connect(path: str | Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(path), read_only=read_only)
    if not read_only:
        con.execute(SCHEMA)
        con.execute(MIGRATIONS)
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


# -- the projector's reads and its one-transaction commit -------------------------------------------


@dataclass
class Batch:
    """Everything one commit writes, with the consumed offsets, in one transaction."""

    rows: dict[str, list[tuple[Any, ...]]] = field(default_factory=lambda: defaultdict(list))
    realms: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # upserted realms rows
    confirmations: list[tuple[str, int, str]] = field(default_factory=list)
    #: (realm, epoch, marks): pending usage an epoch close counted
    counted_usage: list[tuple[str, int, dict[str, int]]] = field(default_factory=list)
    #: (realm, kind, account) -> (from block, [(block, stake)]): a stake series rewritten from a block
    stake_series: dict[tuple[str, str, str], tuple[int, list[tuple[int, int]]]] = field(
        default_factory=dict
    )
    sources: list[tuple[Any, ...]] = field(default_factory=list)
    rejected: list[tuple[str, int]] | None = None
    offsets: dict[tuple[str, int], tuple[int, list[int]]] = field(default_factory=dict)
    #: chain logs retracted by a reorg: (chain_id, block_hash, log_index, retracting seq)
    retracted_logs: list[tuple[int, str, int, int]] = field(default_factory=list)
    #: rows a retraction undoes: (table, {column: value}) deleted where every column matches
    undone_rows: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: realms first seen in a partition this projector owns (a shard's rows of them count)
    owned_realms: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            any(self.rows.values())
            or self.retracted_logs
            or self.undone_rows
            or self.realms
            or self.confirmations
            or self.counted_usage
            or self.stake_series
            or self.sources
            or self.rejected is not None
            or self.offsets
            or self.owned_realms
        )


class CommitFailed(RuntimeError):
    """A commit that did not happen; nothing of its batch is in the database."""


def commit(con: duckdb.DuckDBPyConnection, batch: Batch) -> None:
    """Write `batch` in one transaction. On failure nothing is written and the cause is raised
    (a failed COMMIT rolls back by itself; its cause must not hide behind the ROLLBACK's)."""
    con.execute("BEGIN TRANSACTION")
    try:
        _write(con, batch)
        con.execute("COMMIT")
    except BaseException as exc:
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        if isinstance(exc, duckdb.Error):
            raise CommitFailed(f"projection commit failed, nothing written: {exc}") from exc
        raise


def _write(con: duckdb.DuckDBPyConnection, batch: Batch) -> None:
    for row in batch.realms.values():
        con.execute(f"INSERT OR REPLACE INTO realms VALUES ({','.join('?' * len(row))})", row)
    for realm, epoch, marks in batch.counted_usage:
        con.execute(
            "DELETE FROM usage_pending u USING (SELECT unnest($3::VARCHAR[]) AS source,"
            " unnest($4::BIGINT[]) AS mark) m"
            " WHERE u.realm = $1 AND u.epoch <= $2 AND u.source = m.source AND u.last_seq <= m.mark",
            [realm, epoch, list(marks), list(marks.values())],
        )
    for (realm, kind, account), (from_block, points) in batch.stake_series.items():
        con.execute(
            "DELETE FROM stake_points WHERE realm = ? AND kind = ? AND account = ? AND block >= ?",
            [realm, kind, account, from_block],
        )
        append_rows(
            con,
            "stake_points",
            [(realm, kind, account, b, stake) for b, stake in points if b >= from_block],
        )
    for table, rows in batch.rows.items():
        append_rows(con, table, rows)
    for chain_id, block_hash, log_index, seq in batch.retracted_logs:
        con.execute(
            "UPDATE chain_logs SET retracted_seq = ? WHERE chain_id = ? AND block_hash = ?"
            " AND log_index = ? AND retracted_seq IS NULL",
            [seq, chain_id, block_hash, log_index],
        )
    for table, match in batch.undone_rows:
        where = " AND ".join(f"{column} = ?" for column in match)
        con.execute(f"DELETE FROM {table} WHERE {where}", list(match.values()))
    for realm, epoch, digest in batch.confirmations:
        con.execute(
            "UPDATE epochs SET confirmed_digest = ? WHERE realm = ? AND epoch = ?",
            [digest, realm, epoch],
        )
    if batch.sources:
        con.execute(
            "DELETE FROM sources WHERE source IN (SELECT unnest(?::VARCHAR[]))",
            [[s[0] for s in batch.sources]],
        )
        append_rows(con, "sources", batch.sources)
    append_rows(con, "shard_realms", [(realm,) for realm in batch.owned_realms])
    if batch.rejected is not None:
        con.execute("DELETE FROM rejected")
        append_rows(con, "rejected", batch.rejected)
    for (topic, part), (next_offset, ahead) in batch.offsets.items():
        con.execute("INSERT OR REPLACE INTO offsets VALUES (?, ?, ?)", [topic, part, next_offset])
        con.execute("DELETE FROM applied_ahead WHERE topic = ? AND part = ?", [topic, part])
        append_rows(con, "applied_ahead", [(topic, part, o) for o in ahead])


def rows_of(con: duckdb.DuckDBPyConnection, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in con.execute(sql, list(args)).fetchall()]


def pending_usage(con: duckdb.DuckDBPyConnection, realm: str) -> list[tuple[Any, ...]]:
    """Usage a close of `realm` has not counted yet: (source, last_seq, epoch, class, account, n)."""
    return rows_of(
        con,
        "SELECT source, last_seq, epoch, payee_class, account, messages FROM usage_pending"
        " WHERE realm = ?",
        realm,
    )


def epoch_digest(con: duckdb.DuckDBPyConnection, realm: str, epoch: int) -> str | None:
    row = con.execute(
        "SELECT digest FROM epochs WHERE realm = ? AND epoch = ?", [realm, epoch]
    ).fetchone()
    return None if row is None else str(row[0])


def chain_log(
    con: duckdb.DuckDBPyConnection, chain_id: int, block_hash: str, log_index: int
) -> tuple[str, int, str] | None:
    """(body, seq, source) of a chain log not retracted yet, or None."""
    row = con.execute(
        "SELECT body, seq, source FROM chain_logs WHERE chain_id = ? AND block_hash = ?"
        " AND log_index = ? AND retracted_seq IS NULL",
        [chain_id, block_hash, log_index],
    ).fetchone()
    return None if row is None else (str(row[0]), int(row[1]), str(row[2]))


def closed_epochs_ending_from(con: duckdb.DuckDBPyConnection, realm: str, block: int) -> list[int]:
    return [
        int(r[0])
        for r in con.execute(
            "SELECT epoch FROM epochs WHERE realm = ? AND last_block >= ? ORDER BY epoch",
            [realm, block],
        ).fetchall()
    ]


def shard_partitions(con: duckdb.DuckDBPyConnection) -> tuple[frozenset[int], int] | None:
    """The partitions a shard's database was built from, and the topics' partition count; None
    for the database of a projector that owns every partition."""
    rows = rows_of(con, "SELECT part, partitions FROM shard_partitions")
    if not rows:
        return None
    return frozenset(int(r[0]) for r in rows), int(rows[0][1])


def set_shard_partitions(
    con: duckdb.DuckDBPyConnection, owned: frozenset[int], partitions: int
) -> None:
    append_rows(con, "shard_partitions", [(p, partitions) for p in sorted(owned)])


def unconfirmed_epochs(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    """Closed epochs whose PayoutsComputed is not in the log yet:
    (realm, epoch, funding, total, remainder, payees, digest)."""
    return rows_of(
        con,
        "SELECT realm, epoch, funding, total, remainder, payees, digest FROM epochs"
        " WHERE confirmed_digest IS NULL ORDER BY realm, epoch",
    )

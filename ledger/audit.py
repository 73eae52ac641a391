"""The audit: replay the topics from offset 0 into a fresh DuckDB, verifying every signature and
hash chain on the way, and compare every table with the live ledger at the same log position;
optionally (a `chain_check`, see settlement/audit.py) compare the replay with the chain."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import duckdb

from domain.economics import Payout
from ledger import store
from ledger.projector import Trust
from ledger.query import QueryClient, snapshot
from ledger.service import Progress, replay

EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_GAPS = 3
EXIT_CHAIN_MISMATCH = 4


class ChainResult(Protocol):
    """What a chain check found (settlement.audit.ChainAudit)."""

    @property
    def matches(self) -> bool: ...

    differences: list[str]


#: a check of the replayed ledger (its DuckDB connection) against the chain
ChainCheck = Callable[[duckdb.DuckDBPyConnection], ChainResult]


@dataclass
class TableDiff:
    table: str
    live: tuple[int, str]
    replayed: tuple[int, str]
    only_live: list[list[Any]] = field(default_factory=list)
    only_replayed: list[list[Any]] = field(default_factory=list)


@dataclass
class AuditReport:
    records: int
    events: int
    rejected: dict[str, int]
    gaps: list[tuple[str, int, int]]
    diffs: list[TableDiff]
    tables: int
    #: (realm, epoch, retracted type, block): closed epochs that counted a retracted chain log
    reorg_flags: list[tuple[str, int, str, int]] = field(default_factory=list)
    #: the chain check's result, when one ran
    chain: ChainResult | None = None

    @property
    def matches(self) -> bool:
        """The replay reproduces every live table (and the chain, when it was checked)."""
        return not self.diffs and (self.chain is None or self.chain.matches)

    @property
    def exit_code(self) -> int:
        if self.diffs:
            return EXIT_MISMATCH
        if self.chain is not None and not self.chain.matches:
            return EXIT_CHAIN_MISMATCH
        if self.gaps:
            return EXIT_GAPS
        return EXIT_OK


class LiveSide:
    """The live ledger as the audit sees it: its query endpoint, or its database file when no
    projector holds it."""

    def __init__(self, url: str | None = None, db_path: Path | None = None) -> None:
        if (url is None) == (db_path is None):
            raise ValueError("audit needs the live query URL or the live database path")
        self.client = QueryClient(url) if url else None
        self.con = duckdb.connect(str(db_path), read_only=True) if db_path else None

    def snapshot(self) -> dict[str, Any]:
        if self.client is not None:
            return dict(self.client.get("snapshot"))
        assert self.con is not None
        return snapshot(self.con)

    def rows(self, table: str) -> list[list[Any]]:
        if self.client is not None:
            return [list(r) for r in self.client.get(f"table/{table}")["rows"]]
        assert self.con is not None
        return [list(r) for r in store.table_rows(self.con, table)]

    def close(self) -> None:
        if self.con is not None:
            self.con.close()


class ReplayedPayouts:
    """The replayed ledger as the settlement job reads a ledger (settlement.job.PayoutSource):
    closed epochs with payees, their payouts, and the digest of their PayoutsComputed event."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def due_epochs(self, realm: str | None) -> list[tuple[str, int]]:
        rows = self.con.execute(
            "SELECT realm, epoch FROM epochs WHERE payees > 0 AND realm = coalesce(?, realm)"
            " ORDER BY epoch, realm",
            [realm],
        ).fetchall()
        return [(str(r), int(e)) for r, e in rows]

    def payouts(self, realm: str, epoch: int) -> list[Payout]:
        rows = self.con.execute(
            "SELECT account, payee_class, amount FROM payouts WHERE realm = ? AND epoch = ?"
            " ORDER BY payee_class, account",
            [realm, epoch],
        ).fetchall()
        return [Payout(str(a), str(c), int(v)) for a, c, v in rows]

    def logged_digest(self, realm: str, epoch: int) -> str | None:
        row = self.con.execute(
            "SELECT confirmed_digest FROM epochs WHERE realm = ? AND epoch = ?", [realm, epoch]
        ).fetchone()
        return str(row[0]) if row and row[0] else None

    def realms(self) -> list[str]:
        return [
            str(r)
            for (r,) in self.con.execute("SELECT realm FROM realms ORDER BY realm").fetchall()
        ]

    def settled(self, chain_id: int, contract: str) -> list[tuple[str, int]]:
        """Epochs the log records as settled (SettlementConfirmed) on that contract."""
        rows = self.con.execute(
            "SELECT DISTINCT realm, epoch FROM settlements WHERE type = 'SettlementConfirmed'"
            " AND chain_id = ? AND lower(contract) = lower(?) ORDER BY ALL",
            [chain_id, contract],
        ).fetchall()
        return [(str(r), int(e)) for r, e in rows]


def _normalise(rows: list[list[Any]]) -> list[tuple[str, ...]]:
    return sorted(tuple(str(v) for v in row) for row in rows)


def run_audit(
    bootstrap: str,
    trust: Trust,
    live: LiveSide,
    work_dir: Path,
    on_progress: Callable[[Progress], None] | None = None,
    max_diff_rows: int = 20,
    chain_check: ChainCheck | None = None,
) -> AuditReport:
    snap = live.snapshot()
    targets = {(t, int(p)): int(o) for t, p, o in snap["offsets"]}
    ahead: dict[tuple[str, int], set[int]] = {}
    for t, p, o in snap.get("ahead", []):
        ahead.setdefault((t, int(p)), set()).add(int(o))
    work_dir.mkdir(parents=True, exist_ok=True)
    partitions = snap.get("partitions")  # the live side is a shard: replay that shard
    service = replay(
        bootstrap,
        work_dir / "audit.duckdb",
        trust,
        targets=targets,
        on_progress=on_progress,
        ahead=ahead,
        partitions=frozenset(partitions) if partitions else None,
    )
    try:
        con = service.con
        diffs = []
        for table in store.AUDITED_TABLES:
            live_print = tuple(snap["tables"][table])
            ours = store.fingerprint(con, table)
            if (int(live_print[0]), str(live_print[1])) == ours:
                continue
            live_rows = _normalise(live.rows(table))
            replay_rows = _normalise([list(r) for r in store.table_rows(con, table)])
            live_set, replay_set = set(live_rows), set(replay_rows)
            diffs.append(
                TableDiff(
                    table,
                    (int(live_print[0]), str(live_print[1])),
                    ours,
                    [list(r) for r in live_rows if r not in replay_set][:max_diff_rows],
                    [list(r) for r in replay_rows if r not in live_set][:max_diff_rows],
                )
            )
        gaps = [
            (s, int(a), int(b))
            for s, a, b in con.execute("SELECT * FROM seq_gaps ORDER BY ALL").fetchall()
        ]
        chain = chain_check(con) if chain_check is not None else None
        return AuditReport(
            records=service.progress.records + service.progress.rejected,
            events=service.progress.events,
            rejected=dict(service.projector.rejected),
            gaps=gaps,
            diffs=diffs,
            tables=len(store.AUDITED_TABLES),
            reorg_flags=[
                (str(r), int(e), str(t), int(b))
                for r, e, t, b in con.execute(
                    "SELECT DISTINCT realm, epoch, retracted, block FROM reorg_flags ORDER BY ALL"
                ).fetchall()
            ],
            chain=chain,
        )
    finally:
        service.close()

"""Reading a ledger kept by several projector shards: each shard's database holds the rows of the
realms whose partitions it owns (and copies of what every shard needs); merged, they are exactly
the tables one projector keeps.

Merge rules, by what a table holds:

* a realm column: the rows of each realm from the shard that owns it (``shard_realms``: the
  realms of the partitions it owns; indexer facts of other realms are copies, and skipped);
* ``sources``: every shard follows every source's chain (same ``last_seq``/``last_hash``); the
  counts add up (each counts its own records) and the watermark is the highest any shard saw;
* ``rejected``: counts add up; ``seq_gaps``: each gap is written by the shard owning the record
  after it; ``prices`` (chain-wide, realm ``""``): from the shard that owns realm ``""``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import duckdb

from ledger import store
from ledger.query import QUERIES, QueryClient, QueryError, run_query

#: the query endpoint's name of the realms a shard owns
OWNED = "owned"


class Reader(Protocol):
    """One shard's ledger: its query endpoint (QueryClient) or its database file."""

    def get(self, path: str, **params: Any) -> Any: ...


class FileReader:
    """A stopped shard's database, read directly (same answers as its query endpoint)."""

    def __init__(self, path: Path) -> None:
        self.con = duckdb.connect(str(path), read_only=True)

    def get(self, path: str, **params: Any) -> Any:
        if path.startswith("table/"):
            table = path[6:]
            return {
                "columns": store.columns(self.con, table),
                "rows": [list(r) for r in store.table_rows(self.con, table)],
            }
        return run_query(self.con, path, params)

    def close(self) -> None:
        self.con.close()


class MergeError(ValueError):
    """Shards that do not add up to one ledger (a realm owned twice, say)."""


@dataclass
class Shard:
    reader: Reader
    owned: frozenset[str]


def open_shards(readers: Sequence[Reader]) -> list[Shard]:
    """The shards behind `readers`, each with the realms it owns; a realm owned by two is an
    error (two shards were given overlapping partitions, or one database twice)."""
    shards = [Shard(r, frozenset(str(row[0]) for row in r.get(OWNED)["rows"])) for r in readers]
    seen: dict[str, int] = {}
    for i, shard in enumerate(shards):
        for realm in shard.owned:
            if realm in seen:
                raise MergeError(f"realm {realm!r} is owned by shards {seen[realm]} and {i}")
            seen[realm] = i
    return shards


def merged(shards: Sequence[Shard], path: str, **params: Any) -> dict[str, Any]:
    """The answer of one query endpoint path (a query name or ``table/NAME``) across shards."""
    answers = [s.reader.get(path, **params) for s in shards]
    columns: list[str] = answers[0]["columns"]
    name = path.removeprefix("table/")
    rows: list[list[Any]]
    if name == "sources":
        rows = sorted(_sources(columns, answers), key=lambda row: str(row[0]))
    elif name in ("rejected", "dead"):
        totals: dict[str, int] = {}
        for answer in answers:
            for reason, n in answer["rows"]:
                totals[reason] = totals.get(reason, 0) + int(n)
        rows = sorted(([r, n] for r, n in totals.items()), key=lambda row: (-row[1], row[0]))
        return {"columns": columns, "rows": rows}
    elif name == "seq_gaps":
        rows = sorted((row for answer in answers for row in answer["rows"]), key=_order)
    elif name == "prices":
        rows = [
            row for s, a in zip(shards, answers, strict=True) if "" in s.owned for row in a["rows"]
        ]
    elif "realm" in columns:
        # each realm's rows come from one shard, in its query's order (which starts with the
        # realm): a stable sort on the realm alone keeps it
        at = columns.index("realm")
        rows = [
            row
            for s, answer in zip(shards, answers, strict=True)
            for row in answer["rows"]
            if row[at] in s.owned
        ]
        rows.sort(key=lambda row: str(row[at]))
    else:
        raise MergeError(f"no rule merges {path!r} across shards")
    return {"columns": columns, "rows": rows}


def _sources(columns: list[str], answers: list[Any]) -> list[list[Any]]:
    at = {c: i for i, c in enumerate(columns)}
    out: dict[str, list[Any]] = {}
    for answer in answers:
        for row in answer["rows"]:
            current = out.get(row[at["source"]])
            if current is None:
                out[row[at["source"]]] = list(row)
                continue
            if row[at["last_seq"]] > current[at["last_seq"]]:  # a shard further along the log
                current[at["last_seq"]], current[at["last_hash"]] = (
                    row[at["last_seq"]],
                    row[at["last_hash"]],
                )
            current[at["watermark"]] = max(current[at["watermark"]], row[at["watermark"]])
            for counted in ("records", "events"):
                current[at[counted]] += row[at[counted]]
    return list(out.values())


def _order(row: list[Any]) -> tuple[Any, ...]:
    # values of one column share a type; None first
    return tuple((v is not None, v if isinstance(v, int | float) else str(v)) for v in row)


def merged_tables(shards: Sequence[Shard]) -> dict[str, list[tuple[Any, ...]]]:
    """Every audited table, merged: what one projector over the same log would hold."""
    return {
        table: [tuple(r) for r in merged(shards, f"table/{table}")["rows"]]
        for table in store.AUDITED_TABLES
    }


def fingerprints(tables: dict[str, list[tuple[Any, ...]]]) -> dict[str, tuple[int, str]]:
    """`store.fingerprint` of merged tables (loaded into an in-memory database of the schema)."""
    con = store.connect(":memory:")
    try:
        out = {}
        for table, rows in tables.items():
            store.append_rows(con, table, rows)
            out[table] = store.fingerprint(con, table)
        return out
    finally:
        con.close()


class ShardedClient(QueryClient):
    """A QueryClient over several shards' endpoints: every answer merged (settle reads a
    sharded ledger through it)."""

    def __init__(self, urls: Sequence[str], timeout_s: float = 30.0) -> None:
        super().__init__(urls[0], timeout_s)
        self.readers = [QueryClient(url, timeout_s) for url in urls]

    def get(self, path: str, **params: Any) -> Any:
        try:
            return merged(open_shards(self.readers), path, **params)
        except MergeError as exc:
            raise QueryError(f"shards {[r.url for r in self.readers]}: {exc}") from exc


def query_client(urls: str) -> QueryClient:
    """A client of one query endpoint, or of several shards' (comma-separated URLs)."""
    parts = [u.strip() for u in urls.split(",") if u.strip()]
    return QueryClient(parts[0]) if len(parts) == 1 else ShardedClient(parts)


def reader_for(target: str) -> Reader:
    """A query endpoint URL (http://…) or a database file."""
    if target.startswith(("http://", "https://")):
        return QueryClient(target)
    return FileReader(Path(target))


__all__ = [
    "FileReader",
    "MergeError",
    "QUERIES",
    "Shard",
    "ShardedClient",
    "audit_shards",
    "fingerprints",
    "merged",
    "merged_tables",
    "open_shards",
    "query_client",
    "reader_for",
]


# -- auditing shards ---------------------------------------------------------------------------


def audit_shards(bootstrap: str, trust: Any, targets: Sequence[str], work_dir: Path) -> list[Any]:
    """Audit every shard against its own replay (the same partitions, to the offsets its
    snapshot names), the replays in parallel processes; one AuditReport a shard, in order."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(len(targets), mp_context=mp.get_context("spawn")) as pool:
        futures = [
            pool.submit(_audit_shard, bootstrap, trust, target, work_dir / f"shard{i}")
            for i, target in enumerate(targets)
        ]
        return [f.result() for f in futures]


def _audit_shard(bootstrap: str, trust: Any, target: str, work_dir: Path) -> Any:
    from ledger.audit import LiveSide, run_audit

    live = LiveSide(url=target) if target.startswith(("http://", "https://")) else None
    live = live or LiveSide(db_path=Path(target))
    try:
        return run_audit(bootstrap, trust, live, work_dir)
    finally:
        live.close()

"""SQLite journal of signed transactions: every transaction is written here before it is broadcast.

One row per signed transaction. The rows of one sender that share a nonce form a *lineage* (the
original, its fee-bumped replacements, maybe a cancellation); at most one of them can be mined.
A lineage is *open* until one of its transactions is confirmed or the lineage is abandoned; the
submitter resumes open lineages after a crash. Rows are never deleted.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from infra import sqlite_guard


class TxState(StrEnum):
    SIGNED = "signed"  # journaled, maybe not broadcast yet
    SENT = "sent"  # broadcast accepted (or already known) by the node
    MINED = "mined"  # a receipt with status 1, not yet confirmed
    CONFIRMED = "confirmed"  # receipt re-checked after N confirmations: final
    REVERTED = "reverted"  # mined with status 0: final
    SUPERSEDED = "superseded"  # another transaction of the lineage was mined: final
    DROPPED = "dropped"  # nonce consumed by no transaction of ours, or given up: final


OPEN_STATES = (TxState.SIGNED, TxState.SENT, TxState.MINED)
FINAL_STATES = (TxState.CONFIRMED, TxState.REVERTED, TxState.SUPERSEDED, TxState.DROPPED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS txs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    chain_id        INTEGER NOT NULL,
    sender          TEXT    NOT NULL,
    nonce           INTEGER NOT NULL,
    work_key        TEXT    NOT NULL,
    kind            TEXT    NOT NULL,      -- 'work' or 'cancel'
    tx_hash         TEXT    NOT NULL UNIQUE,
    raw_tx          TEXT    NOT NULL,
    max_fee_wei     INTEGER NOT NULL,
    priority_fee_wei INTEGER NOT NULL,
    gas_limit       INTEGER NOT NULL,
    state           TEXT    NOT NULL,
    block_number    INTEGER,
    block_hash      TEXT,
    detail          TEXT    NOT NULL DEFAULT '',
    created_at      REAL    NOT NULL,
    updated_at      REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS txs_lineage ON txs (chain_id, sender, nonce);
CREATE INDEX IF NOT EXISTS txs_work ON txs (work_key);
CREATE TABLE IF NOT EXISTS records (
    record_key      TEXT PRIMARY KEY,      -- e.g. 'confirmed:<realm>:<epoch>:<chain>:<contract>'
    detail          TEXT NOT NULL,
    recorded_at     REAL NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class JournaledTx:
    id: int
    chain_id: int
    sender: str
    nonce: int
    work_key: str
    kind: str
    tx_hash: str
    raw_tx: str
    max_fee_wei: int
    priority_fee_wei: int
    gas_limit: int
    state: TxState
    block_number: int | None
    block_hash: str | None
    detail: str


#: how long opening a journal another job is opening at the same moment may take
OPEN_TIMEOUT_S = 30.0

JOURNAL_STORE = sqlite_guard.GuardedStore(
    "settlement journal",
    ("txs", "records"),
    "Move the file aside and restore it from a backup. A new, empty journal forgets the "
    "transactions signed but not yet confirmed and what earlier runs recorded.",
)


class Journal:
    """The transaction journal in one SQLite file, guarded (`infra.sqlite_guard`): a write is in
    the main file when it returns, and a damaged file is refused at open."""

    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        """Open (or create) the journal; `read_only` opens an existing one for reading only (an
        auditor reading what a job decided: sqlite3.OperationalError when there is none). A
        damaged file is refused (`infra.sqlite_guard.StoreDamaged`)."""
        self.path = Path(path)
        self.read_only = read_only
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite_guard.connect(
            self.path, JOURNAL_STORE, timeout_s=OPEN_TIMEOUT_S, read_only=read_only
        )
        if read_only:
            self._db.execute("SELECT count(*) FROM records").fetchone()
            return
        self._db.executescript(_SCHEMA)
        sqlite_guard.seal(self._db, JOURNAL_STORE)

    def close(self) -> None:
        self._db.close()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return sqlite_guard.transaction(self._db)

    # -- writes ---------------------------------------------------------------------------------

    def add(
        self,
        *,
        chain_id: int,
        sender: str,
        nonce: int,
        work_key: str,
        kind: str,
        tx_hash: str,
        raw_tx: str,
        max_fee_wei: int,
        priority_fee_wei: int,
        gas_limit: int,
    ) -> JournaledTx:
        """Journal a signed transaction (state SIGNED); durable when this returns."""
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO txs (chain_id, sender, nonce, work_key, kind, tx_hash, raw_tx,"
                " max_fee_wei, priority_fee_wei, gas_limit, state, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    chain_id,
                    sender,
                    nonce,
                    work_key,
                    kind,
                    tx_hash,
                    raw_tx,
                    max_fee_wei,
                    priority_fee_wei,
                    gas_limit,
                    TxState.SIGNED.value,
                    now,
                    now,
                ),
            )
            row_id = cur.lastrowid
        assert row_id is not None
        return self.get(row_id)

    def set_state(
        self,
        tx_hash: str,
        state: TxState,
        *,
        block_number: int | None = None,
        block_hash: str | None = None,
        detail: str = "",
    ) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE txs SET state=?, block_number=?, block_hash=?, detail=?, updated_at=?"
                " WHERE tx_hash=?",
                (state.value, block_number, block_hash, detail, time.time(), tx_hash),
            )

    def close_lineage(self, chain_id: int, sender: str, nonce: int, winner: str | None) -> None:
        """Mark every open transaction of the lineage except `winner` SUPERSEDED (or DROPPED when
        there is no winner of ours)."""
        state = TxState.SUPERSEDED if winner else TxState.DROPPED
        placeholders = ",".join("?" for _ in OPEN_STATES)
        with self._tx() as db:
            db.execute(
                f"UPDATE txs SET state=?, updated_at=? WHERE chain_id=? AND sender=? AND nonce=?"
                f" AND tx_hash != ? AND state IN ({placeholders})",
                (state.value, time.time(), chain_id, sender, nonce, winner or "", *OPEN_STATES),
            )

    def mark_recorded(self, record_key: str, detail: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO records (record_key, detail, recorded_at) VALUES (?,?,?)",
                (record_key, detail, time.time()),
            )

    # -- reads ----------------------------------------------------------------------------------

    def get(self, row_id: int) -> JournaledTx:
        rows = self._select("WHERE id=?", (row_id,))
        if not rows:
            raise KeyError(row_id)
        return rows[0]

    def by_hash(self, tx_hash: str) -> JournaledTx | None:
        rows = self._select("WHERE tx_hash=?", (tx_hash,))
        return rows[0] if rows else None

    def open_lineages(self, chain_id: int, sender: str) -> list[list[JournaledTx]]:
        """Open lineages of a sender, lowest nonce first; each lineage oldest transaction first."""
        placeholders = ",".join("?" for _ in OPEN_STATES)
        rows = self._select(
            f"WHERE chain_id=? AND sender=? AND state IN ({placeholders}) ORDER BY nonce, id",
            (chain_id, sender, *OPEN_STATES),
        )
        lineages: dict[int, list[JournaledTx]] = {}
        for row in rows:
            lineages.setdefault(row.nonce, []).append(row)
        return [lineages[n] for n in sorted(lineages)]

    def max_nonce(self, chain_id: int, sender: str) -> int | None:
        """Highest nonce of a transaction of ours that is open or was mined (not dropped)."""
        row = self._db.execute(
            "SELECT MAX(nonce) FROM txs WHERE chain_id=? AND sender=? AND state != ?",
            (chain_id, sender, TxState.DROPPED.value),
        ).fetchone()
        return None if row[0] is None else int(row[0])

    def for_work(self, work_key: str) -> list[JournaledTx]:
        return self._select("WHERE work_key=? ORDER BY id", (work_key,))

    def confirmed(self, work_key: str) -> JournaledTx | None:
        rows = self._select(
            "WHERE work_key=? AND state=? ORDER BY id DESC", (work_key, TxState.CONFIRMED.value)
        )
        return rows[0] if rows else None

    def recorded(self, record_key: str) -> bool:
        row = self._db.execute("SELECT 1 FROM records WHERE record_key=?", (record_key,)).fetchone()
        return row is not None

    def record_detail(self, record_key: str) -> str | None:
        row = self._db.execute(
            "SELECT detail FROM records WHERE record_key=?", (record_key,)
        ).fetchone()
        return None if row is None else str(row[0])

    def all(self) -> list[JournaledTx]:
        return self._select("ORDER BY id", ())

    def _select(self, where: str, params: tuple[object, ...]) -> list[JournaledTx]:
        cur = self._db.execute(
            "SELECT id, chain_id, sender, nonce, work_key, kind, tx_hash, raw_tx, max_fee_wei,"
            " priority_fee_wei, gas_limit, state, block_number, block_hash, detail FROM txs "
            + where,
            params,
        )
        return [
            JournaledTx(
                id=r[0],
                chain_id=r[1],
                sender=r[2],
                nonce=r[3],
                work_key=r[4],
                kind=r[5],
                tx_hash=r[6],
                raw_tx=r[7],
                max_fee_wei=r[8],
                priority_fee_wei=r[9],
                gas_limit=r[10],
                state=TxState(r[11]),
                block_number=r[12],
                block_hash=r[13],
                detail=r[14],
            )
            for r in cur.fetchall()
        ]

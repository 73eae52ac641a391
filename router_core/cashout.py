"""Cheque cash-out batching: received cheques wait in a persistent queue until their uncashed
value passes `min_batch_value` or the oldest waits `max_age_s`; then a batch goes to a
`CashoutSink` (the settlement submitter implements it).

Cheques are cumulative, so the queue keeps only the latest cheque per (chain id, chequebook,
beneficiary); its value is `cumulative - cashed`. A batch is marked cashed only after the sink
returns, so a crash in between hands the same cheques again (the Chequebook pays only what a
cheque adds over `paidOut`, so a repeat cannot pay twice).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from domain.swap import ChequeClaim


@dataclass(frozen=True, slots=True)
class QueuedCheque:
    chain_id: int
    chequebook: str
    beneficiary: str
    cumulative: int
    signature: str
    #: what the chequebook already paid out (as far as this queue knows)
    cashed: int
    realm: str
    peer: str
    queued_at_s: float

    @property
    def value(self) -> int:
        return self.cumulative - self.cashed


class CashoutSink(Protocol):
    def cash_out(self, batch: Sequence[QueuedCheque]) -> None:
        """Cash every cheque of the batch (one transaction where possible); raise on failure."""


@dataclass(frozen=True, slots=True)
class CashoutPolicy:
    min_batch_value: int
    max_age_s: float
    max_batch_cheques: int = 64


_SCHEMA = """
CREATE TABLE IF NOT EXISTS cheques (
    chain_id INTEGER NOT NULL,
    chequebook TEXT NOT NULL,
    beneficiary TEXT NOT NULL,
    cumulative TEXT NOT NULL,
    signature TEXT NOT NULL,
    cashed TEXT NOT NULL DEFAULT '0',
    realm TEXT NOT NULL,
    peer TEXT NOT NULL,
    queued_at_s REAL NOT NULL,
    PRIMARY KEY (chain_id, chequebook, beneficiary)
)
"""


class CashoutQueue:
    """Persistent (SQLite) queue of the latest uncashed cheque per chequebook and beneficiary.
    Amounts are stored as decimal text: token amounts exceed SQLite's 64-bit integers."""

    def __init__(
        self, path: Path, policy: CashoutPolicy, clock: Callable[[], float] = time.time
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self.policy = policy
        self._clock = clock

    def close(self) -> None:
        self._db.close()

    def add(self, realm: str, peer: str, claim: ChequeClaim) -> None:
        """Queue an accepted cheque (replaces an older one of the same chequebook/beneficiary)."""
        key = (claim.chain_id, claim.chequebook.lower(), claim.beneficiary.lower())
        row = self._db.execute(
            "SELECT cumulative, queued_at_s FROM cheques WHERE chain_id=? AND chequebook=? AND beneficiary=?",
            key,
        ).fetchone()
        if row is not None and int(row[0]) >= claim.cumulative:
            return  # an older cheque arriving late changes nothing
        queued_at = float(row[1]) if row is not None and self._value_of(key) > 0 else self._clock()
        self._db.execute(
            """INSERT INTO cheques (chain_id, chequebook, beneficiary, cumulative, signature, realm, peer, queued_at_s)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (chain_id, chequebook, beneficiary) DO UPDATE SET
                 cumulative=excluded.cumulative, signature=excluded.signature,
                 realm=excluded.realm, peer=excluded.peer, queued_at_s=?""",
            (*key, str(claim.cumulative), claim.signature, realm, peer, queued_at, queued_at),
        )

    def _value_of(self, key: tuple[int, str, str]) -> int:
        row = self._db.execute(
            "SELECT cumulative, cashed FROM cheques WHERE chain_id=? AND chequebook=? AND beneficiary=?",
            key,
        ).fetchone()
        return int(row[0]) - int(row[1]) if row is not None else 0

    def pending(self) -> list[QueuedCheque]:
        """Cheques with uncashed value, oldest first."""
        rows = self._db.execute(
            "SELECT chain_id, chequebook, beneficiary, cumulative, signature, cashed, realm, peer, queued_at_s"
            " FROM cheques ORDER BY queued_at_s"
        ).fetchall()
        cheques = [
            QueuedCheque(r[0], r[1], r[2], int(r[3]), r[4], int(r[5]), r[6], r[7], float(r[8]))
            for r in rows
        ]
        return [c for c in cheques if c.value > 0]

    def due(self) -> list[QueuedCheque]:
        """The batch to cash now under the policy (empty if none is due)."""
        pending = self.pending()
        if not pending:
            return []
        total = sum(c.value for c in pending)
        oldest_age = self._clock() - pending[0].queued_at_s
        if total < self.policy.min_batch_value and oldest_age < self.policy.max_age_s:
            return []
        by_value = sorted(pending, key=lambda c: c.value, reverse=True)
        return by_value[: self.policy.max_batch_cheques]

    def mark_cashed(self, batch: Sequence[QueuedCheque]) -> None:
        with self._db:
            for c in batch:
                self._db.execute(
                    "UPDATE cheques SET cashed=? WHERE chain_id=? AND chequebook=? AND beneficiary=?",
                    (str(c.cumulative), c.chain_id, c.chequebook, c.beneficiary),
                )

    def run_once(self, sink: CashoutSink) -> int:
        """Hand one due batch to the sink; returns the value cashed (0 if nothing was due)."""
        batch = self.due()
        if not batch:
            return 0
        sink.cash_out(batch)
        self.mark_cashed(batch)
        return sum(c.value for c in batch)

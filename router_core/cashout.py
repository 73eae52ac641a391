"""Cheque cash-out: received cheques wait in a persistent queue until their uncashed value passes
`min_batch_value` or the oldest waits `max_age_s`; then a batch goes to a `CashoutSink`.

The queue keeps the latest cheque per (chain id, chequebook, beneficiary, *signer*): a cheque
signed by someone other than the chequebook's issuer never replaces the issuer's valid one, it
only sits beside it. The sink reports per cheque what the chain now holds (`paid_out`) and which
cheques the chain refuses; a refused cheque is *parked* with the reason (kept, listed by
`parked()`, never handed out again until a newer cheque of the same signer arrives), so one bad
chequebook or cheque never blocks the others. A batch is marked only after the sink returns: a
crash in between hands the same cheques again, and the Chequebook pays only what a cheque adds
over `paidOut`, so a repeat cannot pay twice. `open_chequebook_sink` builds the on-chain sink
(`settlement.cashout.ChequebookCashout` through the crash-safe submitter) from the router config.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from eth_keys.exceptions import BadSignature

from domain.cheque import Cheque
from domain.swap import ChequeClaim
from infra import sqlite_guard

if TYPE_CHECKING:
    from router_core.config import RouterConfig
    from settlement.cashout import ChequebookCashout

log = logging.getLogger(__name__)

UNKNOWN_SIGNER = ""  # a signature nothing can be recovered from (the chain refuses it too)
SCHEMA_VERSION = 2
#: how long opening waits for another connection's lock
OPEN_TIMEOUT_S = 30.0
CASHOUT_STORE = sqlite_guard.GuardedStore(
    "cash-out queue",
    ("cheques",),
    "Move the file aside and restore it from a backup, or start an empty queue and queue again "
    "the latest cheque of each chequebook and signer from the event log's ChequeReceived events "
    "(cumulative amount and signature of each cheque the router accepted; the chequebook pays "
    "only what a cheque adds over paidOut, so queueing one again cannot pay twice).",
)


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
    #: the address the signature recovers to (the issuer's, for a cheque the chain will cash)
    signer: str = UNKNOWN_SIGNER
    #: why the chain refuses this cheque ("" while it is pending)
    parked_reason: str = ""

    @property
    def value(self) -> int:
        return self.cumulative - self.cashed


class ChequeOutcome(Protocol):
    """What cashing one cheque of a batch left on chain (`settlement.cashout.CashResult`)."""

    @property
    def cheque(self) -> QueuedCheque: ...

    @property
    def paid_out(self) -> int:
        """The chequebook's paidOut to the beneficiary afterwards; below `cumulative` when not
        all was cashed (a bounced cheque, an empty chequebook): the rest stays queued."""
        ...

    @property
    def refused(self) -> str:
        """Why the chain refuses the cheque (it is parked); "" if it was not refused."""
        ...


class CashoutSink(Protocol):
    def cash_out(self, batch: Sequence[QueuedCheque]) -> Sequence[ChequeOutcome]:
        """Cash what the chain accepts of the batch and report every cheque's outcome. Raise only
        on failures that say nothing about the cheques (node unreachable): the batch is retried."""
        ...


class CashoutQueueFull(RuntimeError):
    """`max_pending_cheques` cheques wait already: refuse the new cheque before crediting it."""


@dataclass(frozen=True, slots=True)
class CashoutPolicy:
    min_batch_value: int
    max_age_s: float
    max_batch_cheques: int = 64
    max_pending_cheques: int = 100_000  # rows with value to cash, parked ones included


_SCHEMA = """
CREATE TABLE IF NOT EXISTS cheques (
    chain_id INTEGER NOT NULL,
    chequebook TEXT NOT NULL,
    beneficiary TEXT NOT NULL,
    signer TEXT NOT NULL,
    cumulative TEXT NOT NULL,
    signature TEXT NOT NULL,
    cashed TEXT NOT NULL DEFAULT '0',
    realm TEXT NOT NULL,
    peer TEXT NOT NULL,
    queued_at_s REAL NOT NULL,
    parked_reason TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (chain_id, chequebook, beneficiary, signer)
)
"""
_COLUMNS = (
    "chain_id, chequebook, beneficiary, cumulative, signature, cashed, realm, peer, queued_at_s,"
    " signer, parked_reason"
)
_KEY = "chain_id=? AND chequebook=? AND beneficiary=? AND signer=?"


def cheque_signer(claim: ChequeClaim) -> str:
    """The lowercase address a cheque's signature recovers to (its EIP-712 typed data, as the
    Chequebook hashes it); UNKNOWN_SIGNER for a malformed signature."""
    try:
        signature = bytes.fromhex(claim.signature.removeprefix("0x"))
        cheque = Cheque(claim.chain_id, claim.chequebook, claim.beneficiary, claim.cumulative)
        return cheque.signer(signature).lower()
    except (ValueError, TypeError, BadSignature):
        return UNKNOWN_SIGNER


class CashoutQueue:
    """Persistent (SQLite) queue of the latest cheque per chequebook, beneficiary and signer.
    Amounts are stored as decimal text: token amounts exceed SQLite's 64-bit integers. The
    router adds from its event loop and cashes from a worker thread: one lock serialises both."""

    def __init__(
        self, path: Path, policy: CashoutPolicy, clock: Callable[[], float] = time.time
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite_guard.connect(
            path, CASHOUT_STORE, timeout_s=OPEN_TIMEOUT_S, check_same_thread=False
        )
        self._lock = threading.Lock()
        self._migrate()
        sqlite_guard.seal(self._db, CASHOUT_STORE)
        self.policy = policy
        self._clock = clock

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, sqlite_guard.transaction(self._db) as db:
            yield db

    def _migrate(self) -> None:
        """Version 1 keyed cheques by (chain, chequebook, beneficiary): re-key them by signer."""
        with self._tx() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            old = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='cheques'"
            ).fetchone()
            if old is not None and version < SCHEMA_VERSION:
                db.execute("ALTER TABLE cheques RENAME TO cheques_v1")
                db.execute(_SCHEMA)
                for row in db.execute("SELECT * FROM cheques_v1").fetchall():
                    claim = ChequeClaim(row[0], row[1], row[2], int(row[3]), row[4])
                    db.execute(
                        f"INSERT INTO cheques ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,'')",
                        (*row[:9], cheque_signer(claim)),
                    )
                db.execute("DROP TABLE cheques_v1")
            db.execute(_SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, realm: str, peer: str, claim: ChequeClaim) -> None:
        """Queue an accepted cheque; it replaces only an older cheque of the same signer (and
        un-parks it). Raises CashoutQueueFull at `max_pending_cheques` for a new key."""
        signer = cheque_signer(claim)
        key = (claim.chain_id, claim.chequebook.lower(), claim.beneficiary.lower(), signer)
        with self._tx() as db:
            row = db.execute(
                f"SELECT cumulative, cashed, queued_at_s, parked_reason FROM cheques WHERE {_KEY}",
                key,
            ).fetchone()
            if row is not None and int(row[0]) >= claim.cumulative:
                return  # an older cheque arriving late changes nothing
            if row is None and _waiting(db) >= self.policy.max_pending_cheques:
                raise CashoutQueueFull(
                    f"{self.policy.max_pending_cheques} cheques wait for cash-out; "
                    f"cheque of {peer} on {claim.chequebook} not queued"
                )
            still_waiting = row is not None and int(row[0]) > int(row[1]) and not row[3]
            queued_at = float(row[2]) if still_waiting else self._clock()
            db.execute(
                f"""INSERT INTO cheques ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, '0', ?, ?, ?, ?, '')
                   ON CONFLICT (chain_id, chequebook, beneficiary, signer) DO UPDATE SET
                     cumulative=excluded.cumulative, signature=excluded.signature,
                     realm=excluded.realm, peer=excluded.peer, queued_at_s=excluded.queued_at_s,
                     parked_reason=''""",
                (*key[:3], str(claim.cumulative), claim.signature, realm, peer, queued_at, signer),
            )

    def _rows(self, where: str) -> list[QueuedCheque]:
        """Rows with value to cash (`cashed` is written as the exact decimal of `cumulative` once
        all is cashed, so the text comparison is exact)."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM cheques WHERE cumulative != cashed AND {where}"
                " ORDER BY queued_at_s"
            ).fetchall()
        return [
            QueuedCheque(
                r[0], r[1], r[2], int(r[3]), r[4], int(r[5]), r[6], r[7], float(r[8]), r[9], r[10]
            )
            for r in rows
        ]

    def pending(self) -> list[QueuedCheque]:
        """Cheques with uncashed value that are not parked, oldest first."""
        return self._rows("parked_reason = ''")

    def parked(self) -> list[QueuedCheque]:
        """Cheques the chain refused, with `parked_reason`; kept, never cashed automatically."""
        return self._rows("parked_reason != ''")

    def waiting(self) -> int:
        """Rows that hold value to cash (pending or parked): what `max_pending_cheques` bounds."""
        with self._lock:
            return _waiting(self._db)

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

    def record(self, outcomes: Sequence[ChequeOutcome]) -> None:
        """Store what the chain paid out and park the refused cheques, in one transaction."""
        with self._tx() as db:
            for o in outcomes:
                c = o.cheque
                key = (c.chain_id, c.chequebook, c.beneficiary, c.signer)
                if o.refused:
                    db.execute(
                        f"UPDATE cheques SET parked_reason=? WHERE {_KEY}", (o.refused, *key)
                    )
                    log.warning(
                        "cheque of %s on %s for %s parked: %s",
                        c.peer,
                        c.chequebook,
                        c.cumulative,
                        o.refused,
                    )
                elif o.paid_out > c.cashed:
                    cashed = min(o.paid_out, c.cumulative)
                    db.execute(f"UPDATE cheques SET cashed=? WHERE {_KEY}", (str(cashed), *key))

    def run_once(self, sink: CashoutSink) -> int:
        """Hand one due batch to the sink; returns the value cashed (0 if nothing was due)."""
        batch = self.due()
        if not batch:
            return 0
        outcomes = sink.cash_out(batch)
        self.record(outcomes)
        return sum(
            min(o.paid_out, o.cheque.cumulative) - o.cheque.cashed
            for o in outcomes
            if not o.refused and o.paid_out > o.cheque.cashed
        )


def _waiting(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT COUNT(*) FROM cheques WHERE cumulative != cashed").fetchone()[0])


def open_chequebook_sink(config: RouterConfig, data_dir: Path) -> ChequebookCashout | None:
    """The on-chain sink of a router: `Chequebook.cashChequeBatch` sent with the `[cashout]` key
    on the router's chain (`[cashout] chain_rpc_url`, else the router's), journaled under
    `data_dir`. None (cheques stay queued) when no cash-out key is configured. Blocks on RPC:
    call it off the event loop."""
    from eth_account import Account
    from web3 import HTTPProvider, Web3

    from ledger.keys import load_signer
    from settlement.cashout import ChequebookCashout
    from settlement.journal import Journal
    from settlement.submitter import FeePolicy, Submitter, SubmitterConfig

    cfg = config.cashout
    if not cfg.key_file:
        log.warning("no [cashout] key_file: received cheques are queued, not cashed")
        return None
    rpc_url = cfg.chain_rpc_url or config.chain_rpc_url
    if not rpc_url:
        raise ValueError("[cashout] key_file is set but no chain_rpc_url ([cashout] or top level)")
    account = Account.from_key(load_signer(cfg.key_file).private_key)
    w3 = Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": cfg.rpc_timeout_s}))
    submitter = Submitter(
        w3,
        account,
        Journal(data_dir / "cashout-journal.sqlite"),
        SubmitterConfig(
            chain_id=config.chain_id,
            fees=FeePolicy(max_fee_cap_wei=cfg.max_fee_wei),
            confirmations=cfg.confirmations,
        ),
    )
    submitter.open()  # chain id checked, the key's lock taken
    return ChequebookCashout(w3, submitter)

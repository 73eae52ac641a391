"""Storage faults in the SQLite files (settlement journal, router cash-out queue and SWAP accounts)
and the DuckDB projection: a writer is SIGKILLed at a random commit, then its files suffer a torn
write, a lost fsync, a bit flip, or it ran out of space. After each: every acknowledged (committed) row is there
unchanged, or opening the store refuses with an error that names the damage. The projection,
derived from the log, may instead lose whole commits to a bit flip if their log offsets go with
them (its projector re-reads them), never a row without its offset.

Seeds: FAULT_SEEDS (comma-separated), `make fault` for long runs."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest
from _db_workload import OFFSETS_TOPIC, row, wal_of

SEEDS = [int(s) for s in os.environ.get("FAULT_SEEDS", "4,5,6,7").split(",")]  # each fault once
TARGETS = ("journal", "cashout", "swap", "duckdb")
FAULTS = ("torn", "lost_fsync", "bitflip", "enospc")
#: what a store says when it refuses damaged files: a clean refusal names the damage
DAMAGE_WORDS = ("malformed", "not a database", "corrupt", "checksum", "invalid", "damaged")
#: the key under which the projection's read-back gives the log offset its projector resumes at
RESUME = "resume at"


def _run_child(
    target: str, path: Path, rng: random.Random, fault: str
) -> tuple[list[int], int, str]:
    """(acknowledged ks, WAL bytes at the last ack, the child's error line)."""
    limit = rng.randint(4_000, 300_000) if fault == "enospc" else 0
    child = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("_db_workload.py")),
            target,
            str(path),
            str(limit),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert child.stdout is not None
    kill_after = rng.randint(5, 150)
    acked: list[int] = []
    wal_at_ack = 0
    error = ""
    for line in child.stdout:
        if line.startswith("ERR"):
            error = line.strip()
            break
        _, k, wal = line.split()
        acked.append(int(k))
        wal_at_ack = int(wal)
        if fault != "enospc" and len(acked) >= kill_after:
            assert child.poll() is None, "the writer exited before it was killed"
            child.kill()
            break
    child.kill()
    child.wait()
    return acked, wal_at_ack, error


def _damage(target: str, path: Path, rng: random.Random, fault: str, wal_at_ack: int) -> str:
    wal = wal_of(target, path)
    if fault in ("torn", "lost_fsync") and wal.exists():
        size = wal.stat().st_size
        cut = (
            wal_at_ack if fault == "lost_fsync" else rng.randint(wal_at_ack, max(wal_at_ack, size))
        )
        with open(wal, "r+b") as fh:
            fh.truncate(cut)
        return f"{wal.name} cut from {size} to {cut} bytes"
    if fault == "bitflip":
        files = [p for p in (path, wal) if p.exists() and p.stat().st_size]
        victim = rng.choice(files)
        data = bytearray(victim.read_bytes())
        at = rng.randrange(len(data))
        data[at] ^= 1 << rng.randrange(8)
        victim.write_bytes(bytes(data))
        return f"bit flipped in {victim.name} at {at} of {len(data)}"
    return "no damage"


def _read_back(target: str, path: Path) -> dict[str, str]:
    """key -> content of every row, through the production class's own open."""
    if target == "journal":
        from settlement.journal import Journal

        journal = Journal(path)
        try:
            rows = journal._db.execute("SELECT work_key, tx_hash FROM txs").fetchall()
            check = journal._db.execute("PRAGMA integrity_check").fetchone()
        finally:
            journal.close()
    elif target == "swap":
        from domain.swap import account_id
        from router_core.swap import open_accounts

        accounts = open_accounts(path)
        try:
            account: Any = accounts.repository.get(account_id("0xrouter", "r", "0xpeer"))
        finally:
            accounts.close()
        # the account's history as rows: charge k exists if k messages were charged
        m = account.messages
        assert account.debt == m * (m + 1) // 2, f"debt {account.debt} after {m} charges"
        return dict(row(k) for k in range(1, m + 1))
    elif target == "cashout":
        from router_core.cashout import CashoutPolicy, CashoutQueue

        queue = CashoutQueue(path, CashoutPolicy(1, 1.0, 8))
        try:
            rows = [(c.peer, c.signature) for c in queue.pending()]
            check = queue._db.execute("PRAGMA integrity_check").fetchone()
        finally:
            queue.close()
    else:
        from ledger import store

        con = store.connect(path)
        try:
            rows = con.execute("SELECT realm, source FROM usage_blocks").fetchall()
            check = ("ok",)
            found = con.execute(
                "SELECT next_offset FROM offsets WHERE topic = ? AND part = 0", [OFFSETS_TOPIC]
            ).fetchone()
            # the projector resumes reading the log here (its start when no offset survived)
            rows.append((RESUME, str(found[0] if found else 1)))
        finally:
            con.close()
    if check is None or check[0] != "ok":
        raise sqlite3.DatabaseError(f"integrity_check: {check}")
    return dict(rows)


def _cases() -> list[object]:
    cases: list[object] = []
    for seed in SEEDS:
        fault = FAULTS[seed % len(FAULTS)]
        for target in TARGETS:
            cases.append(pytest.param(target, seed, fault, id=f"{target}-{fault}-{seed}"))
    return cases


@pytest.mark.parametrize(("target", "seed", "fault"), _cases())
def test_database_storage_faults(tmp_path: Path, target: str, seed: int, fault: str) -> None:
    rng = random.Random(f"{target}-{seed}")
    path = tmp_path / ("ledger.duckdb" if target == "duckdb" else f"{target}.sqlite")
    acked, wal_at_ack, error = _run_child(target, path, rng, fault)
    assert acked, f"{target}: nothing was committed before the fault"
    if fault == "enospc":
        assert error, "the writer never ran out of space"
        # RLIMIT_FSIZE makes writes fail with EFBIG: SQLite calls that a disk I/O error
        assert any(w in error.lower() for w in ("full", "too large", "space", "i/o error")), error
    what = _damage(target, path, rng, fault, wal_at_ack)
    try:
        rows = _read_back(target, path)
    except (sqlite3.DatabaseError, duckdb.Error) as exc:
        assert fault == "bitflip", f"{target}/{fault} ({what}): refused {exc}"
        assert any(w in str(exc).lower() for w in DAMAGE_WORDS), f"unclear refusal: {exc}"
        return
    expected = dict(row(k) for k in acked)
    if target == "duckdb":
        # The projection is derived from the log: a commit may be undone by media damage if its
        # offset goes with it (the projector re-reads those records), never a row without its
        # offset (re-read, it would count twice) nor an offset without its row (lost for good).
        resume = int(rows.pop(RESUME))
        assert not any(k not in acked for k in range(1, resume - 1)), "offset past unwritten rows"
        ahead = sorted(int(key[1:]) for key in rows if int(key[1:]) >= resume)
        assert not ahead, f"duckdb/{fault} seed {seed} ({what}): rows {ahead[:5]} past {resume}"
        if fault == "bitflip":
            expected = {key: v for key, v in expected.items() if int(key[1:]) < resume}
        else:
            assert resume > max(acked), f"duckdb/{fault} ({what}): resumes at {resume}"
    lost = sorted(k for k in expected if k not in rows)
    changed = sorted(k for k in expected if k in rows and rows[k] != expected[k])
    assert not lost and not changed, (
        f"{target}/{fault} seed {seed} ({what}): acknowledged rows lost {lost[:5]} "
        f"or changed {changed[:5]} without a word"
    )

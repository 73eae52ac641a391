"""The SQLite guard (`infra/sqlite_guard.py`): a commit leaves nothing in the WAL, the seal keeps up
with inserts, replaces, updates and deletes, and a file changed outside SQLite (a row, a lost row, the
schema, the seal) is refused with StoreDamaged naming the file and what was found, and not changed.
Then each of the three guarded stores refuses a changed committed value with its own recovery text."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from infra.sqlite_guard import GuardedStore, StoreDamaged, connect, seal, transaction

STORE = GuardedStore("test store", ("items",), "Restore it from a backup.")


def _open(path: Path) -> sqlite3.Connection:
    con = connect(path, STORE, timeout_s=10)
    con.execute("CREATE TABLE IF NOT EXISTS items (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    seal(con, STORE)
    return con


def _put(con: sqlite3.Connection, k: str, v: str) -> None:
    with transaction(con):
        con.execute("INSERT OR REPLACE INTO items (k, v) VALUES (?, ?)", (k, v))


def _items(path: Path) -> dict[str, str]:
    con = _open(path)
    try:
        return dict(con.execute("SELECT k, v FROM items").fetchall())
    finally:
        con.close()


def _filled(tmp_path: Path, n: int = 5) -> Path:
    path = tmp_path / "store.sqlite"
    con = _open(path)
    for i in range(n):
        _put(con, f"k{i}", f"value-{i:04d}")
    con.close()
    return path


def _flip(path: Path, needle: bytes, bit: int = 0) -> None:
    """Flip one bit of the last occurrence of `needle` in the file, as a failing disk would."""
    data = bytearray(path.read_bytes())
    at = data.rfind(needle)
    assert at >= 0, f"{needle!r} not in {path.name}"
    data[at + len(needle) - 1] ^= 1 << bit
    path.write_bytes(bytes(data))


def _refused(path: Path, opener: Callable[[Path], object], *words: str) -> str:
    before = path.read_bytes()
    with pytest.raises(StoreDamaged) as refused:
        opener(path)
    text = str(refused.value)
    assert str(path) in text and "damaged" in text, text
    for word in words:
        assert word in text, text
    assert path.read_bytes() == before, "a refused file was changed"
    return text


def test_each_commit_leaves_the_wal_empty(tmp_path: Path) -> None:
    # the finding: a flipped WAL frame makes recovery drop every later commit; after a guarded
    # commit returns, no committed frame is left in the WAL for recovery to drop
    path = tmp_path / "store.sqlite"
    con = _open(path)
    wal = Path(f"{path}-wal")
    for i in range(20):
        _put(con, f"k{i}", "x" * 500)
        assert wal.exists() and wal.stat().st_size == 0, f"commit {i}: {wal.stat().st_size} bytes"
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_the_seal_follows_replace_update_and_delete(tmp_path: Path) -> None:
    path = _filled(tmp_path)
    con = _open(path)
    _put(con, "k1", "replaced")  # INSERT OR REPLACE deletes the old row: its trigger must fire
    with transaction(con):
        con.execute("UPDATE items SET v = 'updated' WHERE k = 'k2'")
        con.execute("DELETE FROM items WHERE k = 'k3'")
    con.close()
    assert _items(path) == {
        "k0": "value-0000",
        "k1": "replaced",
        "k2": "updated",
        "k4": "value-0004",
    }


def test_a_changed_row_is_refused(tmp_path: Path) -> None:
    path = _filled(tmp_path)
    _flip(path, b"value-0002")
    _refused(path, _items, "table items", "checksum", "Restore it from a backup.")


def test_a_lost_row_is_refused(tmp_path: Path) -> None:
    path = _filled(tmp_path)
    raw = sqlite3.connect(path, isolation_level=None)
    trigger = raw.execute(
        "SELECT sql FROM sqlite_master WHERE name = 'ml_guard_items_delete'"
    ).fetchone()[0]
    # the row vanishes and the schema is put back exactly: only the rows' seal can tell
    raw.executescript(
        f"DROP TRIGGER ml_guard_items_delete; DELETE FROM items WHERE k = 'k4'; {trigger};"
        " PRAGMA wal_checkpoint(TRUNCATE);"
    )
    raw.close()
    _refused(path, _items, "holds 4 rows", "(5 rows)")


def test_a_write_that_bypasses_the_guard_fails(tmp_path: Path) -> None:
    path = _filled(tmp_path)
    raw = sqlite3.connect(path, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError, match="no such function: ml_guard_row"):
        raw.execute("UPDATE items SET v = 'sneaky' WHERE k = 'k0'")
    raw.close()
    assert _items(path)["k0"] == "value-0000"


@pytest.mark.parametrize(
    ("change", "found"),
    [
        ("PRAGMA user_version = 7", "schema"),
        ("PRAGMA application_id = 0", "marker"),
        ("DROP TABLE ml_guard_seal", "marker"),
        ("UPDATE ml_guard_seal SET row_count = 9 WHERE tbl = 'items'", "(9 rows)"),
    ],
)
def test_schema_or_seal_changed_outside_is_refused(tmp_path: Path, change: str, found: str) -> None:
    path = _filled(tmp_path)
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute(change)
    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw.close()
    _refused(path, _items, found)


def test_a_file_written_before_the_guard_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("CREATE TABLE items (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    raw.execute("INSERT INTO items VALUES ('old', 'value-old1')")
    raw.close()
    assert _items(path) == {"old": "value-old1"}
    _flip(path, b"value-old1")  # from now on it is sealed: damage is refused
    _refused(path, _items, "checksum")


def test_a_torn_main_file_is_refused(tmp_path: Path) -> None:
    path = _filled(tmp_path, 60)
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)
    _refused(path, _items)


# -- the three stores, each with its own name and recovery ------------------------------------


def _journal(path: Path) -> object:
    from settlement.journal import Journal

    journal = Journal(path)
    for k in range(1, 4):
        journal.add(
            chain_id=1,
            sender="0xs",
            nonce=k,
            work_key=f"w{k}",
            kind="work",
            tx_hash=f"0x{k:064x}",
            raw_tx=f"0xraw{k:04d}",
            max_fee_wei=1,
            priority_fee_wei=1,
            gas_limit=21000,
        )
    journal.mark_recorded("confirmed:r:1", "first")
    journal.mark_recorded("confirmed:r:1", "again")  # INSERT OR REPLACE keeps the seal
    journal.close()
    return Journal


def _cashout(path: Path) -> object:
    from domain.swap import ChequeClaim
    from router_core.cashout import CashoutPolicy, CashoutQueue

    queue = CashoutQueue(path, CashoutPolicy(1, 1.0, 8))
    for k in range(1, 4):
        queue.add("r", f"peer{k}", ChequeClaim(1, f"0x{k:040x}", "0x" + "b" * 40, k, f"0xsig{k}"))
    queue.close()
    return lambda p: CashoutQueue(p, CashoutPolicy(1, 1.0, 8))


def _swap(path: Path) -> object:
    from domain.swap import PeerAccount
    from router_core.swap import open_accounts

    accounts = open_accounts(path)
    account = PeerAccount("0xrouter", "r", "0xpeer")
    for k in range(1, 4):
        account.charge(1, 1000 + k)
        accounts.save(account)
    accounts.close()
    return open_accounts


@pytest.mark.parametrize(
    ("fill", "needle", "recovery"),
    [
        (_journal, b"0xraw0002", "A new, empty journal forgets"),
        (_cashout, b"0xsig2", "ChequeReceived events"),
        (_swap, b'"amount":1002', "each peer's unpaid debt"),
    ],
    ids=["journal", "cashout", "swap"],
)
def test_each_store_refuses_a_changed_committed_value(
    tmp_path: Path, fill: Callable[[Path], Callable[[Path], object]], needle: bytes, recovery: str
) -> None:
    path = tmp_path / "store.sqlite"
    opener = fill(path)
    opened: Any = opener(path)  # intact: opens (and is closed again)
    opened.close()
    _flip(path, needle)
    _refused(path, opener, "checksum", recovery)

"""Guarded SQLite stores: each commit is checkpointed into the main file, every row is sealed, and
opening verifies the file; a damaged file is refused with `StoreDamaged` naming file, damage, recovery.

Why: SQLite's WAL recovery stops at the first frame that fails its checksum and silently drops
every later committed transaction, and a flipped bit in the main file can change a row without a
word. So (1) a commit returns only once `PRAGMA wal_checkpoint(TRUNCATE)` moved it into the main
file: no acknowledged transaction depends on WAL frames (what recovery may still drop belongs to a
transaction that never returned); (2) triggers keep, in the same transaction as each change, a
seal per table (row count and the sum mod 2**128 of a BLAKE2b digest of every row) and the schema
is sealed too (`sqlite_master`, `user_version`, `application_id`); (3) opening runs
`PRAGMA integrity_check` and recomputes every seal in one read snapshot.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eventsourcing.sqlite import SQLiteConnection, SQLiteConnectionPool, SQLiteFactory
from eventsourcing.utils import Environment

log = logging.getLogger(__name__)

#: marks a sealed file in its header ("MLGD"): a seal table without it, or it without one, is damage
APPLICATION_ID = 0x4D4C4744
SEAL_TABLE = "ml_guard_seal"
_SCHEMA_SEAL = ""  # the seal row of the schema itself
_DIGEST_BITS = 128
#: Python's sqlite3 when a text value is not UTF-8 (the stores write only UTF-8)
_NOT_UTF8 = "Could not decode to UTF-8"
#: how many lines of `PRAGMA integrity_check` a refusal quotes
_MAX_REPORTED_PROBLEMS = 3


@dataclass(frozen=True, slots=True)
class GuardedStore:
    """What a store is called, which tables hold its rows, and how an operator recovers it."""

    what: str
    tables: tuple[str, ...]
    recovery: str


class StoreDamaged(sqlite3.DatabaseError):
    """The file is not what the store committed: it is refused, nothing in it was changed."""


# -- row digests (registered on every guarded connection: the triggers call them) ---------------


def _row_digest(*values: Any) -> str:
    h = hashlib.blake2b(digest_size=_DIGEST_BITS // 8)
    for value in values:
        if value is None:
            tag, data = b"n", b""
        elif isinstance(value, int):
            tag, data = b"i", str(value).encode()
        elif isinstance(value, float):
            tag, data = b"f", value.hex().encode()
        elif isinstance(value, str):
            tag, data = b"s", value.encode("utf-8", "surrogateescape")
        else:
            tag, data = b"b", bytes(value)
        h.update(tag + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _mix(digest: str, added: str | None, removed: str | None) -> str:
    """The seal after a row was added and/or removed (an update is both)."""
    total = (
        int(digest, 16) + (int(added, 16) if added else 0) - (int(removed, 16) if removed else 0)
    )
    return f"{total % (1 << _DIGEST_BITS):0{_DIGEST_BITS // 4}x}"


def prepare(con: sqlite3.Connection, *, read_only: bool = False, timeout_s: float = 30.0) -> None:
    """Make `con` a guarded connection: digest functions, WAL, synchronous=FULL, and REPLACE
    firing delete triggers (else `INSERT OR REPLACE` would bypass the seal)."""
    con.create_function("ml_guard_row", -1, _row_digest, deterministic=True)
    con.create_function("ml_guard_mix", 3, _mix, deterministic=True)
    con.execute("PRAGMA recursive_triggers=ON")
    if read_only:
        return
    deadline = time.monotonic() + timeout_s
    while True:
        # switching to WAL while another connection sets the file up returns SQLITE_BUSY without
        # waiting on the busy handler: two processes opening together must both open
        try:
            con.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    con.execute("PRAGMA synchronous=FULL")


def connect(
    path: Path,
    store: GuardedStore,
    *,
    timeout_s: float,
    read_only: bool = False,
    check_same_thread: bool = True,
) -> sqlite3.Connection:
    """Open and verify `path` (autocommit mode; StoreDamaged if damaged). The store then creates
    or migrates its tables and calls `seal`; every later write goes through `transaction`."""
    target = f"{path.resolve().as_uri()}?mode=ro" if read_only else str(path)
    con = sqlite3.connect(
        target,
        uri=read_only,
        timeout=timeout_s,
        isolation_level=None,
        check_same_thread=check_same_thread,
    )
    try:
        with refusing_damage(path, store):
            prepare(con, read_only=read_only, timeout_s=timeout_s)
            verify(con, path, store)
    except BaseException:
        con.close()
        raise
    return con


@contextmanager
def refusing_damage(path: Path, store: GuardedStore) -> Iterator[None]:
    """SQLite's own corruption errors (malformed, not a database) become StoreDamaged."""
    try:
        yield
    except StoreDamaged:
        raise
    except UnicodeDecodeError as exc:  # the stores write only UTF-8: schema text was changed
        raise _damaged(path, store, f"text in the file is not valid UTF-8 ({exc})") from exc
    except sqlite3.DatabaseError as exc:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or _NOT_UTF8 in str(exc):
            raise _damaged(path, store, f"SQLite reports: {exc}") from exc
        raise


def _damaged(path: Path, store: GuardedStore, found: str) -> StoreDamaged:
    return StoreDamaged(
        f"the {store.what} {path} is damaged: {found}. It was not opened and nothing in it was "
        f"changed. {store.recovery}"
    )


def verify(con: sqlite3.Connection, path: Path, store: GuardedStore) -> None:
    """Check structure and every seal in one read snapshot (a writer in another process may
    commit meanwhile). A file never sealed (new, or written before the guard) is only checked
    for structure; `seal` adopts it."""
    text_factory = con.text_factory
    # damaged text is read as it is (and then fails its row's checksum) rather than undecodable
    con.text_factory = _text
    con.execute("BEGIN")
    try:
        problems = [r[0] for r in con.execute("PRAGMA integrity_check").fetchall()]
        if problems != ["ok"]:
            found = "; ".join(problems[:_MAX_REPORTED_PROBLEMS])
            raise _damaged(
                path, store, f"integrity_check found {len(problems)} problem(s): {found}"
            )
        marked = con.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        seals = _seals(con)
        if not marked and seals is None:
            return
        if seals is None or not marked:
            raise _damaged(
                path, store, "its guard marker (application_id) and its seal table disagree"
            )
        expected = seals.get(_SCHEMA_SEAL)
        if expected is None or expected[1] != _schema_digest(con):
            raise _damaged(path, store, "its schema (tables, triggers, versions) checksum differs")
        for table in store.tables:
            if table not in seals:
                raise _damaged(path, store, f"the seal of table {table} is missing")
            rows, digest = _table_digest(con, table)
            if (rows, digest) != seals[table]:
                raise _damaged(
                    path,
                    store,
                    f"table {table} holds {rows} rows whose checksum differs from the seal "
                    f"committed with them ({seals[table][0]} rows): a row was changed or lost "
                    "outside SQLite (a flipped bit, a bad disk)",
                )
    finally:
        con.execute("ROLLBACK")
        con.text_factory = text_factory


def seal(con: sqlite3.Connection, store: GuardedStore) -> None:
    """After the store created or migrated its tables (the file was verified at `connect`): mark
    the file, (re)install the triggers, and re-seal the rows if the schema changed since."""
    with transaction(con):
        con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        con.execute(
            f"CREATE TABLE IF NOT EXISTS {SEAL_TABLE} (tbl TEXT PRIMARY KEY,"
            " row_count INTEGER NOT NULL, digest TEXT NOT NULL)"
        )
        for table in store.tables:
            _install_triggers(con, table)
        seals = _seals(con) or {}
        schema = _schema_digest(con)
        if seals.get(_SCHEMA_SEAL, (0, ""))[1] == schema:
            return
        # new, adopted or migrated (columns may have changed without firing triggers): the rows
        # were verified at open and changed since only by the store's own setup
        for table in (*store.tables, _SCHEMA_SEAL):
            rows, digest = (0, schema) if table == _SCHEMA_SEAL else _table_digest(con, table)
            con.execute(
                f"INSERT OR REPLACE INTO {SEAL_TABLE} (tbl, row_count, digest) VALUES (?,?,?)",
                (table, rows, digest),
            )


@contextmanager
def transaction(con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE … COMMIT, then the commit is checkpointed into the main file. A failed
    COMMIT (a full disk) raises its own error, not the rollback's."""
    con.execute("BEGIN IMMEDIATE")
    try:
        yield con
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            with suppress(sqlite3.Error):
                con.execute("ROLLBACK")
        raise
    checkpoint(con)


def checkpoint(con: sqlite3.Connection) -> None:
    """Move every committed frame into the main file and empty the WAL. A reader of another
    connection holding an older snapshot past the busy timeout leaves frames behind: logged, and
    the next commit's checkpoint moves them."""
    busy, wal_frames, moved = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    if busy:
        log.warning(
            "checkpoint blocked by a reader: %s of %s WAL frames moved into the main file",
            moved,
            wal_frames,
        )


def _seals(con: sqlite3.Connection) -> dict[str, tuple[int, str]] | None:
    exists = con.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (SEAL_TABLE,)
    ).fetchone()
    if exists is None:
        return None
    return {
        t: (int(n), str(d))
        for t, n, d in con.execute(f"SELECT tbl, row_count, digest FROM {SEAL_TABLE}")
    }


def _schema_digest(con: sqlite3.Connection) -> str:
    rows = con.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
    ).fetchall()
    versions = [
        con.execute(f"PRAGMA {p}").fetchone()[0] for p in ("user_version", "application_id")
    ]
    return _row_digest(*versions, *(v for r in rows for v in r))


def _columns(con: sqlite3.Connection, table: str) -> list[str]:
    """The table's columns, and its rowid when it has one (eventsourcing numbers by rowid)."""
    names = [f'"{r[1]}"' for r in con.execute(f'PRAGMA table_info("{table}")')]
    if not names:
        raise sqlite3.OperationalError(f"no table {table} to guard")
    try:
        con.execute(f'SELECT rowid FROM "{table}" LIMIT 0')
    except sqlite3.OperationalError:  # WITHOUT ROWID
        return names
    return ["rowid", *names]


def _table_digest(con: sqlite3.Connection, table: str) -> tuple[int, str]:
    total, rows = 0, 0
    for values in con.execute(f'SELECT {", ".join(_columns(con, table))} FROM "{table}"'):
        total += int(_row_digest(*values), 16)
        rows += 1
    return rows, f"{total % (1 << _DIGEST_BITS):0{_DIGEST_BITS // 4}x}"


def _install_triggers(con: sqlite3.Connection, table: str) -> None:
    cols = _columns(con, table)
    new = "ml_guard_row(" + ", ".join(f"NEW.{c}" for c in cols) + ")"
    old = "ml_guard_row(" + ", ".join(f"OLD.{c}" for c in cols) + ")"
    changes = {
        "insert": ("row_count + 1", new, "NULL"),
        "update": ("row_count", new, old),
        "delete": ("row_count - 1", "NULL", old),
    }
    for op, (count, added, removed) in changes.items():
        name = f"ml_guard_{table}_{op}"
        sql = (
            f'CREATE TRIGGER {name} AFTER {op.upper()} ON "{table}" BEGIN UPDATE {SEAL_TABLE}'
            f" SET row_count = {count}, digest = ml_guard_mix(digest, {added}, {removed})"
            f" WHERE tbl = '{table}'; END"
        )
        have = con.execute(
            "SELECT sql FROM sqlite_master WHERE type='trigger' AND name=?", (name,)
        ).fetchone()
        if have is None or have[0] != sql:
            con.execute(f"DROP TRIGGER IF EXISTS {name}")
            con.execute(sql)


# -- eventsourcing's SQLite recorder, guarded the same way -------------------------------------


class _GuardedConnection(SQLiteConnection):
    def commit(self) -> None:
        super().commit()
        checkpoint(self._sqlite_conn)


class _GuardedPool(SQLiteConnectionPool):
    def _create_connection(self) -> SQLiteConnection:
        raw = super()._create_connection()._sqlite_conn
        prepare(raw, timeout_s=float(self.lock_timeout or 5))
        return _GuardedConnection(raw, max_age=self.max_age)


class GuardedSQLiteFactory(SQLiteFactory):
    """eventsourcing's SQLite persistence with the guard: the file is verified before the
    recorder's tables are created, sealed after, and every commit is checkpointed."""

    def __init__(self, env: Environment, store: GuardedStore) -> None:
        super().__init__(env)
        self.store = store
        self.path = Path(self.datastore.pool.db_name)
        plain = self.datastore.pool
        self.datastore.pool = _GuardedPool(db_name=plain.db_name, lock_timeout=plain.lock_timeout)
        plain.close()

    def application_recorder(self) -> Any:
        with (
            refusing_damage(self.path, self.store),
            self.datastore.get_connection(commit=False) as conn,
        ):
            verify(conn._sqlite_conn, self.path, self.store)
        recorder = super().application_recorder()
        with self.datastore.get_connection(commit=True) as conn:
            seal(conn._sqlite_conn, self.store)
        return recorder

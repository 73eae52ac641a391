"""A projection commit that fails on a full disk reports its cause and writes nothing (issue 9
item 11: it used to report "no transaction is active", the ROLLBACK's error, instead)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

CHILD = textwrap.dedent(
    """
    import os, resource, signal, sys
    from ledger import store

    db = sys.argv[1]
    con = store.connect(db)
    con.execute("CHECKPOINT")
    size = int(sys.argv[2])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    batch = store.Batch()
    # random sources: nothing for DuckDB to compress away
    rows = [("r", b, os.urandom(20).hex(), b, b) for b in range(200_000)]
    batch.rows["usage_blocks"] = rows
    batch.offsets[("mesh.usage", 0)] = (123, [])
    try:
        store.commit(con, batch)
        con.execute("CHECKPOINT")
    except store.CommitFailed as exc:
        print("FAILED:", exc)
        print("OFFSETS:", con.execute("SELECT count(*) FROM offsets").fetchone()[0])
        print("ROWS:", con.execute("SELECT count(*) FROM usage_blocks").fetchone()[0])
        sys.exit(0)
    print("COMMITTED")
    sys.exit(1)
    """
)


def test_a_commit_on_a_full_disk_names_its_cause_and_writes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "full.duckdb"
    size = 1 << 20  # the empty schema (~270 kB) fits, 200k rows of random sources (~9 MB) do not
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(db), str(size)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    failed = next(line for line in done.stdout.splitlines() if line.startswith("FAILED:"))
    assert "no transaction is active" not in failed
    assert "nothing written" in failed
    assert any(cause in failed for cause in ("File too large", "IO Error", "Could not write"))
    assert "OFFSETS: 0" in done.stdout and "ROWS: 0" in done.stdout

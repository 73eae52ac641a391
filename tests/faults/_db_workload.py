"""Child process of the database fault suite: commits rows one transaction at a time through the
production class and prints ``ACK k wal_bytes`` once each commit returned (then it is durable)."""

from __future__ import annotations

import os
import resource
import signal
import sys
from pathlib import Path


def wal_of(target: str, path: Path) -> Path:
    return Path(f"{path}.wal") if target == "duckdb" else Path(f"{path}-wal")


#: the log topic the DuckDB workload's offsets row names (the projector's partition 0)
OFFSETS_TOPIC = "mesh.usage"


def row(k: int) -> tuple[str, str]:
    """Row k's identity and content: the parent checks both after the fault."""
    return f"w{k}", f"0x{k * 7919:064x}"


def main() -> None:
    target, path, extra = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    commit = _opener(target, path)
    wal = wal_of(target, path)
    for k in range(1, 5000 if extra else 400):
        if extra and k == 2:  # out of space from here: files may grow only `extra` bytes more
            # (RLIMIT_FSIZE; SIGXFSZ ignored so that the write fails with EFBIG instead)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            largest = max(p.stat().st_size for p in path.parent.iterdir() if p.is_file())
            resource.setrlimit(resource.RLIMIT_FSIZE, (largest + extra, largest + extra))
        try:
            commit(k)
        except Exception as exc:  # noqa: BLE001 - the parent judges the message
            print(f"ERR {type(exc).__name__}: {exc}", flush=True)
            return
        size = wal.stat().st_size if wal.exists() else 0
        print(f"ACK {k} {size}", flush=True)


def _opener(target: str, path: Path):  # type: ignore[no-untyped-def]
    if target == "journal":
        from settlement.journal import Journal

        journal = Journal(path)

        def commit(k: int) -> None:
            key, tx = row(k)
            journal.add(
                chain_id=1,
                sender="0xs",
                nonce=k,
                work_key=key,
                kind="work",
                tx_hash=tx,
                raw_tx=tx,
                max_fee_wei=1,
                priority_fee_wei=1,
                gas_limit=21000,
            )

        return commit
    if target == "swap":
        from domain.swap import PeerAccount
        from router_core.swap import open_accounts

        accounts = open_accounts(path)
        account = PeerAccount("0xrouter", "r", "0xpeer")

        def commit(k: int) -> None:
            account.charge(1, k)  # after k charges: k messages, a debt of 1 + 2 + … + k
            accounts.save(account)

        accounts.save(account)
        return commit
    if target == "cashout":
        from domain.swap import ChequeClaim
        from router_core.cashout import CashoutPolicy, CashoutQueue

        queue = CashoutQueue(path, CashoutPolicy(1, 1.0, 8))

        def commit(k: int) -> None:
            key, tx = row(k)
            queue.add("r", key, ChequeClaim(1, f"0x{k:040x}", "0x" + "b" * 40, k, tx))

        return commit
    from ledger import store

    con = store.connect(path)

    def commit(k: int) -> None:
        # as the projector commits: the rows of a batch and the log offset after it, together
        key, tx = row(k)
        con.execute("BEGIN TRANSACTION")
        store.append_rows(con, "usage_blocks", [(key, k, tx, k, k)])
        con.execute("INSERT OR REPLACE INTO offsets VALUES (?, 0, ?)", [OFFSETS_TOPIC, k + 1])
        con.execute("COMMIT")

    return commit


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()

"""A settlement job in a process of its own, for the failure tests (crash points, races).

Usage: python _submitter_worker.py SPEC.json — SPEC holds url, chain_id, contract, key (hex),
journal, events (a JSONL file the recorder appends to), realm, epoch, payouts
[[account, class, amount], ...]. Prints the result status; exits with the job's exit code.
Crash points come from MESHLEDGER_CRASH_AT in the environment (see settlement.submitter).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from _submitter_chain import make_submitter
from _submitter_settle import MemoryPayouts
from eth_account import Account
from web3 import Web3

from domain.economics import Payout
from domain.events import Event
from settlement.job import JobConfig, JobError, SettlementJob


class FileRecorder:
    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, event: Event) -> None:
        with self.path.open("a") as out:
            out.write(json.dumps(event.to_dict()) + "\n")
            out.flush()
            os.fsync(out.fileno())


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    w3 = Web3(Web3.HTTPProvider(spec["url"], request_kwargs={"timeout": 10}))
    source = MemoryPayouts()
    source.add(spec["realm"], spec["epoch"], [Payout(*p) for p in spec["payouts"]])
    account = Account.from_key(spec["key"])
    job_config = JobConfig(
        chain_id=spec["chain_id"], contract=spec["contract"], batch_max_entries=2
    )
    submitter = make_submitter(w3, account, Path(spec["journal"]), chain_id=spec["chain_id"])
    with submitter:
        job = SettlementJob(w3, source, FileRecorder(Path(spec["events"])), job_config, submitter)
        try:
            result = job.settle(spec["realm"], spec["epoch"])
        except JobError as err:
            print(f"error: {err}", file=sys.stderr)
            return err.exit_code
    print(result.status)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

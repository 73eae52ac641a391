"""SIGKILL of `meshledger indexer run` (a real process) at random points of a backfill and of a
live sync, then a restart: every on-chain log is in the log exactly once, seqs have no gap."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
from indexer_harness import read_events, wait_for
from mesh_chain import Burst, MeshChain, rpc

from domain.events import log_identity
from infra.broker import Broker
from ledger.keys import write_new_key

pytestmark = pytest.mark.integration

MESHLEDGER = str(Path(sys.executable).parent / "meshledger")
KILLS_IN_BACKFILL = 3
KILLS_LIVE = 2


def write_config(tmp: Path, mesh: MeshChain, bootstrap: str) -> Path:
    c = mesh.contracts
    config = tmp / "indexer.toml"
    config.write_text(
        f"""
rpc = "{mesh.anvil.url}"
chain_id = 42161
confirmations = 0
poll_interval_s = 0.1
log_range_blocks = 1
log_range_max_blocks = 2
data_dir = "data"
key_file = "indexer.key"
bootstrap = "{bootstrap}"
[contracts]
staking = "{c.staking}"
settlement = "{c.settlement}"
token = "{c.token}"
chequebooks = ["{c.chequebooks[0]}"]
"""
    )
    return config


def cursor(tmp: Path) -> int:
    path = tmp / "data" / "checkpoint.json"
    try:
        return int(orjson.loads(path.read_bytes())["cursor_block"])
    except (FileNotFoundError, orjson.JSONDecodeError):
        return -1


def start(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [MESHLEDGER, "indexer", "run", "-v", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def kill_while_working(proc: subprocess.Popen[bytes], tmp: Path, rng: random.Random) -> None:
    """SIGKILL once the process has emitted a chunk more, a random moment later."""
    seen = cursor(tmp)
    wait_for(lambda: cursor(tmp) > seen or proc.poll() is not None, 60, "indexer made no progress")
    time.sleep(rng.uniform(0, 0.15))
    assert proc.poll() is None, f"indexer exited early: {proc.stderr.read() if proc.stderr else ''}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def test_sigkill_during_backfill_and_live_sync_loses_and_repeats_nothing(
    mesh: MeshChain, broker: Broker, tmp_path: Path
) -> None:
    rng = random.Random(7)
    signer = write_new_key(tmp_path / "indexer.key")
    config = write_config(tmp_path, mesh, broker.bootstrap)
    burst = Burst(mesh)
    for _ in range(150):
        burst.send(10)

    for _ in range(KILLS_IN_BACKFILL):
        kill_while_working(start(config), tmp_path, rng)
        assert cursor(tmp_path) < mesh.head(), "backfill finished before this kill"

    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            burst.send(5)
            time.sleep(0.05)

    feeder = threading.Thread(target=traffic)
    feeder.start()
    try:
        for _ in range(KILLS_LIVE):
            kill_while_working(start(config), tmp_path, rng)
    finally:
        stop.set()
        feeder.join()

    head = mesh.head()
    final = subprocess.run(
        [MESHLEDGER, "indexer", "run", "--config", str(config), "--until-block", str(head)],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert final.returncode == 0, final.stderr.decode()
    status = subprocess.run(
        [MESHLEDGER, "indexer", "status", "--config", str(config), "--json"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    shown = orjson.loads(status.stdout)
    assert (shown["emitted_block"], shown["head"], shown["lag_blocks"]) == (head, head, 0)

    events = read_events(broker.bootstrap, signer.address)
    seqs = [seq for seq, _ in events]
    assert seqs == list(range(1, len(seqs) + 1)), "a seq gap or a repeated seq"
    emitted = [log_identity(e) for _, e in events if log_identity(e) is not None]
    assert len(emitted) == len(set(emitted)), "a log emitted twice"
    logs = rpc(
        mesh.w3,
        "eth_getLogs",
        {"fromBlock": "0x0", "toBlock": hex(head), "address": [mesh.contracts.staking]},
    )
    staked = {(42161, lg["blockHash"], int(lg["logIndex"], 16)) for lg in logs}
    assert staked <= set(emitted), f"{len(staked - set(emitted))} logs never emitted"
    assert len(staked) > 1500

"""`meshledger up` / `down` as a user runs them (real CLIs in subprocesses): the stack serves a
stock autobahn client, `down` leaves no process behind, the next `up` resumes from var/, and a
child that dies is reported and stops the stack instead of being restarted."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from web3 import HTTPProvider, Web3

from domain.events import RealmParams
from domain.topics import ALL_TOPICS, LEDGER_TOPIC
from indexer.decoding import params_tuple
from infra.anvil import rpc_chain_id
from infra.broker import create_topics
from infra.ens import Names
from infra.procs import pid_alive, stable_port, wait_until
from infra.stack import Layout
from infra.supervisor import group_exists, read_pid_file, same_process
from ledger.keys import load_signer
from router_core.client import SwapOffer, connect
from settlement.contracts import load_artifact, transact
from settlement.merkle import realm_id

pytestmark = pytest.mark.integration

CHAIN_ID = 4242
PRICE = 1_000
THRESHOLD = 10**12
MARKER_TOPIC = "stack.test.marker"
ZERO = "0x" + "00" * 20
SERVICES = ["broker", "chain", "indexer", "projector", "router-r1"]
UP_TIMEOUT_S = 240


def write_config(path: Path, listen_port: int, clients: list[str]) -> None:
    reservations = ", ".join(f'"{a}" = 1000' for a in clients)
    path.write_text(
        f"""
[chain]
chain_id = {CHAIN_ID}
block_time_s = 1

[[routers]]
name = "r1"
listen = "127.0.0.1:{listen_port}"

[routers.swap]
payment_threshold = {THRESHOLD}
disconnect_threshold = {2 * THRESHOLD}

[[routers.realms]]
name = "realm1"
price_per_message = {PRICE}
reservations = {{ {reservations} }}
"""
    )


class Stack:
    """One `meshledger up` in a subprocess, its output in a file."""

    def __init__(self, config: Path, var: Path, out: Path) -> None:
        self.var = var
        self.layout = Layout(var)
        self.out = out
        self.out_file = open(out, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ledger.cli", "up", "--config", str(config), "--var", str(var)],
            stdout=self.out_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "COLUMNS": "120"},
        )

    def output(self) -> str:
        return self.out.read_text()

    def wait_up(self) -> dict[str, Any]:
        def up() -> bool:
            record = read_pid_file(self.layout.pid_file)
            return record is not None and record["state"] == "up"

        try:
            wait_until(up, UP_TIMEOUT_S, "meshledger up", self.proc)
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"{exc}\n{self.output()}") from exc
        record = read_pid_file(self.layout.pid_file)
        assert record is not None
        return record

    def cleanup(self) -> None:
        """Whatever a failed test left running goes (`down` by the recorded pids, then the
        supervisor itself)."""
        if self.proc.poll() is None:
            subprocess.run(
                [sys.executable, "-m", "ledger.cli", "down", "--var", str(self.var)],
                capture_output=True,
                timeout=120,
            )
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.out_file.close()


@pytest.fixture
def stacks() -> Iterator[list[Stack]]:
    started: list[Stack] = []
    yield started
    for stack in started:
        stack.cleanup()


def new_key() -> tuple[bytes, str]:
    private = secrets.token_bytes(32)
    return private, Account.from_key(private).address


def call_through_router(url: str, contracts: dict[str, str], keys: list[bytes]) -> Any:
    """A callee registers, a caller calls it: stock autobahn sessions that log in with their
    Ethereum keys and complete the SWAP handshake."""
    offer = SwapOffer(
        chequebook=contracts["chequebook"],
        chain_id=CHAIN_ID,
        token=contracts["token"],
        payment_threshold=THRESHOLD,
        price_per_message=PRICE,
    )

    async def body() -> Any:
        callee = await connect(url, "realm1", keys[0], swap=offer)
        await callee.register(lambda a, b: a + b, "com.example.add")
        caller = await connect(url, "realm1", keys[1], swap=offer)
        try:
            return await caller.call("com.example.add", 2, 3)
        finally:
            caller.leave()
            callee.leave()

    return asyncio.run(body())


def stake_seen_by_the_projector(
    children: dict[str, dict[str, Any]], contracts: dict[str, str]
) -> None:
    """A realm registered and a stake made on chain reach the projector through the stack's
    indexer (its key trusted by the projector)."""
    w3 = Web3(HTTPProvider(children["chain"]["address"]))
    owner = w3.eth.accounts[0]
    staking = w3.eth.contract(
        address=contracts["staking"], abi=load_artifact("RealmStaking")["abi"]
    )
    token = w3.eth.contract(address=contracts["token"], abi=load_artifact("WMPToken")["abi"])
    transact(
        w3,
        staking.functions.registerRealm("realm.onchain", owner, params_tuple(RealmParams())),
        owner,
    )
    transact(w3, token.functions.mint(owner, 5 * 10**18), owner)
    transact(w3, token.functions.approve(contracts["staking"], 5 * 10**18), owner)
    transact(w3, staking.functions.stake(realm_id("realm.onchain"), 0, ZERO, 5 * 10**18), owner)
    query = children["projector"]["address"]

    def staked() -> bool:
        with urllib.request.urlopen(query + "/bandwidth?realm=realm.onchain", timeout=10) as r:
            rows = json.loads(r.read())["rows"]
        return any(row[2] == 5 for row in rows)  # reserved_mpb at 1 WMP per mpb

    wait_until(staked, 120, "the on-chain stake in the projector's bandwidth")


def read_topic(bootstrap: str, topic: str) -> list[tuple[int, bytes | None, bytes]]:
    partition = TopicPartition(topic, 0)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        end = consumer.end_offsets([partition])[partition]
        out: list[tuple[int, bytes | None, bytes]] = []
        deadline = time.monotonic() + 60
        while len(out) < end and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                out += [(r.offset, r.key, r.value) for r in records]
        return out
    finally:
        consumer.close()


def services(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in record["services"]}


def assert_all_gone(record: dict[str, Any]) -> None:
    assert not same_process(record["supervisor"], record["supervisor_start"]), "supervisor runs"
    for entry in record["services"]:
        assert not same_process(entry["pid"], entry["start"]), f"{entry['name']} still runs"
        # nothing its process group started (Tansu, SeaweedFS under the broker CLI) outlives it
        assert not group_exists(entry["pid"]), f"{entry['name']}'s process group still runs"


def test_up_serves_a_client_down_stops_all_up_resumes_a_dead_child_stops_the_stack(
    tmp_path: Path, stacks: list[Stack]
) -> None:
    config, var = tmp_path / "stack.toml", tmp_path / "var"
    layout = Layout(var)
    keys = [new_key(), new_key()]
    listen = stable_port()
    write_config(config, listen, [address for _, address in keys])

    # -- a service that cannot start (its port is taken) stops what was started --------------
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", listen))
        squatter.listen()
        failed = Stack(config, var, tmp_path / "up0.out")
        stacks.append(failed)
        assert failed.proc.wait(timeout=UP_TIMEOUT_S) == 4, failed.output()
    assert "the stack did not start" in failed.output()
    assert "router-r1: process exited with code" in failed.output()
    assert not layout.pid_file.exists()
    started = [int(pid) for pid in re.findall(r"starting \S+ \(pid (\d+)\)", failed.output())]
    assert len(started) == len(SERVICES)
    assert not any(pid_alive(pid) or group_exists(pid) for pid in started)

    # -- first up: every child alive and healthy, a client routed through the router ----------
    first = Stack(config, var, tmp_path / "up1.out")
    stacks.append(first)
    record = first.wait_up()
    children = services(record)
    assert list(children) == SERVICES
    for name, entry in children.items():
        assert same_process(entry["pid"], entry["start"]), f"{name} is not running"
        assert entry["health"] == "healthy", name
    table = first.output()
    assert all(name in table for name in SERVICES) and "healthy" in table
    bootstrap = children["broker"]["address"]
    probe = KafkaConsumer(bootstrap_servers=bootstrap)
    assert set(ALL_TOPICS) <= set(probe.topics())
    probe.close()
    assert rpc_chain_id(children["chain"]["address"]) == CHAIN_ID
    with urllib.request.urlopen(children["projector"]["address"] + "/realms", timeout=10) as r:
        assert r.status == 200
    assert children["router-r1"]["address"] == f"ws://127.0.0.1:{listen}/ws"
    contracts = json.loads(layout.contracts_file.read_text())
    assert (
        call_through_router(children["router-r1"]["address"], contracts, [k for k, _ in keys]) == 5
    )

    stake_seen_by_the_projector(children, contracts)
    # ENS on the stack's chain names its router (forward and its reverse record)
    router_address = load_signer(layout.key("router-r1")).address
    names = Names(children["chain"]["address"], contracts["ens_registry"])
    assert names.address("router-r1.eth") == router_address
    assert names.name(router_address) == "router-r1.eth"

    create_topics(bootstrap, (MARKER_TOPIC,))
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    marker = producer.send(MARKER_TOPIC, b"kept across down/up", partition=0).get(timeout=60)
    producer.close()
    # the router's emitter sends the sessions' SWAP handshakes within its linger
    wait_until(lambda: read_topic(bootstrap, LEDGER_TOPIC), 60, "handshakes in mesh.ledger")
    ledger_before = read_topic(bootstrap, LEDGER_TOPIC)
    key_files = {p.name: p.read_bytes() for p in layout.keys.iterdir()}
    assert {"ledger.key", "indexer.key", "router-r1.key", "cashout-r1.key"} <= set(key_files)
    assert all((layout.keys / n).stat().st_mode & 0o777 == 0o600 for n in key_files)

    # -- down: the supervisor and every child (with what they started) are gone --------------
    down = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "down", "--var", str(var)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert down.returncode == 0, down.stdout + down.stderr
    assert first.proc.wait(timeout=60) == 0
    assert_all_gone(record)
    assert not layout.pid_file.exists()

    # -- second up resumes: same keys, same contracts (still on chain), the log still there ----
    second = Stack(config, var, tmp_path / "up2.out")
    stacks.append(second)
    record = second.wait_up()
    children = services(record)
    assert {p.name: p.read_bytes() for p in layout.keys.iterdir()} == key_files
    assert json.loads(layout.contracts_file.read_text()) == contracts
    assert "contracts resumed" in second.output()
    w3 = Web3(HTTPProvider(children["chain"]["address"]))
    assert all(len(w3.eth.get_code(contracts[n])) > 0 for n in ("token", "staking", "settlement"))
    bootstrap = children["broker"]["address"]
    assert read_topic(bootstrap, MARKER_TOPIC) == [(marker.offset, None, b"kept across down/up")]
    assert read_topic(bootstrap, LEDGER_TOPIC)[: len(ledger_before)] == ledger_before

    # a second supervisor over the same var/ is refused while this one runs
    again = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "up", "--config", str(config), "--var", str(var)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 1 and "`meshledger down` first" in again.stderr
    still = read_pid_file(layout.pid_file)
    assert still is not None and still["supervisor"] == record["supervisor"]
    assert [e["pid"] for e in still["services"]] == [e["pid"] for e in record["services"]]

    # -- a child killed mid-way is reported and stops the stack; nothing restarts it ----------
    router = children["router-r1"]
    assert same_process(router["pid"], router["start"])
    os.kill(router["pid"], signal.SIGKILL)
    assert second.proc.wait(timeout=120) == 3
    output = second.output()
    assert "router-r1" in output and "exited (signal 9)" in output
    assert "stopping the stack (nothing is restarted)" in output
    assert_all_gone(record)
    routers_running = [
        p
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and str(layout.router_dir("r1")) in _cmdline(p)
    ]
    assert routers_running == []


def _cmdline(proc_dir: Path) -> str:
    try:
        return (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""

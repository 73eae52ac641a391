"""SIGKILL of a running router process (`meshledger router run`) in the middle of traffic: what
the clients received against what reached the log. The README's bound: the metered messages of
the hand-off's open chunk (fewer than `chunk_items`, at most `linger_ms` old) plus any not yet
written to the emitter child's pipe; the child seals everything it read and flushes it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from metering_harness import read_source
from router_harness import new_key, run, until

from domain.events import MessageMetered
from infra.broker import Broker
from infra.procs import free_port
from router_core.client import connect
from router_core.handoff import LedgerHandoff

pytestmark = pytest.mark.integration

#: the documented bound for a child that keeps up (nothing waits unwritten for its pipe)
OPEN_CHUNK_ITEMS = LedgerHandoff.__init__.__defaults__[2]  # type: ignore[index]


def test_sigkill_of_the_router_loses_at_most_the_open_chunk(tmp_path: Path, broker: Broker) -> None:
    router_key, sub_key, pub_key = new_key(), new_key(), new_key()
    port = free_port()
    data = tmp_path / "router"
    config = tmp_path / "router.toml"
    config.write_text(
        f"""
listen = "127.0.0.1:{port}"
data_dir = "{data}"
broker = "{broker.bootstrap}"
[swap]
enabled = false
[[realms]]
name = "realm1"
reservations = {{ "{sub_key.address}" = 1000000, "{pub_key.address}" = 1000000 }}
"""
    )
    env = {**os.environ, "MESH_ROUTER_KEY": "0x" + router_key.private.hex()}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "meshledger"), "router", "run", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    received = 0
    try:
        assert proc.stdout is not None
        assert "serving realm1" in proc.stdout.readline()

        async def body() -> None:
            nonlocal received
            url = f"ws://127.0.0.1:{port}/ws"
            sub = await connect(url, "realm1", sub_key.private)

            def on_event(*args: object) -> None:
                nonlocal received
                received += 1

            await sub.subscribe(on_event, "com.example.kill")
            pub = await connect(url, "realm1", pub_key.private)

            async def flood() -> None:
                i = 0
                while True:
                    pub.publish("com.example.kill", i)
                    i += 1
                    if i % 50 == 0:
                        await asyncio.sleep(0)

            task = asyncio.get_running_loop().create_task(flood())
            await until(lambda: received >= 3000, "3000 events delivered", timeout_s=60)
            assert proc.poll() is None  # the router is alive when killed
            os.kill(proc.pid, signal.SIGKILL)
            await until(lambda: proc.poll() is not None, "the router died")
            task.cancel()
            await until(lambda: not sub.is_connected(), "the subscriber saw the router go")

        run(body)
        assert proc.returncode == -signal.SIGKILL
        # the orphaned emitter child seals what it read, flushes it and exits on its own
        child_pid = int((data / "meter-child.lock").read_text())
        deadline = time.monotonic() + 60
        while _alive(child_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(child_pid), "the emitter child outlived its router by 60 s"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = read_source(broker.bootstrap, router_key.address)
    metered = sum(
        1
        for e in log.values()
        if isinstance(e, MessageMetered) and e.to_peer == sub_key.address  # type: ignore[attr-defined]
    )
    lost = received - metered
    print(f"router SIGKILL: {received} events received, {metered} metered in the log, {lost} lost")
    assert sorted(log) == list(range(1, len(log) + 1))
    assert 0 <= lost < OPEN_CHUNK_ITEMS


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"

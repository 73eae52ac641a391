"""Federation benchmark: pub/sub events/s and RPC calls/s from a client on router A to a
subscriber / callee on router B over a router link, against the same clients on one router, in
the same run. Routers are `meshledger router run` processes (metering and SWAP off on both
sides, so the figures compare routing alone); clients are the router benchmark's autobahn
worker processes. The last stdout line is one JSON object (see `run_federation_bench`).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from eth_account import Account

from infra.procs import free_port, stop_process
from router_core.bench import REALM, _expect_ready, _go, _result, _spawn
from router_core.links import STATUS_PROCEDURE

#: how long the routers may take to link and learn each other's subscriptions
CONVERGE_TIMEOUT_S = 60.0


def _router_toml(port: int, data: Path, peers: list[tuple[int, str]]) -> str:
    entries = ", ".join(
        f'{{ url = "ws://127.0.0.1:{p}/ws", address = "{address}" }}' for p, address in peers
    )
    return f"""
listen = "127.0.0.1:{port}"
data_dir = "{data}"
[swap]
enabled = false
[[realms]]
name = "{REALM}"
allow_anonymous = true
peers = [{entries}]
"""


@contextmanager
def routers(count: int, linked: bool) -> Iterator[list[int]]:
    """`count` router processes (linked with each other when `linked`); yields their ports."""
    keys = [secrets.token_bytes(32) for _ in range(count)]
    addresses = [Account.from_key(k).address for k in keys]
    ports = [free_port() for _ in range(count)]
    procs: list[subprocess.Popen[str]] = []
    with tempfile.TemporaryDirectory(prefix="mesh-bench-fed-") as tmp:
        try:
            for i in range(count):
                peers = [(ports[j], addresses[j]) for j in range(count) if j != i and linked]
                config = Path(tmp) / f"router{i}.toml"
                config.write_text(_router_toml(ports[i], Path(tmp) / f"data{i}", peers))
                meshledger = str(Path(sys.executable).parent / "meshledger")
                procs.append(
                    subprocess.Popen(
                        [meshledger, "router", "run", "--config", str(config)],
                        env={**os.environ, "MESH_ROUTER_KEY": "0x" + keys[i].hex()},
                        stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL,
                        text=True,
                    )
                )
            for proc in procs:
                assert proc.stdout is not None
                line = proc.stdout.readline()
                if "serving" not in line:
                    raise RuntimeError(f"a router did not start: {line!r}")
            yield ports
        finally:
            for proc in procs:
                stop_process(proc)


async def _status(port: int, kwargs: dict[str, str]) -> dict[str, Any]:
    from router_core.bench import _client

    session = await _client(f"ws://127.0.0.1:{port}/ws", "")
    try:
        return dict(await session.call(STATUS_PROCEDURE, **kwargs))
    finally:
        session.leave()


def wait_routed(port: int, peer_port: int, topic: str = "", procedure: str = "") -> None:
    """Until router `port` forwards `topic` / calls of `procedure` to its peer (interest and
    registrations travel as link state, a moment after SUBSCRIBED / REGISTERED)."""
    deadline = time.monotonic() + CONVERGE_TIMEOUT_S
    while time.monotonic() < deadline:
        status = asyncio.run(_status(port, {"topic": topic, "rpc": procedure}))
        if (not topic or status.get("fanout")) and (not procedure or status.get("next_hop")):
            return
        time.sleep(0.1)
    raise RuntimeError(f"router on {port} did not learn the peer's {topic or procedure}")


def _pubsub(pub_port: int, sub_port: int, messages: int) -> float:
    sub = _spawn(["worker", "sub", f"ws://127.0.0.1:{sub_port}/ws", str(messages)])
    pub = None
    try:
        _expect_ready(sub, "subscriber")
        if pub_port != sub_port:
            wait_routed(pub_port, sub_port, topic="bench.topic")
        pub = _spawn(["worker", "pub", f"ws://127.0.0.1:{pub_port}/ws", str(messages)])
        _expect_ready(pub, "publisher")
        _go(pub)
        rate = float(_result(sub)["rate"])
        _result(pub)
        return rate
    finally:
        for proc in (sub, pub):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def _rpc(caller_port: int, callee_port: int, calls: int) -> float:
    callee = _spawn(["worker", "callee", f"ws://127.0.0.1:{callee_port}/ws", "0"])
    caller = None
    try:
        _expect_ready(callee, "callee")
        if caller_port != callee_port:
            wait_routed(caller_port, callee_port, procedure="bench.echo")
        caller = _spawn(["worker", "caller", f"ws://127.0.0.1:{caller_port}/ws", str(calls)])
        _expect_ready(caller, "caller")
        _go(caller)
        return float(_result(caller)["rate"])
    finally:
        for proc in (callee, caller):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def run_federation_bench(messages: int, calls: int, rounds: int) -> dict[str, Any]:
    """Median rates over `rounds` alternating measurements: `pubsub_per_s_linked` (publisher on
    A, subscriber on B), `pubsub_per_s_single` (both on one router), `rpc_calls_per_s_linked`,
    `rpc_calls_per_s_single`, and the linked/single ratios."""
    found: dict[str, list[float]] = {}
    with routers(2, linked=True) as (a, b), routers(1, linked=False) as (single,):
        for _ in range(rounds):
            for key, value in (
                ("pubsub_per_s_linked", lambda: _pubsub(a, b, messages)),
                ("pubsub_per_s_single", lambda: _pubsub(single, single, messages)),
                ("rpc_calls_per_s_linked", lambda: _rpc(a, b, calls)),
                ("rpc_calls_per_s_single", lambda: _rpc(single, single, calls)),
            ):
                found.setdefault(key, []).append(value())
    result: dict[str, Any] = {k: round(statistics.median(v)) for k, v in found.items()}
    result["pubsub_linked_ratio"] = round(
        result["pubsub_per_s_linked"] / result["pubsub_per_s_single"], 2
    )
    result["rpc_linked_ratio"] = round(
        result["rpc_calls_per_s_linked"] / result["rpc_calls_per_s_single"], 2
    )
    return result

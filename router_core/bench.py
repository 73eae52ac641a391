"""Router benchmark: pub/sub messages per second from one publisher to one subscriber and RPC calls
per second, autobahn clients in their own processes, against this router with metering and SWAP
on, with both off, and against Crossbar.io (own venv `.venv-crossbar`, created when missing).

The last stdout line is one JSON object (see `run_bench`). Client keys reach the worker processes
in the environment (`MESH_BENCH_KEY`), never on their command line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REALM = "realm1"
PRICE = 10**12
TOKEN = "0x" + "11" * 20
CHAIN_ID = 31337
WINDOW = 200  # messages / calls in flight per client


# -- worker processes (clients) ----------------------------------------------------------------


async def _client(url: str, key_hex: str) -> Any:
    if key_hex:
        from eth_account import Account

        from router_core.client import SwapOffer, connect

        key = bytes.fromhex(key_hex)
        offer = SwapOffer(
            "0x" + Account.from_key(key).address[2:].lower()[::-1],
            CHAIN_ID,
            TOKEN,
            1000 * PRICE,
            PRICE,
        )
        return await connect(url, REALM, key, serializer="msgpack", swap=offer)
    from autobahn.asyncio.wamp import ApplicationSession
    from autobahn.asyncio.websocket import WampWebSocketClientFactory
    from autobahn.wamp.serializer import MsgPackSerializer
    from autobahn.wamp.types import ComponentConfig

    loop = asyncio.get_running_loop()
    joined: asyncio.Future[Any] = loop.create_future()

    class Anon(ApplicationSession):
        def onConnect(self) -> None:  # noqa: N802
            self.join(REALM)

        def onJoin(self, details: Any) -> None:  # noqa: N802
            joined.set_result(self)

    factory = WampWebSocketClientFactory(
        lambda: Anon(ComponentConfig(REALM)), url=url, serializers=[MsgPackSerializer()]
    )
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    await loop.create_connection(factory, "127.0.0.1", port)
    return await asyncio.wait_for(joined, 10)


KEY_ENV = "MESH_BENCH_KEY"


async def _ready_then_go(loop: asyncio.AbstractEventLoop) -> None:
    """Say "ready" (joined, warmed up) and wait for a line on stdin: the bench starts the
    router's CPU count in between, so logins and handshakes are not counted per message."""
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)


async def _worker(role: str, url: str, key_hex: str, n: int) -> None:
    from autobahn.wamp.types import PublishOptions

    session = await _client(url, key_hex)
    loop = asyncio.get_running_loop()
    if role == "sub":
        done = loop.create_future()
        times: list[float] = []

        def on_event(*args: Any) -> None:
            times.append(time.perf_counter())
            if len(times) == n and not done.done():
                done.set_result(None)

        await session.subscribe(on_event, "bench.topic")
        print("ready", flush=True)
        await asyncio.wait_for(done, 300)
        print(json.dumps({"rate": (n - 1) / (times[-1] - times[0])}), flush=True)
    elif role == "pub":
        await _ready_then_go(loop)
        sem = asyncio.Semaphore(WINDOW)
        payload = "x" * 64

        async def one(i: int) -> None:
            async with sem:
                await session.publish(
                    "bench.topic", i, payload, options=PublishOptions(acknowledge=True)
                )

        await asyncio.gather(*(one(i) for i in range(n)))
        print(json.dumps({"published": n}), flush=True)
    elif role == "callee":
        await session.register(lambda i, p: p, "bench.echo")
        print("ready", flush=True)
        await asyncio.sleep(3600)
    elif role == "caller":
        sem = asyncio.Semaphore(WINDOW)
        payload = "x" * 64

        async def call(i: int) -> None:
            async with sem:
                await session.call("bench.echo", i, payload)

        await asyncio.gather(*(call(i) for i in range(min(200, n))))  # warm-up
        await _ready_then_go(loop)
        started = time.perf_counter()
        await asyncio.gather(*(call(i) for i in range(n)))
        print(json.dumps({"rate": n / (time.perf_counter() - started)}), flush=True)
    session.leave()
    await asyncio.sleep(0.1)


# -- router processes ---------------------------------------------------------------------------


async def _serve(port: int, metered: bool, broker: str, keys: list[str], data_dir: str) -> None:
    from domain.envelope import Signer
    from domain.swap import RouterTerms
    from router_core.chain_clock import ManualClock
    from router_core.router import RealmOptions, Router
    from router_core.stakes import StaticStakes
    from router_core.swap import SwapService

    router_key = secrets.token_bytes(32)
    signer = Signer(router_key)
    clock = ManualClock(1)
    stakes = StaticStakes({REALM: dict.fromkeys(keys, 10**9)})
    swap = None
    handoff = None
    if metered:
        from router_core.handoff import LedgerHandoff
        from router_core.meter_child import ChildDrain, ChildSpec

        loop = asyncio.get_running_loop()
        spec = ChildSpec(broker, str(Path(data_dir) / "spool"), data_dir, fsync=False)
        drain = ChildDrain(spec, router_key, loop)
        handoff = LedgerHandoff(drain, loop)
        await drain.start()
        terms = {REALM: RouterTerms(1000 * PRICE, 10**7 * PRICE, PRICE, TOKEN, CHAIN_ID)}
        swap = SwapService(signer.address, terms, handoff, clock, Path(data_dir) / "swap.sqlite")
    router = Router(
        signer.address,
        [RealmOptions(REALM, allow_anonymous=not metered)],
        stakes,
        clock,
        sink=handoff,
        swap=swap,
    )
    if handoff is not None:
        handoff.on_full, handoff.on_space = router.pause_reading, router.resume_reading
    await router.start("127.0.0.1", port)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await router.stop()
    if handoff is not None:
        await asyncio.to_thread(handoff.close)


def _python() -> str:
    return sys.executable


#: a directory: each router process of the run is recorded there by py-spy (profiling only;
#: py-spy is not a dependency: install it in the venv)
PROFILE_ENV = "MESH_BENCH_PROFILE"


def _spawn(args: list[str], key_hex: str = "") -> subprocess.Popen[str]:
    command = [_python(), "-m", "router_core.bench", *args]
    profile = os.environ.get(PROFILE_ENV, "")
    if profile and args[0] == "serve":
        out = Path(profile) / f"router-{'metered' if args[2] == '1' else 'unmetered'}.txt"
        spy = Path(sys.executable).parent / "py-spy"
        command = [
            str(spy),
            "record",
            "--nonblocking",
            "--threads",
            "-r",
            "200",
            "-f",
            "raw",
            "-o",
            str(out),
            "--",
            *command,
        ]
    return subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(Path(__file__).resolve().parent.parent),
        env={**os.environ, KEY_ENV: key_hex},
    )


def _expect_ready(proc: subprocess.Popen[str], what: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    while line.startswith("py-spy>") or line == "\n":  # profiling: py-spy's lines come first
        line = proc.stdout.readline()
    if line.strip() != "ready":
        raise RuntimeError(f"{what} did not start: {line!r}")


def _go(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()


def _result(proc: subprocess.Popen[str], timeout_s: float = 300) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout_s)
    lines = [x for x in out.splitlines() if x.startswith("{")]
    return dict(json.loads(lines[-1]))


def _stop(proc: subprocess.Popen[str], timeout_s: float = 60) -> None:
    """Close stdin and wait (a metered router hands its last records to the broker first)."""
    with contextlib.suppress(Exception):
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=timeout_s)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


#: the scenarios, in the order they run: (name, subscribers); "rpc" has a callee and a caller
SCENARIOS = (("pubsub", 1), ("rpc", 0), ("fanout", 4))
#: client keys a scenario needs at most (fanout: 4 subscribers and a publisher)
KEYS_NEEDED = 5


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (all its threads, not its children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _settled_cpu(pid: int, timeout_s: float = 5.0) -> float:
    """The process's CPU time once it stopped using CPU (work queued behind the traffic, such as
    sealing a last batch, still counts), waiting at most `timeout_s`."""
    last = cpu_seconds(pid)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = cpu_seconds(pid)
        if now - last < 0.005:
            return now
        last = now
    return last


def measure(
    url: str, keys: list[str], name: str, messages: int, calls: int, router_pid: int
) -> tuple[float, float]:
    """One scenario: (routed messages per second as the clients saw them, router CPU µs per
    routed message). Routed messages: pubsub and fanout count deliveries (4 per publish in
    fanout), rpc counts INVOCATION and RESULT (2 per call). The CPU count starts once every
    client joined (and the caller warmed up) and ends once the router is idle again."""
    supply = iter(keys if keys else [""] * KEYS_NEEDED)
    if name == "rpc":
        callee = _spawn(["worker", "callee", url, "0"], next(supply))
        _expect_ready(callee, "callee")
        caller = _spawn(["worker", "caller", url, str(calls)], next(supply))
        _expect_ready(caller, "caller")
        cpu0 = _settled_cpu(router_pid)
        _go(caller)
        rate = float(_result(caller)["rate"])
        cpu = _settled_cpu(router_pid) - cpu0
        callee.kill()
        callee.wait()
        return 2 * rate, 1e6 * cpu / (2 * calls)
    subscribers = dict(SCENARIOS)[name]
    subs = []
    for _ in range(subscribers):
        sub = _spawn(["worker", "sub", url, str(messages)], next(supply))
        _expect_ready(sub, "subscriber")
        subs.append(sub)
    pub = _spawn(["worker", "pub", url, str(messages)], next(supply))
    _expect_ready(pub, "publisher")
    cpu0 = _settled_cpu(router_pid)
    _go(pub)
    rates = [float(_result(sub)["rate"]) for sub in subs]
    _result(pub)
    cpu = _settled_cpu(router_pid) - cpu0
    return sum(rates), 1e6 * cpu / (messages * subscribers)


CROSSBAR_CONFIG = {
    "version": 2,
    "controller": {},
    "workers": [
        {
            "type": "router",
            "realms": [
                {
                    "name": REALM,
                    "roles": [
                        {
                            "name": "anonymous",
                            "permissions": [
                                {
                                    "uri": "",
                                    "match": "prefix",
                                    "allow": {
                                        "call": True,
                                        "register": True,
                                        "publish": True,
                                        "subscribe": True,
                                    },
                                    "disclose": {"caller": False, "publisher": False},
                                    "cache": True,
                                }
                            ],
                        }
                    ],
                }
            ],
            "transports": [
                {
                    "type": "websocket",
                    "endpoint": {"type": "tcp", "port": 0, "interface": "127.0.0.1"},
                    "serializers": ["msgpack", "json"],
                }
            ],
        }
    ],
}


def crossbar_bin(root: Path) -> Path:
    venv = root / ".venv-crossbar"
    binary = venv / "bin" / "crossbar"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "crossbar"], check=True)
    return binary


def _wait_port(port: int, timeout_s: float) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s, contextlib.suppress(OSError):
            s.connect(("127.0.0.1", port))
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {port}")


VARIANTS = ("metered", "unmetered")


def loop_metering_ns(messages: int = 200_000) -> float:
    """What metering adds to the router's loop per routed message, measured in this process
    without the machine's noise: the metering observer appending to the hand-off's chunk, and
    marshalling the chunk for the child (pipe writes not included)."""
    import uvloop

    from router_core.chain_clock import ManualClock
    from router_core.handoff import Chunk, LedgerHandoff
    from router_core.meter_child import _encode_chunk
    from router_core.metering import MeteringObserver

    class Encode:
        def attach(self, handoff: LedgerHandoff) -> None:
            self.handoff = handoff

        def ship(self, chunk: Chunk) -> None:
            _encode_chunk(chunk)
            self.handoff.acked(chunk.id)

        def flush(self, timeout_s: float) -> None: ...

        def close(self, timeout_s: float) -> None: ...

    class Peer:
        def __init__(self, address: str) -> None:
            self.authid = address

    async def run() -> float:
        handoff = LedgerHandoff(Encode(), asyncio.get_running_loop())
        routed = MeteringObserver(handoff, ManualClock(5)).routed
        sender, receiver = Peer("0x" + "ab" * 20), Peer("0x" + "cd" * 20)
        started = time.process_time()
        for _ in range(messages):
            routed(REALM, "event", sender, receiver, "bench.topic", 100)  # type: ignore[arg-type]
        spent = time.process_time() - started
        started = time.process_time()
        for _ in range(messages):
            pass
        return (spent - (time.process_time() - started)) / messages * 1e9

    return float(uvloop.run(run()))


def run_bench(
    messages: int = 20_000, calls: int = 5_000, crossbar: bool = True, rounds: int = 3
) -> dict[str, Any]:
    """Both routers run side by side; each scenario is measured `rounds` times per variant,
    alternating; rates are medians, CPU per message the minimum (the least disturbed run)."""
    from infra.broker import start_broker
    from infra.procs import free_port, stop_pid

    root = Path(__file__).resolve().parent.parent
    result: dict[str, Any] = {"messages": messages, "calls": calls, "rounds": rounds}
    result["loop_metering_ns_per_message"] = round(min(loop_metering_ns() for _ in range(3)))
    broker = start_broker()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            from eth_account import Account

            # fresh clients every round: a client that joins owing more than the payment
            # threshold pays first (and this router, without a chain, refuses the cheque)
            keys = {
                (turn, name): [secrets.token_bytes(32).hex() for _ in range(KEYS_NEEDED)]
                for turn in range(rounds)
                for name, _ in SCENARIOS
            }
            addresses = [
                Account.from_key(bytes.fromhex(k)).address for ks in keys.values() for k in ks
            ]
            servers: dict[str, tuple[str, subprocess.Popen[str]]] = {}
            try:
                for variant in VARIANTS:
                    port = free_port()
                    data = Path(tmp) / variant
                    server = _spawn(
                        [
                            "serve",
                            str(port),
                            "1" if variant == "metered" else "0",
                            broker.bootstrap,
                            ",".join(addresses),
                            str(data),
                        ]
                    )
                    servers[variant] = (f"ws://127.0.0.1:{port}/ws", server)
                    _expect_ready(server, f"{variant} router")
                # alternate variants scenario by scenario, so both see the same machine load
                runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
                for turn in range(rounds):
                    for name, _subs in SCENARIOS:
                        for variant, (url, server) in servers.items():
                            use = keys[turn, name] if variant == "metered" else []
                            found = measure(url, use, name, messages, calls, server.pid)
                            runs.setdefault((variant, name), []).append(found)
            finally:
                for _url, server in servers.values():
                    _stop(server)
            for (variant, name), measured in runs.items():
                rate = statistics.median(r for r, _ in measured)
                cpu_us = min(c for _, c in measured)  # the least disturbed run of a loaded machine
                if name == "pubsub":
                    result[f"routed_per_s_{variant}"] = round(rate)
                elif name == "rpc":
                    result[f"rpc_calls_per_s_{variant}"] = round(rate / 2)
                else:
                    result[f"fanout_routed_per_s_{variant}"] = round(rate)
                result[f"router_cpu_us_{variant}_{name}"] = round(cpu_us, 2)
            if not crossbar:
                return _ratios(result)
            cbdir = Path(tmp) / "cb" / ".crossbar"
            cbdir.mkdir(parents=True)
            port = free_port()
            config = json.loads(json.dumps(CROSSBAR_CONFIG))
            config["workers"][0]["transports"][0]["endpoint"]["port"] = port
            (cbdir / "config.json").write_text(json.dumps(config))
            cb = subprocess.Popen(
                [str(crossbar_bin(root)), "start", "--cbdir", str(cbdir)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                _wait_port(port, 90)
                url = f"ws://127.0.0.1:{port}/ws"
                pubsub = measure(url, [], "pubsub", messages, calls, cb.pid)[0]
                rpc = measure(url, [], "rpc", messages, calls, cb.pid)[0]
            finally:
                stop_pid(cb.pid, 15)
            result["crossbar_per_s"] = round(pubsub)
            result["crossbar_rpc_calls_per_s"] = round(rpc / 2)
    finally:
        broker.stop()
    return _ratios(result)


def _ratios(result: dict[str, Any]) -> dict[str, Any]:
    m, u = result["routed_per_s_metered"], result["routed_per_s_unmetered"]
    result["metering_cost_pct"] = round(100 * (u - m) / u, 1) if u else None
    for name, _ in SCENARIOS:
        metered, unmetered = (result[f"router_cpu_us_{k}_{name}"] for k in ("metered", "unmetered"))
        result[f"router_cpu_ratio_{name}"] = round(metered / unmetered, 3) if unmetered else None
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="router_core.bench")
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker")
    w.add_argument("role")
    w.add_argument("url")
    w.add_argument("n", type=int)
    s = sub.add_parser("serve")
    s.add_argument("port", type=int)
    s.add_argument("metered")
    s.add_argument("broker")
    s.add_argument("keys")
    s.add_argument("data_dir")
    args = parser.parse_args(argv)
    import uvloop

    if args.cmd == "worker":
        uvloop.run(_worker(args.role, args.url, os.environ.get(KEY_ENV, ""), args.n))
    else:
        keys = [k for k in args.keys.split(",") if k]
        os.makedirs(args.data_dir, exist_ok=True)
        uvloop.run(_serve(args.port, args.metered == "1", args.broker, keys, args.data_dir))


if __name__ == "__main__":
    main()

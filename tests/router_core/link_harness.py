"""Helpers of the router-link tests: linked `meshledger router run` processes on free loopback
ports (a topology is a list of edges), anonymous autobahn clients, and a TCP proxy that can cut a
link's connections mid-traffic."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autobahn.asyncio.wamp import ApplicationSession
from autobahn.asyncio.websocket import WampWebSocketClientFactory
from autobahn.wamp.serializer import JsonSerializer
from autobahn.wamp.types import ComponentConfig
from router_harness import REALM, Key, new_key

from infra.procs import free_port, stop_process

LINE = [(0, 1), (1, 2)]
TRIANGLE = [(0, 1), (1, 2), (0, 2)]
FULL_MESH_4 = [(a, b) for a in range(4) for b in range(a + 1, 4)]


@dataclass
class RouterProc:
    key: Key
    port: int
    config: Path
    proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


@dataclass
class Mesh:
    """Routers linked along `edges`; `via` maps an edge (dialer, peer) to the port the dialer
    uses for the peer (a proxy's, when the test cuts that link)."""

    tmp_path: Path
    size: int
    edges: list[tuple[int, int]]
    via: dict[tuple[int, int], int] = field(default_factory=dict)
    extra_toml: str = ""
    #: the router's TOML tables per index (default: SWAP off); must end with its [swap] table
    tables: Callable[[int], str] | None = None
    #: more keys of the [[realms]] table
    realm_toml: str = ""
    routers: list[RouterProc] = field(default_factory=list)

    def prepare(self) -> None:
        for i in range(self.size):
            self.routers.append(
                RouterProc(new_key(), free_port(), self.tmp_path / f"router{i}.toml")
            )

    def peers_of(self, i: int) -> list[int]:
        return sorted({b for a, b in self.edges if a == i} | {a for a, b in self.edges if b == i})

    def write_config(self, i: int) -> None:
        me = self.routers[i]
        peers = ", ".join(
            f'{{ url = "ws://127.0.0.1:{self.via.get((i, j), self.routers[j].port)}/ws", '
            f'address = "{self.routers[j].key.address}" }}'
            for j in self.peers_of(i)
        )
        tables = self.tables(i) if self.tables is not None else "[swap]\nenabled = false"
        me.config.write_text(
            f"""
listen = "127.0.0.1:{me.port}"
data_dir = "{self.tmp_path / f"data{i}"}"
{self.extra_toml}
{tables}
[links]
backoff_initial_s = 0.1
backoff_max_s = 0.5
[[realms]]
name = "{REALM}"
allow_anonymous = true
peers = [{peers}]
{self.realm_toml}
"""
        )

    def start(self, i: int) -> None:
        me = self.routers[i]
        self.write_config(i)
        me.proc = spawn_router(me.config, me.key, self.tmp_path / f"router{i}.log")

    def start_all(self) -> None:
        if not self.routers:
            self.prepare()
        for i in range(self.size):
            self.start(i)
        for me in self.routers:
            assert me.proc is not None
            serving(me.proc, REALM)

    def stop(self) -> None:
        for me in self.routers:
            if me.proc is not None:
                stop_process(me.proc)

    async def converged(self, timeout_s: float = 30.0) -> list[Client]:
        """A client on each router; returns them once every router knows every link (all
        compute the same broadcast trees from then on)."""
        clients = [await anonymous(r.url) for r in self.routers]

        async def reach_all() -> bool:
            for client in clients:
                status = await client.call("mesh.link.status")
                if status["edges"] != len(self.edges):
                    return False
            return True

        await until_async(reach_all, "every router knows every link", timeout_s)
        return clients


def spawn_router(config: Path, key: Key, log: Path) -> subprocess.Popen[str]:
    """`meshledger router run --config CONFIG` with `key` as its operator key (from the env)."""
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "meshledger"), "router", "run", "--config", str(config)],
        env={**os.environ, "MESH_ROUTER_KEY": "0x" + key.private.hex()},
        stdout=subprocess.PIPE,
        stderr=open(log, "w"),  # noqa: SIM115 (the child's)
        text=True,
    )


def serving(proc: subprocess.Popen[str], realm: str) -> None:
    """Wait for the router's first line: it serves `realm`."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert f"serving {realm}" in line, f"router did not start: {line!r}"


@contextlib.contextmanager
def mesh(tmp_path: Path, size: int, edges: list[tuple[int, int]], **kwargs: Any) -> Iterator[Mesh]:
    net = Mesh(tmp_path, size, edges, **kwargs)
    try:
        net.start_all()
        yield net
    finally:
        net.stop()


@contextlib.contextmanager
def proxied_pair(tmp_path: Path, **kwargs: Any) -> Iterator[tuple[Mesh, list[Proxy]]]:
    """Two linked routers, each dialing the other through a proxy of its own: A dials B via
    proxies[0], B dials A via proxies[1] (start them in the test's loop)."""
    net = Mesh(tmp_path, 2, [(0, 1)], **kwargs)
    net.prepare()
    proxies = [Proxy(net.routers[1].port), Proxy(net.routers[0].port)]
    net.via = {(0, 1): proxies[0].port, (1, 0): proxies[1].port}
    try:
        net.start_all()
        yield net, proxies
    finally:
        net.stop()


class Client(ApplicationSession):
    """A stock autobahn session (anonymous) on one router."""

    def __init__(self, config: ComponentConfig, joined: asyncio.Future[Client]) -> None:
        super().__init__(config)
        self._joined = joined

    def onConnect(self) -> None:  # noqa: N802
        self.join(self.config.realm)

    def onJoin(self, details: Any) -> None:  # noqa: N802
        self._joined.set_result(self)


async def anonymous(url: str, realm: str = REALM) -> Client:
    loop = asyncio.get_running_loop()
    joined: asyncio.Future[Client] = loop.create_future()
    factory = WampWebSocketClientFactory(
        lambda: Client(ComponentConfig(realm), joined), url=url, serializers=[JsonSerializer()]
    )
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    await loop.create_connection(factory, "127.0.0.1", port)
    return await asyncio.wait_for(joined, 10)


async def until_async(check: Any, what: str, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout_s}s: {what}")
        await asyncio.sleep(0.05)


class Proxy:
    """A TCP proxy on a free loopback port; `cut()` aborts every connection through it (new
    ones are accepted again right away)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            _pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True
        )
        self._writers -= {writer, up_writer}

    def cut(self) -> int:
        cut = 0
        for writer in list(self._writers):
            writer.transport.abort()
            cut += 1
        return cut

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.transport.abort()

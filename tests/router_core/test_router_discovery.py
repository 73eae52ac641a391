"""Routers found on chain (issue 12 item 3), on a real anvil, the real indexer, a real broker and
`meshledger router run` processes: RouterRegistry refuses what it must, the indexer brings its
announcements into the log (the projection shows them), routers with `discover = true` link to
the routers of their realm from that list (and unlink a withdrawn one), and a client given only
a realm and a chain picks a reachable router that proves its key, failing over when it dies."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from indexer_harness import Harness
from link_harness import anonymous, serving, spawn_router, until_async
from mesh_chain import MeshChain
from router_harness import Key, new_key
from test_indexer_projection import project, rows
from web3.exceptions import ContractCustomError

from domain.events import REALM_TARGET, ROLES, RouterAnnounced, RouterWithdrawn
from indexer.decoding import Contracts
from indexer.rpc import JsonRpc, RpcSource
from indexer.service import SyncConfig
from infra.anvil import Anvil
from infra.broker import Broker
from infra.ens import Names, deploy_ens, register_name
from infra.procs import free_port, stop_process
from router_core.client import NoRouterReachable, RealmConnection, connect_realm
from router_core.discovery import (
    Endpoint,
    announce,
    deploy_router_registry,
    read_endpoints,
    registry_at,
    withdraw,
)
from settlement.contracts import revert_reason, send_signed
from settlement.merkle import realm_id

pytestmark = pytest.mark.integration

REALM = "disc.realm"
PROVISION = 10**20
#: the chain id the indexer harness reports its events under
CHAIN_ID = 42161


@dataclass
class World:
    mesh: MeshChain
    registry: str
    harness: Harness
    operators: list[Key]
    ports: list[int]

    def url(self, i: int) -> str:
        return f"ws://127.0.0.1:{self.ports[i]}/ws"

    def sync(self) -> None:
        source = RpcSource(JsonRpc(self.mesh.anvil.url), self.contracts(), CHAIN_ID)
        self.harness.sync_to(self.mesh.head(), source=source)

    def contracts(self) -> Contracts:
        return Contracts(**{**self.mesh.contracts.__dict__, "router_registry": self.registry})


def fund(mesh: MeshChain, key: Key, stake_as: str | None) -> None:
    """Gas and tokens for `key`; with `stake_as`, a stake in that role on the realm itself."""
    w3, stack = mesh.w3, mesh.stack
    w3.provider.make_request("anvil_setBalance", [key.address, hex(10**20)])  # type: ignore[attr-defined]
    mesh.send(stack.token.functions.mint(key.address, 10 * PROVISION), mesh.accounts[0])
    if stake_as is not None:
        send_signed(w3, stack.token.functions.approve(stack.staking.address, 2**255), key.private)
        call = stack.staking.functions.stake(
            realm_id(REALM), ROLES.index(stake_as), REALM_TARGET, PROVISION
        )
        send_signed(w3, call, key.private)


def world(anvil: Anvil, broker: Broker, tmp: Path, operators: int) -> World:
    mesh = MeshChain.deploy(anvil)
    mesh.register(REALM, mesh.accounts[1])
    registry = deploy_router_registry(mesh.w3, mesh.stack.staking.address, sender=mesh.accounts[0])
    keys = [new_key() for _ in range(operators)]
    for key in keys:
        fund(mesh, key, "router_operator")
    harness = Harness(mesh, broker, tmp, SyncConfig(confirmations=0, poll_interval_s=0.05))
    return World(mesh, str(registry.address), harness, keys, [free_port() for _ in keys])


def _refused(call: Callable[[], Any]) -> str:
    with pytest.raises(ContractCustomError) as err:
        call()
    return revert_reason("RouterRegistry", str(err.value.data)) or str(err.value)


def test_the_registry_refuses_what_it_must_and_the_indexer_brings_the_rest_in(
    fresh_anvil: Anvil, fresh_broker: Broker, tmp_path: Path
) -> None:
    w = world(fresh_anvil, fresh_broker, tmp_path, operators=1)
    (operator,) = w.operators
    stranger = new_key()
    fund(w.mesh, stranger, None)  # gas and tokens, no provision stake
    w3, registry = w.mesh.w3, w.registry

    assert _refused(lambda: announce(w3, registry, REALM, w.url(0), stranger.private)).startswith(
        "NoProvisionStake("
    )
    for bad in ("http://127.0.0.1:1/ws", "ws://", "ws://a b", "ws://" + "x" * 252):
        reason = _refused(lambda bad=bad: announce(w3, registry, REALM, bad, operator.private))
        assert reason.startswith("BadUrl("), (bad, reason)
    announce(w3, registry, REALM, "ws://127.0.0.1:1/ws", operator.private)
    announce(w3, registry, REALM, w.url(0), operator.private)  # moved: one entry
    contract = registry_at(w3, registry)
    prune = contract.functions.prune(realm_id(REALM), operator.address)
    assert _refused(lambda: send_signed(w3, prune, stranger.private)).startswith("StillStaked(")
    assert read_endpoints(w3, registry, REALM) == [Endpoint(operator.address, w.url(0))]
    withdraw(w3, registry, REALM, operator.private)
    assert read_endpoints(w3, registry, REALM) == []
    announce(w3, registry, REALM, w.url(0), operator.private)

    w.sync()
    events = [e for e in w.harness.events() if isinstance(e, RouterAnnounced | RouterWithdrawn)]
    assert [(type(e).__name__, getattr(e, "url", "")) for e in events] == [
        ("RouterAnnounced", "ws://127.0.0.1:1/ws"),
        ("RouterAnnounced", w.url(0)),
        ("RouterWithdrawn", ""),
        ("RouterAnnounced", w.url(0)),
    ]
    assert all(e.realm == REALM and e.operator == operator.address for e in events)
    assert [e.stake for e in events if isinstance(e, RouterAnnounced)] == [PROVISION] * 3
    service = project(fresh_broker, tmp_path / "ledger.duckdb", [w.harness.signer.address])
    assert rows(service, "SELECT realm, operator, url, stake FROM realm_routers") == [
        (REALM, operator.address, w.url(0), PROVISION)
    ]
    service.close()


# -- routers that link from the list ------------------------------------------------------------


class Routers:
    """`meshledger router run` processes of the world's operators, `discover = true`, following
    the indexer's records in the broker (no `peers` configured)."""

    def __init__(self, w: World, broker: Broker, tmp: Path) -> None:
        self.w, self.broker, self.tmp = w, broker, tmp
        self.procs: dict[int, subprocess.Popen[str]] = {}

    def start(self, i: int) -> None:
        key = self.w.operators[i]
        config = self.tmp / f"router{i}.toml"
        config.write_text(
            f"""
listen = "127.0.0.1:{self.w.ports[i]}"
data_dir = "{self.tmp / f"router{i}"}"
broker = "{self.broker.bootstrap}"
chain_id = {CHAIN_ID}
ledger_sources = ["{self.w.harness.signer.address}"]
[swap]
enabled = false
[links]
backoff_initial_s = 0.1
backoff_max_s = 0.5
[[realms]]
name = "{REALM}"
allow_anonymous = true
discover = true
"""
        )
        proc = spawn_router(config, key, self.tmp / f"router{i}.log")
        serving(proc, REALM)
        self.procs[i] = proc

    def kill(self, i: int) -> None:
        proc = self.procs.pop(i)
        assert proc.poll() is None, f"router {i} was not running"
        proc.kill()
        proc.wait(timeout=10)

    def stop(self) -> None:
        for proc in self.procs.values():
            stop_process(proc)


@contextlib.contextmanager
def routers(w: World, broker: Broker, tmp: Path, *started: int) -> Iterator[Routers]:
    running = Routers(w, broker, tmp)
    try:
        for i in started:
            running.start(i)
        yield running
    finally:
        running.stop()


async def links_up(url: str) -> list[str]:
    client = await anonymous_on(url)
    try:
        status = await client.call("mesh.link.status")
        return list(status["links_up"])
    finally:
        client.leave()


async def anonymous_on(url: str) -> Any:
    return await anonymous(url, REALM)


def test_routers_link_from_the_chain_and_unlink_a_withdrawn_one(
    fresh_anvil: Anvil, fresh_broker: Broker, tmp_path: Path
) -> None:
    w = world(fresh_anvil, fresh_broker, tmp_path, operators=3)
    w3 = w.mesh.w3
    a, b, c = (k.address.lower() for k in w.operators)
    for i in (0, 1):
        announce(w3, w.registry, REALM, w.url(i), w.operators[i].private)
    w.sync()
    with routers(w, fresh_broker, tmp_path, 0, 1) as running:

        async def body() -> None:
            await until_async(
                lambda: _has(links_up(w.url(0)), [b]), "router 0 linked to router 1", 60
            )
            sub, pub = await anonymous_on(w.url(1)), await anonymous_on(w.url(0))
            got: list[Any] = []
            await sub.subscribe(lambda *x: got.append(x), "com.example.found")
            for _ in range(400):
                pub.publish("com.example.found", "hello")
                await asyncio.sleep(0.05)
                if got:
                    break
            assert got, "no event crossed the link the routers found on chain"

            # a third router announces itself: both link to it without a restart
            announce(w3, w.registry, REALM, w.url(2), w.operators[2].private)
            running.start(2)
            w.sync()
            await until_async(
                lambda: _has(links_up(w.url(0)), [b, c]), "router 0 linked to router 2", 60
            )
            await until_async(
                lambda: _has(links_up(w.url(2)), [a, b]), "router 2 linked to both", 60
            )
            # router 1 withdraws: the others unlink it (and refuse its links)
            withdraw(w3, w.registry, REALM, w.operators[1].private)
            w.sync()
            await until_async(lambda: _is(links_up(w.url(0)), [c]), "router 1 unlinked", 60)
            await until_async(lambda: _is(links_up(w.url(2)), [a]), "router 1 unlinked", 60)

        asyncio.run(body())
        assert all(p.poll() is None for p in running.procs.values()), "a router died"


async def _has(found: Any, wanted: list[str]) -> bool:
    return set(wanted) <= set(await found)


async def _is(found: Any, wanted: list[str]) -> bool:
    return sorted(await found) == sorted(wanted)


def test_a_client_given_a_realm_and_a_chain_picks_a_router_and_fails_over(
    fresh_anvil: Anvil, fresh_broker: Broker, tmp_path: Path
) -> None:
    w = world(fresh_anvil, fresh_broker, tmp_path, operators=3)
    w3 = w.mesh.w3
    client = new_key()
    fund(w.mesh, client, "user")  # a reservation: the routers log it in by its key
    for i in (0, 1):
        announce(w3, w.registry, REALM, w.url(i), w.operators[i].private)
    # operator 2 announces the URL of router 0: whoever answers there cannot prove its key
    announce(w3, w.registry, REALM, w.url(0), w.operators[2].private)
    w.sync()
    operators = [k.address for k in w.operators]
    ens = deploy_ens(w3, w.mesh.accounts[0])
    register_name(w3, ens, "first.eth", w.operators[0].private)
    register_name(w3, ens, "second.eth", w.operators[1].private)
    names = Names(w.mesh.anvil.url, ens.registry)
    with routers(w, fresh_broker, tmp_path, 0, 1) as running:

        async def body() -> None:
            with pytest.raises(NoRouterReachable) as wrong:
                await connect_realm(
                    REALM, w.mesh.anvil.url, w.registry, client.private,
                    prefer=operators[2], max_tries=1,
                )  # fmt: skip
            assert "mesh.error.wrong_router" in str(wrong.value), wrong.value

            # a router given by its ENS name: resolved, then preferred (each of the two)
            for name, operator in (("first.eth", operators[0]), ("second.eth", operators[1])):
                named = await connect_realm(
                    REALM, w.mesh.anvil.url, w.registry, client.private,
                    prefer=name, names=names,
                )  # fmt: skip
                assert named.expect_router == operator, name
                named.leave()

            conn = RealmConnection(REALM, w.mesh.anvil.url, w.registry, client.private)
            first = await conn.session()
            assert first.expect_router in operators[:2] and first.router == first.expect_router
            assert await first.call("wamp.session.count") >= 1  # served, logged in by its key
            dead = operators.index(first.expect_router)
            running.kill(dead)
            await asyncio.wait_for(first.left, 30)
            second = await conn.session()
            assert second.expect_router == operators[1 - dead], conn.history
            assert await second.call("wamp.session.count") >= 1
            assert conn.history == [operators[dead], operators[1 - dead]]
            second.leave()

            running.kill(1 - dead)
            with pytest.raises(NoRouterReachable) as none:
                await connect_realm(REALM, w.mesh.anvil.url, w.registry, client.private)
            assert "unreachable" in str(none.value), none.value

        asyncio.run(body())


def test_the_operator_cli_announces_lists_and_explains_refusals(
    fresh_anvil: Anvil, fresh_broker: Broker, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from router_core.cli import router as router_cli

    w = world(fresh_anvil, fresh_broker, tmp_path, operators=1)
    stranger = new_key()
    fund(w.mesh, stranger, None)
    keys = {}
    for name, key in (("operator", w.operators[0]), ("stranger", stranger)):
        keys[name] = tmp_path / f"{name}.key"
        keys[name].write_text("0x" + key.private.hex())
        keys[name].chmod(0o600)
    where = ["--rpc", w.mesh.anvil.url, "--registry", w.registry, "--realm", REALM]
    runner = CliRunner()

    refused = runner.invoke(
        router_cli, ["announce", *where, "--url", w.url(0), "--key-file", str(keys["stranger"])]
    )
    assert refused.exit_code == 1 and "the registry refused: NoProvisionStake(" in refused.output
    done = runner.invoke(
        router_cli, ["announce", *where, "--url", w.url(0), "--key-file", str(keys["operator"])]
    )
    assert done.exit_code == 0, done.output
    listed = runner.invoke(router_cli, ["list", *where, "--json"])
    assert listed.exit_code == 0, listed.output
    assert [json.loads(line) for line in listed.output.splitlines()] == [
        {"operator": w.operators[0].address, "url": w.url(0)}
    ]
    gone = runner.invoke(router_cli, ["withdraw", *where, "--key-file", str(keys["operator"])])
    assert (
        gone.exit_code == 0
        and "no router announced" in runner.invoke(router_cli, ["list", *where]).output
    )
    dead = runner.invoke(
        router_cli,
        ["list", "--rpc", f"http://127.0.0.1:{free_port()}", "--registry", w.registry,
         "--realm", REALM],
    )  # fmt: skip
    assert dead.exit_code == 1 and "chain unreachable" in dead.output, dead.output

"""Two routers of one `meshledger up` serving a realm with `discover = true` (real CLIs in
subprocesses): `up` registers the realm and stakes and announces both routers in RouterRegistry
on its dev chain, the indexer brings the announcements into the log, and the routers link to
each other from it: a stock client's publication on one reaches a subscriber on the other."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from test_stack_up import Stack, services, stacks  # noqa: F401 (a fixture)
from web3 import HTTPProvider, Web3

from infra.procs import stable_port
from ledger.keys import read_key_file
from router_core.discovery import read_endpoints

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "router_core"))
from link_harness import anonymous, until_async  # noqa: E402

pytestmark = pytest.mark.integration

REALM = "realm1"


def test_up_announces_its_routers_and_they_link_from_the_chain(
    tmp_path: Path,
    stacks: list[Stack],  # noqa: F811
) -> None:
    ports = [stable_port(), stable_port()]
    config = tmp_path / "stack.toml"
    config.write_text(
        "[chain]\nchain_id = 4243\nblock_time_s = 1\n"
        + "".join(
            f"""
[[routers]]
name = "r{i}"
listen = "127.0.0.1:{port}"
[routers.swap]
enabled = false
[[routers.realms]]
name = "{REALM}"
price_per_message = 1000
allow_anonymous = true
discover = true
"""
            for i, port in enumerate(ports)
        )
    )
    stack = Stack(config, tmp_path / "var", tmp_path / "up.out")
    stacks.append(stack)
    record = stack.wait_up()
    children = services(record)
    output = stack.output()
    for i, port in enumerate(ports):
        assert f"router r{i} announced in realm {REALM!r} at ws://127.0.0.1:{port}/ws" in output
    addresses = [
        Account.from_key(read_key_file(stack.layout.key(f"router-r{i}"))).address for i in range(2)
    ]
    contracts = json.loads(stack.layout.contracts_file.read_text())
    w3 = Web3(HTTPProvider(children["chain"]["address"]))
    on_chain = read_endpoints(w3, contracts["router_registry"], REALM)
    assert sorted((e.operator, e.url) for e in on_chain) == sorted(
        (a, f"ws://127.0.0.1:{p}/ws") for a, p in zip(addresses, ports, strict=True)
    )

    async def body() -> None:
        urls = [children[f"router-r{i}"]["address"] for i in range(2)]

        async def linked() -> bool:
            client = await anonymous(urls[0], REALM)
            try:
                status = await client.call("mesh.link.status")
            finally:
                client.leave()
            return addresses[1].lower() in status["links_up"]

        await until_async(linked, "router r0 linked to r1 from the chain", 120)
        sub, pub = await anonymous(urls[1], REALM), await anonymous(urls[0], REALM)
        got: list[Any] = []
        await sub.subscribe(lambda *x: got.append(x), "com.example.up")
        for _ in range(600):
            pub.publish("com.example.up", "hello")
            await asyncio.sleep(0.05)
            if got:
                break
        assert got, "no publication crossed the link"

    asyncio.run(body())

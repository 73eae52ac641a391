"""SWAP between operators over a router link (anvil, two `meshledger router run` processes):
the router whose publications a peer delivers pays it cheques from its Chequebook, the peer
accepts and cashes them on chain through its cash-out queue; an operator whose cheques bounce
goes past the disconnect threshold and loses its link."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from autobahn.wamp.exception import ApplicationError
from link_harness import Mesh
from router_harness import Chain, run, until

from infra.anvil import Anvil
from ledger.keys import write_new_key
from settlement.contracts import load_artifact

pytestmark = pytest.mark.integration

PRICE = 1_000
TOPIC = "com.example.paid"


def _tables(chain: Chain, books: list[str], cashout_keys: list[Path]) -> Any:
    def tables(i: int) -> str:
        return f"""
chain_id = {chain.chain_id}
chain_rpc_url = "{chain.url}"
chain_poll_ms = 200
[swap]
token = "{chain.token.address}"
payment_threshold = {10 * PRICE}
disconnect_threshold = {200 * PRICE}
min_payment_threshold = 0
[link_swap]
chequebook = "{books[i]}"
payment_threshold = {10 * PRICE}
max_price_per_message = {PRICE}
[cashout]
key_file = "{cashout_keys[i]}"
min_batch_value = 1
max_age_s = 0
interval_s = 0.5
confirmations = 1
"""

    return tables


def _linked(
    tmp_path: Path, anvil: Anvil, funded: list[int], edges: list[tuple[int, int]] | None = None
) -> tuple[Mesh, Chain]:
    chain = Chain(anvil.url, anvil.chain_id)
    edges = edges or [(0, 1)]
    size = len(funded)
    net = Mesh(tmp_path, size, edges, realm_toml=f"price_per_message = {PRICE}")
    net.prepare()
    books = [chain.chequebook(r.key, funded=f) for r, f in zip(net.routers, funded, strict=True)]
    cashout_keys = []
    for i in range(size):
        path = tmp_path / f"cashout{i}.key"
        signer = write_new_key(path)
        chain.w3.provider.make_request("anvil_setBalance", [signer.address, hex(10**20)])
        cashout_keys.append(path)
    net.tables = _tables(chain, books, cashout_keys)
    return net, chain


def test_operators_pay_each_other_cheques_cashed_on_chain(tmp_path: Path, anvil_l2: Anvil) -> None:
    net, chain = _linked(tmp_path, anvil_l2, funded=[10**24, 10**24])
    a_key, b_key = (r.key for r in net.routers)
    book = chain.w3.eth.contract(
        address=chain.chequebook(a_key), abi=load_artifact("Chequebook")["abi"]
    )
    with _running(net):

        async def body() -> dict[str, Any]:
            a, b = await net.converged()
            got: list[Any] = []
            await b.subscribe(lambda *x: got.append(x), TOPIC)
            while not got:
                a.publish(TOPIC, "probe")
                await asyncio.sleep(0.05)
            for n in range(60):  # 60 deliveries by B for A: past the threshold several times
                a.publish(TOPIC, n)
                await asyncio.sleep(0.02)
            await until(lambda: len([g for g in got if g != ("probe",)]) == 60, "all delivered")
            await until(
                lambda: book.functions.paidOut(b_key.address).call() > 0,
                "B cashed A's cheque on chain",
                timeout_s=60,
            )
            return dict(await a.call("mesh.link.status"))

        status = run(body)
    paid = book.functions.paidOut(b_key.address).call()
    assert status["cheques_paid"] >= 1
    assert status["links_up"] == [b_key.address.lower()]  # paying, A kept its link
    assert paid % PRICE == 0 and paid >= 10 * PRICE  # whole messages, at least one threshold


def test_an_operator_past_the_disconnect_threshold_loses_its_link(
    tmp_path: Path, anvil_l2: Anvil
) -> None:
    # A's chequebook holds nothing: B refuses its cheques, A's debt passes the threshold
    net, _ = _linked(tmp_path, anvil_l2, funded=[0, 10**24])
    b_key = net.routers[1].key
    with _running(net):

        async def body() -> dict[str, Any]:
            a, b = await net.converged()
            got: list[Any] = []
            await b.subscribe(lambda *x: got.append(x), TOPIC)
            while not got:
                a.publish(TOPIC, "probe")
                await asyncio.sleep(0.05)

            async def cut_off() -> bool:
                for _ in range(5):
                    a.publish(TOPIC, "more")
                status = await a.call("mesh.link.status")
                return "payment_required" in status["link_errors"][b_key.address.lower()]

            await b.register(lambda: "pong", "com.example.ping")
            deadline = asyncio.get_running_loop().time() + 60
            while not await cut_off():
                assert asyncio.get_running_loop().time() < deadline, "A kept its link"
                await asyncio.sleep(0.05)
            delivered = len(got)
            for _ in range(20):
                a.publish(TOPIC, "after")
            # a call over the same session is answered after those publications were handled
            with pytest.raises(ApplicationError) as refused:
                await a.call("com.example.ping")
            assert refused.value.error in (
                "mesh.error.payment_required",  # re-dialed, served nothing until it pays
                "wamp.error.no_such_procedure",  # not linked at all
                "mesh.error.link_lost",
            )
            return {"delivered": delivered, "after": got.count(("after",))}

        result = run(body)
    # B delivered for A up to the disconnect threshold (plus what was in flight), then nothing
    assert 0 < result["delivered"] <= 200 + 1 + 10
    assert result["after"] == 0


def test_each_hop_is_paid_by_the_one_before_it(tmp_path: Path, anvil_l2: Anvil) -> None:
    # a line A - B - C, the only subscriber on C: B delivers nothing itself, it carries A's
    # publications on to C. C charges B for its deliveries, and B charges A for the copies it
    # sent on, so both links carry cheques cashed on chain.
    net, chain = _linked(tmp_path, anvil_l2, funded=[10**24] * 3, edges=[(0, 1), (1, 2)])
    a_key, b_key, c_key = (r.key for r in net.routers)
    abi = load_artifact("Chequebook")["abi"]
    a_book = chain.w3.eth.contract(address=chain.chequebook(a_key), abi=abi)
    b_book = chain.w3.eth.contract(address=chain.chequebook(b_key), abi=abi)
    with _running(net):

        async def body() -> dict[str, Any]:
            a, b, c = await net.converged()
            got: list[Any] = []
            await c.subscribe(lambda *x: got.append(x), TOPIC)
            probes = 0
            while not got:
                a.publish(TOPIC, "probe")
                probes += 1
                await asyncio.sleep(0.05)
            for n in range(60):
                a.publish(TOPIC, n)
                await asyncio.sleep(0.02)
            await until(lambda: len([g for g in got if g != ("probe",)]) == 60, "all delivered")
            await until(
                lambda: a_book.functions.paidOut(b_key.address).call() > 0,
                "B cashed A's cheque for the onward copies",
                timeout_s=60,
            )
            await until(
                lambda: b_book.functions.paidOut(c_key.address).call() > 0,
                "C cashed B's cheque for its deliveries",
                timeout_s=60,
            )
            return {"probes": probes, "b": dict(await b.call("mesh.link.status"))}

        result = run(body)
    a_paid = a_book.functions.paidOut(b_key.address).call()
    sent = (60 + result["probes"]) * PRICE  # every copy B could have sent on for A
    assert a_paid % PRICE == 0 and 10 * PRICE <= a_paid <= sent
    assert b_book.functions.paidOut(a_key.address).call() == 0  # nothing flowed the other way
    assert result["b"]["received_forwarded"] >= 60 and result["b"]["forwarded"] >= 60


class _running:
    def __init__(self, net: Mesh) -> None:
        self.net = net

    def __enter__(self) -> Mesh:
        self.net.start_all()
        return self.net

    def __exit__(self, *exc: object) -> None:
        self.net.stop()

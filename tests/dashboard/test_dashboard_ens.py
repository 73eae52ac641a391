"""ENS names on the dashboard (real ENS on anvil): the overview carries the verified names of the
addresses it shows, the served JSON too, and the page (headless chromium) puts each name in
front of its address; without ENS configured the data is as before."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
from cdp import Browser, chromium_binary
from eth_account import Account
from web3 import Web3

from dashboard.data import DuckReader, overview
from dashboard.server import DashboardServer, answer
from infra.anvil import Anvil
from infra.ens import Names, deploy_ens, register_name, set_reverse
from ledger import store

pytestmark = pytest.mark.integration


def _funded_key(w3: Web3) -> bytes:
    key = secrets.token_bytes(32)
    address = Account.from_key(key).address
    w3.provider.make_request("anvil_setBalance", [address, hex(10**20)])  # type: ignore[arg-type]
    return key


def test_overview_names_the_addresses_it_shows(fresh_anvil: Anvil, tmp_path: Path) -> None:
    w3 = Web3(Web3.HTTPProvider(fresh_anvil.url))
    where = deploy_ens(w3, w3.eth.accounts[0])
    keeper, liar = _funded_key(w3), _funded_key(w3)
    keeper_address = Account.from_key(keeper).address
    liar_address = Account.from_key(liar).address
    register_name(w3, where, "keeper.eth", keeper)
    set_reverse(w3, where, "keeper.eth", liar)  # claims the keeper's name: never shown
    db = tmp_path / "ledger.duckdb"
    con = store.connect(db)
    for realm, address in (("named", keeper_address), ("liar", liar_address)):
        con.execute(  # columns as tests/ledger/test_query_output.py writes them
            "INSERT INTO realms VALUES (?, ?, 200, 1, 20, 20, 5000, 3000, 2000, 1, 0, 0, '')",
            [realm, address],
        )
    con.close()
    names = Names(fresh_anvil.url, where.registry)

    def reader() -> DuckReader:
        return DuckReader(store.connect(db, read_only=True), owned=True)

    source = reader()
    try:
        plain = overview(source)
        named = overview(source, names=names.name)
    finally:
        source.close()
    assert "names" not in plain  # no ENS configured: the page's data is unchanged
    assert {r["keeper"] for r in named["realms"]} == {keeper_address, liar_address}
    assert named["names"] == {keeper_address: "keeper.eth"}
    assert {k: v for k, v in named.items() if k != "names"} == plain

    reply = answer("/dashboard/api/overview", reader, "", names.name)
    assert reply is not None and reply[0] == 200
    assert json.loads(reply[2])["names"] == {keeper_address: "keeper.eth"}

    # the page puts the name in front of the keeper's address, and none in front of the liar's
    if chromium_binary() is None:
        pytest.fail("chromium is not installed: `make browser` installs Debian's")
    server = DashboardServer(reader, names=names.name)
    page = Browser(tmp_path / "chromium")
    try:
        page.navigate(server.page_url + "?refresh=500")
        named_cell = page.wait_for(
            "document.querySelector('#realm-named table.params')?.innerText", "the named realm"
        )
        liar_cell = page.evaluate("document.querySelector('#realm-liar table.params').innerText")
    finally:
        page.close()
        server.close()
    assert f"keeper.eth {keeper_address[:6]}…{keeper_address[-4:]}" in named_cell
    assert "keeper.eth" not in liar_cell and f"{liar_address[:6]}…{liar_address[-4:]}" in liar_cell

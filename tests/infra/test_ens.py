"""ENS on a real anvil (ENS's registry, `.eth` registrar, reverse registrar and public resolver,
compiled from npm) through web3.py's stock ENS module: forward and reverse resolution, a reverse
record that does not resolve back is not shown, the `meshledger ens` CLI (and its refusals), and
names next to addresses in `meshledger query`."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
from click.testing import CliRunner
from eth_account import Account
from web3 import Web3

from infra.anvil import Anvil
from infra.ens import EnsDeployment, Names, deploy_ens, register_name, set_reverse
from infra.ens_cli import ens as ens_cli
from infra.procs import free_port
from ledger import store

pytestmark = pytest.mark.integration


def funded_key(w3: Web3) -> bytes:
    key = secrets.token_bytes(32)
    address = Account.from_key(key).address
    w3.provider.make_request("anvil_setBalance", [address, hex(10**20)])  # type: ignore[arg-type]
    return key


def test_names_resolve_forward_and_reverse_and_a_false_reverse_claim_is_not_shown(
    fresh_anvil: Anvil,
) -> None:
    w3 = Web3(Web3.HTTPProvider(fresh_anvil.url))
    where = deploy_ens(w3, w3.eth.accounts[0])
    assert EnsDeployment.at(w3, where.registry) == where  # the rest, read from the registry
    router, keeper, liar = (funded_key(w3) for _ in range(3))
    router_address = Account.from_key(router).address
    keeper_address = Account.from_key(keeper).address
    liar_address = Account.from_key(liar).address

    assert register_name(w3, where, "router-a.eth", router) == router_address
    # a name pointing elsewhere: no reverse record is set for the owner
    assert register_name(w3, where, "keeper.eth", keeper) == keeper_address
    set_reverse(w3, where, "router-a.eth", liar)  # claims a name that is not its own

    names = Names(fresh_anvil.url, where.registry)
    assert names.address("router-a.eth") == router_address
    assert names.name(router_address) == "router-a.eth"
    assert names.name(keeper_address) == "keeper.eth"
    assert names.name(liar_address) is None  # router-a.eth resolves to the router, not to it
    assert names.address("nobody.eth") is None
    assert names.resolve(keeper_address.lower()) == keeper_address
    assert names.resolve("keeper.eth") == keeper_address
    with pytest.raises(ValueError, match="resolves to no address"):
        names.resolve("nobody.eth")
    with pytest.raises(Exception, match="reverted|revert"):  # first come: taken
        register_name(w3, where, "router-a.eth", liar)


def test_the_ens_cli_deploys_registers_resolves_and_explains_refusals(
    fresh_anvil: Anvil, tmp_path: Path
) -> None:
    runner = CliRunner()
    rpc = ["--rpc", fresh_anvil.url]
    deployed = runner.invoke(ens_cli, ["deploy", *rpc, "--json"])
    assert deployed.exit_code == 0, deployed.output
    registry = json.loads(deployed.output)["registry"]
    where = [*rpc, "--registry", registry]
    w3 = Web3(Web3.HTTPProvider(fresh_anvil.url))
    key = funded_key(w3)
    key_file = tmp_path / "op.key"
    key_file.write_text("0x" + key.hex())
    key_file.chmod(0o600)
    address = Account.from_key(key).address

    done = runner.invoke(
        ens_cli, ["register", *where, "--name", "calc-op.eth", "--key-file", str(key_file)]
    )
    assert done.exit_code == 0 and f"calc-op.eth -> {address}" in done.output, done.output
    assert runner.invoke(ens_cli, ["resolve", *where, "calc-op.eth"]).output.strip() == address
    assert runner.invoke(ens_cli, ["reverse", *where, address]).output.strip() == "calc-op.eth"

    for args, expected in [
        (["resolve", *where, "nobody.eth"], "nobody.eth resolves to no address"),
        (["reverse", *where, "0x1234"], "is not an address"),
        (["reverse", *where, Account.create().address], "has no name that resolves back"),
        (["register", *where, "--name", "Calc.eth", "--key-file", str(key_file)], "a label is"),
        (["register", *where, "--name", "a.b.eth", "--key-file", str(key_file)], "one label"),
        (["resolve", "--rpc", f"http://127.0.0.1:{free_port()}", "--registry", registry,
          "calc-op.eth"], "chain unreachable"),
        (["register", "--rpc", f"http://127.0.0.1:{free_port()}", "--registry", registry,
          "--name", "x.eth", "--key-file", str(key_file)], "chain unreachable"),
    ]:  # fmt: skip
        refused = runner.invoke(ens_cli, args)
        assert refused.exit_code != 0 and expected in refused.output, (args, refused.output)


def test_query_output_shows_names_next_to_addresses(fresh_anvil: Anvil, tmp_path: Path) -> None:
    from ledger.cli import cli

    w3 = Web3(Web3.HTTPProvider(fresh_anvil.url))
    where = deploy_ens(w3, w3.eth.accounts[0])
    keeper = funded_key(w3)
    keeper_address = Account.from_key(keeper).address
    register_name(w3, where, "keeper.eth", keeper)
    db = tmp_path / "ledger.duckdb"
    con = store.connect(db)
    con.execute("INSERT INTO realms (realm, keeper) VALUES ('named', ?)", [keeper_address])
    con.execute(
        "INSERT INTO realms (realm, keeper) VALUES ('unnamed', ?)", [Account.create().address]
    )
    con.close()
    names = ["--ens-rpc", fresh_anvil.url, "--ens-registry", where.registry]
    runner = CliRunner()
    as_json = runner.invoke(cli, ["query", "realms", "--db", str(db), "--json", *names])
    assert as_json.exit_code == 0, as_json.output
    rows = {r["realm"]: r for r in map(json.loads, as_json.output.splitlines())}
    assert rows["named"]["keeper_ens"] == "keeper.eth"
    assert "keeper_ens" not in rows["unnamed"]
    table = runner.invoke(cli, ["query", "realms", "--db", str(db), "--wide", *names])
    assert table.exit_code == 0 and "keeper.eth (" in table.output, table.output
    plain = runner.invoke(cli, ["query", "realms", "--db", str(db), "--json"])
    assert "keeper_ens" not in plain.output  # no ENS configured: output unchanged


def test_up_names_its_keys_on_its_dev_chain_and_resumes(fresh_anvil: Anvil, tmp_path: Path) -> None:
    from infra.ens import ensure_dev_names
    from ledger.keys import write_new_key

    contracts = tmp_path / "contracts.json"
    contracts.write_text(json.dumps({"chain_id": 42161}))
    keys = {label: tmp_path / f"{label}.key" for label in ("router-a", "router-b", "Bad_Label")}
    signers = {label: write_new_key(path) for label, path in keys.items()}
    w3 = Web3(Web3.HTTPProvider(fresh_anvil.url))
    for signer in signers.values():
        w3.provider.make_request("anvil_setBalance", [signer.address, hex(10**20)])  # type: ignore[arg-type]
    registry = ensure_dev_names(fresh_anvil.url, contracts, keys)
    assert json.loads(contracts.read_text()) == {"chain_id": 42161, "ens_registry": registry}
    names = Names(fresh_anvil.url, registry)
    for label in ("router-a", "router-b"):
        assert names.address(f"{label}.eth") == signers[label].address
        assert names.name(signers[label].address) == f"{label}.eth"
    assert names.name(signers["Bad_Label"].address) is None  # not a .eth label: skipped
    # a second `up` on the same chain keeps the registry and sends nothing for named keys
    block = w3.eth.block_number
    assert ensure_dev_names(fresh_anvil.url, contracts, keys) == registry
    assert w3.eth.block_number == block

"""CLI of ENS names: `meshledger ens deploy | register | resolve | reverse` (`infra/ens.py`).

Attached to the `meshledger` command through the `meshledger.commands` entry points.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

T = TypeVar("T")

_RPC = click.option(
    "--rpc", envvar="MESHLEDGER_ENS_RPC", required=True, help="JSON-RPC URL of the ENS chain."
)
_REGISTRY = click.option(
    "--registry",
    envvar="MESHLEDGER_ENS_REGISTRY",
    required=True,
    help="Address of the ENS registry (what `ens deploy` printed).",
)


def _chain_call(action: Callable[[], T]) -> T:
    """Run a chain call; an unreachable node, a revert or a bad value is a clear error."""
    from requests.exceptions import RequestException
    from web3.exceptions import Web3Exception

    from settlement.contracts import TransactionFailed

    try:
        return action()
    except (RequestException, OSError) as exc:
        raise click.ClickException(f"chain unreachable: {exc}") from None
    except (TransactionFailed, Web3Exception, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


def names_options(fn: Any) -> Any:
    """`--ens-rpc` / `--ens-registry` (or MESHLEDGER_ENS_RPC / MESHLEDGER_ENS_REGISTRY): show
    ENS names next to addresses (`query`, `dashboard`); read with `names_from`."""
    fn = click.option(
        "--ens-registry",
        envvar="MESHLEDGER_ENS_REGISTRY",
        default=None,
        help="The ENS registry whose reverse records name addresses (a name counts only when "
        "it resolves back to the address).",
    )(fn)
    return click.option(
        "--ens-rpc",
        envvar="MESHLEDGER_ENS_RPC",
        default=None,
        help="Show ENS names next to addresses: the chain of the ENS registry (with "
        "--ens-registry).",
    )(fn)


def names_from(ens_rpc: str | None, ens_registry: str | None) -> Callable[[str], str | None] | None:
    """The name lookup the options ask for (None without them); both or neither."""
    if not (ens_rpc or ens_registry):
        return None
    if not (ens_rpc and ens_registry):
        raise click.UsageError("names need both --ens-rpc and --ens-registry")
    from infra.ens import Names

    return Names(ens_rpc, ens_registry).name


@click.group(name="ens")
def ens() -> None:
    """ENS names (WEP008): `<name>.eth` -> address, `<address>.addr.reverse` -> name."""


@ens.command("deploy")
@_RPC
@click.option("--json", "as_json", is_flag=True, help="One JSON object with the addresses.")
def deploy_cmd(rpc: str, as_json: bool) -> None:
    """Deploy a local ENS on a dev chain (anvil; sent from its first unlocked account): the
    registry, `.eth` first-come registrar, reverse registrar and public resolver."""
    from web3 import Web3

    from infra.ens import deploy_ens

    w3 = Web3(Web3.HTTPProvider(rpc))
    found = _chain_call(lambda: deploy_ens(w3, w3.eth.accounts[0]))
    if as_json:
        click.echo(json.dumps(found.to_dict()))
    else:
        click.echo(f"ENS registry {found.registry} (resolver {found.resolver})")


@ens.command("register")
@_RPC
@_REGISTRY
@click.option("--name", "name", required=True, help="<label>.eth")
@click.option(
    "--key-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The name's owner (else $MESHLEDGER_KEY_FILE or $MESHLEDGER_KEY); pays the gas.",
)
@click.option("--address", default=None, help="Resolve to this address (default: the owner's).")
def register_cmd(
    rpc: str, registry: str, name: str, key_file: Path | None, address: str | None
) -> None:
    """Register `<label>.eth` (first come) to the key's account, resolving to it (or to
    --address); the account's reverse record names it too when it resolves to the account."""
    from web3 import Web3

    from infra.ens import EnsDeployment, eth_label, register_name
    from ledger.keys import KeyError_, load_private_key

    try:
        eth_label(name)
        key = load_private_key(key_file)
    except (ValueError, KeyError_) as exc:
        raise click.ClickException(str(exc)) from None
    if address is not None and not Web3.is_address(address):
        raise click.ClickException(f"--address {address!r} is not an address")
    w3 = Web3(Web3.HTTPProvider(rpc))
    where = _chain_call(lambda: EnsDeployment.at(w3, _checked(registry)))
    target = _chain_call(lambda: register_name(w3, where, name, key, address))
    click.echo(f"{name} -> {target}")


@ens.command("resolve")
@_RPC
@_REGISTRY
@click.argument("name")
def resolve_cmd(rpc: str, registry: str, name: str) -> None:
    """The address NAME resolves to (exit 1 when none)."""
    found = _chain_call(lambda: _names(rpc, registry).ens.address(name))
    if found is None:
        raise click.ClickException(f"{name} resolves to no address")
    click.echo(found)


@ens.command("reverse")
@_RPC
@_REGISTRY
@click.argument("address")
def reverse_cmd(rpc: str, registry: str, address: str) -> None:
    """The name ADDRESS gives itself, if that name resolves back to it (exit 1 when none)."""
    from web3 import Web3

    if not Web3.is_address(address):
        raise click.ClickException(f"{address!r} is not an address")
    found = _chain_call(lambda: _names(rpc, registry).ens.name(Web3.to_checksum_address(address)))
    if found is None:
        raise click.ClickException(f"{address} has no name that resolves back to it")
    click.echo(found)


def _checked(registry: str) -> str:
    from web3 import Web3

    if not Web3.is_address(registry):
        raise click.ClickException(f"--registry {registry!r} is not an address")
    return Web3.to_checksum_address(registry)


def _names(rpc: str, registry: str) -> Any:
    from infra.ens import Names

    return Names(rpc, _checked(registry))

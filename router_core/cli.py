"""CLI of the router: `meshledger router run --config FILE`, `router announce / withdraw / list`
(RouterRegistry, for operators) and `meshledger bench router`.

The `meshledger` CLI attaches `router` (a click group) and `bench_router` (a click command).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from pathlib import Path
from typing import Any

import click
import uvloop

from router_core.config import load_config
from router_core.service import RouterService


@click.group(name="router")
def router() -> None:
    """The WAMP router: metering, SWAP, cheque cash-out."""


@router.command(name="run")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
)
@click.option("--log-level", default="INFO", show_default=True)
def run(config_path: Path, log_level: str) -> None:
    """Serve the realms of a TOML configuration until SIGINT/SIGTERM."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(config_path)

    async def serve() -> None:
        service = RouterService(config)
        node = await service.start()
        host, port = config.host_port
        click.echo(
            f"router {node.address} serving {', '.join(r.name for r in config.realms)} on ws://{host}:{port}/ws"
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await service.stop()

    uvloop.run(serve())


def _registry_options(fn: Any) -> Any:
    for option in reversed(
        [
            click.option("--rpc", required=True, help="JSON-RPC URL of the registry's chain."),
            click.option(
                "--registry", required=True, help="Address of the RouterRegistry contract."
            ),
            click.option("--realm", required=True, help="The realm's name."),
        ]
    ):
        fn = option(fn)
    return fn


def _operator_key(key_file: Path | None) -> bytes:
    from ledger.keys import KeyError_, load_private_key

    try:
        return load_private_key(key_file, "MESH_ROUTER_KEY")
    except KeyError_ as exc:
        raise click.ClickException(str(exc)) from None


def _registry_call(action: Any) -> Any:
    """Run a registry transaction or read; a revert or an unreachable chain is a clear error."""
    from requests.exceptions import RequestException
    from web3.exceptions import ContractCustomError, Web3Exception

    from settlement.contracts import TransactionFailed, revert_reason

    try:
        return action()
    except ContractCustomError as exc:
        reason = revert_reason("RouterRegistry", str(exc.data) if exc.data else None)
        raise click.ClickException(f"the registry refused: {reason or exc}") from None
    except (RequestException, OSError) as exc:
        raise click.ClickException(f"chain unreachable: {exc}") from None
    except (TransactionFailed, Web3Exception, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


_KEY_OPTION = click.option(
    "--key-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The router operator's key (else $MESH_ROUTER_KEY_FILE or $MESH_ROUTER_KEY); it pays "
    "the gas and must hold a provision stake in the realm.",
)


@router.command(name="announce")
@_registry_options
@click.option("--url", required=True, help="The router's public endpoint: ws://host:port/ws.")
@_KEY_OPTION
def announce_cmd(rpc: str, registry: str, realm: str, url: str, key_file: Path | None) -> None:
    """Announce this operator's router for a realm in RouterRegistry (routers of the realm with
    `discover = true` link to it, clients find it)."""
    from web3 import Web3

    from router_core.discovery import announce

    key = _operator_key(key_file)
    receipt = _registry_call(
        lambda: announce(Web3(Web3.HTTPProvider(rpc)), registry, realm, url, key)
    )
    click.echo(f"announced {url} for realm {realm!r} (block {receipt['blockNumber']})")


@router.command(name="withdraw")
@_registry_options
@_KEY_OPTION
def withdraw_cmd(rpc: str, registry: str, realm: str, key_file: Path | None) -> None:
    """Withdraw this operator's router from a realm in RouterRegistry."""
    from web3 import Web3

    from router_core.discovery import withdraw

    key = _operator_key(key_file)
    receipt = _registry_call(lambda: withdraw(Web3(Web3.HTTPProvider(rpc)), registry, realm, key))
    click.echo(f"withdrawn from realm {realm!r} (block {receipt['blockNumber']})")


@router.command(name="list")
@_registry_options
@click.option("--json", "as_json", is_flag=True, help="one JSON object per router")
def list_cmd(rpc: str, registry: str, realm: str, as_json: bool) -> None:
    """The routers announced for a realm in RouterRegistry, as the chain says now."""
    from web3 import Web3

    from router_core.discovery import read_endpoints

    found = _registry_call(lambda: read_endpoints(Web3(Web3.HTTPProvider(rpc)), registry, realm))
    for endpoint in found:
        if as_json:
            click.echo(json.dumps({"operator": endpoint.operator, "url": endpoint.url}))
        else:
            click.echo(f"{endpoint.operator}  {endpoint.url}")
    if not found and not as_json:
        click.echo(f"no router announced for realm {realm!r}")


@click.command(name="router")
@click.option("--json", "as_json", is_flag=True, help="last line: one JSON object")
@click.option("--messages", default=20_000, show_default=True)
@click.option("--calls", default=5_000, show_default=True)
@click.option("--no-crossbar", is_flag=True, help="skip the Crossbar.io comparison")
@click.option("--rounds", default=3, show_default=True, help="measurements per scenario")
def bench_router(as_json: bool, messages: int, calls: int, no_crossbar: bool, rounds: int) -> None:
    """Pub/sub, RPC and fan-out (1 publisher, 4 subscribers): rates and the router process's CPU
    per routed message (from /proc), metered+SWAP against unmetered side by side in one run
    (alternating, `--rounds` times; CPU the least disturbed run, rates the median), and
    Crossbar.io's rates, on this machine."""
    from router_core.bench import run_bench

    result = run_bench(messages, calls, crossbar=not no_crossbar, rounds=rounds)
    if not as_json:
        for key, value in result.items():
            click.echo(f"{key:28} {value}")
    click.echo(json.dumps(result))


def main() -> None:
    router()


if __name__ == "__main__":
    main()


@click.command(name="federation")
@click.option("--json", "as_json", is_flag=True, help="last line: one JSON object")
@click.option("--messages", default=10_000, show_default=True, help="events per pub/sub run")
@click.option("--calls", default=3_000, show_default=True, help="calls per RPC run")
@click.option("--rounds", default=3, show_default=True, help="measurements per scenario")
def bench_federation(as_json: bool, messages: int, calls: int, rounds: int) -> None:
    """Pub/sub events/s and RPC calls/s from a client on router A to a subscriber / callee on
    router B over a router link, against the same on one router, in one run (alternating,
    `--rounds` times, medians). Routers are `meshledger router run` processes (metering and
    SWAP off on both sides), clients autobahn processes; target: linked ≥ 0.5× single."""
    from router_core.bench_federation import run_federation_bench

    with click.progressbar(length=1, label="linked and single routers") as bar:
        result = run_federation_bench(messages, calls, rounds)
        bar.update(1)
    if not as_json:
        for key, value in result.items():
            click.echo(f"{key:28} {value}")
    click.echo(json.dumps(result))

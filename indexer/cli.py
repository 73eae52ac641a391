"""`meshledger indexer run|status|verify` and `meshledger bench indexer` (plugged in through the
`meshledger.commands` entry points)."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from indexer import checkpoint as checkpoints
from indexer.config import EXAMPLE, ConfigError, IndexerConfig, load

console = Console(stderr=True)

_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    required=True,
    help="The indexer's TOML file (`meshledger indexer example-config` prints one).",
)


def _load(config_path: Path) -> IndexerConfig:
    try:
        return load(config_path)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc


def build_source(cfg: IndexerConfig) -> Any:
    """The configured source, after checking it serves the configured chain."""
    from indexer.rpc import JsonRpc, RpcSource

    if cfg.source == "graph":
        from indexer.graph import GraphSource

        return GraphSource(cfg.graph, cfg.contracts, cfg.chain_id)
    rpc = JsonRpc(cfg.rpc)
    chain_id = int(rpc.call("eth_chainId"), 16)
    if chain_id != cfg.chain_id:
        raise click.ClickException(
            f"{cfg.rpc} serves chain {chain_id}, the config says {cfg.chain_id}"
        )
    return RpcSource(
        rpc, cfg.contracts, cfg.chain_id, cfg.log_range_blocks, cfg.log_range_max_blocks
    )


@click.group()
def indexer() -> None:
    """Chain state into the event log: realms, stakes, chequebooks, settlements, prices."""


@indexer.command("example-config")
def example_config() -> None:
    """Print an example configuration file."""
    click.echo(EXAMPLE, nl=False)


@indexer.command("run")
@_config_option
@click.option("--until-block", type=int, default=None, help="Stop once this block is emitted.")
@click.option("-v", "--verbose", is_flag=True, help="Log retries and reorgs.")
@click.option(
    "--metrics",
    "metrics_listen",
    default=None,
    metavar="HOST:PORT",
    help="Serve /metrics and /health (chain and broker reachable) there, e.g. 127.0.0.1:9102.",
)
def run(
    config_path: Path, until_block: int | None, verbose: bool, metrics_listen: str | None
) -> None:
    """Backfill from the checkpoint (or start_block), then follow the head until Ctrl-C.

    Emits at the configured confirmation depth, checks every block's parent hash, retracts
    orphaned logs after a reorg deeper than that depth, and writes its checkpoint so that a
    crash at any point and a restart emit every log exactly once.
    """
    from indexer.feeds import FeedReader
    from indexer.rpc import HeadWaiter, JsonRpc
    from indexer.service import Indexer
    from ledger.emitter import Emitter, EmitterConfig
    from ledger.keys import KeyError_, load_signer

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    cfg = _load(config_path)
    if not cfg.bootstrap:
        raise click.UsageError("bootstrap (the broker's host:port) is missing in the config")
    try:
        signer = load_signer(cfg.key_file, env="MESHLEDGER_INDEXER_KEY")
    except KeyError_ as exc:
        raise click.UsageError(str(exc)) from exc
    source = build_source(cfg)
    feeds = None
    if cfg.feeds or cfg.sequencer:
        feeds = FeedReader(JsonRpc(cfg.rpc), cfg.chain_id, cfg.feeds, cfg.sequencer)
    waiter = HeadWaiter(cfg.rpc or cfg.graph, cfg.sync.poll_interval_s)
    producer = {} if cfg.compression == "none" else {"compression_type": cfg.compression}
    emitter = Emitter(
        signer,
        EmitterConfig(bootstrap=cfg.bootstrap, spool_dir=cfg.spool_dir, producer_options=producer),
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    click.echo(f"indexer {signer.address} on chain {cfg.chain_id} via {cfg.source}", err=True)
    with Progress(
        TextColumn("block {task.completed:,.0f} of {task.fields[safe]:,}"),
        BarColumn(),
        TextColumn("{task.fields[events]:,} events"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("sync", total=None, events=0, safe=0)

        def progress(ix: Indexer) -> None:
            cp = ix.checkpoint
            bar.update(
                task,
                completed=max(cp.cursor_block, 0),
                total=max(ix.safe_head, 1),
                safe=ix.safe_head,
                events=cp.events_emitted,
            )

        service = Indexer(
            source,
            emitter,
            cfg.checkpoint_path,
            cfg.sync,
            feeds=feeds,
            wait_for_head=waiter.wait,
            on_progress=progress,
        )
        metrics = (
            serve_indexer_metrics(service, cfg.rpc, cfg.bootstrap, metrics_listen)
            if metrics_listen
            else None
        )
        try:
            service.run(stop, until_block)
        except Exception as exc:
            emitter.close(timeout_s=10)
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
        finally:
            if metrics is not None:
                metrics.close()
    emitter.close()
    waiter.close()
    cp = service.checkpoint
    click.echo(f"emitted through block {cp.cursor_block} ({cp.events_emitted} events)")


def serve_indexer_metrics(service: Any, rpc_url: str, bootstrap: str, listen: str) -> Any:
    """/metrics of a running indexer and /health: its chain node and the broker answer."""
    from infra.metrics import (
        MetricsServer,
        indexer_metrics,
        parse_listen,
        registry_of,
        rpc_check,
        tcp_check,
    )

    checks = {"chain": rpc_check(rpc_url)} if rpc_url else {}
    checks["broker"] = tcp_check(bootstrap)
    return MetricsServer(
        registry_of(lambda: indexer_metrics(service)), checks, *parse_listen(listen)
    )


def status_of(cfg: IndexerConfig) -> dict[str, Any]:
    """Head, emitted block, lag and the last reorg, from the checkpoint and the source."""
    cp = checkpoints.load(cfg.checkpoint_path)
    if cp is None:
        raise click.ClickException(f"no checkpoint at {cfg.checkpoint_path}: the indexer never ran")
    try:
        head = build_source(cfg).head()
    except Exception as exc:  # status must still show the checkpoint when the node is down
        head = None
        console.print(f"[yellow]source unreachable: {exc}[/]")
    return {
        "chain_id": cp.chain_id,
        "source": cp.source,
        "head": head,
        "emitted_block": cp.cursor_block,
        "emitted_hash": cp.cursor_hash,
        "lag_blocks": None if head is None else head - cp.cursor_block,
        "events_emitted": cp.events_emitted,
        "last_reorg": cp.last_reorg,
        "checkpoint_age_s": round(time.time() - cp.updated_unix, 1),
    }


@indexer.command("status")
@_config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def status(config_path: Path, as_json: bool) -> None:
    """Chain head, last emitted block and hash, lag, last reorg."""
    info = status_of(_load(config_path))
    if as_json:
        click.echo(json.dumps(info))
        return
    for key, value in info.items():
        click.echo(f"{key:20} {value}")


def collect(source: Any, first: int, last: int) -> tuple[str, list[Any]]:
    """Every domain event `source` reports for blocks first..last, and block `last`'s hash."""
    from indexer.decoding import RealmNames

    names = RealmNames()
    events: list[Any] = []
    tip = ""
    while first <= last:
        end = min(first + max(1, source.span_blocks) - 1, last)
        chunk = source.fetch(first, end)
        events += source.decode(chunk, names)
        tip, first = chunk.tip.hash, end + 1
    return tip, events


def differences(rpc_events: list[Any], graph_events: list[Any]) -> list[str]:
    """One line per log that only one source reports or that the two report differently."""
    from domain.events import event_to_dict, log_identity

    def keyed(events: list[Any]) -> dict[Any, dict[str, Any]]:
        return {log_identity(e): event_to_dict(e) for e in events}

    a, b = keyed(rpc_events), keyed(graph_events)
    lines = []
    for ident in sorted(a.keys() | b.keys(), key=lambda i: (i[1], i[2])):
        where = f"block hash {ident[1]} log {ident[2]}"
        if ident not in b:
            lines.append(f"only in rpc:   {a[ident]['type']} at {where}")
        elif ident not in a:
            lines.append(f"only in graph: {b[ident]['type']} at {where}")
        elif a[ident] != b[ident]:
            fields = sorted(
                k for k in a[ident].keys() | b[ident].keys() if a[ident].get(k) != b[ident].get(k)
            )
            detail = ", ".join(
                f"{k}: rpc {a[ident].get(k)!r} graph {b[ident].get(k)!r}" for k in fields
            )
            lines.append(f"differs:       {a[ident]['type']} at {where}: {detail}")
    return lines


@indexer.command("verify")
@_config_option
@click.option("--graph", "graph_url", required=True, help="The subgraph's GraphQL URL.")
@click.option("--rpc", "rpc_url", default=None, help="JSON-RPC URL (default: the config's rpc).")
@click.option("--block", type=int, required=True, help="Compare everything up to this block.")
def verify(config_path: Path, graph_url: str, rpc_url: str | None, block: int) -> None:
    """Compare what the RPC source and the subgraph say about the chain up to one block; print
    every difference. Exit 0: the same events; 1: differences; 2: the subgraph is behind."""
    from indexer.graph import GraphSource
    from indexer.rpc import JsonRpc, RpcSource

    cfg = _load(config_path)
    rpc = RpcSource(JsonRpc(rpc_url or cfg.rpc), cfg.contracts, cfg.chain_id)
    graph = GraphSource(graph_url, cfg.contracts, cfg.chain_id)
    indexed, _ = graph.meta()
    if indexed < block:
        click.echo(
            f"the subgraph has indexed up to block {indexed}, {block - indexed} behind {block}"
        )
        sys.exit(2)
    start = cfg.sync.start_block
    rpc_tip, rpc_events = collect(rpc, start, block)
    graph_tip, graph_events = collect(graph, start, block)
    lines = differences(rpc_events, graph_events)
    if rpc_tip != graph_tip:
        lines.insert(0, f"block {block}: rpc hash {rpc_tip}, graph hash {graph_tip}")
    for line in lines:
        click.echo(line)
    click.echo(
        f"blocks {start}..{block}: {len(rpc_events)} events from rpc, {len(graph_events)} from "
        f"the subgraph, {'no differences' if not lines else f'{len(lines)} differences'}"
    )
    sys.exit(1 if lines else 0)


@click.command("indexer")
@click.option("--blocks", type=int, default=1000, show_default=True, help="Blocks of the chain.")
@click.option(
    "--events-per-block", type=int, default=100, show_default=True, help="Logs per block."
)
@click.option(
    "--peers/--no-peers", default=True, show_default=True, help="Also run Ponder and SQD."
)
@click.option("--json", "as_json", is_flag=True, help="Only the JSON line.")
def bench_indexer(blocks: int, events_per_block: int, peers: bool, as_json: bool) -> None:
    """Chain on anvil -> Kafka: the indexer vs a naive web3 loop, Ponder and SQD (events/s)."""
    from indexer.bench import run_bench

    result = run_bench(blocks, events_per_block, peers, None if as_json else console)
    click.echo(json.dumps(result))


if __name__ == "__main__":
    sys.exit(indexer())

"""`meshledger dashboard`: the web page of the ledger's projections on a loopback port."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click

from dashboard.data import DuckReader, EndpointReader, Reader
from infra.ens_cli import names_from, names_options
from ledger.cli import _db_option, _query_url


@click.command(name="dashboard")
@click.option(
    "--url",
    envvar="MESHLEDGER_QUERY_URL",
    default=None,
    help="The projector's query endpoint (default: the one in DB.query, if it answers).",
)
@_db_option("DuckDB file, read (read-only, per request) when no projector endpoint answers.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8765, show_default=True, help="0: a free port.")
@click.option(
    "--explorer-url",
    default="",
    metavar="TEMPLATE",
    help="Block explorer page of a transaction, e.g. https://arbiscan.io/tx/{tx} "
    "({tx} is replaced; without it the hash is appended).",
)
@names_options
def dashboard(
    url: str | None,
    db_path: Path,
    host: str,
    port: int,
    explorer_url: str,
    ens_rpc: str | None,
    ens_registry: str | None,
) -> None:
    """Serve the dashboard (realms, bandwidth, epochs and settlement, payouts, SWAP, the chain)
    until Ctrl-C. It reads only the projections: through the projector's query endpoint while
    it runs, else from the DuckDB file. The page polls for new data every few seconds."""
    from dashboard.server import DashboardServer
    from ledger.store import connect

    endpoint = url or _query_url(db_path)
    if endpoint is None and not db_path.exists():
        raise click.ClickException(f"no projector endpoint and no database at {db_path}")

    def reader() -> Reader:
        if endpoint is not None:
            return EndpointReader(endpoint)
        return DuckReader(connect(db_path, read_only=True), owned=True)

    names = names_from(ens_rpc, ens_registry)
    server = DashboardServer(reader, explorer_url, host, port, names)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    source = endpoint or f"{db_path} (read-only)"
    click.echo(f"dashboard of {source} on {server.page_url}")
    stop.wait()
    server.close()

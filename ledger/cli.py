"""The `meshledger` command line. Commands of other packages (router, settle, broker, up, down,
bench router, bench settlement) plug in through the `meshledger.commands` entry-point group."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from infra.ens_cli import names_from, names_options

console = Console()
DEFAULT_DB = Path("var/ledger.duckdb")


def _addresses(values: tuple[str, ...], env: str) -> list[str]:
    out = [v for value in values for v in value.split(",") if v]
    out += [v for v in os.environ.get(env, "").split(",") if v]
    return out


_bootstrap_option = click.option(
    "--bootstrap", envvar="MESHLEDGER_BOOTSTRAP", required=True, help="Kafka bootstrap host:port."
)


def _db_option(help_text: str) -> Any:
    return click.option(
        "--db",
        "db_path",
        type=click.Path(path_type=Path),
        default=DEFAULT_DB,
        show_default=True,
        help=help_text,
    )


def _trust_options(fn: Any) -> Any:
    fn = click.option(
        "--ledger-source",
        "ledger_sources",
        multiple=True,
        metavar="ADDR",
        help="Address of a ledger key (epoch closes, payouts). Env MESHLEDGER_LEDGER_SOURCES.",
    )(fn)
    fn = click.option(
        "--indexer-source",
        "indexer_sources",
        multiple=True,
        metavar="ADDR",
        help="Address of an indexer key (realms, stakes, chain heads). Env MESHLEDGER_INDEXER_SOURCES.",
    )(fn)
    fn = click.option(
        "--settlement-source",
        "settlement_sources",
        multiple=True,
        metavar="ADDR",
        help="Address of a settlement job key. Env MESHLEDGER_SETTLEMENT_SOURCES.",
    )(fn)
    return fn


def _trust(
    ledger_sources: tuple[str, ...],
    indexer_sources: tuple[str, ...],
    settlement_sources: tuple[str, ...],
) -> Any:
    from ledger.service import trust_from

    return trust_from(
        _addresses(ledger_sources, "MESHLEDGER_LEDGER_SOURCES"),
        _addresses(indexer_sources, "MESHLEDGER_INDEXER_SOURCES"),
        _addresses(settlement_sources, "MESHLEDGER_SETTLEMENT_SOURCES"),
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """meshledger: the event-sourced ledger of a decentralized WAMP service mesh.

    Routers, the indexer and settlement jobs write signed events to Kafka; the projector turns
    them into DuckDB tables (bandwidth, usage, epoch payouts); the audit replays the log and must
    reproduce them. Start with `meshledger demo`.
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if verbose < 2:
        logging.getLogger("kafka").setLevel(logging.CRITICAL)


@cli.command()
@_bootstrap_option
@_db_option("DuckDB file.")
@click.option(
    "--key-file",
    type=click.Path(path_type=Path),
    envvar="MESHLEDGER_KEY_FILE",
    help="The ledger's key (signs epoch closes and payouts); without it no epochs are closed.",
)
@_trust_options
@click.option(
    "--grace-blocks",
    type=int,
    default=5,
    show_default=True,
    help="Blocks past an epoch before it closes.",
)
@click.option(
    "--gap-timeout-ms",
    type=int,
    default=5000,
    show_default=True,
    help="Wait before a seq gap is declared.",
)
@click.option(
    "--query-port", type=int, default=0, help="Port of the loopback query endpoint (0: a free one)."
)
@click.option(
    "--partitions",
    default=None,
    metavar="P,Q,…",
    help="Run as the shard owning these partition numbers of both topics (default: all; see "
    "README, Shards). Its database keeps them: another set needs another database.",
)
def project(
    bootstrap: str,
    db_path: Path,
    key_file: Path | None,
    ledger_sources: tuple[str, ...],
    indexer_sources: tuple[str, ...],
    settlement_sources: tuple[str, ...],
    grace_blocks: int,
    gap_timeout_ms: int,
    query_port: int,
    partitions: str | None,
) -> None:
    """Run the projector: consume mesh.usage and mesh.ledger into DuckDB, close epochs, serve queries.

    The query endpoint's URL is written to DB.query so `meshledger query` finds it. As a shard
    (--partitions) it applies its partitions' records and follows the others; every shard needs
    its own database and, to close epochs, its own ledger key.
    """
    from ledger.emitter import EmitterConfig
    from ledger.keys import load_signer
    from ledger.service import LedgerService, ServiceConfig, ShardMismatch

    emitter = None
    if key_file:
        from ledger.emitter import Emitter
        from ledger.keys import KeyError_
        from ledger.spool import SpoolError

        try:
            signer = load_signer(key_file)
            emitter = Emitter(
                signer,
                EmitterConfig(
                    bootstrap=bootstrap, spool_dir=db_path.parent / "spool" / signer.address
                ),
            )
        except (KeyError_, SpoolError) as exc:  # a loose key file, a damaged or busy spool
            raise click.ClickException(str(exc)) from exc
        ledger_sources = (*ledger_sources, signer.address)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    trust = _trust(ledger_sources, indexer_sources, settlement_sources)
    service = LedgerService(
        ServiceConfig(
            bootstrap=bootstrap,
            db_path=db_path,
            trust=trust,
            grace_blocks=grace_blocks,
            gap_timeout_ms=gap_timeout_ms,
            query_port=query_port,
            partitions=_partitions(partitions),
        ),
        emitter=emitter,
    )
    port = service.start_query_server()
    url = f"http://127.0.0.1:{port}"
    Path(f"{db_path}.query").write_text(url)
    console.print(f"projector: {bootstrap} -> {db_path}; queries at [bold]{url}[/]")
    signal.signal(signal.SIGTERM, lambda *_: service.stop())
    try:
        service.connect()
        service.run()
    except ShardMismatch as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        pass
    finally:
        service.close()
        if emitter:
            emitter.close(timeout_s=5)


def _partitions(value: str | None) -> frozenset[int] | None:
    if value is None:
        return None
    try:
        parts = frozenset(int(p) for p in value.split(",") if p.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: partition numbers, comma-separated") from None
    if not parts or min(parts) < 0:
        raise click.BadParameter(f"{value!r}: partition numbers, comma-separated")
    return parts


QUERY_NAMES = [
    "realms",
    "bandwidth",
    "usage",
    "epochs",
    "payouts",
    "dead",
    "sources",
    "reorgs",
    "prices",
    "reputation",
    "offers",
    "reciprocity",
    "routers",
]


@cli.command()
@click.argument("what", type=click.Choice(QUERY_NAMES))
@click.option("--realm", default=None, help="Only this realm.")
@click.option("--epoch", type=int, default=None, help="Only this epoch (usage, payouts).")
@click.option(
    "--url",
    envvar="MESHLEDGER_QUERY_URL",
    default=None,
    help="Query endpoint (default: from DB.query).",
)
@_db_option("DuckDB file; read directly when no projector is running.")
@click.option(
    "--json", "as_json", is_flag=True, help="JSON lines instead of a table (amounts in base units)."
)
@click.option(
    "--csv", "as_csv", is_flag=True, help="CSV with a header instead of a table (base units)."
)
@click.option("--wide", is_flag=True, help="Every column at full width, however wide the terminal.")
@click.option(
    "--usd", is_flag=True, help="epochs, payouts: value at the last price at the epoch's end."
)
@click.option("--feed", default=None, help="The price feed for --usd and prices (an address).")
@click.option(
    "--shard",
    "shards",
    multiple=True,
    metavar="URL|FILE",
    help="A shard's query endpoint or database file; one per shard reads a sharded ledger as "
    "one (instead of --url/--db).",
)
@names_options
def query(
    what: str,
    realm: str | None,
    epoch: int | None,
    url: str | None,
    db_path: Path,
    as_json: bool,
    as_csv: bool,
    wide: bool,
    usd: bool,
    feed: str | None,
    shards: tuple[str, ...],
    ens_rpc: str | None,
    ens_registry: str | None,
) -> None:
    """Query the ledger: realms | bandwidth | usage | epochs | payouts | dead | sources |
    reorgs (closed epochs that counted a log a reorg retracted) | prices | reputation (market
    operators per service: calls, errors, timeouts, decayed success ratio, p50/p95 latency) |
    offers (the marketplace's standing offers) | reciprocity (pairs of servers: calls each
    answered of the services the other rewards) | routers (the routers announced on chain for
    each realm, RouterRegistry).

    The table fits the terminal: the query's key columns first, others while they fit (--wide
    shows all); amounts in WMP. --json (one object a line) and --csv keep exact base units.

    Works while the projector runs (through its query endpoint) and without it (from the file).
    With --usd, epochs and payouts carry a USD value, or "stale" when the last price observed
    at or before the epoch's last block was not valid. With --ens-rpc and --ens-registry (or
    MESHLEDGER_ENS_RPC / MESHLEDGER_ENS_REGISTRY), addresses that have an ENS name show it (the
    table) or gain a `<column>_ens` field (--json); CSV stays as stored.
    """
    from ledger.query import QueryClient, QueryError
    from ledger.render import print_query, write_csv

    if as_json and as_csv:
        raise click.UsageError("--json or --csv, not both")
    if usd:
        if what not in ("epochs", "payouts"):
            raise click.UsageError("--usd applies to epochs and payouts")
        what = f"{what}_usd"
    params = {"realm": realm, "epoch": epoch, "feed": feed}
    url = None if shards else url or _query_url(db_path)
    if shards:
        data = _read_shards(shards, what, **params)
    elif url:
        try:
            data = QueryClient(url).get(what, **params)
        except QueryError as exc:
            raise click.ClickException(str(exc)) from exc
    elif db_path.exists():
        from ledger import store
        from ledger.query import run_query

        data = run_query(store.connect(db_path, read_only=True), what, params)
    else:
        raise click.ClickException(f"no projector endpoint and no database at {db_path}")
    rows = [dict(zip(data["columns"], r, strict=True)) for r in data["rows"]]
    shown, tagged = rows, rows
    name_of = names_from(ens_rpc, ens_registry)
    if name_of is not None:
        from ledger.render import with_names

        shown, tagged = with_names(rows, name_of)
    if as_json:
        for row in tagged:
            click.echo(json.dumps(row, default=str))
    elif as_csv:
        write_csv(sys.stdout, data["columns"], rows)
    else:
        print_query(console, what, shown, layout="wide" if wide else "fit")


def _read_shards(targets: tuple[str, ...], what: str, **params: Any) -> dict[str, Any]:
    """One query across shards (each an endpoint URL, or a database file whose projector's
    endpoint answers, else the file itself), merged as one ledger's."""
    from ledger.query import QueryClient, QueryError
    from ledger.shards import FileReader, MergeError, Reader, merged, open_shards

    readers: list[Reader] = []
    try:
        for target in targets:
            if target.startswith(("http://", "https://")):
                readers.append(QueryClient(target))
            elif (live := _query_url(Path(target))) is not None:
                readers.append(QueryClient(live))
            elif Path(target).exists():
                readers.append(FileReader(Path(target)))
            else:
                raise click.ClickException(f"shard {target}: no endpoint and no database")
        return merged(open_shards(readers), what, **params)
    except (QueryError, MergeError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        for reader in readers:
            if isinstance(reader, FileReader):
                reader.close()


def _query_url(db_path: Path) -> str | None:
    marker = Path(f"{db_path}.query")
    if not marker.exists():
        return None
    url = marker.read_text().strip()
    from ledger.query import QueryClient, QueryError

    try:
        QueryClient(url, timeout_s=2).get("dead")
        return url
    except QueryError:
        return None


AUDIT_HELP = """Replay the topics from offset 0 into a fresh DuckDB and compare every table with the
live one; with --chain-rpc, compare the replay with the chain as well.

Verifies every signature and hash chain and reports seq gaps and duplicates. With --chain-rpc,
for every epoch posted on EpochSettlement (or recorded as settled in the log): the root, the
total and the push batches on chain must be what the settlement job's plan of the replayed
payouts gives (the push rule the job kept in its --journal, else --push-min-amount and
--batch-max-entries, as `settle` takes them), and every payee must have received from the
contract exactly its pushed payouts plus its claims. Every difference is printed.

\b
Exit codes:
  0  every table matches (and the chain, when checked)
  1  a table differs (the diff is printed)
  3  tables match but the log has seq gaps (records missing)
  4  the tables match, the chain does not (each difference is printed)

With --shard (one per shard's endpoint or database), each shard is replayed as that shard in
its own process and compared with it; the exit code is the worst of them.
"""


@cli.command(help=AUDIT_HELP)
@_bootstrap_option
@click.option(
    "--url", envvar="MESHLEDGER_QUERY_URL", default=None, help="Live projector's query endpoint."
)
@_db_option("Live DuckDB file (used when no endpoint answers).")
@click.option(
    "--work-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the replay database goes.",
)
@_trust_options
@click.option(
    "--chain-rpc",
    envvar="MESHLEDGER_L2_RPC",
    default=None,
    help="JSON-RPC URL of the settlement chain: also audit the chain.",
)
@click.option(
    "--contract",
    envvar="MESHLEDGER_SETTLEMENT_CONTRACT",
    default=None,
    help="EpochSettlement address (default: `settlement` of VAR/contracts.json).",
)
@click.option(
    "--var",
    "var_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("var"),
    show_default=True,
    help="The stack's var directory (`meshledger up`): its contracts.json names the contract.",
)
@click.option(
    "--journal",
    "journal_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="MESHLEDGER_SETTLEMENT_JOURNAL",
    default="~/.meshledger/settlement-journal.sqlite",
    show_default=True,
    help="The settlement job's journal (read only): the push rule each epoch was posted with.",
)
@click.option("--push-min-amount", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--batch-max-entries", type=click.IntRange(min=1), default=200, show_default=True)
@click.option(
    "--shard",
    "shards",
    multiple=True,
    metavar="URL|FILE",
    help="A shard's query endpoint or database file; one per shard audits each against its own "
    "replay, in parallel (instead of --url/--db).",
)
def audit(
    bootstrap: str,
    url: str | None,
    db_path: Path,
    work_dir: Path | None,
    ledger_sources: tuple[str, ...],
    indexer_sources: tuple[str, ...],
    settlement_sources: tuple[str, ...],
    chain_rpc: str | None,
    contract: str | None,
    var_dir: Path,
    journal_path: Path,
    push_min_amount: int,
    batch_max_entries: int,
    shards: tuple[str, ...],
) -> None:
    from ledger.audit import LiveSide, run_audit
    from ledger.render import print_audit

    if shards:
        if chain_rpc:
            raise click.UsageError("--chain-rpc audits one ledger: not with --shard")
        _audit_shards(
            bootstrap, shards, work_dir, ledger_sources, indexer_sources, settlement_sources
        )
    check = None
    if chain_rpc:
        check = _chain_check(
            chain_rpc, contract, var_dir, journal_path, push_min_amount, batch_max_entries
        )
    url = url or _query_url(db_path)
    live = LiveSide(url=url) if url else LiveSide(db_path=db_path)
    trust = _trust(ledger_sources, indexer_sources, settlement_sources)
    with Progress(
        TextColumn("replay"),
        BarColumn(),
        TextColumn("{task.completed:,} events"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("replay", total=None)
        report = run_audit(
            bootstrap,
            trust,
            live,
            work_dir or Path(tempfile.mkdtemp(prefix="meshledger-audit-")),
            on_progress=lambda p: bar.update(task, completed=p.events),
            chain_check=check,
        )
    live.close()
    print_audit(console, report)
    sys.exit(report.exit_code)


def _chain_check(
    rpc_url: str,
    contract: str | None,
    var_dir: Path,
    journal_path: Path,
    push_min_amount: int,
    batch_max_entries: int,
) -> Any:
    """The chain side of the audit (settlement/audit.py) for the contract given or the stack's."""
    from eth_utils import is_address

    from ledger.audit import ReplayedPayouts
    from settlement.audit import chain_check

    if contract is None:
        contracts_file = var_dir / "contracts.json"
        try:
            contract = str(json.loads(contracts_file.read_text())["settlement"])
        except (OSError, ValueError, KeyError) as exc:
            raise click.UsageError(
                f"--chain-rpc needs --contract or a stack's {contracts_file} ({exc})"
            ) from exc
    if not is_address(contract):
        raise click.UsageError(f"--contract {contract!r} is not an address")
    return chain_check(
        rpc_url,
        contract,
        ReplayedPayouts,
        journal_path.expanduser(),
        push_min_amount,
        batch_max_entries,
    )


def _audit_shards(
    bootstrap: str,
    shards: tuple[str, ...],
    work_dir: Path | None,
    ledger_sources: tuple[str, ...],
    indexer_sources: tuple[str, ...],
    settlement_sources: tuple[str, ...],
) -> None:
    """Audit each shard against its own replay, in parallel; exit with the worst outcome."""
    from ledger.audit import EXIT_GAPS, EXIT_MISMATCH, EXIT_OK
    from ledger.render import print_audit
    from ledger.shards import audit_shards

    targets = []
    for target in shards:
        if target.startswith(("http://", "https://")):
            targets.append(target)
        elif (live := _query_url(Path(target))) is not None:
            targets.append(live)
        elif Path(target).exists():
            targets.append(target)
        else:
            raise click.ClickException(f"shard {target}: no endpoint and no database")
    trust = _trust(ledger_sources, indexer_sources, settlement_sources)
    console.print(f"auditing {len(targets)} shards, each replayed in its own process")
    reports = audit_shards(
        bootstrap, trust, targets, work_dir or Path(tempfile.mkdtemp(prefix="meshledger-audit-"))
    )
    for target, report in zip(shards, reports, strict=True):
        console.rule(f"shard {target}")
        print_audit(console, report)
    codes = {r.exit_code for r in reports}
    sys.exit(
        EXIT_MISMATCH if EXIT_MISMATCH in codes else EXIT_GAPS if EXIT_GAPS in codes else EXIT_OK
    )


@cli.group()
def bench() -> None:
    """Benchmarks; each prints one JSON line last."""


@bench.command("ingest")
@click.option(
    "--events", type=int, default=2_000_000, show_default=True, help="Metered messages to send."
)
@click.option(
    "--baseline-events",
    type=int,
    default=100_000,
    show_default=True,
    help="Messages for the baseline.",
)
@click.option("--json", "as_json", is_flag=True, help="Only the JSON line.")
def bench_ingest(events: int, baseline_events: int, as_json: bool) -> None:
    """End-to-end metered messages/s (emitter -> broker -> DuckDB, separate processes), a
    one-record-per-message kafka-python baseline, and audit replay speed."""
    from ledger.bench import run_ingest_bench

    result = run_ingest_bench(events, baseline_events, console=None if as_json else console)
    click.echo(json.dumps(result))


@bench.command("shards")
@click.option(
    "--events", type=int, default=2_000_000, show_default=True, help="Metered messages in the log."
)
@click.option("--repeats", type=int, default=2, show_default=True, help="Runs of each; best kept.")
@click.option("--json", "as_json", is_flag=True, help="Only the JSON line.")
def bench_shards(events: int, repeats: int, as_json: bool) -> None:
    """Replay speed of one projector and of two shards (one partition each, two processes) over
    one log of two partitions; checks that the shards' merged tables equal the projector's."""
    from ledger.bench import run_shards_bench

    result = run_shards_bench(events, repeats, console=None if as_json else console)
    click.echo(json.dumps(result))


@bench.command("epoch-close")
@click.option("--history", type=int, default=10, show_default=True, help="Epochs of history (Nx).")
@click.option(
    "--records-per-epoch", type=int, default=8, show_default=True, help="4096-event records."
)
@click.option("--json", "as_json", is_flag=True, help="Only the JSON line.")
def bench_epoch_close(history: int, records_per_epoch: int, as_json: bool) -> None:
    """Cost of closing an epoch after 1x and after Nx the history (in-process projector)."""
    from ledger.bench import run_epoch_close_bench

    result = run_epoch_close_bench(history, records_per_epoch)
    if not as_json:
        console.print(
            f"close after 1 epoch: {result['close_ms_1x']} ms; after {history}: ratio {result['ratio']}"
        )
    click.echo(json.dumps(result))


DEMO_HELP = """The main job, for real, then an audit of the log and the chain.

\b
On `meshledger up`'s stack (durable broker, anvil, contracts, indexer, projector and three
routers, each its own process): keepers create two realms and set their parameters on chain;
users, router operators, service operators and vendors stake through RealmStaking (one stake
grows mid-way); stock autobahn clients, each an Ethereum key, publish, subscribe, register and
call, and pay their routers by SWAP cheques from chequebooks the ChequebookFactory deployed and
the clients funded; routers cash the cheques out in batches; epochs close; `meshledger settle
--all-due` posts roots and pushes payouts on EpochSettlement; the indexer brings every one of
those transactions back into the log; then `audit` replays the log from offset 0 and checks the
chain (roots, totals, push batches, what each payee received).

Amounts print in WMP. Exits 0 only when the audit matches the log and the chain and the counts
agree (metered = routed, paid on chain = the ledger's payouts, cheques cashed = received).
--json ends the output with one JSON object. --simulated runs the quick variant without chain
or routers (simulated sources, real projector and audit).
"""


@cli.command(help=DEMO_HELP)
@click.option(
    "--data-dir", type=click.Path(path_type=Path), default=None, help="Keep the demo's files here."
)
@click.option("--json", "as_json", is_flag=True, help="End with one JSON object (the numbers).")
@click.option(
    "--simulated", is_flag=True, help="The quick simulated variant (no chain, no routers)."
)
@click.option(
    "--blocks",
    type=int,
    default=600,
    show_default=True,
    help="--simulated: blocks of simulated traffic.",
)
def demo(data_dir: Path | None, as_json: bool, simulated: bool, blocks: int) -> None:
    if simulated:
        if as_json:
            raise click.UsageError("--json applies to the real demo, not --simulated")
        from ledger.demo_simulated import run_simulated_demo

        sys.exit(run_simulated_demo(data_dir, blocks))
    from ledger.demo import run_demo

    sys.exit(run_demo(data_dir, as_json))


def _load_plugins() -> None:
    for ep in entry_points(group="meshledger.commands"):
        command = ep.load()
        parent = bench if ep.name.startswith("bench-") else cli
        name = ep.name.removeprefix("bench-")
        parent.add_command(command, name)


def main() -> None:
    _load_plugins()
    cli()


if __name__ == "__main__":
    main()

"""`meshledger settle`: the settlement job's command line, wired to the live ledger and the L2 node.

The `meshledger` group attaches `settlement.cli.settle` (entry point). The ledger adapters (query
endpoint, log reader, emitter) are imported only when the command runs, so `settlement` stays
importable without them.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from eth_account import Account
from eth_account.signers.local import LocalAccount
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from web3 import Web3

from domain.economics import Payout
from domain.events import Event
from infra.metrics import SettleRun
from settlement.job import (
    EXIT_CHAIN,
    EXIT_OK,
    EXIT_RECORDING,
    EXIT_WRONG_DEPLOYMENT,
    JobConfig,
    JobError,
    LedgerConflict,
    NotDue,
    PayoutSource,
    Recorder,
    SettlementJob,
    SourceUnavailable,
)
from settlement.journal import OPEN_STATES, Journal
from settlement.submitter import (
    FeePolicy,
    SubmitError,
    Submitter,
    SubmitterConfig,
    WrongChain,
)

log = logging.getLogger(__name__)

KEY_FILE_ENV = "MESHLEDGER_SETTLEMENT_KEY_FILE"
LEDGER_SOURCES_ENV = "MESHLEDGER_LEDGER_SOURCES"
DEFAULT_JOURNAL = "~/.meshledger/settlement-journal.sqlite"
DEFAULT_DB = Path("var/ledger.duckdb")  # as `meshledger project`
RECORD_FLUSH_TIMEOUT_S = 30.0

HELP = f"""Pay the ledger's payouts of closed realm epochs on the L2 EpochSettlement contract.

For each epoch: read the payouts from the projector's query endpoint (--query-url, or the one
`meshledger project` wrote next to --db), read the epoch's PayoutsComputed digest from mesh.ledger
(only records signed by a --ledger-source key whose seq chain verifies), refuse unless the
payouts hash to that digest; build the payout tree (cumulative claims per account, continuing the
realm's earlier epochs exactly as they were posted on chain; epochs settle in order), fund the
realm if --fund and short, post the root, push payees of at least --push-min-amount in batches
that fit the block gas limit (the rest can claim), and record SettlementSubmitted /
SettlementConfirmed in mesh.ledger. Every transaction is journaled before it is sent and every
send is preceded by an on-chain "already done?" check, so a rerun after any failure pays nobody
twice.

The key comes from --key-file / ${KEY_FILE_ENV} (a file holding the 0x-hex private key, readable
by its owner only), never from the repository.

\b
Exit codes:
  0  settled, or already settled (nothing to do)
  2  usage error
  3  not due (no PayoutsComputed on the log, or an earlier epoch of the realm is not posted
     yet), or the ledger disagrees with itself (the query endpoint's payouts do not hash to the
     logged digest, two digests for one epoch, a forked ledger key), or the epoch or an earlier
     one is posted on chain with a root this job cannot rebuild: investigate before retrying
  4  realm underfunded (and --fund off, or the key holds too little): nothing was sent
  5  chain or ledger error (node or ledger unreachable, fee cap, stuck or reverted
     transaction, sender busy): retry later, the journal resumes where it stopped
  6  wrong chain id, or no / wrong contract code at --contract: refused before signing
  7  paid on chain but the events could not be recorded: rerun to record them
"""


class LedgerPayouts:
    """PayoutSource over the live ledger: the projector's query endpoint for epochs and payouts,
    the log (trusted ledger sources, signatures and seq chains verified) for the digest."""

    def __init__(self, query_url: str, log_reader: Any) -> None:
        from ledger.shards import query_client

        self.query = query_client(query_url)  # one endpoint, or each shard's (comma-separated)
        self.log_reader = log_reader  # ledger.logreader.LedgerLog

    def due_epochs(self, realm: str | None) -> list[tuple[str, int]]:
        try:
            rows = self.query.epochs(realm)
        except Exception as err:  # noqa: BLE001 - QueryError, malformed answers
            raise SourceUnavailable(f"ledger query endpoint: {err}") from err
        due = [(str(r["realm"]), int(r["epoch"])) for r in rows if int(r.get("payees") or 0) > 0]
        return sorted(due, key=lambda k: (k[1], k[0]))

    def payouts(self, realm: str, epoch: int) -> list[Payout]:
        try:
            return list(self.query.payouts(realm, epoch))
        except Exception as err:  # noqa: BLE001
            raise SourceUnavailable(f"ledger query endpoint: {err}") from err

    def logged_digest(self, realm: str, epoch: int) -> str | None:
        from ledger.logreader import ConflictingPayouts, LogReadError, SourceForked

        try:
            event = self.log_reader.payouts_computed(realm, epoch)
        except (ConflictingPayouts, SourceForked) as err:
            raise LedgerConflict(f"the log contradicts itself: {err}") from err
        except LogReadError as err:
            raise SourceUnavailable(f"PayoutsComputed from the log: {err}") from err
        return None if event is None else str(event.digest)


@dataclass
class EmitterRecorder:
    """Recorder over the ledger's emitter: the event is acknowledged by the broker on return."""

    emitter: Any

    def record(self, event: Event) -> None:
        self.emitter.emit(event)
        self.emitter.flush(RECORD_FLUSH_TIMEOUT_S)


def ledger_payouts(
    query_url: str | None, db_path: Path, bootstrap: str, trusted: tuple[str, ...]
) -> PayoutSource:
    """The live ledger: the query endpoint given, or the one the projector of `db_path` wrote to
    its `DB.query` marker; the log on `bootstrap`, believing only the `trusted` ledger keys."""
    from ledger.logreader import LedgerLog

    url = query_url or query_url_of(db_path)
    if not url:
        raise SourceUnavailable(
            f"no ledger query endpoint: no --query-url and no marker {db_path}.query "
            "(is `meshledger project` running on that database?)"
        )
    return LedgerPayouts(url, LedgerLog(bootstrap, trusted))


def query_url_of(db_path: Path) -> str | None:
    """The query endpoint `meshledger project` announced next to its DuckDB file."""
    marker = Path(f"{db_path}.query")
    return marker.read_text().strip() or None if marker.exists() else None


def ledger_recorder(key: bytes, bootstrap: str, spool_dir: Path) -> tuple[Recorder, Any]:
    """The recorder and the emitter to close afterwards."""
    from domain.envelope import Signer
    from ledger.emitter import Emitter, EmitterConfig

    emitter = Emitter(Signer(key), EmitterConfig(bootstrap=bootstrap, spool_dir=spool_dir))
    return EmitterRecorder(emitter), emitter


def load_key(path: str | Path) -> LocalAccount:
    """The job's key from a file holding its 0x-hex private key (ledger.keys: owner-only)."""
    from ledger.keys import KeyError_, read_key_file

    try:
        account: LocalAccount = Account.from_key(read_key_file(path))
    except KeyError_ as err:
        raise click.UsageError(str(err)) from err
    return account


@click.command("settle", help=HELP)
@click.option("--realm", help="Realm name (with --epoch, or to limit --all-due).")
@click.option("--epoch", type=click.IntRange(min=0), help="Epoch number to settle.")
@click.option(
    "--all-due", is_flag=True, help="Settle every closed epoch with payouts, oldest first."
)
@click.option("--rpc-url", envvar="MESHLEDGER_L2_RPC", required=True, help="L2 node JSON-RPC URL.")
@click.option("--chain-id", type=int, envvar="MESHLEDGER_L2_CHAIN_ID", required=True)
@click.option(
    "--contract",
    envvar="MESHLEDGER_SETTLEMENT_CONTRACT",
    required=True,
    help="EpochSettlement address.",
)
@click.option(
    "--key-file", envvar=KEY_FILE_ENV, type=click.Path(dir_okay=False), help="Job key file."
)
@click.option(
    "--journal",
    "journal_path",
    envvar="MESHLEDGER_SETTLEMENT_JOURNAL",
    default=DEFAULT_JOURNAL,
    show_default=True,
)
@click.option(
    "--query-url",
    envvar="MESHLEDGER_QUERY_URL",
    default=None,
    help="The projector's query endpoint (default: read from DB.query); a sharded ledger: every "
    "shard's, comma-separated.",
)
@click.option(
    "--db",
    "db_path",
    type=click.Path(path_type=Path),
    default=DEFAULT_DB,
    show_default=True,
    help="The projector's DuckDB file; its DB.query marker names the query endpoint.",
)
@click.option(
    "--bootstrap", envvar="MESHLEDGER_BOOTSTRAP", default="127.0.0.1:9092", show_default=True
)
@click.option(
    "--ledger-source",
    "trusted",
    multiple=True,
    envvar="MESHLEDGER_LEDGER_SOURCE",
    help="Address of a ledger key whose PayoutsComputed events are trusted (repeatable; "
    f"also ${LEDGER_SOURCES_ENV}, comma-separated).",
)
@click.option(
    "--spool-dir",
    envvar="MESHLEDGER_SETTLEMENT_SPOOL",
    default="~/.meshledger/settlement-spool",
    show_default=True,
)
@click.option(
    "--fund/--no-fund",
    default=False,
    show_default=True,
    help="Fund the realm from the key when short.",
)
@click.option(
    "--push-min-amount",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Smaller payouts are left to claim. Applies to epochs not posted yet; a posted epoch "
    "keeps the rule it was posted with.",
)
@click.option("--batch-max-entries", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--confirmations", type=click.IntRange(min=1), default=3, show_default=True)
@click.option(
    "--max-fee-wei",
    type=click.IntRange(min=1),
    default=50 * 10**9,
    show_default=True,
    help="Fee cap per gas.",
)
@click.option("--priority-fee-wei", type=click.IntRange(min=0), default=10**8, show_default=True)
@click.option("--dry-run", is_flag=True, help="Show what would be sent; sign nothing.")
@click.option(
    "--metrics-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the run's Prometheus metrics (epochs due and settled, transactions pending, gas "
    "spent) to this file for node_exporter's textfile collector.",
)
def settle(
    realm: str | None,
    epoch: int | None,
    all_due: bool,
    rpc_url: str,
    chain_id: int,
    contract: str,
    key_file: str | None,
    journal_path: str,
    query_url: str | None,
    db_path: Path,
    bootstrap: str,
    trusted: tuple[str, ...],
    spool_dir: str,
    fund: bool,
    push_min_amount: int,
    batch_max_entries: int,
    confirmations: int,
    max_fee_wei: int,
    priority_fee_wei: int,
    dry_run: bool,
    metrics_file: Path | None,
) -> None:
    if all_due == (epoch is not None):
        raise click.UsageError("give either --epoch (with --realm) or --all-due")
    if epoch is not None and not realm:
        raise click.UsageError("--epoch needs --realm")
    if not Web3.is_address(contract):
        raise click.UsageError(f"--contract {contract!r} is not an address")
    if not dry_run and not key_file:
        raise click.UsageError(f"no key: give --key-file or set {KEY_FILE_ENV}")
    account = load_key(key_file) if key_file else None
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    config = JobConfig(
        chain_id=chain_id,
        contract=contract,
        fund=fund,
        push_min_amount=push_min_amount,
        batch_max_entries=batch_max_entries,
    )
    trusted_sources = tuple(
        a
        for value in (*trusted, os.environ.get(LEDGER_SOURCES_ENV, ""))
        for a in value.split(",")
        if a
    )
    if not trusted_sources:
        raise click.UsageError(
            f"no trusted ledger key: give --ledger-source or set {LEDGER_SOURCES_ENV}"
        )
    console = Console()
    code = EXIT_OK
    try:
        source = ledger_payouts(query_url, db_path, bootstrap, trusted_sources)
        if dry_run:
            sender = account.address if account else None
            job = SettlementJob(w3, source, _NoRecorder(), config, sender=sender)
            code = _dry_run(job, realm, epoch, console)
        else:
            assert account is not None
            code = _run(
                w3,
                account,
                config,
                source,
                SubmitterConfig(
                    chain_id=chain_id,
                    fees=FeePolicy(max_fee_cap_wei=max_fee_wei, priority_fee_wei=priority_fee_wei),
                    confirmations=confirmations,
                ),
                Path(journal_path).expanduser(),
                (bootstrap, Path(spool_dir).expanduser()),
                realm,
                epoch,
                metrics_file,
            )
    except JobError as err:
        click.echo(f"error: {err}", err=True)
        code = err.exit_code
    except WrongChain as err:
        click.echo(f"error: {err}", err=True)
        code = EXIT_WRONG_DEPLOYMENT
    except (SubmitError, OSError, ConnectionError) as err:
        click.echo(f"error: chain: {err}", err=True)
        code = EXIT_CHAIN
    sys.exit(code)


class _StepBar:
    """A progress bar of the epochs and their steps (post, fund, push batches…) on stderr, so
    the one line per epoch on stdout stays parseable; nothing when stderr is no terminal."""

    def __init__(self, epochs: int) -> None:
        console = Console(stderr=True)
        self.shown = console.is_terminal
        self.progress = Progress(
            TextColumn("settling"),
            BarColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.task = self.progress.add_task("", total=max(epochs, 1))
        self.epochs: set[tuple[str, int]] = set()

    def __enter__(self) -> _StepBar:
        if self.shown:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.shown:
            self.progress.stop()

    def step(self, realm: str, epoch: int, name: str, index: int, steps: int) -> None:
        if not self.shown:
            return
        self.epochs.add((realm, epoch))
        done = len(self.epochs) - 1 + index / steps  # epochs done, and this one's share
        self.progress.update(
            self.task,
            completed=done,
            description=f"{realm} epoch {epoch}: {name} ({index + 1}/{steps})",
        )


class _NoRecorder:
    def record(self, event: Event) -> None:
        raise JobError("a dry run records nothing")


def _run(
    w3: Web3,
    account: LocalAccount,
    config: JobConfig,
    source: PayoutSource,
    submit_config: SubmitterConfig,
    journal_path: Path,
    emitter_args: tuple[str, Path],
    realm: str | None,
    epoch: int | None,
    metrics_file: Path | None = None,
) -> int:
    # checks that need no lock and sign nothing come first
    SettlementJob(w3, source, _NoRecorder(), config, sender=account.address).preflight()
    run = SettleRun(epochs_due=1 if epoch is not None else len(source.due_epochs(realm)))
    try:
        recorder, emitter = ledger_recorder(bytes(account.key), *emitter_args)
    except Exception as err:  # noqa: BLE001 - no recorder, no settlement
        raise JobError(f"cannot open the ledger emitter: {err}") from err
    try:
        with (
            Submitter(w3, account, Journal(journal_path), submit_config) as submitter,
            _StepBar(run.epochs_due) as bar,
        ):
            job = SettlementJob(w3, source, recorder, config, submitter)
            job.on_step = bar.step
            if epoch is not None:
                assert realm is not None
                results = [job.settle(realm, epoch)]
            else:
                results = job.settle_all_due(realm)
            run.epochs_settled = len(results)
            run.gas_spent = submitter.gas_used_total
            run.tx_pending = sum(1 for tx in submitter.journal.all() if tx.state in OPEN_STATES)
    finally:
        try:
            emitter.close()
        except Exception as err:  # noqa: BLE001
            log.warning("emitter close: %s", err)
        if metrics_file is not None:
            run.write(metrics_file)
    for result in results:
        # one plain line per epoch, never wrapped: schedulers parse it
        click.echo(
            f"{result.status} realm={result.realm} epoch={result.epoch} root={result.root} "
            f"total={result.total} post_tx={result.post_tx}"
        )
    if not results:
        click.echo("nothing due")
    return EXIT_OK


def _dry_run(job: SettlementJob, realm: str | None, epoch: int | None, console: Console) -> int:
    job.preflight()
    targets = [(realm, epoch)] if epoch is not None else job.source.due_epochs(realm)
    for r, e in targets:
        assert r is not None and e is not None
        try:
            plan = job.plan(r, e)
        except NotDue as err:
            if epoch is not None:
                raise
            click.echo(f"waits: {err}")  # a later epoch waits for this run's earlier ones
            continue
        table = Table(title=f"realm {r} epoch {e}: root {plan.root_hex}, total {plan.plan.total}")
        for column in ("step", "to", "calldata bytes", "state"):
            table.add_column(column)
        shortfall = job.shortfall(plan)
        for step in job.steps(plan):
            try:
                state = "done" if step.is_done() else "to send"
            except JobError as err:
                state = f"refused: {err}"
            table.add_row(step.name, step.request.to, str(len(step.request.data)), state)
        console.print(table)
        pushed = sum(len(b) for b in plan.tree.batches)
        click.echo(
            f"payees pushed={pushed} in {len(plan.tree.batches)} batches of <= "
            f"{plan.batch_max_entries}; claim leaves={len(plan.plan.claims)}; "
            f"realm shortfall={shortfall}"
            + ("" if shortfall == 0 or job.config.fund else " (underfunded: --fund is off)")
        )
    return EXIT_OK


def main() -> None:  # pragma: no cover - `python -m settlement.cli`
    logging.basicConfig(level=os.environ.get("MESHLEDGER_LOG", "WARNING"))
    settle()


if __name__ == "__main__":  # pragma: no cover
    main()


__all__ = ["settle", "EXIT_RECORDING", "LedgerPayouts", "EmitterRecorder", "load_key"]

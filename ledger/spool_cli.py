"""`meshledger spool check DIR` and `meshledger spool repair DIR --bootstrap H:P`: look at an
emitter's spool, and rebuild a damaged one without reusing a seq (see ledger/spool_repair.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import Progress, TextColumn, TimeElapsedColumn

from ledger.spool import SpoolError, SpoolLock, inspect

EXIT_INTACT, EXIT_DAMAGED, EXIT_IN_USE = 0, 1, 2


@click.group("spool")
def spool() -> None:
    """An emitter's local spool: the sealed records not yet acknowledged by the broker.

    The emitter refuses to start on a damaged spool (it could lose records or reuse seqs); these
    commands say what is wrong and repair it.
    """


@spool.command("check")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
def check(directory: Path) -> None:
    """Check DIRECTORY without changing it. Exit 0 intact, 1 damaged, 2 in use by an emitter."""
    try:
        lock = SpoolLock(directory)
    except SpoolError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_IN_USE)
    try:
        report = inspect(directory)
    finally:
        lock.release()
    cp = report.checkpoint
    if cp is not None:
        click.echo(f"source {cp.source or '(unknown)'}; acknowledged up to seq {cp.acked_seq}")
    if report.ok:
        click.echo(
            f"segments {report.segments or '-'}; {len(report.frames)} unacknowledged records; "
            f"tip seq {report.tip_seq}"
        )
    else:
        click.echo(f"segments {report.segments or '-'}; tip unknown")
    for note in report.notes:
        click.echo(f"note: {note} (cut when the emitter starts: that append never completed)")
    click.echo(report.describe())
    sys.exit(EXIT_INTACT if report.ok else EXIT_DAMAGED)


@spool.command("repair")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option(
    "--bootstrap", envvar="MESHLEDGER_BOOTSTRAP", required=True, help="Kafka bootstrap host:port."
)
@click.option(
    "--source",
    default=None,
    metavar="ADDR",
    help="The spool's source address, when neither its checkpoint nor its records say it.",
)
def repair_command(directory: Path, bootstrap: str, source: str | None) -> None:
    """Rebuild DIRECTORY: keep every intact record the broker lacks, take the tip from the broker's
    log (and the spool), move the damaged files aside. Never reuses a seq; seqs lost everywhere
    become gaps that consumers declare."""
    from ledger.spool_repair import RepairError, describe_result, repair

    console = Console(stderr=True)
    try:
        with Progress(
            TextColumn("reading the log"),
            TextColumn("{task.completed:,} records"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task("scan", total=None)
            result = repair(directory, bootstrap, source, lambda n: bar.update(task, completed=n))
    except (SpoolError, RepairError) as exc:
        raise click.ClickException(str(exc)) from exc
    for line in describe_result(result):
        click.echo(line)
    click.echo(f"spool {directory} repaired; the emitter can start on it")

"""Rich tables for query results and audit reports."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from ledger.audit import AuditReport


def _cell(value: Any) -> str:
    if isinstance(value, str) and value.startswith("0x") and len(value) > 20:
        return value[:10] + "…" + value[-4:]
    return str(value)


def print_query(
    console: Console, title: str, rows: Sequence[dict[str, Any]], drop: Iterable[str] = ()
) -> None:
    dropped = set(drop)
    table = Table(title=title, title_justify="left", show_lines=False)
    if not rows:
        console.print(f"[dim]{title}: no rows[/]")
        return
    columns = [c for c in rows[0] if c not in dropped]
    for column in columns:
        table.add_column(column, justify="right" if isinstance(rows[0][column], int) else "left")
    for row in rows:
        table.add_row(*(_cell(row[c]) for c in columns))
    console.print(table)


def print_audit(console: Console, report: AuditReport) -> None:
    console.print(
        f"replayed [bold]{report.records:,}[/] records / {report.events:,} events; "
        f"every signature and hash chain verified; {report.tables} tables compared"
    )
    if report.rejected:
        console.print(
            "rejected on replay: "
            + ", ".join(f"{k}={v}" for k, v in sorted(report.rejected.items()))
        )
    console.print(
        f"duplicates: {report.rejected.get('duplicate', 0)}; seq gaps: {len(report.gaps)}"
    )
    for source, first, last in report.gaps:
        console.print(f"  [yellow]gap[/] {source}: seq {first}..{last} missing from the log")
    for realm, epoch, retracted, block in report.reorg_flags:
        console.print(
            f"  [yellow]reorg[/] {realm} epoch {epoch} was closed on a {retracted} of block "
            f"{block} that a reorg retracted (flagged, not rewritten)"
        )
    for diff in report.diffs:
        console.print(
            f"[red]MISMATCH[/] table [bold]{diff.table}[/]: live {diff.live[0]} rows, replay {diff.replayed[0]} rows"
        )
        for row in diff.only_live:
            console.print(f"  [red]- live only  [/] {row}")
        for row in diff.only_replayed:
            console.print(f"  [green]+ replay only[/] {row}")
    if report.matches:
        console.print("[green]all tables match[/]")

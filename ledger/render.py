"""Rich tables for query results, the demo and audit reports: token amounts in token units
(`12.5 WMP`, never base units), long hex shortened, every table fitted to the terminal."""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, TextIO

from rich import box
from rich.console import Console
from rich.table import Table

from ledger.audit import AuditReport

TOKEN_DECIMALS = 18
TOKEN_SYMBOL = "WMP"
#: fractional digits a table shows; a longer fraction is cut (rounded down) and marked "…"
TABLE_PLACES = 4
#: result columns that hold token amounts in base units (the ledger's tables, the demo's)
AMOUNT_COLUMNS = frozenset(
    {
        "amount",
        "funding",
        "carry_in",
        "total",
        "remainder",
        "stake",
        "stake_per_mpb",
        "price_per_message",
        "cumulative",
        "paid",
        "due",
        "balance",
        "received",
        "cashed",
        "paid_onchain",
        "ledger",
    }
)


def format_amount(
    base_units: int | str,
    places: int | None = None,
    decimals: int = TOKEN_DECIMALS,
    symbol: str = TOKEN_SYMBOL,
) -> str:
    """`12.5 WMP` for 12_500_000_000_000_000_000 base units: exact, trailing zeros dropped,
    thousands grouped; with `places`, at most that many fractional digits (cut, then "…")."""
    value = int(base_units)
    sign = "-" if value < 0 else ""
    whole, fraction = divmod(abs(value), 10**decimals)
    digits = f"{fraction:0{decimals}d}".rstrip("0") if fraction else ""
    cut = places is not None and len(digits) > places
    if cut:
        digits = digits[:places]
    text = f"{sign}{whole:,}" + (f".{digits}" if digits else "") + ("…" if cut else "")
    return f"{text} {symbol}" if symbol else text


def _cell(column: str, value: Any, amounts: frozenset[str]) -> str:
    if column in amounts and value is not None and str(value).lstrip("-").isdigit():
        return format_amount(value, TABLE_PLACES, symbol="")
    if isinstance(value, str) and value.startswith("0x") and len(value) > 20:
        return value[:8] + "…" + value[-4:]
    return str(value)


#: an account or contract address in a row (what an ENS name can stand for)
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


def with_names(
    rows: Sequence[dict[str, Any]], name_of: Callable[[str], str | None]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows whose addresses have an ENS name: (for a table, the name with the shortened
    address in their cells; for JSON, each row plus `<column>_ens` for every named address).
    `name_of` answers None without a name (one lookup per distinct address)."""
    names: dict[str, str | None] = {}
    shown, tagged = [], []
    for row in rows:
        cells, extra = dict(row), dict(row)
        for column, value in row.items():
            if not (isinstance(value, str) and _ADDRESS.match(value)):
                continue
            key = value.lower()
            if key not in names:
                names[key] = name_of(value)
            name = names[key]
            if name is not None:
                cells[column] = f"{name} ({value[:6]}…{value[-4:]})"
                extra[f"{column}_ens"] = name
        shown.append(cells)
        tagged.append(extra)
    return shown, tagged


#: per query, the columns a narrow terminal shows first (then the others, in their order, while
#: they fit); `--wide` shows every column
KEY_COLUMNS: dict[str, tuple[str, ...]] = {
    "realms": ("realm", "keeper", "epoch_blocks", "stake_per_mpb", "price_per_message", "rfr_bps"),
    "bandwidth": ("realm", "block", "reserved_mpb", "provided_mpb", "used_mpb"),
    "usage": ("realm", "epoch", "messages", "credit", "payee_class", "account"),
    "epochs": ("realm", "epoch", "funding", "total", "remainder", "payees", "late_messages"),
    "payouts": ("realm", "epoch", "amount", "payee_class", "account"),
    "dead": ("reason", "records"),
    "sources": ("source", "watermark", "last_seq", "records", "events"),
    "reorgs": ("realm", "epoch", "retracted", "block"),
    "prices": ("feed", "block", "answer", "decimals", "status"),
    "epochs_usd": ("realm", "epoch", "total", "usd", "price_status"),
    "payouts_usd": ("realm", "epoch", "amount", "usd", "price_status", "account"),
}
#: characters a table spends around each column (SIMPLE_HEAD, collapsed padding)
COLUMN_GAP = 2


def fit_columns(cells: dict[str, list[str]], width: int, first: Iterable[str] = ()) -> list[str]:
    """The columns (in their order) to show within `width`: the `first` ones, then the rest,
    each while its widest cell still fits; at least one column."""
    natural = {
        c: max(len(c), *(len(v) for v in values)) + COLUMN_GAP for c, values in cells.items()
    }
    order = [c for c in first if c in cells] + [c for c in cells if c not in set(first)]
    chosen: set[str] = set()
    used = 0
    for column in order:
        if used + natural[column] <= width or not chosen:
            chosen.add(column)
            used += natural[column]
    return [c for c in cells if c in chosen]


def print_query(
    console: Console,
    title: str,
    rows: Sequence[dict[str, Any]],
    drop: Iterable[str] = (),
    amounts: Iterable[str] = AMOUNT_COLUMNS,
    layout: Literal["squeeze", "fit", "wide"] = "squeeze",
) -> None:
    """Rows as one table no wider than the console: amount columns in WMP (the unit in the
    title), long hex shortened, cells cut (…), never wrapped. `layout`: "squeeze" every column
    into the console; "fit" the query's key columns first and others while they fit (the title
    says how many are left out: `query --wide` shows them); "wide" every column at its full
    width, however wide the console."""
    if not rows:
        console.print(f"[dim]{title}: no rows[/]")
        return
    dropped = set(drop)
    amount_columns = frozenset(amounts)
    cells = {
        c: [_cell(c, row[c], amount_columns) for row in rows] for c in rows[0] if c not in dropped
    }
    wide = layout == "wide"
    columns = (
        fit_columns(cells, console.width, KEY_COLUMNS.get(title, ()))
        if layout == "fit"
        else list(cells)
    )
    notes = []
    if any(c in amount_columns for c in columns):
        notes.append(f"amounts in {TOKEN_SYMBOL}")
    if len(columns) < len(cells):
        hidden = len(cells) - len(columns)
        notes.append(f"{hidden} more column{'s' if hidden > 1 else ''}: --wide")
    if notes:
        title = f"{title} ({'; '.join(notes)})"
    table = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for column in columns:
        numeric = isinstance(rows[0][column], int) or column in amount_columns
        table.add_column(
            column,
            justify="right" if numeric else "left",
            no_wrap=True,
            overflow="ellipsis",
            min_width=4,
        )
    for i in range(len(rows)):
        table.add_row(*(cells[c][i] for c in columns))
    if not wide:
        console.print(table)
        return
    full = sum(max(len(c), *(len(v) for v in cells[c])) + COLUMN_GAP for c in columns)
    width = console.width
    console.width = max(full, width)  # print(width=) cannot exceed the console's own
    try:
        console.print(table, crop=False)
    finally:
        console.width = width


def write_csv(out: TextIO, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """Rows as CSV with a header; amounts stay exact base-unit integers, None is empty."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row[c] is None else row[c] for c in columns])


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
    if not report.diffs:
        console.print("[green]all tables match[/]")
    chain = report.chain
    if chain is not None:
        for line in chain.differences:
            console.print(f"[red]CHAIN MISMATCH[/] {line}")
        if chain.matches:
            console.print("[green]the chain matches the replayed log[/]")

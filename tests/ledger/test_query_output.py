"""`meshledger query` output: tables within 80 and 200 columns (key columns first, --wide for
all), amounts in WMP, and --json / --csv that read back to exactly the projection's rows."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from ledger import cli, store
from ledger.query import run_query
from ledger.render import KEY_COLUMNS

TOKEN = 10**18
ROUTER = "0x5E24a1f3c09B8d7e6f1A2b3C4d5E6f708192A3b4"
SERVICE = "0x0A1b2C3d4E5f60718293a4B5c6D7e8F901234567"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A projection file with a realm, two epochs and their payouts (as the projector writes)."""
    path = tmp_path / "ledger.duckdb"
    con = store.connect(path)
    con.execute(
        "INSERT INTO realms VALUES ('io.crossbar.market', ?, 200, ?, 20, 20, 5000, 3000, 2000,"
        " ?, 0, 0, '')",
        [ROUTER, TOKEN, 10**12],
    )
    for epoch, funding, carry, total, rem in (
        (0, 13 * TOKEN // 10, 0, 65 * TOKEN // 100, 65 * TOKEN // 100),
        (
            1,
            145 * TOKEN // 100,
            65 * TOKEN // 100,
            1_049_999_999_999_999_999,
            1_050_000_000_000_000_001,
        ),
    ):
        con.execute(
            "INSERT INTO epochs VALUES ('io.crossbar.market', ?, ?, ?, ?, ?, ?, ?, ?, 2, ?, 3, ?)",
            [epoch, epoch * 20, epoch * 20 + 19, json.dumps({ROUTER: 40 + epoch}), funding,
             carry, total, rem, "0x" + "ab" * 32, "0x" + "ab" * 32],
        )  # fmt: skip
        for account, cls, share in ((ROUTER, "router", 3), (SERVICE, "service", 2)):
            con.execute(
                "INSERT INTO payouts VALUES ('io.crossbar.market', ?, ?, ?, ?)",
                [epoch, account, cls, total * share // 5],
            )
    con.close()
    return path


def run(monkeypatch: pytest.MonkeyPatch, width: int, *args: str) -> str:
    monkeypatch.setattr(cli, "console", Console(width=width, force_terminal=False))
    result = CliRunner().invoke(cli.cli, ["query", *args])
    assert result.exit_code == 0, result.output
    return result.output


def header(output: str) -> list[str]:
    """The column names: the line above the table's rule."""
    lines = output.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.strip().startswith("─"))
    return lines[rule - 1].split()


def projection(db: Path, what: str) -> list[dict[str, Any]]:
    data = run_query(store.connect(db, read_only=True), what, {})
    return [dict(zip(data["columns"], r, strict=True)) for r in data["rows"]]


@pytest.mark.parametrize("what", ["epochs", "payouts", "realms"])
def test_tables_fit_80_and_200_columns_and_wide_shows_every_column(
    monkeypatch: pytest.MonkeyPatch, db: Path, what: str
) -> None:
    columns = list(projection(db, what)[0])
    narrow = run(monkeypatch, 80, what, "--db", str(db))
    assert max(len(line) for line in narrow.splitlines()) <= 80
    assert "(amounts in WMP" in narrow
    shown = header(narrow)
    assert shown[: len(KEY_COLUMNS[what][:2])] == list(KEY_COLUMNS[what][:2])
    if len(shown) < len(columns):
        hidden = len(columns) - len(shown)
        assert f"{hidden} more column{'s' if hidden > 1 else ''}: --wide" in narrow
    else:
        assert "--wide" not in narrow
    broad = run(monkeypatch, 200, what, "--db", str(db))
    assert max(len(line) for line in broad.splitlines()) <= 200
    assert len(columns) >= len(header(broad)) >= len(shown)
    assert len(header(broad)) > len(shown) or len(shown) == len(columns)
    wide = run(monkeypatch, 80, what, "--db", str(db), "--wide")
    assert header(wide) == columns  # every column, none cut
    assert "--wide" not in wide


def test_amounts_print_in_wmp_and_a_cut_amount_is_marked(
    monkeypatch: pytest.MonkeyPatch, db: Path
) -> None:
    out = run(monkeypatch, 80, "epochs", "--db", str(db))
    assert "1.3 " in out and "1.45 " in out  # funding, exact
    assert "1.0499…" in out  # 1.049999999999999999 WMP, cut to 4 places and marked
    assert "1049999999999999999" not in out  # never base units in a table


def test_json_and_csv_read_back_to_the_projection(
    monkeypatch: pytest.MonkeyPatch, db: Path
) -> None:
    for what in ("epochs", "payouts", "realms"):
        expected = projection(db, what)
        lines = run(monkeypatch, 80, what, "--db", str(db), "--json").splitlines()
        assert [json.loads(line) for line in lines] == expected  # ints exact, past 2**64 too
        text = run(monkeypatch, 80, what, "--db", str(db), "--csv")
        read = list(csv.DictReader(io.StringIO(text)))
        assert read == [
            {k: "" if v is None else str(v) for k, v in row.items()} for row in expected
        ]
        assert list(read[0]) == list(expected[0])


def test_json_and_csv_together_are_refused(monkeypatch: pytest.MonkeyPatch, db: Path) -> None:
    monkeypatch.setattr(cli, "console", Console(width=80))
    result = CliRunner().invoke(cli.cli, ["query", "epochs", "--db", str(db), "--json", "--csv"])
    assert result.exit_code == 2 and "--json or --csv, not both" in result.output

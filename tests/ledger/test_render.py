"""Token amounts as the tables print them: exact in WMP (never base units), or cut to a number of
places, and marked so, never rounded up."""

from __future__ import annotations

from decimal import Decimal, localcontext

from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from ledger.render import TOKEN_DECIMALS, format_amount, print_query


def _value(text: str) -> Decimal:
    return Decimal(text.removesuffix(" WMP").rstrip("…").replace(",", ""))


def token_units(base_units: int) -> Decimal:
    return Decimal(base_units).scaleb(-TOKEN_DECIMALS)


@given(st.integers(min_value=-(10**40), max_value=10**40))
def test_an_exact_amount_reads_back_to_its_base_units(base_units: int) -> None:
    text = format_amount(base_units)
    assert text.endswith(" WMP") and "…" not in text
    with localcontext(prec=100):
        assert _value(text).scaleb(TOKEN_DECIMALS) == base_units


@given(st.integers(min_value=0, max_value=10**40), st.integers(min_value=0, max_value=8))
def test_a_cut_amount_is_marked_and_never_more(base_units: int, places: int) -> None:
    text = format_amount(base_units, places)
    with localcontext(prec=100):
        shown, exact = _value(text), token_units(base_units)
        assert exact - Decimal(1).scaleb(-places) < shown <= exact
        assert text.endswith("… WMP") == (shown != exact)


def test_examples() -> None:
    assert format_amount(12_500_000_000_000_000_000) == "12.5 WMP"
    assert format_amount(1234 * 10**18) == "1,234 WMP"
    assert format_amount(10**15, symbol="") == "0.001"
    assert format_amount(15_999_999_999_999_999_999, 4) == "15.9999… WMP"


def test_a_query_table_fits_the_console_and_shows_amounts_in_wmp() -> None:
    console = Console(width=60, record=True, force_terminal=False)
    rows = [
        {"realm": "io.crossbar.market", "epoch": 3, "account": "0x" + "ab" * 20,
         "payee_class": "router", "amount": 26_399_999_999_999_999_999}
    ]  # fmt: skip
    print_query(console, "payouts", rows)
    text = console.export_text()
    assert all(len(line) <= 60 for line in text.splitlines())
    assert "(amounts in WMP)" in text and "26.39" in text
    assert "26399999999999999999" not in text

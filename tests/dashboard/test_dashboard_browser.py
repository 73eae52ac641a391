"""The dashboard in a real browser (Debian's chromium, headless, over the DevTools protocol)
against a real projector filled by a short scenario: the charts render with the projection's
series, every amount shown equals the projection's, settlement links follow the explorer
template, and the page picks up a newly closed epoch without a reload. Screenshots are saved
under the test's tmp dir (and into $DASHBOARD_SCREENSHOTS when set, for the README)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cdp import Browser, chromium_binary  # noqa: E402
from scenario import SETTLE_TX, Scenario, start  # noqa: E402

from dashboard.data import CELL_PLACES  # noqa: E402
from domain.events import CallAssessed  # noqa: E402
from infra.broker import Broker  # noqa: E402
from infra.procs import free_port  # noqa: E402
from ledger.render import format_amount  # noqa: E402

pytestmark = pytest.mark.integration

EXPLORER = "https://explorer.example/tx/{tx}"
AMOUNTS = ("funding", "carry_in", "total", "remainder")


@pytest.fixture
def scenario(fresh_broker: Broker, tmp_path: Path) -> Iterator[Scenario]:
    world = start(fresh_broker.bootstrap, tmp_path)
    yield world
    world.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    if chromium_binary() is None:
        pytest.fail("chromium is not installed: `make browser` installs Debian's (blocked here)")
    page = Browser(tmp_path / "chromium")
    yield page
    page.close()


def shot(browser: Browser, tmp_path: Path, name: str, selector: str | None = None) -> Path:
    path = browser.screenshot(tmp_path / name, selector)
    assert path.stat().st_size > 10_000
    docs = os.environ.get("DASHBOARD_SCREENSHOTS")
    if docs:
        shutil.copy(path, Path(docs) / name)
    return path


def rendered(browser: Browser, count: int) -> None:
    browser.wait_for(
        f"window.meshRefreshes >= 1 && document.querySelectorAll('.chart[data-rendered]').length"
        f" >= {count}",
        f"{count} charts rendered",
    )


def check_epochs(browser: Browser, scenario: Scenario) -> int:
    """Every closed epoch's row shows the projection's amounts (WMP cut to CELL_PLACES in the
    text, exact and in base units in the title), payees and late messages; returns the rows
    checked."""
    epochs = scenario.rows(
        "SELECT realm, epoch, funding, carry_in, total, remainder, payees, late_messages"
        " FROM epochs ORDER BY realm, epoch",
    )
    shown = browser.evaluate(
        "Object.fromEntries([...document.querySelectorAll('#epoch-table tr[data-row]')].map(tr =>"
        " [tr.dataset.row, Object.fromEntries([...tr.cells].map(td => [td.dataset.k,"
        " [td.textContent, td.title]]))]))"
    )
    for realm, epoch, *values, payees, late in epochs:
        cells = shown[f"{realm}/{epoch}"]
        for key, value in zip(AMOUNTS, values, strict=True):
            exact = f"{format_amount(value)} = {int(value)} base units"
            assert cells[key] == [format_amount(value, CELL_PLACES), exact], (realm, epoch)
        assert (cells["payees"][0], cells["late_messages"][0]) == (str(payees), str(late))
    assert len(shown) == len(epochs)
    return len(epochs)


def test_dashboard_page_shows_the_projection_and_refreshes_live(
    scenario: Scenario, browser: Browser, tmp_path: Path
) -> None:
    browser.navigate(f"{scenario.query_url}/dashboard/?refresh=500")
    rendered(browser, 6)  # per realm: stakes, bandwidth; payouts by class and by payee
    assert browser.errors == []

    # the bandwidth chart: three line series holding the projection's bandwidth rows
    alpha = "#chart-bandwidth-alpha svg"
    assert browser.evaluate(f"document.querySelectorAll('{alpha} .mark-line path').length") == 3
    legend = browser.evaluate(
        f"[...document.querySelectorAll('{alpha} .role-legend-label text')].map(t => t.textContent)"
    )
    assert legend == ["reserved", "provided", "used"]
    series = browser.evaluate("meshViews['chart-bandwidth-alpha'].data('table')")
    expected = scenario.rows(
        "SELECT block, reserved_mpb, provided_mpb, used_mpb FROM bandwidth WHERE realm = ?"
        " ORDER BY block",
        "alpha",
    )
    assert [(p["block"], p["reserved"], p["provided"], p["used"]) for p in series] == expected
    assert sum(p["used"] for p in series) == scenario.metered["alpha"]  # what its router sent

    # payouts by class: one bar per (realm, epoch, class) with its exact sum
    bars = scenario.rows(
        "SELECT realm, epoch, payee_class, sum(amount) FROM payouts GROUP BY ALL ORDER BY ALL",
    )
    assert len(bars) >= 5
    drawn = browser.evaluate("meshViews['chart-payouts-class'].data('table')")
    assert [(b["realm"], b["epoch"], b["payee_class"], int(b["base"])) for b in drawn] == bars
    assert browser.evaluate(
        "document.querySelectorAll('#chart-payouts-class svg .mark-rect path').length"
    ) == len(bars)

    assert check_epochs(browser, scenario) == 5  # alpha 0-2, beta 0-1
    # USD at the feed's last price at or before each epoch's end: $2.00 valid until block 45
    usd = browser.evaluate(
        "Object.fromEntries([...document.querySelectorAll('#epoch-table tr[data-row]')].map(tr =>"
        " [tr.dataset.row, tr.querySelector('td[data-k=usd]').textContent]))"
    )
    for realm, epoch, last_block, total in scenario.rows(
        "SELECT realm, epoch, last_block, total FROM epochs"
    ):
        cents = int(total) * 2 * 10**8 // 10 ** (8 + 18 - 2)
        valid = f"${cents // 100}.{cents % 100:02d}"
        assert usd[f"{realm}/{epoch}"] == (valid if last_block < 45 else "stale"), (realm, epoch)
    state = browser.evaluate(
        "document.querySelector('#epoch-table tr[data-row=\"alpha/0\"] .state').textContent"
    )
    assert state == "confirmed"
    swap = browser.evaluate(
        "[...document.querySelectorAll('#swap-table tr[data-row] td')].map(td => td.textContent)"
    )
    assert swap[0] == "alpha" and swap[3:5] == ["1", format_amount(3 * 10**15, CELL_PLACES)]
    shot(browser, tmp_path, "dashboard-realms.png", "#realms")

    # live: a fourth epoch of alpha closes and appears without a reload
    refreshes = browser.evaluate("window.meshRefreshes")
    scenario.traffic("alpha", range(60, 80), 2, seed=3)
    scenario.head(90)
    scenario.wait(lambda: scenario.closed("alpha", 4), "epoch 3 of alpha closed")
    browser.wait_for(
        "!!document.querySelector('#epoch-table tr[data-row=\"alpha/3\"]')", "epoch alpha/3"
    )
    assert browser.evaluate("window.meshRefreshes") > refreshes
    assert browser.evaluate("location.pathname") == "/dashboard/"  # never reloaded: same document
    check_epochs(browser, scenario)
    browser.wait_for(
        "meshViews['chart-bandwidth-alpha'].data('table').some(p => p.block === 79)",
        "block 79 in the bandwidth chart",
    )
    shot(browser, tmp_path, "dashboard-epochs.png", "#epochs")

    # the marketplace: calls the router assessed become reputation rows on the page
    assert (
        browser.evaluate("document.querySelector('#reputation-table td.empty').textContent")
        == "none yet"
    )
    service_id, operator = "0x" + "5e" * 32, scenario.services[0]
    em = scenario.router_emitters["alpha"]
    for outcome, latency, charged in (
        ("result", 12, 10**15),
        ("result", 30, 10**15),
        ("error", 7, 0),
    ):
        em.emit(
            CallAssessed(
                realm="alpha", router=scenario.routers["alpha"].address, client=scenario.users[0],
                operator=operator, service_id=service_id, outcome=outcome, latency_ms=latency,
                charged=charged, quote="", block=79,
            )
        )  # fmt: skip
    em.flush()
    scenario.wait(
        lambda: scenario.rows("SELECT count(*) FROM call_assessments") == [(3,)], "assessed"
    )
    ((calls, results, errors, success_bps, charged),) = scenario.rows(
        "SELECT calls, results, errors, success_bps, charged FROM reputation"
    )
    assert (calls, results, errors) == (3, 2, 1)
    browser.wait_for(
        "!!document.querySelector('#reputation-table tr[data-row]')", "a reputation row"
    )
    cells = browser.evaluate(
        "Object.fromEntries([...document.querySelectorAll('#reputation-table tr[data-row] td')]"
        ".map(td => [td.dataset.k, td.textContent]))"
    )
    assert cells["calls"] == "3" and cells["results"] == "2" and cells["errors"] == "1"
    assert cells["success"] == f"{success_bps / 100:.2f}"
    assert cells["charged"] == format_amount(int(charged), CELL_PLACES)
    shot(browser, tmp_path, "dashboard-page.png")  # the whole page, for a person to look at


def test_meshledger_dashboard_serves_the_page_with_explorer_links(
    scenario: Scenario, browser: Browser, tmp_path: Path
) -> None:
    port = free_port("127.0.0.1")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("meshledger")),
            "dashboard",
            "--url",
            scenario.query_url,
            "--port",
            str(port),
            "--explorer-url",
            EXPLORER,
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "meshledger dashboard did not answer"
                time.sleep(0.2)
        browser.navigate(url)
        rendered(browser, 6)
        assert browser.evaluate("location.pathname") == "/dashboard/"  # / redirects to the page
        links = browser.evaluate(
            "[...document.querySelectorAll('#epoch-table tr[data-row=\"alpha/0\"] a')]"
            ".map(a => [a.textContent, a.href])"
        )
        tx_url = EXPLORER.replace("{tx}", SETTLE_TX)
        assert links == [
            [f"posted {SETTLE_TX[:8]}…", tx_url],
            [f"confirmed {SETTLE_TX[:8]}…", tx_url],
        ]
        check_epochs(browser, scenario)
        assert browser.errors == []
    finally:
        proc.terminate()
        proc.wait(timeout=10)

"""The dashboard's server without a browser: static files only from dashboard/static (a path
that climbs out is refused), the committed charting libraries are node_modules' (make vendor),
and an unreachable ledger is a clear 503 the page shows, not a crash."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dashboard.data import EndpointReader, thin, tx_link
from dashboard.server import STATIC, DashboardServer, answer
from infra.procs import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_static_files_are_served_and_paths_out_of_static_are_refused() -> None:
    def never() -> EndpointReader:
        raise AssertionError("static files must not read the projections")

    page = answer("/dashboard/", never)
    assert page is not None and page[0] == 200 and b"vega-embed.min.js" in page[2]
    script = answer("/dashboard/vendor/vega-lite.min.js", never)
    assert script is not None and script[:2] == (200, "text/javascript; charset=utf-8")
    for bad in ("/dashboard/../ledger/query.py", "/dashboard/%2e%2e/server.py", "/dashboard/nope"):
        assert answer(bad, never) == (404, "text/plain", b"not found\n"), bad
    assert answer("/dashboard", never) == (301, "/dashboard/", b"")
    assert answer("/realms", never) is None  # not the dashboard's: the query endpoint answers


def test_committed_charting_libraries_equal_node_modules() -> None:
    for name, package in (
        ("vega.min.js", "vega"),
        ("vega-lite.min.js", "vega-lite"),
        ("vega-embed.min.js", "vega-embed"),
    ):
        installed = ROOT / "node_modules" / package / "build" / name
        assert installed.exists(), f"{installed} missing: run make setup"
        assert (STATIC / "vendor" / name).read_bytes() == installed.read_bytes(), (
            f"dashboard/static/vendor/{name} differs from node_modules: run make vendor"
        )


def test_an_unreachable_ledger_answers_503_with_the_reason() -> None:
    dead = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    server = DashboardServer(lambda: EndpointReader(dead))
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(server.page_url + "api/overview", timeout=10)
        assert err.value.code == 503
        assert json.loads(err.value.read())["error"].startswith(
            f"QueryError: ledger query endpoint {dead} unreachable"
        )
        with urllib.request.urlopen(
            server.page_url, timeout=10
        ) as resp:  # the page itself still loads
            assert resp.status == 200
    finally:
        server.close()


def test_long_series_are_thinned_to_the_limit_keeping_the_last_point() -> None:
    points = [{"block": b} for b in range(10_001)]
    kept = thin(points, 2_000)
    assert len(kept) <= 2_001 and kept[0]["block"] == 0 and kept[-1]["block"] == 10_000
    assert thin(points[:50], 2_000) == points[:50]
    assert tx_link("https://x/tx/{tx}", "0xab") == "https://x/tx/0xab"
    assert tx_link("https://x/tx/", "0xab") == "https://x/tx/0xab"
    assert tx_link("", "0xab") == ""

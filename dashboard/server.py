"""Serves the dashboard: the page and its static files under /dashboard/, the JSON it polls at
/dashboard/api/overview. Used by `meshledger dashboard` and by the projector's query endpoint.
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dashboard.data import Reader, overview
from infra.loopback import LoopbackServer, Reply

STATIC = Path(__file__).parent / "static"
PREFIX = "/dashboard"


def _json_default(value: Any) -> Any:
    return str(value)


def answer(
    path: str,
    reader: Callable[[], Reader],
    explorer: str = "",
    names: Callable[[str], str | None] | None = None,
) -> Reply | None:
    """The reply to GET `path` if it is the dashboard's (else None). `reader()` is called only
    for the API, so static files never touch the projections. `names`: see `overview`."""
    if path == PREFIX:
        return 301, PREFIX + "/", b""
    if not path.startswith(PREFIX + "/"):
        return None
    rest = path[len(PREFIX) + 1 :] or "index.html"
    if rest == "api/overview":
        source = reader()
        try:
            data = overview(source, explorer, names)
        finally:
            source.close()
        return 200, "application/json", json.dumps(data, default=_json_default).encode()
    file = (STATIC / rest).resolve()
    if not file.is_relative_to(STATIC.resolve()) or not file.is_file():
        return 404, "text/plain", b"not found\n"
    ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    if ctype.startswith("text/") or ctype.endswith("javascript"):
        ctype += "; charset=utf-8"
    return 200, ctype, file.read_bytes()


class DashboardServer(LoopbackServer):
    """The dashboard on its own loopback port (`/` redirects to the page); a ledger that cannot
    be read is a 503 with the reason, which the page shows while it keeps polling."""

    def __init__(
        self,
        reader: Callable[[], Reader],
        explorer: str = "",
        host: str = "127.0.0.1",
        port: int = 0,
        names: Callable[[str], str | None] | None = None,
    ) -> None:
        def respond(path: str) -> Reply:
            try:
                reply = answer(PREFIX if path == "/" else path, reader, explorer, names)
            except Exception as exc:  # noqa: BLE001 - any reading failure is the page's to show
                body = json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode()
                return 503, "application/json", body
            return reply or (404, "text/plain", b"not found\n")

        super().__init__(respond, host, port)

    @property
    def page_url(self) -> str:
        return f"{self.url}{PREFIX}/"

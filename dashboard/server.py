"""Serves the dashboard: the page and its static files under /dashboard/, the JSON it polls at
/dashboard/api/overview. Used by `meshledger dashboard` and by the projector's query endpoint.
"""

from __future__ import annotations

import json
import mimetypes
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from dashboard.data import Reader, overview

STATIC = Path(__file__).parent / "static"
PREFIX = "/dashboard"
#: seconds a client may take to send its request (as the query endpoint's)
REQUEST_TIMEOUT_S = 10.0

Answer = tuple[int, str, bytes]


def _json_default(value: Any) -> Any:
    return str(value)


def answer(path: str, reader: Callable[[], Reader], explorer: str = "") -> Answer | None:
    """The reply to GET `path` if it is the dashboard's (else None). `reader()` is called only
    for the API, so static files never touch the projections."""
    if path == PREFIX:
        return 301, PREFIX + "/", b""
    if not path.startswith(PREFIX + "/"):
        return None
    rest = path[len(PREFIX) + 1 :] or "index.html"
    if rest == "api/overview":
        source = reader()
        try:
            data = overview(source, explorer)
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


def send(handler: BaseHTTPRequestHandler, reply: Answer) -> None:
    status, ctype, data = reply
    handler.send_response(status)
    if status == 301:
        handler.send_header("Location", ctype)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
        return
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(data)))
    handler.send_header("Cache-Control", "no-store")
    handler.end_headers()
    handler.wfile.write(data)


class DashboardServer:
    """The dashboard on its own loopback port (`/` redirects to the page)."""

    def __init__(
        self,
        reader: Callable[[], Reader],
        explorer: str = "",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        class Handler(BaseHTTPRequestHandler):
            timeout = REQUEST_TIMEOUT_S

            def do_GET(self) -> None:  # noqa: N802
                path = urllib.parse.urlparse(self.path).path
                if path == "/":
                    path = PREFIX
                try:
                    reply = answer(path, reader, explorer)
                except Exception as exc:  # the page shows the error and keeps polling
                    body = json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode()
                    reply = (503, "application/json", body)
                send(self, reply or (404, "text/plain", b"not found\n"))

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="dashboard", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{PREFIX}/"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

"""A small HTTP server on a loopback port for one GET responder (`/metrics`, the dashboard):
its own thread, bounded request time, nothing logged per request."""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: (status, content type, body); a 301's "content type" is its Location
Reply = tuple[int, str, bytes]
#: seconds a client may take to send its request (slowloris)
REQUEST_TIMEOUT_S = 10.0


def send_reply(handler: BaseHTTPRequestHandler, reply: Reply) -> None:
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


class LoopbackServer:
    """Serves `respond(path)` for every GET (the path without its query string)."""

    def __init__(self, respond: Callable[[str], Reply], host: str = "127.0.0.1", port: int = 0):
        class Handler(BaseHTTPRequestHandler):
            timeout = REQUEST_TIMEOUT_S

            def do_GET(self) -> None:  # noqa: N802
                send_reply(self, respond(urllib.parse.urlparse(self.path).path))

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"http-{self.port}", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

"""A JSON-RPC proxy on 127.0.0.1 in front of a real anvil that misbehaves on demand: down, slow,
behind, or refusing wide `eth_getLogs` ranges the way hosted nodes do. A test double: tests only."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import requests

from infra.procs import free_port

TOO_MANY = {"code": -32005, "message": "query returned more than 10000 results"}


class FaultyRpc:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.max_range_blocks: int | None = None
        self.lag_blocks = 0
        self.delay_s = 0.0
        self.too_wide_answers = 0
        self.highest_block_served = -1
        self._server: ThreadingHTTPServer | None = None
        self._session = requests.Session()
        self._lock = threading.Lock()
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if proxy.delay_s:
                    time.sleep(proxy.delay_s)
                reply = proxy.answer(orjson.loads(body))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """The node is down: connections are refused until `start`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _forward(self, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        with self._lock:
            resp = self._session.post(
                self.upstream,
                data=orjson.dumps(calls),
                headers={"Content-Type": "application/json"},
                timeout=30,
            )
        replies = orjson.loads(resp.content)
        return replies if isinstance(replies, list) else [replies]

    def answer(self, request: Any) -> bytes:
        calls = request if isinstance(request, list) else [request]
        head = int(
            self._forward([{"jsonrpc": "2.0", "id": 0, "method": "eth_blockNumber", "params": []}])[
                0
            ]["result"],
            16,
        )
        visible = head - self.lag_blocks
        replies: dict[Any, dict[str, Any]] = {}
        forward = []
        for call in calls:
            method, params = call["method"], call.get("params", [])
            if method == "eth_blockNumber":
                replies[call["id"]] = {"jsonrpc": "2.0", "id": call["id"], "result": hex(visible)}
            elif (
                method == "eth_getBlockByNumber"
                and params[0].startswith("0x")
                and int(params[0], 16) > visible
            ):
                replies[call["id"]] = {"jsonrpc": "2.0", "id": call["id"], "result": None}
            elif method == "eth_getLogs" and self._too_wide(params[0]):
                self.too_wide_answers += 1
                replies[call["id"]] = {"jsonrpc": "2.0", "id": call["id"], "error": TOO_MANY}
            else:
                if method == "eth_getBlockByNumber" and params[0].startswith("0x"):
                    self.highest_block_served = max(self.highest_block_served, int(params[0], 16))
                forward.append(call)
        if forward:
            for reply in self._forward(forward):
                replies[reply["id"]] = reply
        out = [replies[c["id"]] for c in calls]
        return orjson.dumps(out if isinstance(request, list) else out[0])

    def _too_wide(self, flt: dict[str, Any]) -> bool:
        if self.max_range_blocks is None:
            return False
        return int(flt["toBlock"], 16) - int(flt["fromBlock"], 16) + 1 > self.max_range_blocks

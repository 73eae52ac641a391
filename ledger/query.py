"""Read access while the projector runs: DuckDB admits one writing process, so the projector's
process serves reads over a loopback HTTP endpoint (JSON), each request on its own cursor.

Endpoints: /metrics and /health (Prometheus text; 503 when the broker is unreachable), /realms, /bandwidth?realm=, /usage?realm=&epoch=, /epochs?realm=, /payouts?realm=&epoch=,
/dead, /sources, /owned (the realms of a shard), /dashboard/ (the web page, dashboard/), /snapshot (offsets and table fingerprints read in one transaction), /table/NAME.
Bounded: a client has `REQUEST_TIMEOUT_S` to send its request (socket timeout), at most
`MAX_REQUEST_THREADS` requests run at once (more are answered 503 at once).
"""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import duckdb

from domain.economics import Payout
from ledger import store

TOKEN_DECIMALS = 18
_USD = (
    "SELECT e.*, CASE WHEN p.status = 'valid' THEN printf('%d.%02d',"
    " ({amount}::HUGEINT * p.answer::HUGEINT // ('1' || repeat('0', p.decimals + "
    + str(TOKEN_DECIMALS - 2)
    + "))::HUGEINT) // 100, ({amount}::HUGEINT * p.answer::HUGEINT // ('1' || repeat('0',"
    " p.decimals + "
    + str(TOKEN_DECIMALS - 2)
    + "))::HUGEINT) % 100) ELSE 'stale' END AS usd, coalesce(p.status, 'no price') AS price_status,"
    " p.block AS price_block"
    " FROM e ASOF LEFT JOIN (SELECT * FROM prices WHERE feed = coalesce($feed, feed)) p"
    " ON e.last_block >= p.block ORDER BY ALL"
)

QUERIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "realms": ("SELECT * FROM realms ORDER BY realm", ()),
    "sources": ("SELECT * FROM sources ORDER BY source", ()),
    "bandwidth": (
        "SELECT * FROM bandwidth WHERE realm = coalesce($realm, realm) ORDER BY realm, block",
        ("realm",),
    ),
    "usage": (
        "SELECT * FROM usage WHERE realm = coalesce($realm, realm) AND epoch = coalesce($epoch, epoch)"
        " ORDER BY realm, epoch, payee_class, account",
        ("realm", "epoch"),
    ),
    "epochs": (
        "SELECT * FROM epochs WHERE realm = coalesce($realm, realm) ORDER BY realm, epoch",
        ("realm",),
    ),
    "payouts": (
        "SELECT * FROM payouts WHERE realm = coalesce($realm, realm) AND epoch = coalesce($epoch, epoch)"
        " ORDER BY realm, epoch, payee_class, account",
        ("realm", "epoch"),
    ),
    "dead": ("SELECT reason, records FROM rejected ORDER BY records DESC, reason", ()),
    # the realms whose partitions this projector owns (all of them unless it is a shard)
    "owned": ("SELECT realm FROM shard_realms ORDER BY realm", ()),
    "reorgs": (
        "SELECT * FROM reorg_flags WHERE realm = coalesce($realm, realm)"
        " ORDER BY realm, epoch, block, log_index",
        ("realm",),
    ),
    # the marketplace: operators' reputation per service (from assessed calls), offers now
    "reputation": (
        "SELECT * FROM reputation WHERE realm = coalesce($realm, realm)"
        " ORDER BY realm, service_id, success_bps DESC, operator",
        ("realm",),
    ),
    "reciprocity": (
        "SELECT * FROM reciprocity WHERE realm = coalesce($realm, realm)"
        " ORDER BY realm, server_a, server_b",
        ("realm",),
    ),
    # routers announced on chain (RouterRegistry), with their endpoints
    "routers": (
        "SELECT * FROM realm_routers WHERE realm = coalesce($realm, realm) ORDER BY realm, operator",
        ("realm",),
    ),
    "offers": (
        "SELECT * FROM market_offers WHERE realm = coalesce($realm, realm)"
        " ORDER BY realm, api, price_per_call, server",
        ("realm",),
    ),
    "prices": (
        "SELECT * FROM prices WHERE feed = coalesce($feed, feed) ORDER BY feed, block, seq",
        ("feed",),
    ),
    # USD values at the last price observed at or before the epoch's last block; a price that
    # was not valid then (or none) shows as "stale". Cents, rounded down; WMP has 18 decimals.
    "epochs_usd": (
        f"WITH e AS (SELECT realm, epoch, last_block, funding, total FROM epochs"
        f" WHERE realm = coalesce($realm, realm)) {_USD.format(amount='e.total')}",
        ("realm", "feed"),
    ),
    "payouts_usd": (
        f"WITH e AS (SELECT p.realm, p.epoch, e.last_block, p.account, p.payee_class, p.amount"
        f" FROM payouts p JOIN epochs e USING (realm, epoch) WHERE p.realm = coalesce($realm,"
        f" p.realm) AND p.epoch = coalesce($epoch, p.epoch)) {_USD.format(amount='e.amount')}",
        ("realm", "epoch", "feed"),
    ),
}


def run_query(con: duckdb.DuckDBPyConnection, name: str, params: dict[str, Any]) -> dict[str, Any]:
    sql, names = QUERIES[name]
    args = {n: params.get(n) for n in names}
    epoch = args.get("epoch")
    if epoch is not None:
        args["epoch"] = int(epoch)
    cur = con.execute(sql, args) if names else con.execute(sql)
    cols = [d[0] for d in cur.description]
    return {"columns": cols, "rows": [list(r) for r in cur.fetchall()]}


def snapshot(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Offsets, the offsets applied ahead of them (a record waiting holds a partition's offset
    back while later ones are applied) and fingerprints of every audited table, read in one
    transaction: the exact set of records the tables reflect."""
    con.execute("BEGIN TRANSACTION")
    try:
        offsets = con.execute("SELECT topic, part, next_offset FROM offsets").fetchall()
        ahead = con.execute('SELECT topic, part, "offset" FROM applied_ahead').fetchall()
        prints = {t: list(store.fingerprint(con, t)) for t in store.AUDITED_TABLES}
        shard = store.shard_partitions(con)
    finally:
        con.execute("COMMIT")
    return {
        "offsets": [list(o) for o in offsets],
        "ahead": [list(a) for a in ahead],
        "tables": prints,
        # a shard's partitions: its replay must be the same shard's
        "partitions": sorted(shard[0]) if shard else None,
    }


def _json_default(value: Any) -> Any:
    return str(value)


#: seconds a client may take to send its request line and headers (slowloris)
REQUEST_TIMEOUT_S = 10.0
#: requests served at once; one more is refused with 503 instead of a new thread
MAX_REQUEST_THREADS = 16


class _Handler(BaseHTTPRequestHandler):
    con: duckdb.DuckDBPyConnection
    #: (registry, health checks) of the projector, for /metrics and /health
    metrics: tuple[Any, dict[str, Any]] | None = None
    #: the block explorer's transaction page for the dashboard's links (see dashboard/data.py)
    explorer: str = ""
    timeout = REQUEST_TIMEOUT_S

    def do_GET(self) -> None:  # noqa: N802
        url = urllib.parse.urlparse(self.path)
        if self.metrics is not None:
            from infra.metrics import serve_metrics_path

            answer = serve_metrics_path(url.path, *self.metrics)
            if answer is not None:
                self._send_bytes(*answer)
                return
        if url.path.startswith("/dashboard"):
            self._dashboard(url.path)
            return
        params = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        name = url.path.strip("/")
        cursor = self.con.cursor()
        try:
            if name == "snapshot":
                body: Any = snapshot(cursor)
            elif name.startswith("table/") and name[6:] in store.AUDITED_TABLES:
                table = name[6:]
                body = {
                    "columns": store.columns(cursor, table),
                    "rows": [list(r) for r in store.table_rows(cursor, table)],
                }
            elif name in QUERIES:
                body = run_query(cursor, name, params)
            else:
                self._send(
                    404,
                    {
                        "error": f"no endpoint {url.path}",
                        "endpoints": sorted(QUERIES) + ["snapshot", "table/NAME"],
                    },
                )
                return
            self._send(200, body)
        except (duckdb.Error, ValueError) as exc:
            self._send(400, {"error": str(exc)})
        finally:
            cursor.close()

    def _dashboard(self, path: str) -> None:
        """The dashboard page and its JSON, read from this process's tables (dashboard/)."""
        from dashboard.data import DuckReader
        from dashboard.server import answer
        from infra.loopback import send_reply

        cursor = self.con.cursor()
        try:
            reply = answer(path, lambda: DuckReader(cursor), self.explorer)
        except duckdb.Error as exc:  # the page shows it and keeps polling
            reply = (503, "application/json", json.dumps({"error": str(exc)}).encode())
        finally:
            cursor.close()
        send_reply(self, reply or (404, "text/plain", b"not found\n"))

    def _send(self, status: int, body: Any) -> None:
        # stdlib json: token amounts exceed 64 bits and must stay exact integers
        self._send_bytes(
            status, "application/json", json.dumps(body, default=_json_default).encode()
        )

    def _send_bytes(self, status: int, content_type: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class _BoundedServer(ThreadingHTTPServer):
    """One thread per request, at most `MAX_REQUEST_THREADS` at once."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[_Handler]) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(MAX_REQUEST_THREADS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def serve(
    con: duckdb.DuckDBPyConnection,
    host: str = "127.0.0.1",
    port: int = 0,
    metrics: tuple[Any, dict[str, Any]] | None = None,
) -> ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"con": con, "metrics": metrics})
    server = _BoundedServer((host, port), handler)
    threading.Thread(target=server.serve_forever, name="ledger-query", daemon=True).start()
    return server


class QueryError(RuntimeError):
    pass


class QueryClient:
    """Client of the projector's query endpoint (used by the CLI, the audit and settlement)."""

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def get(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        url = f"{self.url}/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:
                return json.loads(resp.read())
        except OSError as exc:
            raise QueryError(f"ledger query endpoint {self.url} unreachable: {exc}") from exc

    def rows(self, name: str, **params: Any) -> list[dict[str, Any]]:
        data = self.get(name, **params)
        return [dict(zip(data["columns"], row, strict=True)) for row in data["rows"]]

    def epochs(self, realm: str | None = None) -> list[dict[str, Any]]:
        out = self.rows("epochs", realm=realm)
        for row in out:
            for key in ("funding", "carry_in", "total", "remainder"):
                row[key] = int(row[key])
        return out

    def payouts(self, realm: str, epoch: int) -> list[Payout]:
        return [
            Payout(r["account"], r["payee_class"], int(r["amount"]))
            for r in self.rows("payouts", realm=realm, epoch=epoch)
        ]

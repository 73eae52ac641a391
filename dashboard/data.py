"""What the dashboard shows, read only from the projections (the query endpoint or the DuckDB
file): realms, stakes, bandwidth, epochs and their settlement, payouts, SWAP, the chain.

Amounts go out four ways: `base` (exact decimal string of base units), `text` (WMP, exact, as
`ledger.render.format_amount` writes it), `short` (cut to `CELL_PLACES`, marked "…") and `wmp`
(a float, only for chart axes).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from typing import Any, Protocol

import duckdb

from domain.events import ROLES
from ledger import store
from ledger.query import QueryClient, run_query
from ledger.render import TOKEN_DECIMALS, TOKEN_SYMBOL, format_amount

#: points of one realm's bandwidth series sent to the page (longer series are thinned evenly,
#: keeping the last block)
MAX_SERIES_POINTS = 2_000
#: payees shown per realm in the payouts-by-payee chart (the largest; the rest summed as "others")
MAX_PAYEES = 20
#: rows of the epochs table (the newest)
MAX_EPOCHS = 200

SETTLEMENT_STATES = ("closed", "computed", "posted", "confirmed", "pushed", "claimed")


class Reader(Protocol):
    """Rows of a named query (`ledger.query.QUERIES`) or of a whole projection table."""

    def query(self, name: str, **params: Any) -> list[dict[str, Any]]: ...

    def table(self, name: str) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


class EndpointReader:
    """Through the projector's loopback query endpoint (while it runs)."""

    def __init__(self, url: str) -> None:
        self.client = QueryClient(url, timeout_s=10)

    def query(self, name: str, **params: Any) -> list[dict[str, Any]]:
        return self.client.rows(name, **params)

    def table(self, name: str) -> list[dict[str, Any]]:
        return self.client.rows(f"table/{name}")

    def close(self) -> None:
        pass


class DuckReader:
    """From a DuckDB connection or cursor (the projector's own, or a file opened read-only)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, owned: bool = False) -> None:
        self.con = con
        self.owned = owned  # a connection of its own (a file opened per request): closed after

    def close(self) -> None:
        if self.owned:
            self.con.close()

    def query(self, name: str, **params: Any) -> list[dict[str, Any]]:
        data = run_query(self.con, name, params)
        return [dict(zip(data["columns"], row, strict=True)) for row in data["rows"]]

    def table(self, name: str) -> list[dict[str, Any]]:
        cols = store.columns(self.con, name)
        return [dict(zip(cols, row, strict=True)) for row in store.table_rows(self.con, name)]


#: fractional digits a cell shows (cut and marked "…"; the exact amount is in its tooltip)
CELL_PLACES = 6


def amount(value: Any) -> dict[str, Any]:
    base = int(value or 0)
    return {
        "base": str(base),
        "text": format_amount(base),
        "short": format_amount(base, CELL_PLACES),
        "wmp": base / 10**TOKEN_DECIMALS,
    }


def thin(points: list[dict[str, Any]], limit: int = MAX_SERIES_POINTS) -> list[dict[str, Any]]:
    if len(points) <= limit:
        return points
    step = -(-len(points) // limit)
    kept = points[::step]
    if kept[-1] is not points[-1]:
        kept.append(points[-1])
    return kept


def tx_link(explorer: str, tx_hash: str) -> str:
    """The explorer's page of a transaction: `{tx}` in the template is replaced, else appended."""
    if not explorer or not tx_hash:
        return ""
    return explorer.replace("{tx}", tx_hash) if "{tx}" in explorer else explorer + tx_hash


def _body(row: dict[str, Any]) -> dict[str, Any]:
    try:
        body = json.loads(row.get("body") or "{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def realms_view(reader: Reader) -> list[dict[str, Any]]:
    stakes: dict[tuple[str, str, str, str], tuple[int, int, int]] = {}
    for s in reader.table("stakes"):
        key = (s["realm"], s["staker"], s["role"], s["target"])
        order = (int(s["block"]), int(s["log_index"]))
        # `amount` is the position's new total: the latest change by (block, log index) holds
        if key not in stakes or order >= stakes[key][:2]:
            stakes[key] = (*order, int(s["amount"]))
    by_role: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(ROLES, 0))
    positions: dict[str, int] = defaultdict(int)
    for (realm, _, role, _), (_, _, total) in stakes.items():
        by_role[realm][role] = by_role[realm].get(role, 0) + total
        positions[realm] += total > 0
    series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for b in reader.query("bandwidth"):
        series[b["realm"]].append(
            {
                "block": int(b["block"]),
                "reserved": int(b["reserved_mpb"]),
                "provided": int(b["provided_mpb"]),
                "used": int(b["used_mpb"]),
            }
        )
    out = []
    for r in reader.query("realms"):
        name = r["realm"]
        out.append(
            {
                "realm": name,
                "keeper": r["keeper"],
                "params": {
                    "epoch_blocks": int(r["epoch_blocks"]),
                    "funding_period_blocks": int(r["funding_period_blocks"]),
                    "rfr_bps": int(r["rfr_bps"]),
                    "weights_bps": {
                        "router": int(r["weight_router_bps"]),
                        "service": int(r["weight_service_bps"]),
                        "vendor": int(r["weight_vendor_bps"]),
                    },
                    "stake_per_mpb": amount(r["stake_per_mpb"]),
                    "price_per_message": amount(r["price_per_message"]),
                    "created_block": int(r["created_block"]),
                },
                "stakes": [
                    {"role": role, **amount(total)}
                    for role, total in by_role.get(name, dict.fromkeys(ROLES, 0)).items()
                ],
                "positions": positions.get(name, 0),
                "bandwidth": thin(series.get(name, [])),
                "bandwidth_points": len(series.get(name, [])),
            }
        )
    return out


def epochs_view(reader: Reader, explorer: str) -> dict[str, Any]:
    txs: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    state: dict[tuple[str, int], str] = {}

    def advance(key: tuple[str, int], to: str) -> None:
        now = state.get(key, "closed")
        if SETTLEMENT_STATES.index(to) > SETTLEMENT_STATES.index(now):
            state[key] = to

    for s in reader.table("settlements"):
        key = (s["realm"], int(s["epoch"]))
        step = "posted" if s["type"] == "SettlementSubmitted" else "confirmed"
        advance(key, step)
        txs[key].append({"step": step, "tx": s["tx_hash"], "url": tx_link(explorer, s["tx_hash"])})
    for log in reader.table("chain_logs"):
        if log["type"] not in ("SettlementPushed", "SettlementClaimed") or log["retracted_seq"]:
            continue
        body = _body(log)
        if "epoch" not in body:
            continue
        key = (log["realm"], int(body["epoch"]))
        advance(key, "pushed" if log["type"] == "SettlementPushed" else "claimed")
        tx = str(body.get("tx_hash", ""))
        if tx:
            txs[key].append({"step": state[key], "tx": tx, "url": tx_link(explorer, tx)})
    for steps in txs.values():
        steps.sort(key=lambda t: SETTLEMENT_STATES.index(t["step"]))
    payouts = reader.query("payouts")
    by_class: dict[tuple[str, int, str], int] = defaultdict(int)
    by_payee: dict[tuple[str, str], int] = defaultdict(int)
    for p in payouts:
        by_class[(p["realm"], int(p["epoch"]), p["payee_class"])] += int(p["amount"])
        by_payee[(p["realm"], p["account"])] += int(p["amount"])
    # USD at the last price observed at or before the epoch's last block ("stale" when it was
    # not valid), as `query epochs --usd`: only once a feed reported anything
    usd: dict[tuple[str, int], tuple[str, str]] = {}
    if reader.query("prices"):
        for u in reader.query("epochs_usd"):
            usd[(u["realm"], int(u["epoch"]))] = (str(u["usd"]), str(u["price_status"]))
    rows = []
    for e in reader.query("epochs")[-MAX_EPOCHS:]:
        key = (e["realm"], int(e["epoch"]))
        if e.get("confirmed_digest"):
            advance(key, "computed")
        rows.append(
            {
                "realm": e["realm"],
                "epoch": int(e["epoch"]),
                "first_block": int(e["first_block"]),
                "last_block": int(e["last_block"]),
                "funding": amount(e["funding"]),
                "carry_in": amount(e["carry_in"]),
                "total": amount(e["total"]),
                "remainder": amount(e["remainder"]),
                "payees": int(e["payees"] or 0),
                "late_messages": int(e["late_messages"] or 0),
                "state": state.get(key, "closed"),
                "txs": txs.get(key, []),
                "usd": usd.get(key, ("", ""))[0],
                "price_status": usd.get(key, ("", ""))[1],
            }
        )
    payees: list[dict[str, Any]] = []
    for realm in sorted({r for r, _ in by_payee}):
        ranked = sorted(
            ((a, v) for (r, a), v in by_payee.items() if r == realm), key=lambda x: -x[1]
        )
        for account, value in ranked[:MAX_PAYEES]:
            payees.append({"realm": realm, "account": account, **amount(value)})
        rest = sum(v for _, v in ranked[MAX_PAYEES:])
        if rest:
            payees.append({"realm": realm, "account": "others", **amount(rest)})
    return {
        "epochs": rows,
        "payouts_by_class": [
            {"realm": r, "epoch": e, "payee_class": c, **amount(v)}
            for (r, e, c), v in sorted(by_class.items())
        ],
        "payouts_by_payee": payees,
    }


def swap_view(reader: Reader) -> dict[str, Any]:
    pairs: dict[tuple[str, str, str], dict[str, Any]] = {}
    for s in reader.table("swap_events"):
        key = (s["realm"], s["source"], s["peer"])
        row = pairs.setdefault(
            key,
            {"received": 0, "rejected": 0, "disconnected": 0, "cumulative": 0, "paid": 0},
        )
        if s["type"] == "ChequeReceived":
            row["received"] += 1
            row["cumulative"] = max(row["cumulative"], int(s["cumulative"]))
            row["paid"] += int(s["amount"])
        elif s["type"] == "ChequeRejected":
            row["rejected"] += 1
        elif s["type"] == "PeerDisconnected":
            row["disconnected"] += 1
    cashed: dict[str, dict[str, int]] = defaultdict(
        lambda: {"cashed": 0, "bounced": 0, "amount": 0}
    )
    for log in reader.table("chain_logs"):
        if log["type"] not in ("ChequeCashed", "ChequeBounced") or log["retracted_seq"]:
            continue
        body = _body(log)
        router = str(body.get("beneficiary", ""))
        if log["type"] == "ChequeCashed":
            cashed[router]["cashed"] += 1
            cashed[router]["amount"] += int(body.get("paid", 0))
        else:
            cashed[router]["bounced"] += 1
    return {
        "accounts": [
            {
                "realm": realm,
                "router": router,
                "peer": peer,
                "received": v["received"],
                "rejected": v["rejected"],
                "disconnected": v["disconnected"],
                "cumulative": amount(v["cumulative"]),
                "paid": amount(v["paid"]),
            }
            for (realm, router, peer), v in sorted(pairs.items())
        ],
        "cashouts": [
            {"router": r, "cashed": v["cashed"], "bounced": v["bounced"], **amount(v["amount"])}
            for r, v in sorted(cashed.items())
        ],
    }


def chain_view(reader: Reader) -> dict[str, Any]:
    sources = reader.query("sources")
    head = max((int(s["watermark"] or -1) for s in sources), default=-1)
    latest: dict[str, dict[str, Any]] = {}
    for p in reader.query("prices"):
        latest[p["feed"]] = p
    retracted = sum(1 for log in reader.table("chain_logs") if log["retracted_seq"])
    return {
        "head": head if head >= 0 else None,
        "sources": [
            {
                "source": s["source"],
                "watermark": s["watermark"] if (s["watermark"] or -1) >= 0 else None,
                "lag_blocks": head - s["watermark"] if (s["watermark"] or -1) >= 0 else None,
                "records": int(s["records"] or 0),
                "events": int(s["events"] or 0),
            }
            for s in sources
        ],
        "prices": [
            {
                "feed": feed,
                "answer": p["answer"],
                "decimals": p["decimals"],
                "status": p["status"],
                "block": p["block"],
            }
            for feed, p in sorted(latest.items())
        ],
        "reorg_flags": [
            {k: r[k] for k in ("realm", "epoch", "retracted", "block")}
            for r in reader.query("reorgs")
        ],
        "retracted_logs": retracted,
        "dead": reader.query("dead"),
    }


def market_view(reader: Reader) -> dict[str, Any]:
    """The marketplace: each operator's reputation per service (from the calls routers
    assessed), with its mismatches and convictions."""
    return {
        "reputation": [
            {
                **{
                    k: r[k]
                    for k in (
                        "realm", "operator", "service_id", "calls", "results", "errors",
                        "timeouts", "success_bps", "p50_ms", "p95_ms", "mismatches",
                        "convictions",
                    )
                },
                "charged": amount(r["charged"]),
            }
            for r in reader.query("reputation")
        ],
    }  # fmt: skip


class _ReadOnce:
    """One overview's reads: a table several views need is read once."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.tables: dict[str, list[dict[str, Any]]] = {}

    def query(self, name: str, **params: Any) -> list[dict[str, Any]]:
        return self.reader.query(name, **params)

    def table(self, name: str) -> list[dict[str, Any]]:
        if name not in self.tables:
            self.tables[name] = self.reader.table(name)
        return self.tables[name]

    def close(self) -> None:
        self.reader.close()


def _addresses(value: Any, found: set[str]) -> None:
    if isinstance(value, dict):
        for v in value.values():
            _addresses(v, found)
    elif isinstance(value, list):
        for v in value:
            _addresses(v, found)
    elif isinstance(value, str) and len(value) == 42 and value.startswith("0x"):
        found.add(value)


def overview(
    source: Reader, explorer: str = "", names: Callable[[str], str | None] | None = None
) -> dict[str, Any]:
    """Everything the page shows, in one JSON-ready dict (polled by the page). Reads whole
    projection tables (stakes, settlements, chain_logs, swap_events) once per call. With
    `names` (`infra.ens.Names.name`), "names" maps the shown addresses that have a verified
    ENS name to it (the page puts it in front of the address)."""
    reader = _ReadOnce(source)
    data = {
        "token": {"symbol": TOKEN_SYMBOL, "decimals": TOKEN_DECIMALS},
        "explorer": explorer,
        "realms": realms_view(reader),
        **epochs_view(reader, explorer),
        "swap": swap_view(reader),
        "chain": chain_view(reader),
        "market": market_view(reader),
    }
    if names is not None:
        shown: set[str] = set()
        _addresses(data, shown)
        data["names"] = {a: n for a in sorted(shown) if (n := names(a))}
    return data

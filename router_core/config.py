"""Router configuration from a TOML file (tomllib). Keys come from a file or the environment,
never from the configuration itself. Example: see README / `router_core.cli`.

    listen = "127.0.0.1:8080"
    key_file = "router.key"            # 0x-hex private key; or env MESH_ROUTER_KEY
    data_dir = "var/router"            # SWAP accounts, cash-out queue, emitter spool
    broker = "127.0.0.1:9092"          # metering + events to Kafka; omit to run without
    chain_id = 31337
    chain_rpc_url = ""                 # web3 head poller and chequebook solvency checks
    ledger_sources = ["0x…"]           # trusted indexer keys: stakes and chain heads from mesh.ledger
    watermark_every_blocks = 10        # a signed ChainHead per realm at least this often, even idle
    metrics_listen = "127.0.0.1:9101"  # /metrics and /health (Prometheus); omit: none

    [swap]
    token = "0x…"
    payment_threshold = 10_000_000_000_000_000
    disconnect_threshold = 20_000_000_000_000_000
    min_payment_threshold = 1_000_000_000_000_000

    [cashout]
    min_batch_value = 100_000_000_000_000_000
    max_age_s = 3600
    key_file = "cashout.key"           # sends Chequebook.cashChequeBatch (holds gas); omit: no cash-out
    chain_rpc_url = ""                 # default: chain_rpc_url above

    [[realms]]
    name = "realm1"
    keeper = "0x…"                     # static (offline dev): the log's values win, and a
    price_per_message = 1_000_000_000_000  # router whose values disagree refuses to start
    reservations = { "0xabc…" = 100 }  # static stakes (dev); messages per block
    # router-to-router links: dial each peer (it must list this router too), forward across
    peers = [{ url = "ws://127.0.0.1:8081/ws", address = "0x…" }]
    discover = false                   # true: also link to the realm's routers on chain
                                       # (RouterRegistry via the log: broker + ledger_sources)

    [links]                            # optional: limits of router-to-router links
    backoff_max_s = 5.0

    [link_swap]                        # paying peer routers (their [swap] terms apply)
    chequebook = "0x…"                 # this operator's Chequebook, issued by the router key
    payment_threshold = 10_000_000_000_000_000
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domain.events import DEFAULT_PRICE_PER_MESSAGE
from router_core.links import LinkLimits, LinkPeer


@dataclass(frozen=True)
class RealmConfig:
    name: str
    #: static values for offline development: with `ledger_sources` the log's (set on chain,
    #: brought in by the indexer) apply, and a router whose values disagree with them refuses to
    #: start; unset ones follow the log (or the defaults without a log)
    keeper: str = ""
    price_per_message: int | None = None
    stake_per_mpb: int | None = None
    allow_anonymous: bool = False
    enforce_bandwidth: bool = False
    burst_messages: int = 0
    reservations: dict[str, int] = field(default_factory=dict)
    #: peer routers of this realm: [{url = "ws://host:port/ws", address = "0x…"}]
    peers: list[dict[str, str]] = field(default_factory=list)
    #: also link to every router announced for this realm in RouterRegistry (as the log says:
    #: needs `broker` and `ledger_sources`, the indexer watching the registry)
    discover: bool = False

    def link_peers(self) -> list[LinkPeer]:
        found = []
        for i, peer in enumerate(self.peers):
            if not isinstance(peer, dict) or set(peer) != {"url", "address"}:
                raise ValueError(
                    f"realm {self.name!r} peers #{i + 1}: needs exactly `url` and `address`"
                )
            url, address = peer["url"], peer["address"]
            if not str(url).startswith(("ws://", "wss://")):
                raise ValueError(f"realm {self.name!r} peer {url!r}: not a ws:// URL")
            if not (isinstance(address, str) and address.startswith("0x") and len(address) == 42):
                raise ValueError(f"realm {self.name!r} peer {url}: address must be 0x + 40 hex")
            found.append(LinkPeer(str(url), address))
        return found


@dataclass(frozen=True)
class SwapConfig:
    enabled: bool = True
    token: str = "0x" + "00" * 20
    payment_threshold: int = 100 * DEFAULT_PRICE_PER_MESSAGE * 1000
    disconnect_threshold: int = 200 * DEFAULT_PRICE_PER_MESSAGE * 1000
    min_payment_threshold: int = 0
    flush_interval_ms: int = 200
    #: decimals of `token` (a realm priced in USD is converted to its base units)
    token_decimals: int = 18


@dataclass(frozen=True)
class CashoutConfig:
    min_batch_value: int = 10**17
    max_age_s: float = 3600.0
    max_batch_cheques: int = 64
    max_pending_cheques: int = 100_000
    key_file: str = ""  # the key that sends cash-out transactions (pays gas); none: no cash-out
    chain_rpc_url: str = ""  # the cheques' chain; default: the router's chain_rpc_url
    interval_s: float = 5.0  # how often the queue is checked for a due batch
    confirmations: int = 3
    max_fee_wei: int = 50 * 10**9  # fee cap per gas of a cash-out transaction
    rpc_timeout_s: float = 10.0


@dataclass(frozen=True)
class LinkSwapConfig:
    """This operator's side of SWAP with peer routers (it pays them as a client pays a router)."""

    #: the operator's Chequebook (issuer: the router key); "" = offer no SWAP on links
    chequebook: str = ""
    #: the debt at which a peer may ask for a cheque (at least the peer's minimum)
    payment_threshold: int = 100 * DEFAULT_PRICE_PER_MESSAGE * 1000
    #: the highest price per message this operator accepts from a peer router
    max_price_per_message: int = 10 * DEFAULT_PRICE_PER_MESSAGE


@dataclass(frozen=True)
class RouterConfig:
    realms: list[RealmConfig]
    listen: str = "127.0.0.1:8080"
    key_file: str = ""
    data_dir: str = "var/router"
    broker: str = ""
    chain_id: int = 31337
    chain_rpc_url: str = ""
    #: how often the head poller asks `chain_rpc_url` for the block number
    chain_poll_ms: int = 1000
    ledger_sources: list[str] = field(default_factory=list)
    #: at start the router reads mesh.ledger to its end (realm settings, stakes) within this
    ledger_catchup_timeout_s: float = 60.0
    max_frame_bytes: int = 1 << 20
    call_timeout_ms: int = 30_000
    #: the router's watermark (ChainHead of block - 1, per realm) at least every N blocks, so an
    #: idle router never holds its realms' epochs open; 0 turns it off
    watermark_every_blocks: int = 10
    #: the router operator's fee on market calls it clears under agreed quotes (bps of the price)
    market_fee_bps: int = 0
    #: verify every N-th call of a deterministic market service by redundant calls (0: never)
    market_verify_every_calls: int = 10
    #: wrong answers after which an operator is convicted (no longer offered)
    market_conviction_mismatches: int = 3
    #: where verifier modules live, named `<keccak256 hex>.wasm` ("" : none)
    market_verifiers_dir: str = ""
    #: host:port of /metrics and /health (infra/metrics.py); "" serves none
    metrics_listen: str = ""
    swap: SwapConfig = field(default_factory=SwapConfig)
    cashout: CashoutConfig = field(default_factory=CashoutConfig)
    links: LinkLimits = field(default_factory=LinkLimits)
    link_swap: LinkSwapConfig = field(default_factory=LinkSwapConfig)

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host or "127.0.0.1", int(port)

    def private_key(self) -> bytes:
        """From MESH_ROUTER_KEY or `key_file` (0x-hex, owner-only); never from the config."""
        from ledger.keys import load_private_key

        if os.environ.get("MESH_ROUTER_KEY"):
            return load_private_key(None, "MESH_ROUTER_KEY")
        if not self.key_file:
            raise ValueError("no router key: set MESH_ROUTER_KEY or key_file")
        return load_private_key(self.key_file, "MESH_ROUTER_KEY")


def _pick(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown keys in {where}: {sorted(unknown)}")
    return data


def parse_config(data: dict[str, Any]) -> RouterConfig:
    data = dict(data)
    realms = [RealmConfig(**_pick(RealmConfig, r, "[[realms]]")) for r in data.pop("realms", [])]
    if not realms:
        raise ValueError("the configuration defines no [[realms]]")
    swap = SwapConfig(**_pick(SwapConfig, data.pop("swap", {}), "[swap]"))
    cashout = CashoutConfig(**_pick(CashoutConfig, data.pop("cashout", {}), "[cashout]"))
    links = LinkLimits(**_pick(LinkLimits, data.pop("links", {}), "[links]"))
    link_swap = LinkSwapConfig(**_pick(LinkSwapConfig, data.pop("link_swap", {}), "[link_swap]"))
    for realm in realms:
        realm.link_peers()  # refuse a malformed peer before anything starts
    config = RouterConfig(
        realms=realms,
        swap=swap,
        cashout=cashout,
        links=links,
        link_swap=link_swap,
        **_pick(RouterConfig, data, "top level"),
    )
    discovering = [r.name for r in realms if r.discover]
    if discovering and not (config.broker and config.ledger_sources):
        raise ValueError(
            f"realm {discovering[0]!r}: `discover = true` reads the routers announced on chain "
            "from the log: set `broker` and `ledger_sources` (the indexer's address)"
        )
    return config


def load_config(path: Path) -> RouterConfig:
    with open(path, "rb") as f:
        return parse_config(tomllib.load(f))

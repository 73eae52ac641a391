"""The indexer's TOML configuration: chain source, contracts, confirmations, feeds, key, broker,
and the assembly of an `Indexer` from it. Every error names the key that is wrong."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_utils import is_address, to_checksum_address

from indexer.decoding import Contracts
from indexer.feeds import DEFAULT_GRACE_PERIOD_S, FeedConfig, SequencerConfig
from indexer.service import SyncConfig
from indexer.window import DEFAULT_WINDOW_BLOCKS

EXAMPLE = """\
source = "rpc"                       # or "graph" (then `graph` is the subgraph's URL)
rpc = "http://127.0.0.1:8545"        # ws://... follows new heads by subscription
# graph = "http://127.0.0.1:8000/subgraphs/name/meshledger"
chain_id = 31337
start_block = 0                      # the contracts' deployment block
# confirmations = 12                 # omitted: the chain's `finalized` tag
window_blocks = 256
log_range_blocks = 200               # first eth_getLogs range; doubles up to log_range_max_blocks
data_dir = "var/indexer"             # checkpoint and the emitter's spool
key_file = "indexer.key"             # or env MESHLEDGER_INDEXER_KEY_FILE / MESHLEDGER_INDEXER_KEY
bootstrap = "127.0.0.1:9092"
compression = "gzip"                 # of the emitter's Kafka batches; or "none"

[contracts]
staking = "0x..."
settlement = "0x..."
token = "0x..."
chequebook_factory = "0x..."         # its chequebooks are followed from their creation on
chequebooks = ["0x..."]              # chequebooks deployed without the factory
service_registry = "0x..."           # the marketplace's ServiceRegistry (optional)
router_registry = "0x..."            # RouterRegistry: routers' endpoints (optional)

[[feeds]]
address = "0x..."
heartbeat_s = 3600
min_answer = 1
max_answer = 100000000000000

[sequencer]                          # L2 only
address = "0x..."
grace_period_s = 3600
"""


class ConfigError(ValueError):
    pass


def _address(value: Any, key: str) -> str:
    if not isinstance(value, str) or not is_address(value):
        raise ConfigError(f"{key} must be a 0x address, got {value!r}")
    return str(to_checksum_address(value))


def _int(data: dict[str, Any], key: str, default: int | None = None) -> int:
    value = data.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{key} must be a non-negative integer, got {value!r}")
    return value


@dataclass
class IndexerConfig:
    source: str
    rpc: str
    graph: str
    chain_id: int
    contracts: Contracts
    sync: SyncConfig
    data_dir: Path
    key_file: Path | None
    bootstrap: str
    feeds: list[FeedConfig] = field(default_factory=list)
    sequencer: SequencerConfig | None = None
    #: Kafka batch compression of the emitter's producer ("gzip" or "none"): chain events are
    #: verbose JSON and the broker link, not decoding, bounds a backfill without it
    compression: str = "gzip"
    #: first eth_getLogs range and the most it grows to (halved on "too many results")
    log_range_blocks: int = 200
    log_range_max_blocks: int = 5000

    @property
    def checkpoint_path(self) -> Path:
        return self.data_dir / "checkpoint.json"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"


def _compression(value: Any) -> str:
    if value not in ("gzip", "none"):
        raise ConfigError(f"compression must be 'gzip' or 'none', got {value!r}")
    return str(value)


def parse(data: dict[str, Any], base: Path = Path(".")) -> IndexerConfig:
    source = data.get("source", "rpc")
    if source not in ("rpc", "graph"):
        raise ConfigError(f"source must be 'rpc' or 'graph', got {source!r}")
    rpc = data.get("rpc", "")
    graph = data.get("graph", "")
    if source == "rpc" and not rpc:
        raise ConfigError("rpc (the chain's JSON-RPC URL) is required with source = 'rpc'")
    if source == "graph" and not graph:
        raise ConfigError("graph (the subgraph's URL) is required with source = 'graph'")
    raw = data.get("contracts")
    if not isinstance(raw, dict):
        raise ConfigError("[contracts] with staking, settlement, token is required")
    contracts = Contracts(
        staking=_address(raw.get("staking"), "contracts.staking"),
        settlement=_address(raw.get("settlement"), "contracts.settlement"),
        token=_address(raw.get("token"), "contracts.token"),
        chequebooks=tuple(
            _address(c, "contracts.chequebooks[]") for c in raw.get("chequebooks", [])
        ),
        chequebook_factory=(
            _address(raw["chequebook_factory"], "contracts.chequebook_factory")
            if "chequebook_factory" in raw
            else ""
        ),
        service_registry=(
            _address(raw["service_registry"], "contracts.service_registry")
            if "service_registry" in raw
            else ""
        ),
        router_registry=(
            _address(raw["router_registry"], "contracts.router_registry")
            if "router_registry" in raw
            else ""
        ),
    )
    confirmations = data.get("confirmations")
    sync = SyncConfig(
        start_block=_int(data, "start_block", 0),
        confirmations=None if confirmations is None else _int(data, "confirmations"),
        window_blocks=_int(data, "window_blocks", DEFAULT_WINDOW_BLOCKS),
        poll_interval_s=float(data.get("poll_interval_s", 1.0)),
    )
    if sync.window_blocks < 1:
        raise ConfigError("window_blocks must be >= 1")
    feeds = [
        FeedConfig(
            address=_address(f.get("address"), "feeds[].address"),
            heartbeat_s=_int(f, "heartbeat_s"),
            min_answer=int(f.get("min_answer", 1)),
            max_answer=int(f.get("max_answer", (1 << 255) - 1)),
        )
        for f in data.get("feeds", [])
    ]
    sequencer = None
    if "sequencer" in data:
        seq = data["sequencer"]
        sequencer = SequencerConfig(
            _address(seq.get("address"), "sequencer.address"),
            _int(seq, "grace_period_s", DEFAULT_GRACE_PERIOD_S),
        )
    if (feeds or sequencer) and not rpc:
        raise ConfigError("feeds are read over JSON-RPC: set rpc as well")
    key_file = data.get("key_file")
    return IndexerConfig(
        source=source,
        rpc=rpc,
        graph=graph,
        chain_id=_int(data, "chain_id"),
        contracts=contracts,
        sync=sync,
        data_dir=base / data.get("data_dir", "var/indexer"),
        key_file=base / key_file if key_file else None,
        bootstrap=str(data.get("bootstrap", "")),
        feeds=feeds,
        sequencer=sequencer,
        compression=_compression(data.get("compression", "gzip")),
        log_range_blocks=max(1, _int(data, "log_range_blocks", 200)),
        log_range_max_blocks=max(1, _int(data, "log_range_max_blocks", 5000)),
    )


def load(path: Path) -> IndexerConfig:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"no config file {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return parse(data, path.parent)

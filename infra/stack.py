"""`meshledger up`: the stack's configuration, its `var/` directory and its service entries.

Broker, chain, contracts, indexer, projector and routers, each a child process of the real CLIs
under one supervisor (infra/supervisor.py); keys, ports, contract addresses and data persist in
`var/`. `start_stack` starts them (the demo and the end-to-end tests use it too), `run_up` also
watches them until Ctrl-C.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import re
import socket
import sys
import tomllib
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from infra.anvil import anvil_command, rpc_chain_id
from infra.procs import port_free, stable_port
from infra.supervisor import Service, Supervisor

HOST = "127.0.0.1"
#: seconds between anvil's state dumps, so a killed chain loses at most this much
ANVIL_STATE_INTERVAL_S = 10
#: router entries' keys that `up` sets itself (a router of the stack uses the stack's parts)
ROUTER_KEYS_SET_BY_UP = ("key_file", "data_dir", "broker", "chain_id", "chain_rpc_url")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
CONTRACT_NAMES = ("token", "staking", "settlement", "chequebook", "chequebook_factory")
#: contracts the stack deploys beyond CONTRACT_NAMES (a configured [contracts] may name them)
OPTIONAL_CONTRACTS = ("service_registry", "router_registry")
#: provision stake `up` gives a router of a discovering realm on its own dev chain (base units)
DEV_PROVISION = 1_000 * 10**18
#: ETH (wei) `up` gives each of its transaction-sending keys on the dev chain (cash-out keys)
DEV_GAS_WEI = 100 * 10**18


class StackConfigError(ValueError):
    """The stack configuration is invalid; nothing was started."""


@dataclass(frozen=True)
class BrokerSettings:
    memory: bool = False
    port: int = 0
    partitions: int = 1


@dataclass(frozen=True)
class ChainSettings:
    chain_id: int = 31337
    block_time_s: float = 0.0
    port: int = 0


@dataclass(frozen=True)
class ProjectorSettings:
    query_port: int = 0
    grace_blocks: int = 5


@dataclass(frozen=True)
class IndexerSettings:
    #: blocks behind the head before a block is emitted (anvil's `finalized` lags 64 blocks,
    #: which would hold every stake and epoch back that long on a dev chain)
    confirmations: int = 2
    poll_interval_s: float = 0.5
    #: first block read (the contracts' deployment block when [contracts] are given)
    start_block: int = 0


@dataclass(frozen=True)
class RouterEntry:
    """One `[[routers]]` table: a name plus the keys of a router TOML (router_core/config.py)."""

    name: str
    settings: dict[str, Any]

    @property
    def listen(self) -> tuple[str, int]:
        host, _, port = str(self.settings["listen"]).rpartition(":")
        return host, int(port)


@dataclass(frozen=True)
class StackConfig:
    routers: list[RouterEntry]
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    chain: ChainSettings = field(default_factory=ChainSettings)
    projector: ProjectorSettings = field(default_factory=ProjectorSettings)
    contracts: dict[str, str] | None = None
    indexer: IndexerSettings = field(default_factory=IndexerSettings)


def _section(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise StackConfigError(f"[{where}] must be a table")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise StackConfigError(f"unknown keys in [{where}]: {unknown}; known: {sorted(known)}")
    for f in dataclasses.fields(cls):
        if f.name in data and not _type_fits(data[f.name], f.default):
            raise StackConfigError(
                f"[{where}] {f.name} = {data[f.name]!r}: expected {type(f.default).__name__}"
            )
    return cls(**data)


def _type_fits(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, type(default)) and not isinstance(value, bool)


def _router_entry(data: Any, index: int) -> RouterEntry:
    where = f"routers #{index + 1}"
    if not isinstance(data, dict):
        raise StackConfigError(f"[[routers]] {where} must be a table")
    settings = dict(data)
    name = settings.pop("name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise StackConfigError(
            f"[[routers]] {where}: `name` must be 1-32 of a-z, 0-9, '-', '_' (got {name!r})"
        )
    set_by_up = sorted(k for k in ROUTER_KEYS_SET_BY_UP if k in settings)
    if set_by_up:
        raise StackConfigError(f"router {name!r}: {set_by_up} are set by `meshledger up`")
    if "listen" not in settings:
        raise StackConfigError(f"router {name!r}: `listen` (127.0.0.1:PORT) is required")
    entry = RouterEntry(name, settings)
    try:
        host, port = entry.listen
    except ValueError as exc:
        raise StackConfigError(f"router {name!r}: listen {settings['listen']!r}: {exc}") from exc
    if host != HOST:
        raise StackConfigError(f"router {name!r}: listen on {HOST} (services bind loopback)")
    if not 0 < port < 65536:
        raise StackConfigError(f"router {name!r}: listen port {port} out of range")
    # the router's own parser decides about everything else, before anything starts
    try:
        from router_core.config import parse_config

        # (`up` gives every router the stack's broker and the indexer as its ledger source)
        stand_in = ["0x" + "00" * 20]
        parse_config(
            router_settings(
                entry, Path("router.key"), Path("data"), "127.0.0.1:1", 1, "", stand_in, ""
            )
        )
    except (ValueError, TypeError) as exc:
        raise StackConfigError(f"router {name!r}: {exc}") from exc
    return entry


def parse_stack_config(data: dict[str, Any]) -> StackConfig:
    """Validate a stack configuration (the TOML file's tables); StackConfigError says what is wrong."""
    data = dict(data)
    routers_data = data.pop("routers", [])
    broker = _section(BrokerSettings, data.pop("broker", {}), "broker")
    chain = _section(ChainSettings, data.pop("chain", {}), "chain")
    projector = _section(ProjectorSettings, data.pop("projector", {}), "projector")
    indexer = _section(IndexerSettings, data.pop("indexer", {}), "indexer")
    contracts = data.pop("contracts", None)
    if data:
        raise StackConfigError(
            f"unknown top-level keys: {sorted(data)}; known: broker, chain, contracts, indexer, "
            "projector, routers"
        )
    if contracts is not None:
        if not isinstance(contracts, dict) or not (
            set(CONTRACT_NAMES) <= set(contracts) <= {*CONTRACT_NAMES, *OPTIONAL_CONTRACTS}
        ):
            raise StackConfigError(
                f"[contracts] needs exactly {list(CONTRACT_NAMES)} (addresses), and may name "
                f"{list(OPTIONAL_CONTRACTS)}"
            )
        from web3 import Web3

        for key, value in contracts.items():
            if not isinstance(value, str) or not Web3.is_address(value):
                raise StackConfigError(f"[contracts] {key} = {value!r} is not an address")
        contracts = {k: Web3.to_checksum_address(v) for k, v in contracts.items()}
    if not isinstance(routers_data, list) or not routers_data:
        raise StackConfigError("the stack defines no [[routers]]")
    routers = [_router_entry(r, i) for i, r in enumerate(routers_data)]
    for what, values in (
        ("name", [r.name for r in routers]),
        ("listen", [r.listen for r in routers]),
    ):
        if len(set(values)) != len(values):
            raise StackConfigError(f"two routers have the same {what}")
    if chain.block_time_s < 0:
        raise StackConfigError("[chain] block_time_s must be >= 0 (0: a block per transaction)")
    if indexer.confirmations < 0 or indexer.start_block < 0 or indexer.poll_interval_s <= 0:
        raise StackConfigError(
            "[indexer] confirmations and start_block must be >= 0, poll_interval_s > 0"
        )
    return StackConfig(routers, broker, chain, projector, contracts, indexer)


def load_stack_config(path: Path) -> StackConfig:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise StackConfigError(f"{path}: {exc}") from exc
    return parse_stack_config(data)


# -- var/ --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where a stack keeps what it resumes from."""

    root: Path

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pid_file(self) -> Path:
        return self.root / "run" / "stack.json"

    @property
    def ports_file(self) -> Path:
        return self.root / "run" / "ports.json"

    @property
    def contracts_file(self) -> Path:
        return self.root / "contracts.json"

    @property
    def broker(self) -> Path:
        return self.root / "broker"

    @property
    def chain_state(self) -> Path:
        return self.root / "chain" / "state.json"

    @property
    def ledger_db(self) -> Path:
        """Where `meshledger query` looks by default (var/ledger.duckdb)."""
        return self.root / "ledger.duckdb"

    @property
    def indexer_dir(self) -> Path:
        """The indexer's generated config, checkpoint and spool."""
        return self.root / "indexer"

    @property
    def indexer_config(self) -> Path:
        return self.indexer_dir / "indexer.toml"

    def router_dir(self, name: str) -> Path:
        return self.root / "routers" / name

    def key(self, name: str) -> Path:
        return self.keys / f"{name}.key"


def ensure_key(path: Path) -> str:
    """The address of the key at `path`, generating the key (mode 0600) on first use."""
    from ledger.keys import load_signer, write_new_key

    signer = load_signer(path) if path.exists() else write_new_key(path)
    return signer.address


class Ports:
    """Ports of the stack's services: configured, else the previous run's if free, else new."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.previous: dict[str, int] = {}
        with contextlib.suppress(FileNotFoundError, ValueError):
            self.previous = {k: int(v) for k, v in json.loads(path.read_text()).items()}
        self.chosen: dict[str, int] = {}

    def pick(self, name: str, configured: int) -> int:
        port = configured
        if not port:
            previous = self.previous.get(name, 0)
            port = previous if previous and port_free(previous, HOST) else stable_port(HOST)
        self.chosen[name] = port
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({**self.previous, **self.chosen}))
        return port


# -- probes ------------------------------------------------------------------------------------


def kafka_answers(bootstrap: str) -> bool:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        return isinstance(admin.list_topics(), list)
    finally:
        admin.close()


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=3) as resp:
        return int(resp.status) == 200


def websocket_upgrades(host: str, port: int, path: str = "/ws") -> bool:
    """True when a WAMP WebSocket handshake at ws://host:port/path is accepted (101)."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: wamp.2.json\r\n\r\n"
    )
    with socket.create_connection((host, port), timeout=3) as sock:
        sock.sendall(request.encode())
        return sock.recv(64).startswith(b"HTTP/1.1 101")


# -- contracts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    """The stack's contracts: addresses by `CONTRACT_NAMES`, and the first block to index."""

    addresses: dict[str, str]
    start_block: int


def _has_code(w3: Any, address: str) -> bool:
    return len(w3.eth.get_code(address)) > 0


def ensure_contracts(
    rpc_url: str, config: StackConfig, layout: Layout, console: Console
) -> Deployment:
    """Contract addresses: from the config (checked on chain), else those deployed by an earlier
    run when the chain still has them, else deployed now from anvil's first dev account."""
    from web3 import HTTPProvider, Web3

    w3 = Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    if config.contracts is not None:
        missing = [k for k, a in config.contracts.items() if not _has_code(w3, a)]
        if missing:
            raise StackConfigError(f"[contracts] {missing}: no contract code at those addresses")
        return Deployment(dict(config.contracts), config.indexer.start_block)
    chain_id = config.chain.chain_id
    with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
        saved = json.loads(layout.contracts_file.read_text())
        if int(saved["chain_id"]) == chain_id:
            addresses = {k: str(saved[k]) for k in CONTRACT_NAMES}
            addresses.update({k: str(saved[k]) for k in OPTIONAL_CONTRACTS if k in saved})
            if all(_has_code(w3, a) for a in addresses.values()):
                console.print(f"contracts resumed from {layout.contracts_file}")
                if "router_registry" not in addresses:  # a var/ of an earlier version
                    from router_core.discovery import deploy_router_registry

                    registry = deploy_router_registry(
                        w3, addresses["staking"], sender=w3.eth.accounts[0]
                    )
                    addresses["router_registry"] = str(registry.address)
                    layout.contracts_file.write_text(json.dumps({**saved, **addresses}, indent=2))
                return Deployment(addresses, int(saved.get("start_block", 0)))
            console.print(
                f"[yellow]the chain lost the contracts of {layout.contracts_file}: deploying anew"
            )
    from settlement.contracts import deploy_stack

    start_block = int(w3.eth.block_number) + 1
    stack = deploy_stack(w3, w3.eth.accounts[0])
    addresses = {
        "token": stack.token.address,
        "staking": stack.staking.address,
        "settlement": stack.settlement.address,
        "chequebook": stack.chequebook.address,
        "chequebook_factory": stack.chequebook_factory.address,
    }
    from market.registry import deploy_registry

    registry = deploy_registry(w3, stack.staking.address, sender=stack.deployer)
    addresses["service_registry"] = registry.address
    from router_core.discovery import deploy_router_registry

    routers = deploy_router_registry(w3, stack.staking.address, sender=stack.deployer)
    addresses["router_registry"] = str(routers.address)
    saved = {"chain_id": chain_id, "deployer": stack.deployer, "start_block": start_block}
    layout.contracts_file.write_text(json.dumps({**saved, **addresses}, indent=2))
    console.print(f"contracts deployed: {addresses}")
    return Deployment(addresses, start_block)


def ensure_poster(rpc_url: str, settlement: str, poster: str, console: Console) -> None:
    """Let the stack's settle key post roots on EpochSettlement (`setPoster`, sent by anvil's
    first dev account, the owner of what `up` deployed); contracts of another owner are left
    to their owner (the settle job refuses a key that may not post)."""
    from web3 import HTTPProvider, Web3

    from settlement.contracts import at, transact

    w3 = Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    contract = at(w3, "EpochSettlement", settlement)
    if contract.functions.isPoster(poster).call():
        return
    owner = contract.functions.owner().call()
    if owner not in w3.eth.accounts:
        console.print(
            f"[yellow]EpochSettlement {settlement} is owned by {owner}: let {poster} post roots "
            "(setPoster) to settle with the stack's key"
        )
        return
    transact(w3, contract.functions.setPoster(poster, True), owner)


def fund_dev_gas(rpc_url: str, addresses: list[str]) -> None:
    """Give keys that send transactions (cash-out) ETH for gas on the dev chain (anvil's
    `anvil_setBalance`); a key that holds at least half of DEV_GAS_WEI keeps what it has."""
    from web3 import HTTPProvider, Web3

    w3 = Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    for address in addresses:
        if int(w3.eth.get_balance(Web3.to_checksum_address(address))) < DEV_GAS_WEI // 2:
            reply = w3.provider.make_request(
                "anvil_setBalance",  # type: ignore[arg-type]
                [address, hex(DEV_GAS_WEI)],
            )
            if "error" in reply:
                raise RuntimeError(f"anvil_setBalance {address}: {reply['error']}")


# -- service entries ---------------------------------------------------------------------------


def meshledger_command() -> list[str]:
    """The `meshledger` CLI of this interpreter (its console script, else `python -m`)."""
    script = Path(sys.executable).parent / "meshledger"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ledger.cli"]


def _toml_value(value: Any) -> str:
    """TOML for the values of a router config (inline tables and arrays; strings JSON-escaped,
    which TOML basic strings accept)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise TypeError(f"no TOML for {type(value).__name__}")


def to_toml(data: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(k)} = {_toml_value(v)}\n" for k, v in data.items())


def router_settings(
    entry: RouterEntry,
    key_file: Path,
    data_dir: Path,
    broker: str,
    chain_id: int,
    rpc_url: str,
    ledger_sources: list[str],
    token: str,
    cashout_key_file: Path | None = None,
) -> dict[str, Any]:
    settings = dict(entry.settings)
    settings.update(
        key_file=str(key_file),
        data_dir=str(data_dir),
        broker=broker,
        chain_id=chain_id,
        chain_rpc_url=rpc_url,
    )
    settings["ledger_sources"] = [*ledger_sources, *settings.get("ledger_sources", [])]
    swap = dict(settings.get("swap", {}))
    if token:
        swap.setdefault("token", token)
    settings["swap"] = swap
    if cashout_key_file is not None:
        cashout = dict(settings.get("cashout", {}))
        cashout.setdefault("key_file", str(cashout_key_file))
        settings["cashout"] = cashout
    return settings


def indexer_settings(
    config: StackConfig, layout: Layout, endpoints: Endpoints, deployment: Deployment
) -> dict[str, Any]:
    """The indexer's configuration (indexer/config.py) for the stack's chain and contracts."""
    c = deployment.addresses
    return {
        "source": "rpc",
        "rpc": endpoints.rpc_url,
        "chain_id": config.chain.chain_id,
        "start_block": deployment.start_block,
        "confirmations": config.indexer.confirmations,
        "poll_interval_s": config.indexer.poll_interval_s,
        "data_dir": str(layout.indexer_dir),
        "key_file": str(layout.key("indexer")),
        "bootstrap": endpoints.bootstrap,
        "contracts": {
            "staking": c["staking"],
            "settlement": c["settlement"],
            "token": c["token"],
            "chequebook_factory": c["chequebook_factory"],
            "chequebooks": [c["chequebook"]],
            **{k: c[k] for k in OPTIONAL_CONTRACTS if k in c},
        },
    }


@dataclass(frozen=True)
class Endpoints:
    bootstrap: str
    rpc_url: str


def base_services(config: StackConfig, layout: Layout, ports: Ports) -> list[Service]:
    """Broker and chain: what the contracts and every other service need first."""
    cli = meshledger_command()
    broker_port = ports.pick("broker", config.broker.port)
    bootstrap = f"{HOST}:{broker_port}"
    broker_cmd = [*cli, "broker", "start", "--host", HOST, "--port", str(broker_port)]
    broker_cmd += ["--partitions", str(config.broker.partitions)]
    broker_cmd += ["--memory"] if config.broker.memory else ["--data", str(layout.broker)]
    chain = config.chain
    chain_port = ports.pick("chain", chain.port)
    rpc_url = f"http://{HOST}:{chain_port}"
    layout.chain_state.parent.mkdir(parents=True, exist_ok=True)
    anvil_extra = (
        "--state",
        str(layout.chain_state),
        "--state-interval",
        str(ANVIL_STATE_INTERVAL_S),
    )
    return [
        Service("broker", broker_cmd, lambda: kafka_answers(bootstrap), bootstrap),
        Service(
            "chain",
            anvil_command(
                chain.chain_id, HOST, chain_port, chain.block_time_s or None, anvil_extra
            ),
            lambda: rpc_chain_id(rpc_url) == chain.chain_id,
            rpc_url,
        ),
    ]


def ledger_services(
    config: StackConfig,
    layout: Layout,
    ports: Ports,
    endpoints: Endpoints,
    deployment: Deployment,
    sources: dict[str, str],
) -> list[Service]:
    """Indexer and projector: the chain into the log, the log into the ledger. The projector
    trusts the indexer's key (`layout.key("indexer")`), as the routers do."""
    cli = meshledger_command()
    layout.indexer_dir.mkdir(parents=True, exist_ok=True)
    layout.indexer_config.write_text(
        "# written by `meshledger up` from the stack configuration; edit that instead\n"
        + to_toml(indexer_settings(config, layout, endpoints, deployment))
    )
    checkpoint = layout.indexer_dir / "checkpoint.json"
    query_port = ports.pick("query", config.projector.query_port)
    query_url = f"http://{HOST}:{query_port}"
    layout.ledger_db.parent.mkdir(parents=True, exist_ok=True)
    return [
        Service(
            "indexer",
            [*cli, "indexer", "run", "--config", str(layout.indexer_config)],
            checkpoint.exists,
            f"{endpoints.rpc_url} -> {endpoints.bootstrap}",
        ),
        Service(
            "projector",
            [
                *cli,
                "project",
                "--bootstrap",
                endpoints.bootstrap,
                "--db",
                str(layout.ledger_db),
                "--key-file",
                str(layout.key("ledger")),
                "--indexer-source",
                sources["indexer"],
                "--settlement-source",
                sources["settle"],
                "--grace-blocks",
                str(config.projector.grace_blocks),
                "--query-port",
                str(query_port),
            ],
            _probe_http(f"{query_url}/realms"),
            query_url,
        ),
    ]


def router_services(
    config: StackConfig,
    layout: Layout,
    endpoints: Endpoints,
    deployment: Deployment,
    sources: dict[str, str],
) -> list[Service]:
    """One `meshledger router run` per [[routers]] entry, with a generated router.toml: the
    stack's broker, chain and token, the indexer as ledger source, a cash-out key."""
    cli = meshledger_command()
    services = []
    for entry in config.routers:
        directory = layout.router_dir(entry.name)
        directory.mkdir(parents=True, exist_ok=True)
        settings = router_settings(
            entry,
            layout.key(f"router-{entry.name}"),
            directory / "data",
            endpoints.bootstrap,
            config.chain.chain_id,
            endpoints.rpc_url,
            [sources["indexer"]],
            deployment.addresses["token"],
            layout.key(f"cashout-{entry.name}"),
        )
        config_path = directory / "router.toml"
        config_path.write_text(
            "# written by `meshledger up` from the stack configuration; edit that instead\n"
            + to_toml(settings)
        )
        host, port = entry.listen
        services.append(
            Service(
                f"router-{entry.name}",
                [*cli, "router", "run", "--config", str(config_path)],
                _probe_ws(host, port),
                f"ws://{host}:{port}/ws",
            )
        )
    return services


def _probe_http(url: str) -> Callable[[], bool]:
    return lambda: http_ok(url)


def _probe_ws(host: str, port: int) -> Callable[[], bool]:
    return lambda: websocket_upgrades(host, port)


def stack_keys(config: StackConfig, layout: Layout) -> dict[str, str]:
    """Addresses of the stack's keys (ledger, indexer, settle, per router its own and its
    cash-out key), generated on first `up`.

    The indexer and settle keys are made now so the ledger trusts them from the first run on.
    """
    names = ["ledger", "indexer", "settle"]
    for r in config.routers:
        names += [f"router-{r.name}", f"cashout-{r.name}"]
    return {name: ensure_key(layout.key(name)) for name in names}


# -- up ----------------------------------------------------------------------------------------

EXIT_STOPPED = 0
EXIT_CHILD_DIED = 3
EXIT_START_FAILED = 4


class StackRunning(RuntimeError):
    """Another `up` already supervises a stack from this var directory."""


@dataclass
class RunningStack:
    """A started stack: its supervisor (children, pids) and what clients need to reach it."""

    supervisor: Supervisor
    layout: Layout
    config: StackConfig
    endpoints: Endpoints
    deployment: Deployment
    #: key name -> address (ledger, indexer, settle, router-NAME, cashout-NAME)
    sources: dict[str, str]

    @property
    def contracts(self) -> dict[str, str]:
        return self.deployment.addresses

    def address_of(self, service: str) -> str:
        return next(
            c.service.address for c in self.supervisor.children if c.service.name == service
        )


def claim_var(layout: Layout, console: Console) -> None:
    """Refuse a var/ another `up` supervises (StackRunning); clean up after a dead one."""
    from infra.supervisor import down, read_pid_file, same_process

    recorded = read_pid_file(layout.pid_file)
    if recorded is not None:
        supervisor_pid = int(recorded.get("supervisor", 0))
        if same_process(supervisor_pid, recorded.get("supervisor_start")):
            raise StackRunning(
                f"a stack from {layout.root} is running (supervisor pid {supervisor_pid}): "
                "`meshledger down` first"
            )
        console.print(
            f"[yellow]cleaning up after a stack whose supervisor is gone ({layout.pid_file})"
        )
        down(layout.pid_file, console)
    layout.root.mkdir(parents=True, exist_ok=True)


def start_stack(
    config: StackConfig,
    layout: Layout,
    supervisor: Supervisor,
    console: Console,
    before_routers: Callable[[RunningStack], None] | None = None,
) -> RunningStack:
    """Start broker, chain, contracts, indexer, projector and routers under `supervisor`, each
    healthy before the next; `before_routers` runs once the chain side is up (the demo stakes
    its routers there, so their first records are authorized). Raises ServiceFailed (stop what
    was started with `supervisor.stop_all()`), Interrupted or StackConfigError."""
    from infra.supervisor import Interrupted, ServiceFailed

    sources = stack_keys(config, layout)
    ports = Ports(layout.ports_file)
    broker_service, chain_service = base_services(config, layout, ports)
    supervisor.start(broker_service)
    supervisor.start(chain_service)
    endpoints = Endpoints(broker_service.address, chain_service.address)
    try:
        deployment = ensure_contracts(endpoints.rpc_url, config, layout, console)
        senders = ["settle", *(f"cashout-{r.name}" for r in config.routers)]
        fund_dev_gas(endpoints.rpc_url, [sources[name] for name in senders])
        ensure_poster(
            endpoints.rpc_url, deployment.addresses["settlement"], sources["settle"], console
        )
        if config.contracts is None:  # the stack's own dev chain: ENS names its routers
            from infra.ens import ensure_dev_names

            routers = [f"router-{r.name}" for r in config.routers]
            fund_dev_gas(endpoints.rpc_url, [sources[name] for name in routers])
            keys = {name: layout.key(name) for name in routers}
            deployment.addresses["ens_registry"] = ensure_dev_names(
                endpoints.rpc_url, layout.contracts_file, keys
            )
    except StackConfigError:
        raise
    except Exception as exc:  # web3: a node error or a reverted deployment
        raise ServiceFailed(f"contracts: {exc}") from exc
    stack = RunningStack(supervisor, layout, config, endpoints, deployment, sources)

    def start_all(services: list[Service]) -> None:
        for service in services:
            if supervisor.interrupted.is_set():
                raise Interrupted("stopped while starting")
            supervisor.start(service)

    start_all(ledger_services(config, layout, ports, endpoints, deployment, sources))
    if before_routers is not None:
        before_routers(stack)
    try:
        announce_routers(stack, console)
    except StackConfigError:
        raise
    except Exception as exc:  # web3: a node error or a reverted transaction
        raise ServiceFailed(f"announcing routers: {exc}") from exc
    start_all(router_services(config, layout, endpoints, deployment, sources))
    return stack


def discovering_realms(config: StackConfig) -> list[tuple[RouterEntry, dict[str, Any]]]:
    """(router entry, realm table) of every realm a router of the stack serves with
    `discover = true`."""
    return [
        (entry, realm)
        for entry in config.routers
        for realm in entry.settings.get("realms", [])
        if isinstance(realm, dict) and realm.get("discover") is True
    ]


def announce_routers(stack: RunningStack, console: Console) -> None:
    """Announce in RouterRegistry each router of a realm it serves with `discover = true`, at
    its `listen` address, so the realm's routers link to each other. On the stack's own dev
    chain `up` first registers such a realm if the chain has none (the router TOML's price and
    stake per message/block, keeper as configured or the deployer) and stakes the router's
    provision if it holds none; on configured [contracts] that is the operators' part, and an
    unstaked router is reported, not announced."""
    found = discovering_realms(stack.config)
    if not found:
        return
    from domain.events import ROLES, RealmParams
    from indexer.decoding import params_tuple
    from infra.devchain import Actor, DevChain
    from ledger.keys import read_key_file
    from router_core.discovery import announce, read_endpoints
    from settlement.contracts import transact
    from settlement.merkle import realm_id

    contracts = stack.contracts
    if "router_registry" not in contracts:
        raise StackConfigError("`discover = true` needs [contracts] router_registry")
    chain = DevChain(stack.endpoints.rpc_url, contracts)
    own_chain = stack.config.contracts is None
    registry = contracts["router_registry"]
    zero = "0x" + "00" * 20
    for entry, realm in found:
        name = str(realm["name"])
        rid = realm_id(name)
        if chain.staking.functions.keeperOf(rid).call() == zero:
            if not own_chain:
                console.print(f"[yellow]realm {name!r} is not registered on chain: not announced")
                continue
            defaults = RealmParams()
            params = RealmParams(
                price_per_message=int(realm.get("price_per_message", defaults.price_per_message)),
                stake_per_mpb=int(realm.get("stake_per_mpb", defaults.stake_per_mpb)),
            )
            keeper = str(realm.get("keeper") or chain.owner)
            call = chain.staking.functions.registerRealm(name, keeper, params_tuple(params))
            transact(chain.w3, call, chain.owner)
        key_path = stack.layout.key(f"router-{entry.name}")
        actor = Actor.from_key_file(entry.name, key_path)
        role = ROLES.index("router_operator")
        staked = chain.staking.functions.positionOf(rid, actor.address, role, zero).call()[0]
        if staked == 0:
            if not own_chain:
                console.print(
                    f"[yellow]router {entry.name} holds no provision stake in realm {name!r}: "
                    "not announced (stake as router_operator, then `meshledger router announce`)"
                )
                continue
            chain.fund({actor.address: DEV_PROVISION})
            chain.submit(
                [
                    chain.approve(actor, chain.staking.address),
                    chain.stake(actor, name, "router_operator", DEV_PROVISION),
                ]
            )
        elif own_chain:
            chain.fund({actor.address: 0})  # gas
        host, port = entry.listen
        url = f"ws://{host}:{port}/ws"
        if any(
            e.operator == actor.address and e.url == url
            for e in read_endpoints(chain.w3, registry, name)
        ):
            continue  # announced by an earlier `up`
        announce(chain.w3, registry, name, url, read_key_file(key_path))
        console.print(f"router {entry.name} announced in realm {name!r} at {url}")


def run_up(config: StackConfig, layout: Layout, console: Console) -> int:
    """Start the stack, print its status table, watch it until SIGINT/SIGTERM/SIGHUP or a child exits,
    then stop every child. Returns EXIT_STOPPED, EXIT_CHILD_DIED or EXIT_START_FAILED."""
    import signal

    from infra.supervisor import Interrupted, ServiceFailed, Supervisor

    claim_var(layout, console)
    supervisor = Supervisor(layout.pid_file, layout.logs, console)
    previous = {
        sig: signal.signal(sig, lambda *_: supervisor.interrupted.set())
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    try:
        try:
            stack = start_stack(config, layout, supervisor, console)
        except ServiceFailed as exc:
            console.print(f"[red]the stack did not start:[/] {exc}")
            return EXIT_START_FAILED
        except Interrupted:
            return EXIT_STOPPED
        supervisor.print_status()
        _print_usage(console, stack)
        dead = supervisor.watch()
        if dead is None:
            return EXIT_STOPPED
        console.print(
            f"[red]{dead.service.name} (pid {dead.pid}) {dead.health}[/]: stopping the stack "
            f"(nothing is restarted); its log: {dead.log_path}"
        )
        supervisor.print_status()
        return EXIT_CHILD_DIED
    finally:
        supervisor.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        console.print("stack stopped")


def _print_usage(console: Console, stack: RunningStack) -> None:
    layout, sources = stack.layout, stack.sources
    console.print(
        f"contracts: {json.dumps(stack.contracts)}\n"
        f"ledger key {sources['ledger']}, indexer key {sources['indexer']}, settle key "
        f"{sources['settle']} (a poster on EpochSettlement; in {layout.keys})\n"
        f"routers: "
        + ", ".join(
            f"{r.name} ws://{r.listen[0]}:{r.listen[1]}/ws "
            f"realms {[x['name'] for x in r.settings.get('realms', [])]}"
            for r in stack.config.routers
        )
        + f"\nlogs in {layout.logs}; Ctrl-C or `meshledger down --var {layout.root}` stops the stack"
    )

"""Raw JSON-RPC logs of the mesh's contracts into domain events, decoded from the committed ABIs.

No web3 formatters on this path (they cap a sync at ~2k events/s): topics and data are sliced
as hex words, laid out by the ABI; only the rare dynamic values (names, URI prefixes) are
read by their offset and length words. A log that cannot become a domain event becomes `LogUnmapped`, never nothing.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from eth_hash.auto import keccak
from eth_utils import to_checksum_address

from domain.events import (
    REALM_TARGET,
    ROLES,
    ApiEnabled,
    ChequebookCreated,
    ChequebookDeposited,
    ChequebookWithdrawn,
    ChequeBounced,
    ChequeCashed,
    Event,
    KeeperChanged,
    LogUnmapped,
    OfferSet,
    OfferWithdrawn,
    RealmCreated,
    RealmParams,
    RealmParamsChanged,
    RewardSet,
    RewardWithdrawn,
    RouterAnnounced,
    RouterWithdrawn,
    ServiceRegistered,
    ServiceUpdated,
    SettlementClaimed,
    SettlementFunded,
    SettlementPosted,
    SettlementPushed,
    StakeChanged,
    TokenTransferred,
)
from settlement.contracts import load_artifact

#: JSON carries ints as 64-bit numbers; a block, index or epoch beyond this cannot be a domain value
MAX_JSON_INT = (1 << 63) - 1
TRANSFER_TOPIC = "0x" + keccak(b"Transfer(address,address,uint256)").hex()
#: events of watched contracts that say nothing the ledger keeps (who may post roots, who owns
#: the settlement contract): decoded as deliberately ignored, not as unknown
IGNORED_EVENTS = frozenset({"PosterSet", "OwnershipTransferred"})


class Unmappable(ValueError):
    """A log whose values do not fit the domain (the reason goes into `LogUnmapped`)."""


@lru_cache(maxsize=1 << 16)
def checksum(word_or_address: str) -> str:
    """EIP-55 address from a 32-byte topic/data word or a 20-byte address (hex, 0x-prefixed)."""
    return str(to_checksum_address("0x" + word_or_address[-40:]))


def _small(value: int, what: str) -> int:
    if value > MAX_JSON_INT:
        raise Unmappable(f"{what} {value} exceeds the ledger's 63-bit range")
    return value


@dataclass(frozen=True, slots=True)
class _Param:
    name: str
    type: str
    indexed: bool
    components: tuple[_Param, ...] = ()


@dataclass(frozen=True, slots=True)
class EventAbi:
    """One event of an ABI, laid out for slicing: topic params and data words in order."""

    name: str
    topic0: str
    params: tuple[_Param, ...]

    @classmethod
    def from_abi(cls, item: Mapping[str, Any]) -> EventAbi:
        def param(p: Mapping[str, Any]) -> _Param:
            comps = tuple(param(c) for c in p.get("components", ()))
            return _Param(p["name"], p["type"], bool(p.get("indexed")), comps)

        params = tuple(param(p) for p in item["inputs"])
        signature = f"{item['name']}({','.join(_canonical(p) for p in params)})"
        return cls(item["name"], "0x" + keccak(signature.encode()).hex(), params)

    def decode(self, topics: list[str], data: str) -> dict[str, Any]:
        """Arguments by name; a static tuple comes back as a dict of its components."""
        body = data[2:]
        if len(body) < 64 * self.head_words or len(topics) < self.topic_count:
            raise Unmappable(f"{len(body) // 2} data bytes and {len(topics)} topics do not fit")
        out: dict[str, Any] = {}
        topic = 1
        word = 0
        for p, convert in zip(self.params, self.converters, strict=True):
            if p.indexed:
                word_hex = topics[topic][-64:]
                # an indexed string or struct is only its keccak hash in the topic
                out[p.name] = convert(word_hex) if convert is not None else "0x" + word_hex
                topic += 1
            elif p.type == "tuple":
                values = {}
                for c in p.components:
                    values[c.name] = _static(c.type, body[word * 64 : word * 64 + 64])
                    word += 1
                out[p.name] = values
            elif convert is None:  # string, bytes: an offset to a length word, then the bytes
                out[p.name] = _dynamic(p.type, body, int(body[word * 64 : word * 64 + 64], 16))
                word += 1
            else:
                out[p.name] = convert(body[word * 64 : word * 64 + 64])
                word += 1
        return out

    @property
    def head_words(self) -> int:
        return sum(
            len(p.components) if p.type == "tuple" else 1 for p in self.params if not p.indexed
        )

    @property
    def topic_count(self) -> int:
        return 1 + sum(1 for p in self.params if p.indexed)

    @property
    def converters(self) -> tuple[Callable[[str], Any] | None, ...]:
        cached = _CONVERTERS.get(self.topic0)
        if cached is None:
            cached = _CONVERTERS[self.topic0] = tuple(_converter(p.type) for p in self.params)
        return cached


_CONVERTERS: dict[str, tuple[Callable[[str], Any] | None, ...]] = {}


def _int256(word: str) -> int:
    value = int(word, 16)
    return value - (1 << 256) if value >> 255 else value


def _converter(abi_type: str) -> Callable[[str], Any] | None:
    """A 64-hex-digit word -> value function for a static type (None: dynamic or tuple)."""
    if abi_type == "address":
        return checksum
    if abi_type.startswith("uint"):
        return lambda word: int(word, 16)
    if abi_type.startswith("int"):
        return _int256
    if abi_type == "bool":
        return lambda word: int(word, 16) != 0
    if abi_type == "bytes32":
        return lambda word: "0x" + word
    return None


def _canonical(p: _Param) -> str:
    if p.type == "tuple":
        return "(" + ",".join(_canonical(c) for c in p.components) + ")"
    return p.type


def _dynamic(abi_type: str, body: str, offset: int) -> str | bytes:
    """A `string` or `bytes` value: its length word at `offset` (bytes into data), then it."""
    start = offset * 2
    length = int(body[start : start + 64] or "x", 16)
    raw = bytes.fromhex(body[start + 64 : start + 64 + length * 2])
    if len(raw) != length:
        raise Unmappable(f"{abi_type} of {length} bytes runs past the log data")
    if abi_type == "bytes":
        return raw
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise Unmappable(f"string is not UTF-8: {exc}") from exc


def _static(abi_type: str, word: str) -> Any:
    if len(word) != 64:
        raise Unmappable(f"truncated {abi_type} word")
    if abi_type == "address":
        return checksum(word)
    if abi_type.startswith("uint"):
        return int(word, 16)
    if abi_type.startswith("int"):
        value = int(word, 16)
        return value - (1 << 256) if value >> 255 else value
    if abi_type == "bool":
        return int(word, 16) != 0
    if abi_type == "bytes32":
        return "0x" + word
    raise Unmappable(f"unsupported static ABI type {abi_type}")


@lru_cache(maxsize=16)
def contract_events(artifact: str) -> dict[str, EventAbi]:
    """topic0 -> event layout, for every event in a committed artifact's ABI."""
    layouts = [
        EventAbi.from_abi(item)
        for item in load_artifact(artifact)["abi"]
        if item["type"] == "event"
    ]
    return {e.topic0: e for e in layouts}


@dataclass(frozen=True, slots=True)
class LogMeta:
    """Where a log sits: what makes it identifiable end to end."""

    chain_id: int
    contract: str
    block: int
    block_hash: str
    log_index: int
    tx_hash: str


@dataclass
class RealmNames:
    """On-chain realm id (keccak256 of the name) -> name, learnt from `RealmRegistered`, in the
    order learnt (an index into it pins what was known at any point of a sync)."""

    names: dict[str, str] = field(default_factory=dict)

    def learn(self, name: str) -> str:
        realm_id = "0x" + keccak(name.encode()).hex()
        self.names.setdefault(realm_id, name)
        return realm_id

    def name_of(self, realm_id: str) -> str | None:
        return self.names.get(realm_id)

    def first(self, count: int) -> RealmNames:
        return RealmNames(dict(list(self.names.items())[:count]))


def _params(values: Mapping[str, int]) -> RealmParams:
    return RealmParams(
        rfr_bps=values["rfrBps"],
        stake_per_mpb=values["stakePerMpb"],
        epoch_blocks=_small(values["epochBlocks"], "epochBlocks"),
        funding_period_blocks=_small(values["fundingPeriodBlocks"], "fundingPeriodBlocks"),
        weight_router_bps=values["weightRouterBps"],
        weight_service_bps=values["weightServiceBps"],
        weight_vendor_bps=values["weightVendorBps"],
        price_per_message=values["pricePerMessage"],
        usd_price_per_message=values["usdPricePerMessage"],
        price_feed=_feed(values["priceFeed"]),
    )


def _feed(address: Any) -> str:
    """A params struct's price feed: checksummed, "" for the zero address (no feed)."""
    text = str(address)
    return "" if int(text, 16) == 0 else checksum(text)


def params_tuple(params: RealmParams) -> tuple[int | str, ...]:
    """`RealmParams` as RealmStaking's `RealmParams` struct argument (same field order)."""
    return (
        params.rfr_bps,
        params.stake_per_mpb,
        params.epoch_blocks,
        params.funding_period_blocks,
        params.weight_router_bps,
        params.weight_service_bps,
        params.weight_vendor_bps,
        params.price_per_message,
        params.usd_price_per_message,
        params.price_feed or "0x" + "00" * 20,
    )


_STAKE_CAUSE = {
    "Staked": "stake",
    "UnstakeRequested": "unstake_request",
    "Withdrawn": "withdraw",
    "Slashed": "slash",
}

Builder = Callable[[dict[str, Any], LogMeta, RealmNames], Event]


def _ids(m: LogMeta) -> dict[str, Any]:
    return {
        "chain_id": m.chain_id,
        "block": m.block,
        "block_hash": m.block_hash,
        "log_index": m.log_index,
        "tx_hash": m.tx_hash,
    }


def _realm(a: dict[str, Any], names: RealmNames) -> str:
    name = names.name_of(a["realm"])
    if name is None:
        raise Unmappable(f"realm id {a['realm']} was never registered")
    return name


def _stake(a: dict[str, Any], m: LogMeta, names: RealmNames, cause: str) -> Event:
    role = a["role"]
    if role >= len(ROLES):
        raise Unmappable(f"role index {role} is not a known role")
    target = a["target"]
    return StakeChanged(
        realm=_realm(a, names),
        staker=a["staker"],
        role=ROLES[role],
        target=REALM_TARGET if int(target, 16) == 0 else target,
        amount=a["staked"],
        cause=cause,
        **_ids(m),
    )


def _settlement_realm(a: dict[str, Any], names: RealmNames) -> dict[str, Any]:
    return {"realm": names.name_of(a["realm"]) or "", "realm_id": a["realm"]}


def _registered(a: dict[str, Any], m: LogMeta, names: RealmNames) -> Event:
    names.learn(a["name"])
    return RealmCreated(realm=a["name"], keeper=a["keeper"], params=_params(a["params"]), **_ids(m))


STAKING_BUILDERS: dict[str, Builder] = {
    "RealmRegistered": _registered,
    "RealmParamsSet": lambda a, m, n: RealmParamsChanged(
        realm=_realm(a, n), params=_params(a["params"]), **_ids(m)
    ),
    "ApiEnabled": lambda a, m, n: ApiEnabled(
        realm=_realm(a, n), api=a["prefix"], vendor=a["vendor"], **_ids(m)
    ),
    "KeeperChanged": lambda a, m, n: KeeperChanged(
        realm=_realm(a, n), keeper=a["newKeeper"], previous_keeper=a["previousKeeper"], **_ids(m)
    ),
    **{name: functools.partial(_stake, cause=cause) for name, cause in _STAKE_CAUSE.items()},
}

CHEQUEBOOK_BUILDERS: dict[str, Builder] = {
    "Deposited": lambda a, m, n: ChequebookDeposited(
        realm="", chequebook=m.contract, sender=a["from"], amount=a["amount"], **_ids(m)
    ),
    "ChequeCashed": lambda a, m, n: ChequeCashed(
        realm="",
        chequebook=m.contract,
        beneficiary=a["beneficiary"],
        caller=a["caller"],
        cumulative=a["cumulativePayout"],
        paid=a["paid"],
        **_ids(m),
    ),
    "ChequeBounced": lambda a, m, n: ChequeBounced(
        realm="",
        chequebook=m.contract,
        beneficiary=a["beneficiary"],
        cumulative=a["cumulativePayout"],
        due=a["due"],
        paid=a["paid"],
        **_ids(m),
    ),
    "Withdrawn": lambda a, m, n: ChequebookWithdrawn(
        realm="", chequebook=m.contract, recipient=a["to"], amount=a["amount"], **_ids(m)
    ),
}

FACTORY_BUILDERS: dict[str, Builder] = {
    "ChequebookCreated": lambda a, m, n: ChequebookCreated(
        realm="",
        factory=m.contract,
        chequebook=a["chequebook"],
        issuer=a["issuer"],
        token=a["token"],
        **_ids(m),
    ),
}

SETTLEMENT_BUILDERS: dict[str, Builder] = {
    "Funded": lambda a, m, n: SettlementFunded(
        contract=m.contract,
        sender=a["from"],
        amount=a["amount"],
        **_settlement_realm(a, n),
        **_ids(m),
    ),
    "EpochPosted": lambda a, m, n: SettlementPosted(
        contract=m.contract,
        epoch=_small(a["epoch"], "epoch"),
        root=a["root"],
        total=a["total"],
        **_settlement_realm(a, n),
        **_ids(m),
    ),
    "BatchPushed": lambda a, m, n: SettlementPushed(
        contract=m.contract,
        epoch=_small(a["epoch"], "epoch"),
        batch_idx=_small(a["batchIdx"], "batchIdx"),
        entries=_small(a["entries"], "entries"),
        amount=a["amount"],
        **_settlement_realm(a, n),
        **_ids(m),
    ),
    "Claimed": lambda a, m, n: SettlementClaimed(
        contract=m.contract,
        account=a["account"],
        epoch=_small(a["epoch"], "epoch"),
        cumulative=a["cumulative"],
        amount=a["amount"],
        **_settlement_realm(a, n),
        **_ids(m),
    ),
}

TOKEN_BUILDERS: dict[str, Builder] = {
    "Transfer": lambda a, m, n: TokenTransferred(
        realm="",
        token=m.contract,
        sender=a["from"],
        recipient=a["to"],
        amount=a["value"],
        **_ids(m),
    )
}


def _registry_entry(
    kind: type[OfferSet] | type[OfferWithdrawn] | type[RewardSet] | type[RewardWithdrawn],
) -> Builder:
    """An offer or reward log of ServiceRegistry: (realm, server, service id) in its topics."""

    def build(a: dict[str, Any], m: LogMeta, n: RealmNames) -> Event:
        extra = {"price_per_call": a["pricePerCall"]} if kind is OfferSet else {}
        return kind(
            realm=_realm(a, n), server=a["server"], service_id=a["serviceId"], **extra, **_ids(m)
        )

    return build


REGISTRY_BUILDERS: dict[str, Builder] = {
    "ServiceRegistered": lambda a, m, n: ServiceRegistered(
        realm="",
        service_id=a["serviceId"],
        publisher=a["publisher"],
        api=a["apiPrefix"],
        spec_hash=a["specHash"],
        deterministic=a["deterministic"],
        verifier_hash=a["verifierHash"],
        min_requests=a["minRequests"],
        **_ids(m),
    ),
    "ServiceUpdated": lambda a, m, n: ServiceUpdated(
        realm="",
        service_id=a["serviceId"],
        spec_hash=a["specHash"],
        deterministic=a["deterministic"],
        verifier_hash=a["verifierHash"],
        min_requests=a["minRequests"],
        **_ids(m),
    ),
    "OfferSet": _registry_entry(OfferSet),
    "OfferWithdrawn": _registry_entry(OfferWithdrawn),
    "RewardSet": _registry_entry(RewardSet),
    "RewardWithdrawn": _registry_entry(RewardWithdrawn),
}


ROUTER_REGISTRY_BUILDERS: dict[str, Builder] = {
    "RouterAnnounced": lambda a, m, n: RouterAnnounced(
        realm=_realm(a, n), operator=a["operator"], url=a["url"], stake=a["stake"], **_ids(m)
    ),
    "RouterWithdrawn": lambda a, m, n: RouterWithdrawn(
        realm=_realm(a, n), operator=a["operator"], **_ids(m)
    ),
}


@dataclass(frozen=True)
class Contracts:
    """The watched contracts of one chain (checksummed addresses). Chequebooks are either
    configured (`chequebooks`) or followed: created by `chequebook_factory` (see
    `FollowedChequebooks`)."""

    staking: str
    settlement: str
    token: str
    chequebooks: tuple[str, ...] = ()
    chequebook_factory: str = ""
    #: the marketplace's ServiceRegistry ("" when not watched)
    service_registry: str = ""
    #: the RouterRegistry of router endpoints ("" when not watched)
    router_registry: str = ""

    def mesh(self) -> tuple[str, ...]:
        """Configured contracts whose token transfers are indexed (to or from them)."""
        return (self.staking, self.settlement, *self.chequebooks)

    def watched(self) -> tuple[str, ...]:
        """Configured contracts whose own logs are indexed."""
        factory = (self.chequebook_factory,) if self.chequebook_factory else ()
        registries = tuple(r for r in (self.service_registry, self.router_registry) if r)
        return (*self.mesh(), *factory, *registries)

    def addresses(self) -> tuple[str, ...]:
        return (*self.watched(), self.token)


#: topic0 of `ChequebookFactory.ChequebookCreated(chequebook, issuer, token)` (all indexed)
CHEQUEBOOK_CREATED_TOPIC = "0x" + keccak(b"ChequebookCreated(address,address,address)").hex()


def created_chequebooks(factory: str, logs: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Chequebooks the factory's `ChequebookCreated` logs among `logs` announce (lowercase
    address -> creation block)."""
    factory = factory.lower()
    return {
        "0x" + log["topics"][1][-40:].lower(): int(log["blockNumber"], 16)
        for log in logs
        if factory
        and log["address"].lower() == factory
        and len(log["topics"]) == 4
        and log["topics"][0] == CHEQUEBOOK_CREATED_TOPIC
    }


class FollowedChequebooks:
    """Chequebooks created by the factory (lowercase address -> creation block): the indexer
    reads their logs from that block on. Shared by the fetching threads (which learn new ones
    from the factory's logs of their chunk) and the sync loop; only ever grows, because a
    chequebook of an orphaned branch has no logs on the canonical one (reading it costs
    nothing and loses nothing). Thread-safe."""

    def __init__(self, known: Mapping[str, int] | None = None) -> None:
        self._lock = threading.Lock()
        self._created: dict[str, int] = {}
        self.add(known or {})

    def add(self, created: Mapping[str, int]) -> None:
        with self._lock:
            for address, block in created.items():
                key = address.lower()
                self._created[key] = min(block, self._created.get(key, block))

    def addresses(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._created)

    def __contains__(self, address: object) -> bool:
        return isinstance(address, str) and address.lower() in self._created

    def __len__(self) -> int:
        return len(self._created)


class LogDecoder:
    """Turns one raw log (a JSON-RPC log object) into one domain event."""

    def __init__(
        self, chain_id: int, contracts: Contracts, followed: FollowedChequebooks | None = None
    ) -> None:
        self.chain_id = chain_id
        self.contracts = contracts
        self.followed = followed if followed is not None else FollowedChequebooks()
        self._chequebook = _table("Chequebook")
        self._by_address: dict[str, dict[str, tuple[EventAbi, Builder]]] = {
            contracts.staking.lower(): _table("RealmStaking"),
            contracts.settlement.lower(): _table("EpochSettlement"),
            contracts.token.lower(): _table("WMPToken"),
            **{c.lower(): self._chequebook for c in contracts.chequebooks},
        }
        if contracts.chequebook_factory:
            self._by_address[contracts.chequebook_factory.lower()] = _table("ChequebookFactory")
        if contracts.service_registry:
            self._by_address[contracts.service_registry.lower()] = _table("ServiceRegistry")
        if contracts.router_registry:
            self._by_address[contracts.router_registry.lower()] = _table("RouterRegistry")
        self._mesh = {c.lower() for c in contracts.mesh()}
        self._ignored = {
            topic0
            for artifact in ("RealmStaking", "EpochSettlement", "Chequebook")
            for topic0, layout in contract_events(artifact).items()
            if layout.name in IGNORED_EVENTS
        }

    def _table_of(self, address: str) -> dict[str, tuple[EventAbi, Builder]]:
        table = self._by_address.get(address)
        if table is None and address in self.followed:
            return self._chequebook
        return table or {}

    def wants(self, log: Mapping[str, Any]) -> bool:
        """A token log counts only as a Transfer to or from one of the mesh's contracts."""
        address = log["address"].lower()
        if address != self.contracts.token.lower():
            return address in self._by_address or address in self.followed
        topics = log["topics"]

        def mesh(word: str) -> bool:
            address = "0x" + word[-40:]
            return address in self._mesh or address in self.followed

        return (
            len(topics) == 3
            and topics[0] == TRANSFER_TOPIC
            and (mesh(topics[1]) or mesh(topics[2]))
        )

    def decode(self, log: Mapping[str, Any], names: RealmNames) -> Event | None:
        """The log's domain event; None only for an event of `IGNORED_EVENTS`."""
        meta = LogMeta(
            chain_id=self.chain_id,
            contract=checksum(log["address"]),
            block=int(log["blockNumber"], 16),
            block_hash=log["blockHash"],
            log_index=int(log["logIndex"], 16),
            tx_hash=log["transactionHash"],
        )
        topics = log["topics"]
        topic0 = topics[0] if topics else ""
        entry = self._table_of(log["address"].lower()).get(topic0)
        if entry is None and topic0 in self._ignored:
            return None
        if entry is None:
            return _unmapped(meta, topic0, "event not indexed by meshledger")
        layout, build = entry
        try:
            args = layout.decode(topics, log["data"])
        except (Unmappable, ValueError, IndexError) as exc:
            return _unmapped(meta, topic0, f"{layout.name}: {exc}")
        return build_event(layout, build, args, meta, names)


def build_event(
    layout: EventAbi, build: Builder, args: dict[str, Any], meta: LogMeta, names: RealmNames
) -> Event:
    """The domain event of one decoded log (from RPC or from a subgraph entity)."""
    try:
        return build(args, meta, names)
    except (Unmappable, ValueError, IndexError, KeyError) as exc:
        return _unmapped(meta, layout.topic0, f"{layout.name}: {exc}")


#: artifact -> builders: every contract the indexer reads and how its events become domain events
BUILDERS: dict[str, Mapping[str, Builder]] = {
    "RealmStaking": STAKING_BUILDERS,
    "Chequebook": CHEQUEBOOK_BUILDERS,
    "ChequebookFactory": FACTORY_BUILDERS,
    "EpochSettlement": SETTLEMENT_BUILDERS,
    "WMPToken": TOKEN_BUILDERS,
    "ServiceRegistry": REGISTRY_BUILDERS,
    "RouterRegistry": ROUTER_REGISTRY_BUILDERS,
}


def event_builder(artifact: str, event: str) -> tuple[EventAbi, Builder]:
    """Layout and builder of one event of one contract."""
    layout = next(e for e in contract_events(artifact).values() if e.name == event)
    return layout, BUILDERS[artifact][event]


def _unmapped(meta: LogMeta, topic0: str, reason: str) -> LogUnmapped:
    return LogUnmapped(
        realm="",
        chain_id=meta.chain_id,
        contract=meta.contract,
        topic0=topic0,
        reason=reason,
        block=meta.block,
        block_hash=meta.block_hash,
        log_index=meta.log_index,
        tx_hash=meta.tx_hash,
    )


def _table(artifact: str) -> dict[str, tuple[EventAbi, Builder]]:
    table = {}
    builders = BUILDERS[artifact]
    for topic0, layout in contract_events(artifact).items():
        build = builders.get(layout.name)
        if build is not None:
            table[topic0] = (layout, build)
    return table

"""Domain event types of the mesh ledger, versioned, with upcasting of older versions.

Every event is a frozen dataclass with a `TYPE` name and a `class_version`; an older encoded
version is brought up to date by the `upcast_vN_vM` static methods, as in eventsourcing's
upcasting, so an old log always replays. Amounts are integers in token base units.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

E = TypeVar("E", bound="Event")


class EventDecodeError(ValueError):
    """An encoded event that does not match any known type, version or schema."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Event:
    TYPE: ClassVar[str] = ""
    class_version: ClassVar[int] = 1
    #: the realm whose partition carries the event ("" for chain-wide events)
    realm: str

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in _field_names(type(self))}
        data["type"] = self.TYPE
        data["v"] = self.class_version
        return data


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type[Event]) -> tuple[str, ...]:
    # dataclasses.fields() is slow on the encoding path: every emitted event goes through here
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


EVENT_TYPES: dict[str, type[Event]] = {}


def register(cls: type[E]) -> type[E]:
    if cls.TYPE in EVENT_TYPES:
        raise ValueError(f"event type {cls.TYPE} registered twice")
    EVENT_TYPES[cls.TYPE] = cls
    return cls


# -- realm configuration (keeper) -------------------------------------------------------------


DEFAULT_PRICE_PER_MESSAGE = 10**12


@dataclass(frozen=True, slots=True)
class RealmParams:
    """Realm parameters set by the keeper; all integers (bps = 1/10000)."""

    rfr_bps: int = 200
    stake_per_mpb: int = 10**18
    epoch_blocks: int = 100
    funding_period_blocks: int = 100
    weight_router_bps: int = 5000
    weight_service_bps: int = 3000
    weight_vendor_bps: int = 2000
    price_per_message: int = DEFAULT_PRICE_PER_MESSAGE
    #: SWAP priced in USD instead (10**-18 USD per message; 0: priced by price_per_message),
    #: converted by routers at `price_feed`'s last valid Chainlink price (token/USD)
    usd_price_per_message: int = 0
    price_feed: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.price_feed, str) or len(self.price_feed) > 42:
            raise ValueError(
                f"realm parameter price_feed must be an address, got {self.price_feed!r}"
            )
        if self.usd_price_per_message and not self.price_feed:
            raise ValueError("usd_price_per_message needs a price_feed")
        for name in (f.name for f in dataclasses.fields(self) if f.name != "price_feed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(
                    f"realm parameter {name} must be a non-negative int, got {value!r}"
                )
        weights = self.weight_router_bps + self.weight_service_bps + self.weight_vendor_bps
        if weights != 10_000:
            raise ValueError(f"payout weights must sum to 10000 bps, got {weights}")
        if self.stake_per_mpb == 0 or self.epoch_blocks == 0 or self.funding_period_blocks == 0:
            raise ValueError("stake_per_mpb, epoch_blocks and funding_period_blocks must be > 0")
        if self.rfr_bps > 10_000:
            raise ValueError(f"rfr_bps must be <= 10000, got {self.rfr_bps}")


PARAM_FIELDS = tuple(f.name for f in dataclasses.fields(RealmParams))

# -- chain identity -------------------------------------------------------------------------------
#
# An event the indexer derives from an on-chain log is identified end to end by
# (chain_id, block_hash, log_index); `LogRetracted` names a retracted log by the same triple.
# In the types that predate the indexer these fields have defaults: chain_id 0 and an empty
# block_hash mean "not derived from a chain log" (simulated, or upcast from an older version).

LOG_ID_FIELDS = ("chain_id", "block_hash", "log_index")


def _no_chain_identity(state: dict[str, Any], *fields: str) -> None:
    """Upcaster step for a type that gained chain identity fields: older events had none."""
    defaults = {"chain_id": 0, "block_hash": "", "log_index": 0, "tx_hash": "", "cause": ""}
    for name in fields:
        state.setdefault(name, defaults[name])


def log_identity(event: Event) -> tuple[int, str, int] | None:
    """(chain_id, block_hash, log_index) of a chain-derived event; None for any other event."""
    block_hash = getattr(event, "block_hash", "")
    log_index = getattr(event, "log_index", None)
    if not block_hash or log_index is None:
        return None
    return (getattr(event, "chain_id", 0), block_hash, log_index)


def _no_usd_price(state: dict[str, Any]) -> None:
    """Upcaster step: realms before USD pricing were priced in tokens only."""
    state["params"].setdefault("usd_price_per_message", "0")
    state["params"].setdefault("price_feed", "")


@register
@dataclass(frozen=True, slots=True)
class RealmCreated(Event):
    TYPE: ClassVar[str] = "RealmCreated"
    class_version: ClassVar[int] = 4
    keeper: str
    params: RealmParams
    block: int
    chain_id: int = 0
    block_hash: str = ""
    log_index: int = 0
    tx_hash: str = ""

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        # v1 had no SWAP price; realms created then priced a message at the default.
        state["params"].setdefault("price_per_message", str(DEFAULT_PRICE_PER_MESSAGE))

    @staticmethod
    def upcast_v2_v3(state: dict[str, Any]) -> None:
        _no_chain_identity(state, "chain_id", "block_hash", "log_index", "tx_hash")

    @staticmethod
    def upcast_v3_v4(state: dict[str, Any]) -> None:
        _no_usd_price(state)


@register
@dataclass(frozen=True, slots=True)
class RealmParamsChanged(Event):
    TYPE: ClassVar[str] = "RealmParamsChanged"
    class_version: ClassVar[int] = 3
    params: RealmParams
    block: int
    chain_id: int = 0
    block_hash: str = ""
    log_index: int = 0
    tx_hash: str = ""

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        _no_chain_identity(state, "chain_id", "block_hash", "log_index", "tx_hash")

    @staticmethod
    def upcast_v2_v3(state: dict[str, Any]) -> None:
        _no_usd_price(state)


@register
@dataclass(frozen=True, slots=True)
class ApiEnabled(Event):
    """The keeper enables an API (a URI prefix) in the realm; `vendor` earns by its calls."""

    TYPE: ClassVar[str] = "ApiEnabled"
    class_version: ClassVar[int] = 2
    api: str
    vendor: str
    block: int
    chain_id: int = 0
    block_hash: str = ""
    log_index: int = 0
    tx_hash: str = ""

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        _no_chain_identity(state, "chain_id", "block_hash", "log_index", "tx_hash")


@dataclass(frozen=True, slots=True)
class ChainLogEvent(Event):
    """An event derived from one on-chain log; (chain_id, block_hash, log_index) identifies it.
    Not a type of its own: the base of the indexer's newer event types."""

    chain_id: int
    block: int
    block_hash: str
    log_index: int
    tx_hash: str


@register
@dataclass(frozen=True, slots=True)
class KeeperChanged(ChainLogEvent):
    """The realm's keeper handed the realm over to `keeper`."""

    TYPE: ClassVar[str] = "KeeperChanged"
    keeper: str
    previous_keeper: str


# -- stakes (indexer) ---------------------------------------------------------------------------

#: WEP008 roles, in the order of RealmStaking's `Role` enum (ServiceVendor is "developer")
ROLES = ("user", "router_operator", "service_operator", "developer", "publisher", "keeper")
#: the target of a stake on the realm itself (WEP008's C1); RealmStaking's `address(0)`
REALM_TARGET = "0x" + "00" * 20


#: what changed a stake, by RealmStaking event: Staked, UnstakeRequested, Withdrawn, Slashed
STAKE_CAUSES = ("stake", "unstake_request", "withdraw", "slash")


@register
@dataclass(frozen=True, slots=True)
class StakeChanged(Event):
    """Directed stake of `staker` (in `role`) on `target`; `amount` is the new total after the
    change. A stake whose target is `REALM_TARGET` is a stake on the realm itself. `cause` is one
    of `STAKE_CAUSES` ("" when upcast from v1)."""

    TYPE: ClassVar[str] = "StakeChanged"
    class_version: ClassVar[int] = 2
    staker: str
    role: str
    target: str
    amount: int
    tx_hash: str
    block: int
    log_index: int
    chain_id: int = 0
    block_hash: str = ""
    cause: str = ""

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        _no_chain_identity(state, "chain_id", "block_hash", "cause")


@register
@dataclass(frozen=True, slots=True)
class ChainHead(Event):
    """A source's watermark: it has seen (and emitted everything up to) `block`."""

    TYPE: ClassVar[str] = "ChainHead"
    chain_id: int
    block: int
    block_hash: str = ""


# -- chain logs the indexer reads besides realms and stakes ---------------------------------------
#
# Chequebook and token events are chain-wide (realm ""); EpochSettlement events go to the realm
# whose id (`realm_id`, keccak256 of the name) the indexer knows from RealmStaking, else to "".


@register
@dataclass(frozen=True, slots=True)
class ChequebookCreated(ChainLogEvent):
    """The mesh's `ChequebookFactory` deployed `chequebook` (cheques signed by `issuer`, paid in
    `token`); the indexer follows the chequebook's logs from this block on."""

    TYPE: ClassVar[str] = "ChequebookCreated"
    factory: str
    chequebook: str
    issuer: str
    token: str


@register
@dataclass(frozen=True, slots=True)
class ChequebookDeposited(ChainLogEvent):
    TYPE: ClassVar[str] = "ChequebookDeposited"
    chequebook: str
    sender: str
    amount: int


@register
@dataclass(frozen=True, slots=True)
class ChequeCashed(ChainLogEvent):
    """A cheque cashed on chain: `paid` now, towards `cumulative` (see ChequeBounced)."""

    TYPE: ClassVar[str] = "ChequeCashed"
    chequebook: str
    beneficiary: str
    caller: str
    cumulative: int
    paid: int


@register
@dataclass(frozen=True, slots=True)
class ChequeBounced(ChainLogEvent):
    """The chequebook's balance covered only `paid` of the `due` amount of a cheque."""

    TYPE: ClassVar[str] = "ChequeBounced"
    chequebook: str
    beneficiary: str
    cumulative: int
    due: int
    paid: int


@register
@dataclass(frozen=True, slots=True)
class ChequebookWithdrawn(ChainLogEvent):
    TYPE: ClassVar[str] = "ChequebookWithdrawn"
    chequebook: str
    recipient: str
    amount: int


@register
@dataclass(frozen=True, slots=True)
class TokenTransferred(ChainLogEvent):
    """A transfer of the staked/payout token to or from one of the mesh's contracts."""

    TYPE: ClassVar[str] = "TokenTransferred"
    token: str
    sender: str
    recipient: str
    amount: int


@register
@dataclass(frozen=True, slots=True)
class SettlementFunded(ChainLogEvent):
    """`fund(realm, amount)` seen on chain."""

    TYPE: ClassVar[str] = "SettlementFunded"
    contract: str
    realm_id: str
    sender: str
    amount: int


@register
@dataclass(frozen=True, slots=True)
class SettlementPosted(ChainLogEvent):
    """An epoch's payout root and total posted on chain."""

    TYPE: ClassVar[str] = "SettlementPosted"
    contract: str
    realm_id: str
    epoch: int
    root: str
    total: int


@register
@dataclass(frozen=True, slots=True)
class SettlementPushed(ChainLogEvent):
    """A push batch of an epoch paid on chain."""

    TYPE: ClassVar[str] = "SettlementPushed"
    contract: str
    realm_id: str
    epoch: int
    batch_idx: int
    entries: int
    amount: int


@register
@dataclass(frozen=True, slots=True)
class SettlementClaimed(ChainLogEvent):
    """A payee claimed `amount` (its cumulative claim now `cumulative`) on chain."""

    TYPE: ClassVar[str] = "SettlementClaimed"
    contract: str
    realm_id: str
    account: str
    epoch: int
    cumulative: int
    amount: int


@register
@dataclass(frozen=True, slots=True)
class LogUnmapped(ChainLogEvent):
    """A log of a watched contract the indexer could not turn into a domain event (a value out
    of the ledger's range, an event it does not know); recorded, never silently skipped."""

    TYPE: ClassVar[str] = "LogUnmapped"
    contract: str
    topic0: str
    reason: str


@register
@dataclass(frozen=True, slots=True)
class LogRetracted(Event):
    """The log (chain_id, block_hash, log_index), emitted earlier as an event of type
    `retracted`, is no longer canonical (a reorg deeper than the confirmation depth): undo it.
    Carried in the partition of the retracted event's realm."""

    TYPE: ClassVar[str] = "LogRetracted"
    chain_id: int
    block: int
    block_hash: str
    log_index: int
    retracted: str


#: PriceObserved.status values; only "valid" may price anything
PRICE_STATUSES = (
    "valid",  # fresh, positive, in bounds, sequencer up past its grace period
    "stale",  # updated_at older than the feed's heartbeat
    "non_positive",  # answer <= 0
    "out_of_bounds",  # outside the configured [min, max]
    "sequencer_down",  # the L2 sequencer-uptime feed says down
    "sequencer_grace",  # the sequencer is up again, but for less than the grace period
    "unreadable",  # the feed's call failed (no contract there, a revert)
)


@register
@dataclass(frozen=True, slots=True)
class PriceObserved(Event):
    """A Chainlink AggregatorV3 reading (`latestRoundData` at `block`) judged by the indexer;
    `answer` is signed (a feed can report <= 0), `round_id` is a uint80."""

    TYPE: ClassVar[str] = "PriceObserved"
    chain_id: int
    feed: str
    round_id: int
    answer: int
    decimals: int
    updated_at: int
    status: str
    block: int
    block_hash: str


#: every event type an indexer source emits
INDEXER_EVENTS: tuple[type[Event], ...] = (
    RealmCreated,
    RealmParamsChanged,
    ApiEnabled,
    KeeperChanged,
    StakeChanged,
    ChainHead,
    ChequebookCreated,
    ChequebookDeposited,
    ChequeCashed,
    ChequeBounced,
    ChequebookWithdrawn,
    TokenTransferred,
    SettlementFunded,
    SettlementPosted,
    SettlementPushed,
    SettlementClaimed,
    LogUnmapped,
    LogRetracted,
    PriceObserved,
)
#: types that may be carried under realm "" (chain-wide); settlement events go there when their
#: realm id was never registered
CHAIN_WIDE_EVENTS: tuple[type[Event], ...] = (
    ChainHead,
    ChequebookCreated,
    ChequebookDeposited,
    ChequeCashed,
    ChequeBounced,
    ChequebookWithdrawn,
    TokenTransferred,
    SettlementFunded,
    SettlementPosted,
    SettlementPushed,
    SettlementClaimed,
    LogUnmapped,
    LogRetracted,
    PriceObserved,
)


# -- metering and SWAP (routers) ----------------------------------------------------------------

#: link_out / link_in: a message a router sent to / received from a peer router over a
#: router-to-router link (router_core.links); only link_out earns routing credit
METER_KINDS = ("event", "invocation", "result", "error", "link_out", "link_in")


@register
@dataclass(frozen=True, slots=True)
class MessageMetered(Event):
    """One routed message. In a record, metered messages travel in columnar form."""

    TYPE: ClassVar[str] = "MessageMetered"
    router: str
    from_peer: str
    to_peer: str
    kind: str
    uri: str
    payload_bytes: int
    block: int


@register
@dataclass(frozen=True, slots=True)
class HandshakeCompleted(Event):
    TYPE: ClassVar[str] = "HandshakeCompleted"
    router: str
    peer: str
    payment_threshold: int
    disconnect_threshold: int
    price_per_message: int
    token: str
    chain_id: int
    chequebook: str
    version: str
    block: int


@register
@dataclass(frozen=True, slots=True)
class ChequeIssued(Event):
    TYPE: ClassVar[str] = "ChequeIssued"
    issuer: str
    beneficiary: str
    chain_id: int
    chequebook: str
    cumulative: int
    signature: str
    block: int


@register
@dataclass(frozen=True, slots=True)
class ChequeReceived(Event):
    TYPE: ClassVar[str] = "ChequeReceived"
    peer: str
    beneficiary: str
    chain_id: int
    chequebook: str
    cumulative: int
    amount: int
    signature: str
    block: int


@register
@dataclass(frozen=True, slots=True)
class ChequeRejected(Event):
    TYPE: ClassVar[str] = "ChequeRejected"
    peer: str
    chequebook: str
    cumulative: int
    reason: str
    block: int


@register
@dataclass(frozen=True, slots=True)
class PeerDisconnected(Event):
    TYPE: ClassVar[str] = "PeerDisconnected"
    router: str
    peer: str
    reason: str
    balance: int
    block: int


# -- epochs and settlement (ledger, settlement job) --------------------------------------------


@register
@dataclass(frozen=True, slots=True)
class EpochClosed(Event):
    """Epoch `epoch` of the realm is closed: payouts use exactly the events of each source up
    to its high-water seq in `marks` (a record past its mark counts in the next epoch, late)."""

    TYPE: ClassVar[str] = "EpochClosed"
    epoch: int
    first_block: int
    last_block: int
    marks: dict[str, int] = field(default_factory=dict)


@register
@dataclass(frozen=True, slots=True)
class PayoutsComputed(Event):
    TYPE: ClassVar[str] = "PayoutsComputed"
    epoch: int
    funding: int
    total: int
    remainder: int
    payees: int
    digest: str


@register
@dataclass(frozen=True, slots=True)
class SettlementSubmitted(Event):
    TYPE: ClassVar[str] = "SettlementSubmitted"
    epoch: int
    chain_id: int
    contract: str
    root: str
    total: int
    tx_hash: str


@register
@dataclass(frozen=True, slots=True)
class SettlementConfirmed(Event):
    TYPE: ClassVar[str] = "SettlementConfirmed"
    epoch: int
    chain_id: int
    contract: str
    tx_hash: str
    block: int
    block_hash: str


# -- service marketplace (issue 13) --------------------------------------------------------------
#
# ServiceRegistry's events (indexer): services are chain-wide (realm ""), offers and rewards
# belong to their realm. Routers add what they decide about market calls: assessed outcomes and
# agreed prices.


def _check_verification(deterministic: object, min_requests: int) -> None:
    """A service's verification fields (`_check_types` checks ints and strings only)."""
    if type(deterministic) is not bool:
        raise ValueError(f"deterministic must be a bool, got {deterministic!r}")
    if min_requests < 0:
        raise ValueError(f"min_requests must be >= 0, got {min_requests}")


@register
@dataclass(frozen=True, slots=True)
class ServiceRegistered(ChainLogEvent):
    """A service (an API: procedures under the URI prefix `api`) registered by `publisher`;
    `service_id` is keccak256 of `api`. A deterministic service's results are compared over
    `min_requests` redundant calls by the verifier `verifier_hash` (zero hash: exact equality)."""

    TYPE: ClassVar[str] = "ServiceRegistered"
    service_id: str
    publisher: str
    api: str
    spec_hash: str
    deterministic: bool
    verifier_hash: str
    min_requests: int

    def __post_init__(self) -> None:
        _check_verification(self.deterministic, self.min_requests)


@register
@dataclass(frozen=True, slots=True)
class ServiceUpdated(ChainLogEvent):
    """The publisher changed a service's specification or verification."""

    TYPE: ClassVar[str] = "ServiceUpdated"
    service_id: str
    spec_hash: str
    deterministic: bool
    verifier_hash: str
    min_requests: int

    def __post_init__(self) -> None:
        _check_verification(self.deterministic, self.min_requests)


@register
@dataclass(frozen=True, slots=True)
class OfferSet(ChainLogEvent):
    """`server` offers `service_id` in the realm at `price_per_call` (replacing an older price)."""

    TYPE: ClassVar[str] = "OfferSet"
    server: str
    service_id: str
    price_per_call: int


@register
@dataclass(frozen=True, slots=True)
class OfferWithdrawn(ChainLogEvent):
    TYPE: ClassVar[str] = "OfferWithdrawn"
    server: str
    service_id: str


@register
@dataclass(frozen=True, slots=True)
class RewardSet(ChainLogEvent):
    """`server` rewards `service_id` in the realm: it wants to see it used."""

    TYPE: ClassVar[str] = "RewardSet"
    server: str
    service_id: str


@register
@dataclass(frozen=True, slots=True)
class RewardWithdrawn(ChainLogEvent):
    TYPE: ClassVar[str] = "RewardWithdrawn"
    server: str
    service_id: str


#: ServiceRegistry's events as the indexer emits them
MARKET_CHAIN_EVENTS: tuple[type[Event], ...] = (
    ServiceRegistered,
    ServiceUpdated,
    OfferSet,
    OfferWithdrawn,
    RewardSet,
    RewardWithdrawn,
)
INDEXER_EVENTS += MARKET_CHAIN_EVENTS
CHAIN_WIDE_EVENTS += (ServiceRegistered, ServiceUpdated)


#: what a router saw of a market call: a result, an error (the callee's, or the callee left or
#: was suspended), or no answer within the call's timeout
CALL_OUTCOMES = ("result", "error", "timeout")


@register
@dataclass(frozen=True, slots=True)
class CallAssessed(Event):
    """A market call routed by `router` from `client` to `operator` (a call under a registered
    service's API prefix), judged objectively: its outcome and latency (INVOCATION to answer),
    and what the client was charged for it (`charged`, base units; 0 when no price applied)
    under the agreed quote `quote` ("" for none)."""

    TYPE: ClassVar[str] = "CallAssessed"
    router: str
    client: str
    operator: str
    service_id: str
    outcome: str
    latency_ms: int
    charged: int
    quote: str
    block: int

    def __post_init__(self) -> None:
        if self.outcome not in CALL_OUTCOMES:
            raise ValueError(f"outcome must be one of {CALL_OUTCOMES}, got {self.outcome!r}")
        if self.latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0, got {self.latency_ms}")


@register
@dataclass(frozen=True, slots=True)
class PriceAgreed(Event):
    """`client` and `operator` agreed `price_per_call` for the service in the realm until
    `expiry_block` (EIP-712 `domain.market.Quote`, id = its digest, signed by both); `router`
    verified and recorded it and charges the client's calls to the operator at that price."""

    TYPE: ClassVar[str] = "PriceAgreed"
    router: str
    client: str
    operator: str
    service_id: str
    price_per_call: int
    expiry_block: int
    chain_id: int
    quote_id: str
    client_signature: str
    operator_signature: str
    block: int


@register
@dataclass(frozen=True, slots=True)
class ResultMismatch(Event):
    """A redundant call of a deterministic service: `operator`'s answer to the request
    `request_digest` (keccak256 of the procedure and its arguments) was judged wrong by the
    service's verifier (`verifier`: "exact", or the module's hash) among the answers of
    `compared` (comma-separated addresses)."""

    TYPE: ClassVar[str] = "ResultMismatch"
    router: str
    service_id: str
    request_digest: str
    operator: str
    compared: str
    verifier: str
    block: int


@register
@dataclass(frozen=True, slots=True)
class OperatorConvicted(Event):
    """`operator` answered the service wrongly `mismatches` times (the router's threshold): the
    router no longer offers it; the realm's keeper may slash its stake on chain."""

    TYPE: ClassVar[str] = "OperatorConvicted"
    router: str
    operator: str
    service_id: str
    mismatches: int
    block: int


# -- router endpoints (issue 12: routers found on chain) ----------------------------------------


@register
@dataclass(frozen=True, slots=True)
class RouterAnnounced(ChainLogEvent):
    """Router operator `operator` announced (or moved) its router's public WebSocket endpoint
    `url` for the realm in RouterRegistry, holding provision stake `stake` then."""

    TYPE: ClassVar[str] = "RouterAnnounced"
    operator: str
    url: str
    stake: int


@register
@dataclass(frozen=True, slots=True)
class RouterWithdrawn(ChainLogEvent):
    """`operator`'s endpoint for the realm was withdrawn (by it, or pruned once its provision
    stake was gone)."""

    TYPE: ClassVar[str] = "RouterWithdrawn"
    operator: str


#: RouterRegistry's events as the indexer emits them
ROUTER_REGISTRY_EVENTS: tuple[type[Event], ...] = (RouterAnnounced, RouterWithdrawn)
INDEXER_EVENTS += ROUTER_REGISTRY_EVENTS


# -- decoding -------------------------------------------------------------------------------------

#: token amounts exceed 64 bits, so they travel as decimal strings (as JSON-RPC quantities do)
AMOUNT_FIELDS = frozenset(
    {
        "amount",
        "cumulative",
        "balance",
        "payment_threshold",
        "disconnect_threshold",
        "price_per_message",
        "usd_price_per_message",
        "stake_per_mpb",
        "funding",
        "total",
        "remainder",
        "paid",
        "due",
        "round_id",
        "price_per_call",
        "charged",
        "stake",
    }
)
#: like AMOUNT_FIELDS, but may be negative (a Chainlink answer is an int256)
SIGNED_AMOUNT_FIELDS = frozenset({"answer"})
_STRING_INTS = AMOUNT_FIELDS | SIGNED_AMOUNT_FIELDS


def _amounts_to_str(data: dict[str, Any]) -> dict[str, Any]:
    for key in _STRING_INTS.intersection(data):
        if isinstance(data[key], int):
            data[key] = str(data[key])
    return data


def _amounts_from_str(data: dict[str, Any], where: str) -> dict[str, Any]:
    out = dict(data)
    for key in _STRING_INTS.intersection(data):
        value = data[key]
        digits = value
        if key in SIGNED_AMOUNT_FIELDS and isinstance(value, str) and value.startswith("-"):
            digits = value[1:]
        if not (isinstance(digits, str) and digits.isascii() and digits.isdigit()):
            raise EventDecodeError(
                "schema", f"{where}.{key} must be a decimal string, got {value!r}"
            )
        out[key] = int(value)
    return out


_NESTED: dict[str, Callable[[Any], Any]] = {
    "params": lambda d: RealmParams(**_amounts_from_str(d, "params"))
}


def upcast(cls: type[Event], state: dict[str, Any], version: int) -> dict[str, Any]:
    """Bring an encoded event of `version` up to `cls.class_version`, step by step."""
    if version > cls.class_version:
        raise EventDecodeError(
            "unknown_version", f"{cls.TYPE} v{version} is newer than v{cls.class_version}"
        )
    while version < cls.class_version:
        step = getattr(cls, f"upcast_v{version}_v{version + 1}", None)
        if step is None:
            raise EventDecodeError("unknown_version", f"no upcaster for {cls.TYPE} v{version}")
        step(state)
        version += 1
    return state


def event_from_dict(data: dict[str, Any]) -> Event:
    """Decode (and upcast) one event; raises EventDecodeError with a machine-readable reason."""
    if not isinstance(data, dict):
        raise EventDecodeError("schema", f"event is {type(data).__name__}, not an object")
    state = dict(data)
    type_name = state.pop("type", None)
    version = state.pop("v", None)
    cls = EVENT_TYPES.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        raise EventDecodeError("unknown_type", f"event type {type_name!r}")
    if not isinstance(version, int) or version < 1:
        raise EventDecodeError("schema", f"{type_name}: version {version!r}")
    if "params" in state and not isinstance(state["params"], dict):
        raise EventDecodeError("schema", f"{type_name}: params is not an object")
    upcast(cls, state, version)
    state = _amounts_from_str(state, type_name)
    expected = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(state) - set(expected)
    if unknown:
        raise EventDecodeError("schema", f"{type_name}: unknown fields {sorted(unknown)}")
    try:
        for name, value in list(state.items()):
            if name in _NESTED:
                state[name] = _NESTED[name](value)
        event = cls(**state)
    except (TypeError, ValueError) as exc:
        raise EventDecodeError("schema", f"{type_name}: {exc}") from exc
    _check_types(event)
    return event


_SCALARS: dict[str, type | tuple[type, ...]] = {"int": int, "str": str}


def _check_types(event: Event) -> None:
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        expected = _SCALARS.get(str(f.type))
        if expected is None:
            continue
        if not isinstance(value, expected) or isinstance(value, bool):
            raise EventDecodeError(
                "schema", f"{event.TYPE}.{f.name} must be {f.type}, got {type(value).__name__}"
            )
    if isinstance(event, EpochClosed) and not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in event.marks.items()
    ):
        raise EventDecodeError("schema", "EpochClosed.marks must map source to int seq")


def event_to_dict(event: Event) -> dict[str, Any]:
    data = _amounts_to_str(event.to_dict())
    if "params" in data:
        data["params"] = _amounts_to_str(dataclasses.asdict(data["params"]))
    return data

"""Record verification before anything is applied: decode and signature, the source's seq/prev
chain, and which kind of source may say what. Verdicts name the reason a dead letter carries."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from domain.envelope import ZERO_HASH, Record, RecordError, decode
from domain.events import (
    INDEXER_EVENTS,
    CallAssessed,
    ChainHead,
    ChequeIssued,
    ChequeReceived,
    ChequeRejected,
    EpochClosed,
    Event,
    HandshakeCompleted,
    OperatorConvicted,
    PayoutsComputed,
    PeerDisconnected,
    PriceAgreed,
    ResultMismatch,
    SettlementConfirmed,
    SettlementSubmitted,
)


class Outcome(Enum):
    APPLIED = "applied"
    REJECTED = "rejected"
    WAIT = "wait"


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    reason: str = ""
    detail: str = ""


APPLIED = Verdict(Outcome.APPLIED)


def rejected(reason: str, detail: str) -> Verdict:
    return Verdict(Outcome.REJECTED, reason, detail)


def wait(reason: str, detail: str) -> Verdict:
    return Verdict(Outcome.WAIT, reason, detail)


@dataclass
class Trust:
    """Configured keys: which sources may say what besides staked routers."""

    ledger: frozenset[str] = frozenset()
    indexer: frozenset[str] = frozenset()
    settlement: frozenset[str] = frozenset()

    def role(self, source: str) -> str:
        if source in self.ledger:
            return "ledger"
        if source in self.indexer:
            return "indexer"
        if source in self.settlement:
            return "settlement"
        return "router"


#: the event types each kind of source may emit (routers' metered messages aside)
ALLOWED: dict[str, tuple[type[Event], ...]] = {
    "ledger": (EpochClosed, PayoutsComputed),
    "indexer": INDEXER_EVENTS,
    "settlement": (SettlementSubmitted, SettlementConfirmed),
    "router": (
        ChainHead,
        HandshakeCompleted,
        ChequeIssued,
        ChequeReceived,
        ChequeRejected,
        PeerDisconnected,
        CallAssessed,
        PriceAgreed,
        ResultMismatch,
        OperatorConvicted,
    ),
}


@dataclass
class SourceState:
    """Where a source's chain stands: its last applied seq and record hash, its watermark."""

    last_seq: int = 0
    last_hash: str = ZERO_HASH
    watermark: int = -1
    records: int = 0
    events: int = 0


def prepare(value: bytes | None) -> Record | Verdict:
    """Decode and verify the signature (once per record, however often it waits)."""
    if value is None:
        return rejected("undecodable", "empty record")
    try:
        record = decode(value)
        record.verify()
    except RecordError as exc:
        return rejected(exc.reason, exc.detail)
    return record


def check_chain(record: Record, state: SourceState | None) -> Verdict:
    """The record continues its source's chain: next seq, and `prev` is the last record's hash."""
    last = state.last_seq if state else 0
    if record.last_seq <= last or record.seq <= last:
        return rejected("duplicate", f"seq {record.seq}..{record.last_seq} <= {last}")
    if record.seq > last + 1:
        return wait("seq_gap", f"waiting for seq {last + 1} of {record.source}")
    if state is not None and record.prev != state.last_hash:
        return rejected("broken_chain", f"prev {record.prev[:18]} != {state.last_hash[:18]}")
    if state is None and record.prev != ZERO_HASH:
        return rejected("broken_chain", "first record of a source must have a zero prev")
    return APPLIED


def check_allowed(record: Record, role: str, known_router: bool) -> Verdict:
    """The kind of source may emit every event of the record."""
    if record.metered is not None:
        if role != "router":
            return rejected("unauthorized_event", f"{role} source sent metered messages")
        return APPLIED
    allowed = ALLOWED[role]
    for event in record.events:
        if not isinstance(event, allowed):
            if role == "router" and not known_router:
                return rejected("unknown_source", f"{record.source} is not a known source")
            return rejected("unauthorized_event", f"{role} may not emit {event.TYPE}")
    return APPLIED


def reported_blocks(record: Record) -> tuple[int, int]:
    """The first and last block a router's record reports on."""
    if record.metered is not None:
        blocks = record.metered.block
        return int(blocks.min()), int(blocks.max())
    reported = [getattr(e, "block", 0) for e in record.events]
    return min(reported), max(reported)

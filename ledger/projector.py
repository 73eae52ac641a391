"""The projector: verifies records and applies them to the DuckDB projections.

For each record: decode and schema, signature, the source's seq/prev chain, authorization, then
the events. Outcomes per record:

* ``APPLIED`` — its rows are staged; they commit with the Kafka offsets in one transaction;
* ``REJECTED`` — to ``mesh.dead`` with a reason and the original bytes, counted; an authentic
  record that is refused (unauthorized, late duplicate of an epoch close) still advances its
  source's chain so the source's later records are not held up;
* ``WAIT`` — not decidable yet: the source's previous record is not applied yet (it may sit in
  another partition), the chain watermark has not reached the record's blocks (its stake may not
  be known yet), or an epoch close whose marks are not reached. The partition holds at this record
  and is retried; a wait for a seq that never comes is declared a gap after ``gap_timeout_ms``.

Applied decisions depend only on the log, never on the interleaving of partitions, so a replay
from offset 0 produces the same tables (see ledger/audit.py).
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import duckdb
import orjson

from domain.economics import (
    Payout,
    capacity_messages,
    compute_payouts,
    epoch_bounds,
    payout_digest,
    stake_block_sum,
)
from domain.envelope import ZERO_HASH, Record, RecordError, decode
from domain.events import (
    METER_KINDS,
    REALM_TARGET,
    ApiEnabled,
    ChainHead,
    ChequeIssued,
    ChequeReceived,
    ChequeRejected,
    EpochClosed,
    Event,
    HandshakeCompleted,
    PayoutsComputed,
    PeerDisconnected,
    RealmCreated,
    RealmParams,
    RealmParamsChanged,
    SettlementConfirmed,
    SettlementSubmitted,
    StakeChanged,
)
from ledger import store

log = logging.getLogger(__name__)

INVOCATION = METER_KINDS.index("invocation")


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


ALLOWED: dict[str, tuple[type[Event], ...]] = {
    "ledger": (EpochClosed, PayoutsComputed),
    "indexer": (RealmCreated, RealmParamsChanged, ApiEnabled, StakeChanged, ChainHead),
    "settlement": (SettlementSubmitted, SettlementConfirmed),
    "router": (
        ChainHead,
        HandshakeCompleted,
        ChequeIssued,
        ChequeReceived,
        ChequeRejected,
        PeerDisconnected,
    ),
}


@dataclass
class SourceState:
    last_seq: int = 0
    last_hash: str = ZERO_HASH
    watermark: int = -1
    records: int = 0
    events: int = 0


@dataclass
class RealmState:
    keeper: str
    params: RealmParams
    created_block: int
    apis: list[tuple[str, str, str, int]] = field(
        default_factory=list
    )  # (prefix, vendor, source, seq)
    #: stake history: (staker, role, target) -> sorted [(block, log_index, amount, source, seq)]
    stakes: dict[tuple[str, str, str], list[tuple[int, int, int, str, int]]] = field(
        default_factory=dict
    )
    #: parameter history [(source, seq, params)]: an epoch close uses what is under its marks
    params_history: list[tuple[str, int, RealmParams]] = field(default_factory=list)
    closed_epoch: int = -1
    marks: dict[str, int] = field(default_factory=dict)
    carry: int = 0
    sources: set[str] = field(default_factory=set)

    def stake_at(self, key: tuple[str, str, str], block: int) -> int:
        history = self.stakes.get(key)
        if not history:
            return 0
        i = bisect.bisect_right(history, (block, 1 << 62, 0))
        return history[i - 1][2] if i else 0

    def provision_key(self, router: str) -> tuple[str, str, str]:
        return (router, "router_operator", REALM_TARGET)

    def changes(self, key: tuple[str, str, str], marks: dict[str, int]) -> list[tuple[int, int]]:
        """(block, amount) changes of one stake known under `marks` (deterministic on replay)."""
        return [
            (b, amount)
            for b, _, amount, src, seq in self.stakes.get(key, [])
            if seq <= marks.get(src, 0)
        ]

    def params_under(self, marks: dict[str, int]) -> RealmParams:
        known = [p for src, seq, p in self.params_history if seq <= marks.get(src, 0)]
        return known[-1] if known else self.params


class Projector:
    """Applies verified records to DuckDB. One writer per database file."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        trust: Trust,
        on_payouts: Callable[[PayoutsComputed], None] | None = None,
    ) -> None:
        self.con = con
        self.trust = trust
        self.on_payouts = on_payouts
        self.sources: dict[str, SourceState] = {}
        self.realms: dict[str, RealmState] = {}
        self.offsets: dict[tuple[str, int], int] = {}
        #: offsets above a partition's low-water offset that are already decided (applied or rejected)
        self.ahead: dict[tuple[str, int], set[int]] = defaultdict(set)
        self.rejected: Counter[str] = Counter()
        self._dirty_rejections = False
        self._rows: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        self._dirty_sources: set[str] = set()
        self._dirty_offsets: set[tuple[str, int]] = set()
        self._realm_updates: list[tuple[Any, ...]] = []
        self._epoch_rows: list[tuple[Any, ...]] = []
        self._digest_confirmations: list[tuple[str, int, str]] = []
        self._gaps: list[tuple[str, int, int]] = []
        self._after_commit: list[Callable[[], None]] = []
        self.load()

    # -- state --------------------------------------------------------------------------------------
    def load(self) -> None:
        con = self.con
        for topic, part, nxt in con.execute(
            "SELECT topic, part, next_offset FROM offsets"
        ).fetchall():
            self.offsets[(topic, part)] = nxt
        for topic, part, off in con.execute(
            'SELECT topic, part, "offset" FROM applied_ahead'
        ).fetchall():
            self.ahead[(topic, part)].add(off)
        for src, seq, h, wm, recs, evs in con.execute("SELECT * FROM sources").fetchall():
            self.sources[src] = SourceState(seq, h, wm, recs, evs)
        for row in con.execute("SELECT * FROM realms").fetchall():
            realm, keeper, *params, created = row
            self.realms[realm] = RealmState(keeper, RealmParams(*(int(p) for p in params)), created)
        for realm, source, seq, *params in con.execute(
            "SELECT * FROM realm_params ORDER BY seq"
        ).fetchall():
            self.realms[realm].params_history.append(
                (source, seq, RealmParams(*(int(p) for p in params)))
            )
        for realm, api, vendor, _, source, seq in con.execute(
            "SELECT * FROM apis ORDER BY seq"
        ).fetchall():
            self.realms[realm].apis.append((api, vendor, source, seq))
        for realm, staker, role, target, amount, _, block, li, source, seq in con.execute(
            "SELECT * FROM stakes ORDER BY block, log_index"
        ).fetchall():
            self.realms[realm].stakes.setdefault((staker, role, target), []).append(
                (block, li, int(amount), source, seq)
            )
        for realm, epoch, marks, remainder in con.execute(
            "SELECT realm, epoch, marks, remainder FROM epochs ORDER BY epoch"
        ).fetchall():
            state = self.realms[realm]
            state.closed_epoch, state.marks, state.carry = (
                epoch,
                orjson.loads(marks),
                int(remainder),
            )
        for realm, source in con.execute(
            "SELECT DISTINCT realm, source FROM usage_blocks"
        ).fetchall():
            self.realms[realm].sources.add(source)
        for reason, n in con.execute("SELECT reason, records FROM rejected").fetchall():
            self.rejected[reason] = n

    def chain_watermark(self) -> int:
        """How far the chain is known: the least head among configured indexer sources."""
        marks = [self.sources[s].watermark for s in self.trust.indexer if s in self.sources]
        if len(marks) < len(self.trust.indexer) or not marks:
            return -1
        return min(marks)

    # -- one record -----------------------------------------------------------------------------
    @staticmethod
    def prepare(value: bytes | None) -> Record | Verdict:
        """Decode and verify the signature (once per record, however often it waits)."""
        if value is None:
            return Verdict(Outcome.REJECTED, "undecodable", "empty record")
        try:
            record = decode(value)
            record.verify()
        except RecordError as exc:
            return Verdict(Outcome.REJECTED, exc.reason, exc.detail)
        return record

    def offer_record(self, record: Record) -> Verdict:
        """Decide on one verified record and stage its effects; nothing is written until commit()."""
        state = self.sources.get(record.source)
        last = state.last_seq if state else 0
        if record.last_seq <= last or record.seq <= last:
            return Verdict(
                Outcome.REJECTED, "duplicate", f"seq {record.seq}..{record.last_seq} <= {last}"
            )
        if record.seq > last + 1:
            return Verdict(
                Outcome.WAIT, "seq_gap", f"waiting for seq {last + 1} of {record.source}"
            )
        if state is not None and record.prev != state.last_hash:
            return Verdict(
                Outcome.REJECTED,
                "broken_chain",
                f"prev {record.prev[:18]} != {state.last_hash[:18]}",
            )
        if state is None and record.prev != ZERO_HASH:
            return Verdict(
                Outcome.REJECTED, "broken_chain", "first record of a source must have a zero prev"
            )
        verdict = self._authorize(record)
        if verdict.outcome is Outcome.APPLIED:
            verdict = self.epoch_close_ready(record)
        if verdict.outcome is Outcome.WAIT:
            return verdict
        self._advance(record)
        if verdict.outcome is Outcome.REJECTED:
            return verdict
        try:
            self._precheck(record)
        except _Refused as exc:
            return Verdict(Outcome.REJECTED, exc.reason, exc.detail)
        self._apply(record)
        return APPLIED

    def _precheck(self, record: Record) -> None:
        """Refuse a record as a whole before any of its events is applied."""
        created: set[str] = set()
        for event in record.events:
            if isinstance(event, RealmCreated):
                if event.realm in self.realms or event.realm in created:
                    raise _Refused("realm_exists", f"realm {event.realm!r} already exists")
                created.add(event.realm)
            elif isinstance(event, ChainHead) and event.realm == "":
                continue  # chain-wide head of an indexer
            elif event.realm not in self.realms and event.realm not in created:
                raise _Refused("unknown_realm", f"realm {event.realm!r} does not exist")
            if isinstance(event, EpochClosed):
                self._check_epoch_close(event)
            if isinstance(event, PayoutsComputed):
                self._check_payouts(event)

    def declare_gap(self, record: Record) -> None:
        """Accept that the seqs before `record` will not come: record the gap, resume the chain."""
        state = self.sources.setdefault(record.source, SourceState())
        self._gaps.append((record.source, state.last_seq + 1, record.seq - 1))
        state.last_seq, state.last_hash = record.seq - 1, record.prev
        self._dirty_sources.add(record.source)

    def _advance(self, record: Record) -> None:
        state = self.sources.setdefault(record.source, SourceState())
        state.last_seq, state.last_hash = record.last_seq, record.hash_hex
        state.records += 1
        state.events += record.count
        self._dirty_sources.add(record.source)

    def _authorize(self, record: Record) -> Verdict:
        role = self.trust.role(record.source)
        if record.metered is not None:
            if role != "router":
                return Verdict(
                    Outcome.REJECTED, "unauthorized_event", f"{role} source sent metered messages"
                )
            blocks = record.metered.block
            return self._authorize_router(record, min(blocks), max(blocks))
        allowed = ALLOWED[role]
        for event in record.events:
            if not isinstance(event, allowed):
                if role == "router" and not self._ever_staked(record.source):
                    return Verdict(
                        Outcome.REJECTED, "unknown_source", f"{record.source} is not a known source"
                    )
                return Verdict(
                    Outcome.REJECTED, "unauthorized_event", f"{role} may not emit {event.TYPE}"
                )
        if role != "router":
            return APPLIED
        blocks = [getattr(e, "block", 0) for e in record.events]
        return self._authorize_router(record, min(blocks), max(blocks))

    def _ever_staked(self, source: str) -> bool:
        return any(
            key[0] == source and key[1] == "router_operator"
            for realm in self.realms.values()
            for key in realm.stakes
        )

    def _authorize_router(self, record: Record, first_block: int, last_block: int) -> Verdict:
        """A router must hold a provision stake in the realm at every block it reports."""
        if self.chain_watermark() < last_block:
            return Verdict(
                Outcome.WAIT,
                "chain_behind",
                f"chain known to {self.chain_watermark()}, record at {last_block}",
            )
        realm = self.realms.get(record.realm)
        if realm is None:
            if not self._ever_staked(record.source):
                return Verdict(
                    Outcome.REJECTED, "unknown_source", f"{record.source} is not a known source"
                )
            return Verdict(
                Outcome.REJECTED, "unknown_realm", f"realm {record.realm!r} does not exist"
            )
        key = realm.provision_key(record.source)
        history = realm.stakes.get(key)
        if not history:
            if not self._ever_staked(record.source):
                return Verdict(
                    Outcome.REJECTED, "unknown_source", f"{record.source} is not a known source"
                )
            return Verdict(
                Outcome.REJECTED, "unauthorized_router", f"no provision stake in {record.realm}"
            )
        if realm.stake_at(key, first_block) <= 0 or any(
            entry[2] <= 0 for entry in history if first_block < entry[0] <= last_block
        ):
            return Verdict(
                Outcome.REJECTED,
                "unauthorized_router",
                f"no provision stake in {record.realm} at blocks {first_block}..{last_block}",
            )
        return APPLIED

    # -- applying events -------------------------------------------------------------------------------
    def _apply(self, record: Record) -> None:
        if record.metered is not None:
            self._apply_metered(record)
            return
        for seq, event in record.iter_events():
            handler = _HANDLERS[type(event)]
            handler(self, record, seq, event)

    def _apply_metered(self, record: Record) -> None:
        m = record.metered
        assert m is not None
        realm = self.realms[record.realm]
        realm.sources.add(record.source)
        blocks = m.block
        per_block = Counter(blocks)
        bytes_per_block: Counter[int] = Counter()
        for block, size in zip(blocks, m.payload_bytes, strict=True):
            bytes_per_block[block] += size
        rows = self._rows["usage_blocks"]
        for block, n in per_block.items():
            rows.append((record.realm, block, record.source, n, bytes_per_block[block]))
        epoch_blocks = realm.params.epoch_blocks
        credit: Counter[tuple[int, str, str]] = Counter()
        credit_bytes: Counter[tuple[int, str, str]] = Counter()
        for block, n in per_block.items():
            key = (block // epoch_blocks, "router", record.source)
            credit[key] += n
            credit_bytes[key] += bytes_per_block[block]
        # service operators by invocations they received; APIs (vendors) by invocations of their URIs
        for i in (i for i, k in enumerate(m.kind_idx) if k == INVOCATION):
            epoch = blocks[i] // epoch_blocks
            credit[(epoch, "service", m.peers[m.to_idx[i]])] += 1
            credit[(epoch, "api", m.uris[m.uri_idx[i]])] += 1
            size = m.payload_bytes[i]
            credit_bytes[(epoch, "service", m.peers[m.to_idx[i]])] += size
            credit_bytes[(epoch, "api", m.uris[m.uri_idx[i]])] += size
        usage = self._rows["usage_records"]
        for (epoch, cls, account), n in credit.items():
            usage.append(
                (
                    record.realm,
                    record.source,
                    record.last_seq,
                    epoch,
                    cls,
                    account,
                    n,
                    credit_bytes[(epoch, cls, account)],
                )
            )
        self._watermark(record.source, max(blocks))

    def _watermark(self, source: str, block: int) -> None:
        state = self.sources[source]
        if block > state.watermark:
            state.watermark = block

    def _realm_created(self, record: Record, seq: int, e: RealmCreated) -> None:
        self.realms[e.realm] = RealmState(e.keeper, e.params, e.block)
        self._realm_updates.append((e.realm, e.keeper, e.params, e.block))
        self._params_row(record, seq, e.realm, e.params)

    def _params_changed(self, record: Record, seq: int, e: RealmParamsChanged) -> None:
        realm = self._realm(e.realm)
        realm.params = e.params
        self._realm_updates.append((e.realm, realm.keeper, e.params, realm.created_block))
        self._params_row(record, seq, e.realm, e.params)

    def _params_row(self, record: Record, seq: int, realm: str, p: RealmParams) -> None:
        self.realms[realm].params_history.append((record.source, seq, p))
        self._rows["realm_params"].append(
            (
                realm,
                record.source,
                seq,
                p.rfr_bps,
                p.stake_per_mpb,
                p.epoch_blocks,
                p.funding_period_blocks,
                p.weight_router_bps,
                p.weight_service_bps,
                p.weight_vendor_bps,
                p.price_per_message,
            )
        )

    def _api_enabled(self, record: Record, seq: int, e: ApiEnabled) -> None:
        self._realm(e.realm).apis.append((e.api, e.vendor, record.source, seq))
        self._rows["apis"].append((e.realm, e.api, e.vendor, e.block, record.source, seq))

    def _stake_changed(self, record: Record, seq: int, e: StakeChanged) -> None:
        realm = self._realm(e.realm)
        history = realm.stakes.setdefault((e.staker, e.role, e.target), [])
        bisect.insort(history, (e.block, e.log_index, e.amount, record.source, seq))
        self._rows["stakes"].append(
            (
                e.realm,
                e.staker,
                e.role,
                e.target,
                e.amount,
                e.tx_hash,
                e.block,
                e.log_index,
                record.source,
                seq,
            )
        )

    def _chain_head(self, record: Record, seq: int, e: ChainHead) -> None:
        self._watermark(record.source, e.block)

    def _swap(self, record: Record, seq: int, e: Event) -> None:
        peer = getattr(e, "peer", getattr(e, "beneficiary", ""))
        self._rows["swap_events"].append(
            (
                e.realm,
                record.source,
                seq,
                e.TYPE,
                peer,
                getattr(e, "cumulative", getattr(e, "balance", 0)),
                getattr(e, "amount", 0),
                getattr(e, "reason", ""),
                getattr(e, "block", 0),
            )
        )
        self._watermark(record.source, getattr(e, "block", 0))

    def _settlement(
        self, record: Record, seq: int, e: SettlementSubmitted | SettlementConfirmed
    ) -> None:
        root = getattr(e, "root", "")
        total = getattr(e, "total", 0)
        block = getattr(e, "block", 0)
        self._rows["settlements"].append(
            (
                e.realm,
                e.epoch,
                e.TYPE,
                e.chain_id,
                e.contract,
                e.tx_hash,
                root,
                total,
                block,
                record.source,
                seq,
            )
        )

    def _realm(self, name: str) -> RealmState:
        realm = self.realms.get(name)
        if realm is None:
            raise _Refused("unknown_realm", f"realm {name!r} does not exist")
        return realm

    # -- epochs ---------------------------------------------------------------------------------------
    def epoch_close_ready(self, record: Record) -> Verdict:
        """An EpochClosed waits until every source reached its mark (else payouts would differ)."""
        for event in record.events:
            if isinstance(event, EpochClosed):
                for source, mark in event.marks.items():
                    if self.sources.get(source, SourceState()).last_seq < mark:
                        return Verdict(
                            Outcome.WAIT, "marks_not_reached", f"{source} below seq {mark}"
                        )
        return APPLIED

    def _check_epoch_close(self, e: EpochClosed) -> None:
        realm = self._realm(e.realm)
        if e.epoch <= realm.closed_epoch:
            raise _Refused("epoch_already_closed", f"{e.realm} epoch {e.epoch} closed before")
        if e.epoch != realm.closed_epoch + 1 and realm.closed_epoch >= 0:
            raise _Refused(
                "epoch_out_of_order", f"{e.realm} epoch {e.epoch} after {realm.closed_epoch}"
            )
        if epoch_bounds(e.epoch, realm.params.epoch_blocks) != (e.first_block, e.last_block):
            raise _Refused("schema", f"epoch {e.epoch} bounds {e.first_block}..{e.last_block}")

    def _epoch_closed(self, record: Record, seq: int, e: EpochClosed) -> None:
        realm = self._realm(e.realm)
        first, last = e.first_block, e.last_block
        prev_marks = realm.marks
        # stake all marks cumulative: a source absent from `marks` keeps its previous mark
        marks = {**prev_marks, **e.marks}
        rows = self.con.execute(
            "SELECT source, last_seq, epoch, payee_class, account, messages FROM usage_records WHERE realm = ? AND epoch <= ?",
            [e.realm, e.epoch],
        ).fetchall() + [
            r[1:7] for r in self._rows["usage_records"] if r[0] == e.realm and r[3] <= e.epoch
        ]
        used: dict[str, Counter[str]] = defaultdict(Counter)
        late: dict[str, Counter[str]] = defaultdict(Counter)
        late_records: Counter[tuple[str, int, int]] = Counter()
        for source, last_seq, epoch, cls, account, n in rows:
            mark = marks.get(source, 0)
            if epoch == e.epoch:
                counts = last_seq <= mark
            else:
                counts = prev_marks.get(source, 0) < last_seq <= mark
            if not counts:
                continue
            used[cls][account] += n
            if epoch < e.epoch:
                late[cls][account] += n
                if cls == "router":
                    late_records[(source, last_seq, epoch)] += n
        # URIs to vendors: longest enabled API prefix
        vendors: Counter[str] = Counter()
        vendors_late: Counter[str] = Counter()
        for uri, n in used.pop("api", Counter()).items():
            vendor = self._vendor(realm, uri, marks)
            if vendor:
                vendors[vendor] += n
                vendors_late[vendor] += late["api"].get(uri, 0)
        used["vendor"] = vendors
        late["vendor"] = vendors_late
        params = realm.params_under(marks)
        spm = params.stake_per_mpb
        provided = {
            cls: {
                a: capacity_messages(
                    realm.changes((a, role, REALM_TARGET), marks), first, last, spm
                )
                for a in used[cls]
            }
            for cls, role in (("router", "router_operator"), ("service", "service_operator"))
        }
        reservation = sum(
            stake_block_sum(realm.changes(key, marks), first, last)
            for key in realm.stakes
            if key[1] in ("user", "service_operator") and key[2] == REALM_TARGET
        )
        result = compute_payouts(params, reservation, realm.carry, used, provided)
        digest = payout_digest(e.realm, e.epoch, result.payouts)
        for cls in ("router", "service", "vendor"):
            for account, n in used[cls].items():
                cap = provided.get(cls, {}).get(account, n)
                self._rows["usage"].append(
                    (e.realm, e.epoch, cls, account, n, late[cls].get(account, 0), cap, min(n, cap))
                )
        for p in result.payouts:
            self._rows["payouts"].append((e.realm, e.epoch, p.account, p.payee_class, p.amount))
        for (source, last_seq, block_epoch), n in late_records.items():
            self._rows["late_records"].append((e.realm, source, last_seq, block_epoch, e.epoch, n))
        self._epoch_rows.append(
            (
                e.realm,
                e.epoch,
                first,
                last,
                orjson.dumps(marks, option=orjson.OPT_SORT_KEYS).decode(),
                result.funding,
                result.carry_in,
                result.total,
                result.remainder,
                len(result.payouts),
                digest,
                sum(late["router"].values()),
                None,
            )
        )
        realm.closed_epoch, realm.marks, realm.carry = e.epoch, marks, result.remainder
        if self.on_payouts is not None:
            event = PayoutsComputed(
                realm=e.realm,
                epoch=e.epoch,
                funding=result.funding,
                total=result.total,
                remainder=result.remainder,
                payees=len(result.payouts),
                digest=digest,
            )
            callback = self.on_payouts
            self._after_commit.append(lambda: callback(event))

    @staticmethod
    def _vendor(realm: RealmState, uri: str, marks: dict[str, int]) -> str:
        best = ""
        vendor = ""
        for prefix, who, source, seq in realm.apis:
            if seq <= marks.get(source, 0) and uri.startswith(prefix) and len(prefix) > len(best):
                best, vendor = prefix, who
        return vendor

    def _payouts_computed(self, record: Record, seq: int, e: PayoutsComputed) -> None:
        self._digest_confirmations.append((e.realm, e.epoch, e.digest))

    def _check_payouts(self, e: PayoutsComputed) -> None:
        row = self.con.execute(
            "SELECT digest FROM epochs WHERE realm = ? AND epoch = ?", [e.realm, e.epoch]
        ).fetchone()
        staged = [r[10] for r in self._epoch_rows if r[0] == e.realm and r[1] == e.epoch]
        ours = staged[0] if staged else (row[0] if row else None)
        if ours is None:
            raise _Refused("payouts_for_open_epoch", f"{e.realm} epoch {e.epoch} is not closed")
        if ours != e.digest:
            raise _Refused(
                "payout_digest_mismatch",
                f"{e.realm} epoch {e.epoch}: log {e.digest}, computed {ours}",
            )

    # -- commit ---------------------------------------------------------------------------------------
    def reject(self, reason: str) -> None:
        self.rejected[reason] += 1
        self._dirty_rejections = True

    def set_offset(
        self, topic: str, part: int, next_offset: int, ahead: set[int] | None = None
    ) -> None:
        """Everything below `next_offset` is decided, and so are the `ahead` offsets above it."""
        self.offsets[(topic, part)] = next_offset
        self.ahead[(topic, part)] = {o for o in (ahead or ()) if o >= next_offset}
        self._dirty_offsets.add((topic, part))

    def commit(self) -> None:
        """Write everything staged and the consumed offsets in one DuckDB transaction."""
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            for realm, keeper, params, created in self._realm_updates:
                p = params
                con.execute(
                    "INSERT OR REPLACE INTO realms VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    [
                        realm,
                        keeper,
                        p.rfr_bps,
                        p.stake_per_mpb,
                        p.epoch_blocks,
                        p.funding_period_blocks,
                        p.weight_router_bps,
                        p.weight_service_bps,
                        p.weight_vendor_bps,
                        p.price_per_message,
                        created,
                    ],
                )
            for table, rows in self._rows.items():
                store.append_rows(con, table, rows)
            store.append_rows(con, "epochs", self._epoch_rows)
            for realm, epoch, digest in self._digest_confirmations:
                con.execute(
                    "UPDATE epochs SET confirmed_digest = ? WHERE realm = ? AND epoch = ?",
                    [digest, realm, epoch],
                )
            store.append_rows(con, "seq_gaps", self._gaps)
            if self._dirty_sources:
                con.execute(
                    "DELETE FROM sources WHERE source IN (SELECT unnest(?::VARCHAR[]))",
                    [sorted(self._dirty_sources)],
                )
                store.append_rows(
                    con,
                    "sources",
                    [
                        (s, st.last_seq, st.last_hash, st.watermark, st.records, st.events)
                        for s in sorted(self._dirty_sources)
                        for st in (self.sources[s],)
                    ],
                )
            if self._dirty_rejections:
                con.execute("DELETE FROM rejected")
                store.append_rows(con, "rejected", sorted(self.rejected.items()))
            for topic, part in self._dirty_offsets:
                con.execute(
                    "INSERT OR REPLACE INTO offsets VALUES (?, ?, ?)",
                    [topic, part, self.offsets[(topic, part)]],
                )
                con.execute("DELETE FROM applied_ahead WHERE topic = ? AND part = ?", [topic, part])
                store.append_rows(
                    con,
                    "applied_ahead",
                    [(topic, part, o) for o in sorted(self.ahead[(topic, part)])],
                )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        self._rows.clear()
        self._realm_updates.clear()
        self._epoch_rows.clear()
        self._digest_confirmations.clear()
        self._gaps.clear()
        self._dirty_sources.clear()
        self._dirty_offsets.clear()
        self._dirty_rejections = False
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            callback()

    # -- epoch closer (live only) ------------------------------------------------------------------------
    def due_epochs(self, grace_blocks: int) -> list[EpochClosed]:
        """Epochs whose every active source's watermark passed the last block plus `grace_blocks`."""
        due = []
        chain = self.chain_watermark()
        for name, realm in sorted(self.realms.items()):
            epoch = (
                realm.closed_epoch + 1
                if realm.closed_epoch >= 0
                else realm.created_block // realm.params.epoch_blocks
            )
            first, last = epoch_bounds(epoch, realm.params.epoch_blocks)
            if chain < last + grace_blocks:
                continue
            active = [s for s in realm.sources if realm.stake_at(realm.provision_key(s), last) > 0]
            if any(
                self.sources[s].watermark < last + grace_blocks for s in active if s in self.sources
            ):
                continue
            marks = {
                s: self.sources[s].last_seq
                for s in sorted(realm.sources | set(self.trust.indexer))
                if s in self.sources
            }
            due.append(
                EpochClosed(
                    realm=name, epoch=epoch, first_block=first, last_block=last, marks=marks
                )
            )
        return due


class _Refused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


_HANDLERS: dict[type[Event], Callable[[Projector, Record, int, Any], None]] = {
    RealmCreated: Projector._realm_created,
    RealmParamsChanged: Projector._params_changed,
    ApiEnabled: Projector._api_enabled,
    StakeChanged: Projector._stake_changed,
    ChainHead: Projector._chain_head,
    HandshakeCompleted: Projector._swap,
    ChequeIssued: Projector._swap,
    ChequeReceived: Projector._swap,
    ChequeRejected: Projector._swap,
    PeerDisconnected: Projector._swap,
    EpochClosed: Projector._epoch_closed,
    PayoutsComputed: Projector._payouts_computed,
    SettlementSubmitted: Projector._settlement,
    SettlementConfirmed: Projector._settlement,
}

__all__ = ["Projector", "Trust", "Verdict", "Outcome", "Payout"]

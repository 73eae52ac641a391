"""The projector: decides on each verified record and stages its rows for DuckDB.

For each record: the source's seq/prev chain and what its kind may say (`ledger.verify`), a
router's authorization (a provision stake in the realm at every block it reports, decided only
once the indexers' chain heads passed those blocks), then the events. What the events establish
and what an epoch pays is `domain.accounting`'s; the SQL is `ledger.store`'s. Outcomes:

* ``APPLIED`` — its rows are staged; they commit with the Kafka offsets in one transaction;
* ``REJECTED`` — to ``mesh.dead`` with a reason, counted; an authentic record that is refused
  (unauthorized, late duplicate of an epoch close) still advances its source's chain so the
  source's later records are not held up;
* ``WAIT`` — not decidable yet: the source's previous record is not applied yet (it may sit in
  another partition), the chain has not reached the record's blocks, or an epoch close whose
  marks are not reached. The record is retried; it holds back only its own source.

A projector may be one shard of several (ledger/shards.py): it then *owns* the records of some
partitions and only *follows* the others. A followed record passes the same checks up to the
point where it advances its source's chain (signature, seq/prev, and the same waits), so every
shard knows every source's chain exactly as one projector would; an indexer's record is applied
in full everywhere (stakes, realms, chain heads: every shard's decisions need them); any other
followed record changes nothing else. Rows, rejections and gaps count in the owning shard only.

Every decision depends only on the log — a source's events in its seq order, and facts other
sources established before the chain head that lets the decision be taken — never on how
partitions interleave, so a replay from offset 0 produces the same tables (see ledger/audit.py).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable
from itertools import repeat
from typing import Any, NamedTuple

import numpy as np
import orjson

from domain.accounting import (
    CloseRefused,
    EpochClose,
    RealmBook,
    UsageRow,
    canonical_account,
)
from domain.envelope import Record
from domain.events import (
    CHAIN_WIDE_EVENTS,
    METER_KINDS,
    PARAM_FIELDS,
    ApiEnabled,
    CallAssessed,
    ChainHead,
    ChequeIssued,
    ChequeReceived,
    ChequeRejected,
    EpochClosed,
    Event,
    HandshakeCompleted,
    KeeperChanged,
    LogRetracted,
    OperatorConvicted,
    PayoutsComputed,
    PeerDisconnected,
    PriceAgreed,
    PriceObserved,
    RealmCreated,
    RealmParams,
    RealmParamsChanged,
    ResultMismatch,
    RouterAnnounced,
    RouterWithdrawn,
    SettlementConfirmed,
    SettlementSubmitted,
    StakeChanged,
    event_from_dict,
    event_to_dict,
    log_identity,
)
from domain.market import MARKET_TABLES, Quote, QuoteRefused, check_signatures, market_row
from domain.stakes import provision_key
from ledger import store
from ledger.verify import (
    APPLIED,
    Outcome,
    SourceState,
    Trust,
    Verdict,
    check_allowed,
    check_chain,
    prepare,
    rejected,
    reported_blocks,
    wait,
)

log = logging.getLogger(__name__)

INVOCATION = METER_KINDS.index("invocation")
#: a message received over a router link: the sending router earns for it (link_out), the
#: receiving one does not, so a forwarded message earns once per link it crosses
LINK_IN = METER_KINDS.index("link_in")
#: the table each registry event (ServiceRegistry, RouterRegistry) adds a change row to: what a
#: retraction of its log deletes
REGISTRY_TABLES: dict[type[Event], str] = {
    **MARKET_TABLES,
    RouterAnnounced: "router_endpoints",
    RouterWithdrawn: "router_endpoints",
}


class Projector:
    """Applies verified records to the ledger's state and DuckDB. One writer per database file."""

    def __init__(
        self,
        con: Any,
        trust: Trust,
        on_payouts: Callable[[PayoutsComputed], None] | None = None,
    ) -> None:
        self.con = con
        self.trust = trust
        self.on_payouts = on_payouts
        self.sources: dict[str, SourceState] = {}
        self.realms: dict[str, RealmBook] = {}
        #: routers that metered traffic in each realm (whose watermarks an epoch close waits for)
        self.realm_sources: dict[str, set[str]] = defaultdict(set)
        #: every account that ever held a router provision in any realm
        self.known_routers: set[str] = set()
        self.offsets: dict[tuple[str, int], int] = {}
        #: offsets above a partition's low-water offset already decided (applied or rejected)
        self.ahead: dict[tuple[str, int], set[int]] = defaultdict(set)
        self.rejected: Counter[str] = Counter()
        #: realms whose records this projector owns (every realm, unless it is a shard)
        self.owned_realms: set[str] = set()
        self._batch = store.Batch()
        self._pending: list[tuple[str, UsageRow]] = []  # staged, not yet counted usage
        self._staged_digests: dict[tuple[str, int], str] = {}
        self._dirty_sources: set[str] = set()
        self._dirty_series: dict[tuple[str, str, str], int] = {}
        self._dirty_rejections = False
        self._after_commit: list[Callable[[], None]] = []
        self.load()

    # -- state ----------------------------------------------------------------------------------
    def load(self) -> None:
        rows = lambda sql: store.rows_of(self.con, sql)  # noqa: E731
        for topic, part, nxt in rows("SELECT topic, part, next_offset FROM offsets"):
            self.offsets[(topic, part)] = nxt
        for topic, part, off in rows('SELECT topic, part, "offset" FROM applied_ahead'):
            self.ahead[(topic, part)].add(off)
        for src, seq, h, wm, recs, evs in rows("SELECT * FROM sources"):
            self.sources[src] = SourceState(seq, h, wm, recs, evs)
        params_rows = rows("SELECT * FROM realm_params ORDER BY realm, start_block, block, seq")
        created = {r[0]: _params(r[8:]) for r in params_rows if r[1] == "created"}
        for realm, keeper, created_block in rows("SELECT realm, keeper, created_block FROM realms"):
            self.realms[realm] = RealmBook(realm, keeper, created[realm], created_block)
        for row in params_rows:
            realm, kind, source, seq, block, start = row[:6]
            if kind == "changed":
                self.realms[realm].change_params(_params(row[8:]), block, source, seq, start)
        for realm, api, vendor, _, source, seq in rows("SELECT * FROM apis ORDER BY seq"):
            self.realms[realm].enable_api(api, vendor, source, seq)
        for realm, staker, role, target, amount, _, block, li, source, seq in rows(
            "SELECT * FROM stakes ORDER BY block, log_index, source, seq"
        ):
            self.realms[realm].change_stake(
                staker, role, target, int(amount), block, li, source, seq
            )
            if role == "router_operator":
                self.known_routers.add(canonical_account(staker))
        for realm, epoch, marks, remainder in rows(
            "SELECT realm, epoch, marks, remainder FROM epochs ORDER BY epoch"
        ):
            self.realms[realm].restore_close(epoch, orjson.loads(marks), int(remainder))
        for realm, source in rows("SELECT DISTINCT realm, source FROM usage_blocks"):
            self.realm_sources[realm].add(source)
        for reason, n in rows("SELECT reason, records FROM rejected"):
            self.rejected[reason] = n
        self.owned_realms = {r for (r,) in rows("SELECT realm FROM shard_realms")}

    def chain_watermark(self) -> int:
        """How far the chain is known: the least head among configured indexer sources."""
        marks = [self.sources[s].watermark for s in self.trust.indexer if s in self.sources]
        if len(marks) < len(self.trust.indexer) or not marks:
            return -1
        return min(marks)

    # -- one record -----------------------------------------------------------------------------
    prepare = staticmethod(prepare)

    def offer_record(self, record: Record, owned: bool = True) -> Verdict:
        """Decide on one verified record and stage its effects; nothing is written until commit().
        A record this shard does not own (`owned=False`) is followed: see the module docstring."""
        verdict = check_chain(record, self.sources.get(record.source))
        if verdict is not APPLIED:
            return verdict
        role = self.trust.role(record.source)
        verdict = check_allowed(record, role, record.source in self.known_routers)
        if verdict is APPLIED and role == "router":
            verdict = self._authorize_router(record)
        if verdict is APPLIED:
            verdict = self._epoch_close_ready(record)
        if verdict.outcome is Outcome.WAIT:
            return verdict
        self._advance(record, owned)
        if owned and record.realm not in self.owned_realms:
            self.owned_realms.add(record.realm)
            self._batch.owned_realms.append(record.realm)
        if not owned and role != "indexer":
            return verdict  # its shard applies it; here its source's chain moved on
        if verdict.outcome is Outcome.REJECTED:
            return verdict
        try:
            self._precheck(record)
        except (_Refused, CloseRefused) as exc:
            return rejected(exc.reason, exc.detail)
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
            elif isinstance(event, CHAIN_WIDE_EVENTS) and event.realm == "":
                pass  # chain-wide facts of an indexer (heads, chequebooks, token, prices)
            elif event.realm not in self.realms and event.realm not in created:
                raise _Refused("unknown_realm", f"realm {event.realm!r} does not exist")
            if isinstance(event, EpochClosed):
                self.realms[event.realm].check_close(
                    event.epoch, event.first_block, event.last_block
                )
            if isinstance(event, PayoutsComputed):
                self._check_payouts(event)
            if isinstance(event, PriceAgreed):
                _check_quote(event)
            if isinstance(event, LogRetracted) and self._find_log(event) is None:
                raise _Refused(
                    "unknown_log",
                    f"retraction of log {event.log_index} of block {event.block_hash}, which is "
                    "not (or no longer) in the ledger",
                )

    def declare_gap(self, record: Record, owned: bool = True) -> None:
        """Accept that the seqs before `record` will not come: record the gap (in the shard that
        owns `record`), resume the chain."""
        state = self.sources.setdefault(record.source, SourceState())
        if owned:
            self._batch.rows["seq_gaps"].append((record.source, state.last_seq + 1, record.seq - 1))
        state.last_seq, state.last_hash = record.seq - 1, record.prev
        self._dirty_sources.add(record.source)

    def _advance(self, record: Record, owned: bool) -> None:
        state = self.sources.setdefault(record.source, SourceState())
        state.last_seq, state.last_hash = record.last_seq, record.hash_hex
        if owned:  # shards' counts add up to one projector's
            state.records += 1
            state.events += record.count
        self._dirty_sources.add(record.source)

    def _authorize_router(self, record: Record) -> Verdict:
        """A router must hold a provision stake in the realm at every block it reports."""
        first_block, last_block = reported_blocks(record)
        chain = self.chain_watermark()
        if chain < last_block:
            return wait("chain_behind", f"chain known to {chain}, record at {last_block}")
        known = record.source in self.known_routers
        realm = self.realms.get(record.realm)
        if realm is None:
            if not known:
                return rejected("unknown_source", f"{record.source} is not a known source")
            return rejected("unknown_realm", f"realm {record.realm!r} does not exist")
        if provision_key(record.source, "router") not in realm.stakes.positions:
            if not known:
                return rejected("unknown_source", f"{record.source} is not a known source")
            return rejected("unauthorized_router", f"no provision stake in {record.realm}")
        if not realm.router_authorized(record.source, first_block, last_block):
            return rejected(
                "unauthorized_router",
                f"no provision stake in {record.realm} at blocks {first_block}..{last_block}",
            )
        return APPLIED

    # -- applying events ---------------------------------------------------------------------------
    def _apply(self, record: Record) -> None:
        if record.metered is not None:
            self._apply_metered(record)
            return
        for seq, event in record.iter_events():
            _HANDLERS[type(event)](self, record, seq, event)
            ident = log_identity(event)
            if ident is not None and not isinstance(event, LogRetracted):
                self._batch.rows["chain_logs"].append(
                    (event.realm, *ident, event.TYPE, getattr(event, "block", 0),
                     orjson.dumps(event_to_dict(event)).decode(), record.source, seq, None)
                )  # fmt: skip

    def _apply_metered(self, record: Record) -> None:
        """Per block: messages and bytes; per epoch: the router's credit, and for invocations
        the receiving service operator's and the URI's. Array operations over the record's
        columns; Python runs per distinct block run, peer and URI, never per message."""
        m = record.metered
        assert m is not None
        book = self.realms[record.realm]
        self.realm_sources[record.realm].add(record.source)
        sizes = _exact(m.payload_bytes)
        blocks, per_block, at_block = _groups(m.block)
        bytes_per_block = np.add.reduceat(sizes[per_block.order], per_block.starts)
        counts = per_block.counts
        epoch_of_block = _epochs_of(book, blocks)
        self._batch.rows["usage_blocks"].extend(
            zip(
                repeat(record.realm),
                blocks.tolist(),
                repeat(record.source),
                counts.tolist(),
                bytes_per_block.tolist(),
            )
        )
        credit: dict[tuple[int, str, str], list[int]] = {}
        epochs, per_epoch, _ = _groups(epoch_of_block)
        earning, earning_bytes = counts, bytes_per_block
        received = m.kind_idx == LINK_IN
        if received.any():
            earning = counts - np.add.reduceat(
                received[per_block.order].astype(np.int64), per_block.starts
            )
            unearned = np.where(received, sizes, 0)
            earning_bytes = bytes_per_block - np.add.reduceat(
                unearned[per_block.order], per_block.starts
            )
        routed = np.add.reduceat(earning[per_epoch.order], per_epoch.starts).tolist()
        routed_bytes = np.add.reduceat(earning_bytes[per_epoch.order], per_epoch.starts).tolist()
        for epoch, n, size in zip(epochs.tolist(), routed, routed_bytes, strict=True):
            if n:
                credit[(epoch, "router", record.source)] = [n, size]
        # service operators by invocations they received; APIs (vendors) by invocations of their URIs
        invoked = np.flatnonzero(m.kind_idx == INVOCATION)
        if len(invoked):
            epoch_idx = np.searchsorted(epochs, epoch_of_block[at_block[invoked]])
            for cls, column, names in (
                ("service", m.to_idx, [canonical_account(p) for p in m.peers]),
                ("api", m.uri_idx, m.uris),
            ):
                index = column[invoked].astype(np.int64)
                keys, per_key, _ = _groups(epoch_idx * (len(names) + 1) + index)
                n_key = per_key.counts.tolist()
                bytes_key = np.add.reduceat(sizes[invoked][per_key.order], per_key.starts).tolist()
                for key, n, size in zip(keys.tolist(), n_key, bytes_key, strict=True):
                    e, i = divmod(key, len(names) + 1)
                    slot = credit.setdefault((int(epochs[e]), cls, names[i]), [0, 0])
                    slot[0] += n
                    slot[1] += size
        usage = self._batch.rows["usage_records"]
        for (epoch, cls, account), (n, size) in credit.items():
            usage.append(
                (record.realm, record.source, record.last_seq, epoch, cls, account, n, size)
            )
            self._pending.append(
                (record.realm, UsageRow(record.source, record.last_seq, epoch, cls, account, n))
            )
        self._watermark(record.source, int(blocks[-1]))

    def _watermark(self, source: str, block: int) -> None:
        state = self.sources[source]
        if block > state.watermark:
            state.watermark = block

    def _realm_created(self, record: Record, seq: int, e: RealmCreated) -> None:
        book = self.realms[e.realm] = RealmBook(e.realm, e.keeper, e.params, e.block)
        self._stage_realm(book)
        self._params_row(record, seq, e.realm, "created", e.block, 0, 0, e.params)

    def _params_changed(self, record: Record, seq: int, e: RealmParamsChanged) -> None:
        book = self._realm(e.realm)
        floor_block = self.sources[record.source].watermark + 1
        change = book.change_params(e.params, e.block, record.source, seq, floor_block)
        self._stage_realm(book)
        epoch = book.effective_epoch(change)
        self._params_row(
            record, seq, e.realm, "changed", e.block, change.start_block, epoch, e.params
        )

    def _stage_realm(self, book: RealmBook) -> None:
        p = book.params
        self._batch.realms[book.name] = (
            book.name, book.keeper, p.rfr_bps, p.stake_per_mpb, p.epoch_blocks,
            p.funding_period_blocks, p.weight_router_bps, p.weight_service_bps,
            p.weight_vendor_bps, p.price_per_message, book.created_block, p.usd_price_per_message,
            p.price_feed,
        )  # fmt: skip

    def _params_row(
        self,
        record: Record,
        seq: int,
        realm: str,
        kind: str,
        block: int,
        start_block: int,
        epoch: int,
        p: RealmParams,
    ) -> None:
        effective_block = self.realms[realm].span(epoch).first_block
        self._batch.rows["realm_params"].append(
            (realm, kind, record.source, seq, block, start_block, epoch, effective_block, p.rfr_bps,
             p.stake_per_mpb, p.epoch_blocks, p.funding_period_blocks, p.weight_router_bps,
             p.weight_service_bps, p.weight_vendor_bps, p.price_per_message,
             p.usd_price_per_message, p.price_feed)
        )  # fmt: skip

    def _api_enabled(self, record: Record, seq: int, e: ApiEnabled) -> None:
        self._realm(e.realm).enable_api(e.api, e.vendor, record.source, seq)
        self._batch.rows["apis"].append((e.realm, e.api, e.vendor, e.block, record.source, seq))

    def _stake_changed(self, record: Record, seq: int, e: StakeChanged) -> None:
        book = self._realm(e.realm)
        book.change_stake(
            e.staker, e.role, e.target, e.amount, e.block, e.log_index, record.source, seq
        )
        key = (canonical_account(e.staker), e.role, canonical_account(e.target))
        if e.role == "router_operator":
            self.known_routers.add(key[0])
        for kind, account in book.stakes.series_moved_by(key):
            series = (e.realm, kind, account)
            self._dirty_series[series] = min(self._dirty_series.get(series, e.block), e.block)
        self._batch.rows["stakes"].append(
            (e.realm, e.staker, e.role, e.target, e.amount, e.tx_hash, e.block, e.log_index,
             record.source, seq)
        )  # fmt: skip

    def _chain_head(self, record: Record, seq: int, e: ChainHead) -> None:
        self._watermark(record.source, e.block)

    def _swap(self, record: Record, seq: int, e: Event) -> None:
        peer = getattr(e, "peer", getattr(e, "beneficiary", ""))
        self._batch.rows["swap_events"].append(
            (e.realm, record.source, seq, e.TYPE, peer,
             getattr(e, "cumulative", getattr(e, "balance", 0)), getattr(e, "amount", 0),
             getattr(e, "reason", ""), getattr(e, "block", 0))
        )  # fmt: skip
        self._watermark(record.source, getattr(e, "block", 0))

    def _settlement(
        self, record: Record, seq: int, e: SettlementSubmitted | SettlementConfirmed
    ) -> None:
        self._batch.rows["settlements"].append(
            (e.realm, e.epoch, e.TYPE, e.chain_id, e.contract, e.tx_hash, getattr(e, "root", ""),
             getattr(e, "total", 0), getattr(e, "block", 0), record.source, seq)
        )  # fmt: skip

    # -- chain facts seen by the indexer, and their retraction ----------------------------------------
    def _chain_fact(self, record: Record, seq: int, e: Event) -> None:
        """Chequebook, token and settlement logs: kept in chain_logs (see _apply), nothing else."""

    def _market(self, record: Record, seq: int, e: Event) -> None:
        """ServiceRegistry changes: one row each in services, offers or rewards."""
        table, row = market_row(e, record.source, seq)
        self._batch.rows[table].append(row)

    def _router_endpoint(
        self, record: Record, seq: int, e: RouterAnnounced | RouterWithdrawn
    ) -> None:
        """RouterRegistry changes: one row each in router_endpoints (the view takes the latest)."""
        url, stake = (e.url, e.stake) if isinstance(e, RouterAnnounced) else ("", 0)
        self._batch.rows["router_endpoints"].append(
            (e.realm, e.operator, url, stake, bool(url), e.block, e.log_index, record.source, seq)
        )

    def _call_assessed(self, record: Record, seq: int, e: CallAssessed) -> None:
        self._batch.rows["call_assessments"].append(
            (e.realm, e.router, e.client, e.operator, e.service_id, e.outcome, e.latency_ms,
             e.charged, e.quote, e.block, record.source, seq)
        )  # fmt: skip

    def _price_agreed(self, record: Record, seq: int, e: PriceAgreed) -> None:
        self._batch.rows["quotes"].append(
            (e.realm, e.router, e.client, e.operator, e.service_id, e.price_per_call,
             e.expiry_block, e.quote_id, e.block, record.source, seq)
        )  # fmt: skip

    def _result_mismatch(self, record: Record, seq: int, e: ResultMismatch) -> None:
        self._batch.rows["mismatches"].append(
            (e.realm, e.router, e.service_id, e.request_digest, e.operator, e.compared,
             e.verifier, e.block, record.source, seq)
        )  # fmt: skip

    def _operator_convicted(self, record: Record, seq: int, e: OperatorConvicted) -> None:
        self._batch.rows["convictions"].append(
            (e.realm, e.router, e.operator, e.service_id, e.mismatches, e.block, record.source, seq)
        )

    def _keeper_changed(self, record: Record, seq: int, e: KeeperChanged) -> None:
        book = self._realm(e.realm)
        book.keeper = e.keeper
        self._stage_realm(book)

    def _price_observed(self, record: Record, seq: int, e: PriceObserved) -> None:
        self._batch.rows["prices"].append(
            (e.chain_id, e.feed, e.round_id, str(e.answer), e.decimals, e.updated_at, e.status,
             e.block, e.block_hash, record.source, seq)
        )  # fmt: skip

    def _find_log(self, e: LogRetracted) -> tuple[Event, str, int] | None:
        """The live (not retracted) chain log a retraction names: (event, source, seq)."""
        ident = (e.chain_id, e.block_hash, e.log_index)
        retracted = {tuple(r[:3]) for r in self._batch.retracted_logs}
        if ident in retracted:
            return None
        for row in reversed(self._batch.rows["chain_logs"]):
            if tuple(row[1:4]) == ident:
                return event_from_dict(orjson.loads(row[6])), row[7], row[8]
        found = store.chain_log(self.con, *ident)
        if found is None:
            return None
        body, source_seq, source = found
        return event_from_dict(orjson.loads(body)), source, source_seq

    def _log_retracted(self, record: Record, seq: int, e: LogRetracted) -> None:
        """Undo what a retracted log did; flag (never rewrite) the closed epochs it counted in."""
        found = self._find_log(e)
        assert found is not None  # _precheck refused the record otherwise
        event, source, source_seq = found
        batch = self._batch
        batch.retracted_logs.append((e.chain_id, e.block_hash, e.log_index, seq))
        market_table = REGISTRY_TABLES.get(type(event))
        if market_table is not None:  # a registry change: its row goes, the views follow
            batch.undone_rows.append((market_table, {"source": source, "seq": source_seq}))
        book = self.realms.get(event.realm)
        if book is None:
            return  # a chain-wide fact: marked retracted, nothing derived from it
        counted = source_seq <= book.marks.get(source, 0)
        closed = sorted(
            set(store.closed_epochs_ending_from(self.con, event.realm, e.block))
            | {k[1] for k in self._staged_digests if k[0] == event.realm}
        )
        if counted:
            batch.rows["reorg_flags"].extend(
                (event.realm, epoch, e.chain_id, e.block_hash, e.log_index, e.retracted, e.block,
                 record.source, seq)
                for epoch in closed
            )  # fmt: skip
        own = {"realm": event.realm, "source": source, "seq": source_seq}
        if isinstance(event, StakeChanged):
            book.retract_stake(
                event.staker, event.role, event.target, event.block, event.log_index,
                source, source_seq,
            )  # fmt: skip
            key = (canonical_account(event.staker), event.role, canonical_account(event.target))
            for kind, account in book.stakes.series_moved_by(key):
                series = (event.realm, kind, account)
                self._dirty_series[series] = min(self._dirty_series.get(series, e.block), e.block)
            batch.undone_rows.append(("stakes", {**own, "log_index": event.log_index}))
        elif isinstance(event, ApiEnabled):
            book.retract_api(event.api, source, source_seq)
            batch.undone_rows.append(("apis", own))
        elif isinstance(event, RealmParamsChanged):
            book.schedule.retract(source, source_seq)
            self._stage_realm(book)
            batch.undone_rows.append(("realm_params", own))
        elif isinstance(event, KeeperChanged):
            book.keeper = event.previous_keeper
            self._stage_realm(book)
        elif isinstance(event, RealmCreated):
            # its later logs were retracted before it (newest first); what remains is the realm
            del self.realms[event.realm]
            batch.realms.pop(event.realm, None)
            batch.undone_rows += [("realms", {"realm": event.realm}), ("realm_params", own)]

    def _realm(self, name: str) -> RealmBook:
        realm = self.realms.get(name)
        if realm is None:
            raise _Refused("unknown_realm", f"realm {name!r} does not exist")
        return realm

    # -- epochs -------------------------------------------------------------------------------------
    def _epoch_close_ready(self, record: Record) -> Verdict:
        """An EpochClosed waits until every source reached its mark (else payouts would differ)."""
        for event in record.events:
            if isinstance(event, EpochClosed):
                for source, mark in event.marks.items():
                    if self.sources.get(source, SourceState()).last_seq < mark:
                        return wait("marks_not_reached", f"{source} below seq {mark}")
        return APPLIED

    def _epoch_closed(self, record: Record, seq: int, e: EpochClosed) -> None:
        book = self._realm(e.realm)
        rows = [UsageRow(*r) for r in store.pending_usage(self.con, e.realm)]
        rows += [row for realm, row in self._pending if realm == e.realm]
        close = book.close(e.epoch, e.marks, rows)
        self._count_pending(e.realm, close)
        batch = self._batch
        batch.rows["usage"].extend(
            (e.realm, e.epoch, u.payee_class, u.account, u.messages, u.late_messages, u.capacity,
             u.credit)
            for u in close.usage
        )  # fmt: skip
        batch.rows["payouts"].extend(
            (e.realm, e.epoch, p.account, p.payee_class, p.amount) for p in close.result.payouts
        )
        batch.rows["late_records"].extend(
            (e.realm, r.source, r.last_seq, r.block_epoch, e.epoch, r.messages) for r in close.late
        )
        result = close.result
        batch.rows["epochs"].append(
            (e.realm, e.epoch, close.span.first_block, close.span.last_block,
             orjson.dumps(close.marks, option=orjson.OPT_SORT_KEYS).decode(), result.funding,
             result.carry_in, result.total, result.remainder, len(result.payouts), close.digest,
             close.late_messages, None)
        )  # fmt: skip
        self._staged_digests[(e.realm, e.epoch)] = close.digest
        if self.on_payouts is not None:
            event = payouts_event(e.realm, e.epoch, result.funding, result.total,
                                  result.remainder, len(result.payouts), close.digest)  # fmt: skip
            callback = self.on_payouts
            self._after_commit.append(lambda: callback(event))

    def _count_pending(self, realm: str, close: EpochClose) -> None:
        """Drop the usage an epoch close counted from the pending usage (staged and stored)."""
        marks, epoch = close.marks, close.span.epoch
        self._pending = [
            (r, row)
            for r, row in self._pending
            if r != realm or row.epoch > epoch or row.last_seq > marks.get(row.source, 0)
        ]
        self._batch.counted_usage.append((realm, epoch, dict(marks)))

    def _payouts_computed(self, record: Record, seq: int, e: PayoutsComputed) -> None:
        self._batch.confirmations.append((e.realm, e.epoch, e.digest))

    def _check_payouts(self, e: PayoutsComputed) -> None:
        ours = self._staged_digests.get((e.realm, e.epoch)) or store.epoch_digest(
            self.con, e.realm, e.epoch
        )
        if ours is None:
            raise _Refused("payouts_for_open_epoch", f"{e.realm} epoch {e.epoch} is not closed")
        if ours != e.digest:
            raise _Refused(
                "payout_digest_mismatch",
                f"{e.realm} epoch {e.epoch}: log {e.digest}, computed {ours}",
            )

    # -- commit -------------------------------------------------------------------------------------
    def reject(self, reason: str) -> None:
        self.rejected[reason] += 1
        self._dirty_rejections = True

    def set_offset(
        self, topic: str, part: int, next_offset: int, ahead: set[int] | None = None
    ) -> None:
        """Everything below `next_offset` is decided, and so are the `ahead` offsets above it."""
        self.offsets[(topic, part)] = next_offset
        self.ahead[(topic, part)] = {o for o in (ahead or ()) if o >= next_offset}
        self._batch.offsets[(topic, part)] = (
            next_offset,
            sorted(self.ahead[(topic, part)]),
        )

    def commit(self) -> None:
        """Write everything staged and the consumed offsets in one DuckDB transaction."""
        batch = self._batch
        batch.rows["usage_pending"].extend(
            (realm, r.source, r.last_seq, r.epoch, r.payee_class, r.account, r.messages)
            for realm, r in self._pending
        )
        for (realm, kind, account), from_block in self._dirty_series.items():
            points = self.realms[realm].stakes.series(kind, account)
            batch.stake_series[(realm, kind, account)] = (from_block, points)
        batch.sources = [
            (s, st.last_seq, st.last_hash, st.watermark, st.records, st.events)
            for s in sorted(self._dirty_sources)
            for st in (self.sources[s],)
        ]
        if self._dirty_rejections:
            batch.rejected = sorted(self.rejected.items())
        store.commit(self.con, batch)
        self._batch = store.Batch()
        self._pending.clear()
        self._staged_digests.clear()
        self._dirty_sources.clear()
        self._dirty_series.clear()
        self._dirty_rejections = False
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            callback()

    # -- epoch closer (live only) ------------------------------------------------------------------
    def due_epochs(
        self, grace_blocks: int, inactive_after_blocks: int | None = None
    ) -> list[EpochClosed]:
        """Epochs whose every active router's watermark passed the last block plus `grace_blocks`.

        A router is active in an epoch if it metered traffic in the realm, holds a provision at
        the epoch's last block and, when `inactive_after_blocks` is set, its watermark is no more
        than that many blocks behind the chain (a router gone for longer holds nothing open; its
        records, if they ever come, count late)."""
        due = []
        chain = self.chain_watermark()
        for name, book in sorted(self.realms.items()):
            if name not in self.owned_realms:
                continue  # another shard closes it
            span = book.span(book.next_epoch)
            if chain < span.last_block + grace_blocks:
                continue
            waiting = [
                s
                for s in self.realm_sources[name]
                if s in self.sources
                and book.stakes.history(provision_key(s, "router")).amount_at(span.last_block) > 0
                and (
                    inactive_after_blocks is None
                    or chain - self.sources[s].watermark <= inactive_after_blocks
                )
                and self.sources[s].watermark < span.last_block + grace_blocks
            ]
            if waiting:
                continue
            marks = {
                s: self.sources[s].last_seq
                for s in sorted(self.realm_sources[name] | set(self.trust.indexer))
                if s in self.sources
            }
            due.append(
                EpochClosed(
                    realm=name,
                    epoch=span.epoch,
                    first_block=span.first_block,
                    last_block=span.last_block,
                    marks=marks,
                )
            )
        return due

    def unconfirmed_payouts(self) -> list[PayoutsComputed]:
        """PayoutsComputed of closed epochs not yet seen in the log (their emission may have died
        with the process between the close's commit and the emitter's spool)."""
        return [payouts_event(*row) for row in store.unconfirmed_epochs(self.con)]


class _Grouping(NamedTuple):
    order: Any  # the permutation that sorts the keys (stable)
    starts: Any  # where each group starts in that order
    counts: Any  # members of each group


def _groups(keys: Any) -> tuple[Any, _Grouping, Any]:
    """Distinct keys (ascending), how to reduce values over them (``np.add.reduceat(values[
    grouping.order], grouping.starts)``) and each element's group index."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    first = np.empty(len(ordered), dtype=bool)
    first[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    group_of = np.empty(len(ordered), dtype=np.int64)
    group_of[order] = np.cumsum(first) - 1
    counts = np.diff(np.append(starts, len(ordered)))
    return ordered[starts], _Grouping(order, starts, counts), group_of


def _exact(sizes: Any) -> Any:
    """Payload sizes in a dtype whose sums cannot overflow: int64 when the record's total is
    below 2**63 for sure, Python integers otherwise (DuckDB then refuses the row, as before)."""
    if len(sizes) * int(sizes.max()) < 1 << 63:
        return sizes.astype(np.int64)
    return sizes.astype(object)


def _epochs_of(book: RealmBook, blocks: Any) -> Any:
    """The epoch of each distinct block (ascending): one schedule lookup per epoch they span."""
    epochs = np.empty(len(blocks), dtype=np.int64)
    i = 0
    while i < len(blocks):
        epoch = book.epoch_of(int(blocks[i]))
        last = book.span(epoch).last_block
        j = max(int(np.searchsorted(blocks, last, side="right")), i + 1)
        epochs[i:j] = epoch
        i = j
    return epochs


def _params(values: Any) -> RealmParams:
    """A realm_params row's parameter columns (the price feed is the one address)."""
    *numbers, feed = values
    ints = dict(zip(PARAM_FIELDS[:-1], (int(v) for v in numbers), strict=True))
    return RealmParams(**ints, price_feed=str(feed))


def payouts_event(
    realm: str, epoch: int, funding: Any, total: Any, remainder: Any, payees: int, digest: str
) -> PayoutsComputed:
    return PayoutsComputed(
        realm=realm,
        epoch=epoch,
        funding=int(funding),
        total=int(total),
        remainder=int(remainder),
        payees=int(payees),
        digest=digest,
    )


def _check_quote(e: PriceAgreed) -> None:
    """A recorded quote must carry both parties' signatures over exactly its terms."""
    quote = Quote(e.chain_id, e.service_id, e.realm, e.client, e.operator, e.price_per_call,
                  e.expiry_block)  # fmt: skip
    try:
        check_signatures(quote, e.client_signature, e.operator_signature)
    except QuoteRefused as exc:
        raise _Refused("bad_quote", f"quote {e.quote_id}: {exc.detail}") from exc
    if quote.quote_id != e.quote_id:
        raise _Refused("bad_quote", f"quote id {e.quote_id} is not its digest {quote.quote_id}")


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
    KeeperChanged: Projector._keeper_changed,
    PriceObserved: Projector._price_observed,
    LogRetracted: Projector._log_retracted,
    **{
        t: Projector._chain_fact
        for t in CHAIN_WIDE_EVENTS
        if t not in (ChainHead, LogRetracted, PriceObserved)
    },
    **{t: Projector._market for t in MARKET_TABLES},
    RouterAnnounced: Projector._router_endpoint,
    RouterWithdrawn: Projector._router_endpoint,
    CallAssessed: Projector._call_assessed,
    PriceAgreed: Projector._price_agreed,
    ResultMismatch: Projector._result_mismatch,
    OperatorConvicted: Projector._operator_convicted,
}

__all__ = ["Projector", "Trust", "Verdict", "Outcome"]

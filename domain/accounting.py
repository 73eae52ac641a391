"""Epoch accounting of one realm, pure: the epoch schedule, which parameters, stakes, APIs and
usage an epoch counts, credits, funding, pools, payouts and the carried remainder.

The projector and the audit feed a `RealmBook` the realm's events in log order and ask it to close
epochs; nothing here knows of Kafka or DuckDB. The chain decides, never the ledger's timing:

* **Parameters** take effect at the first epoch that starts at or after their block; an epoch uses
  the parameters in force at its first block, its length included (so a change of
  `epoch_blocks` is well defined). Epochs are numbered from block 0 with the realm's first
  `epoch_blocks` and follow each other without gaps.
* **Stakes** count by block (`domain.stakes`): same-block changes in log-index order, the last
  holds; directed stakes back the operator they target.
* **Usage** of a closed epoch counts exactly the records under the close's marks; a record of an
  epoch already closed counts in the next one, flagged late.
* **APIs** match URIs on component boundaries (`a.b` matches `a.b.c`, not `a.bc`); the longest
  enabled prefix wins.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from eth_utils import is_hex_address, to_checksum_address

from domain.economics import EpochPayouts, compute_payouts, payout_digest
from domain.events import RealmParams
from domain.stakes import Marks, RealmStakes, block_sum


@lru_cache(maxsize=65_536)
def canonical_account(account: str) -> str:
    """One spelling per account: EIP-55 for Ethereum addresses, anything else as it is."""
    return to_checksum_address(account) if is_hex_address(account) else account


def api_matches(prefix: str, uri: str) -> bool:
    """Whether an API prefix covers a URI, on WAMP URI component boundaries."""
    return uri == prefix or (uri.startswith(prefix) and uri[len(prefix)] == ".")


# -- the epoch schedule ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EpochSpan:
    epoch: int
    first_block: int
    last_block: int
    params: RealmParams


@dataclass(frozen=True, slots=True, order=True)
class ParamsChange:
    """A parameter change at `block`, in force from the first epoch that starts at or after
    `start_block` (its block, or later when its source reported it after passing that block).
    Of several changes for one epoch the last in chain order holds."""

    start_block: int
    block: int
    seq: int  # its source's seq: log order within a block
    source: str
    params: RealmParams = field(compare=False)


@dataclass(frozen=True, slots=True)
class _Segment:
    first_epoch: int
    first_block: int
    params: RealmParams


class Schedule:
    """Consecutive epochs, each as long as the `epoch_blocks` in force at its first block. The
    schedule is a function of the set of changes, whatever order they were learnt in."""

    def __init__(self, initial: RealmParams) -> None:
        self.initial = initial
        self.changes: list[ParamsChange] = []
        self.effective: dict[ParamsChange, int] = {}
        self._segments = [_Segment(0, 0, initial)]

    def _build(self) -> None:
        segments = [_Segment(0, 0, self.initial)]
        effective: dict[ParamsChange, int] = {}
        for change in sorted(self.changes):
            epoch = _first_epoch_from(segments, change.start_block)
            last = segments[-1]
            if epoch == last.first_epoch:
                segments[-1] = _Segment(epoch, last.first_block, change.params)
            else:
                start = last.first_block + (epoch - last.first_epoch) * last.params.epoch_blocks
                segments.append(_Segment(epoch, start, change.params))
            effective[change] = epoch
        self._segments, self.effective = segments, effective

    def span(self, epoch: int) -> EpochSpan:
        seg = _segment_of_epoch(self._segments, epoch)
        first = seg.first_block + (epoch - seg.first_epoch) * seg.params.epoch_blocks
        return EpochSpan(epoch, first, first + seg.params.epoch_blocks - 1, seg.params)

    def epoch_of(self, block: int) -> int:
        return _epoch_of(self._segments, block)

    def change(
        self, params: RealmParams, block: int, source: str = "", seq: int = 0, floor_block: int = 0
    ) -> ParamsChange:
        """Add a change at `block`; it cannot take effect before `floor_block`."""
        change = ParamsChange(max(block, floor_block), block, seq, source, params)
        self.changes.append(change)
        self._build()
        return change

    def retract(self, source: str, seq: int) -> bool:
        """Forget the change a retracted chain log made; the schedule is rebuilt without it."""
        kept = [c for c in self.changes if (c.source, c.seq) != (source, seq)]
        if len(kept) == len(self.changes):
            return False
        self.changes = kept
        self._build()
        return True

    def latest(self) -> RealmParams:
        return max(self.changes).params if self.changes else self.initial


def _segment_of_epoch(segments: list[_Segment], epoch: int) -> _Segment:
    i = bisect.bisect_right([s.first_epoch for s in segments], epoch) - 1
    return segments[max(i, 0)]


def _epoch_of(segments: list[_Segment], block: int) -> int:
    i = bisect.bisect_right([s.first_block for s in segments], block) - 1
    seg = segments[max(i, 0)]
    return seg.first_epoch + (block - seg.first_block) // seg.params.epoch_blocks


def _first_epoch_from(segments: list[_Segment], block: int) -> int:
    """The first epoch that starts at or after `block`."""
    epoch = _epoch_of(segments, block)
    seg = _segment_of_epoch(segments, epoch)
    first = seg.first_block + (epoch - seg.first_epoch) * seg.params.epoch_blocks
    return epoch if first >= block else epoch + 1


# -- usage and one epoch's result -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Messages of one account in one epoch, from one record (its last seq) of one source.
    Classes: "router" (routed), "service" (invocations served), "api" (account = the URI)."""

    source: str
    last_seq: int
    epoch: int
    payee_class: str
    account: str
    messages: int


@dataclass(frozen=True, slots=True)
class AccountUsage:
    payee_class: str
    account: str
    messages: int
    late_messages: int
    capacity: int
    credit: int


@dataclass(frozen=True, slots=True)
class LateRecord:
    source: str
    last_seq: int
    block_epoch: int
    messages: int


@dataclass(frozen=True)
class EpochClose:
    span: EpochSpan
    marks: dict[str, int]
    result: EpochPayouts
    digest: str
    usage: tuple[AccountUsage, ...]
    late: tuple[LateRecord, ...]
    counted: tuple[UsageRow, ...]  # the rows this close consumed

    @property
    def late_messages(self) -> int:
        return sum(u.late_messages for u in self.usage if u.payee_class == "router")


class CloseRefused(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Api:
    prefix: str
    vendor: str
    source: str = ""
    seq: int = 0


class RealmBook:
    """What one realm's events established, and its epochs: the pure state the projector keeps."""

    def __init__(self, name: str, keeper: str, params: RealmParams, created_block: int) -> None:
        self.name = name
        self.keeper = keeper
        self.created_block = created_block
        self.schedule = Schedule(params)
        self.stakes = RealmStakes()
        self.apis: list[Api] = []
        self.closed_epoch = -1
        self.marks: dict[str, int] = {}
        self.carry = 0

    # -- facts from the chain ---------------------------------------------------------------------
    @property
    def params(self) -> RealmParams:
        """The latest parameters known (not necessarily in force yet)."""
        return self.schedule.latest()

    def change_params(
        self, params: RealmParams, block: int, source: str = "", seq: int = 0, floor_block: int = 0
    ) -> ParamsChange:
        """A parameter change at `block`; `floor_block` is the first block its source had not
        yet passed (a change reported after its source's head passed its block, as after a
        reorg, cannot reach back into epochs that head already let close)."""
        return self.schedule.change(params, block, source, seq, floor_block)

    def effective_epoch(self, change: ParamsChange) -> int:
        return self.schedule.effective[change]

    def change_stake(
        self,
        staker: str,
        role: str,
        target: str,
        amount: int,
        block: int,
        log_index: int,
        source: str = "",
        seq: int = 0,
    ) -> None:
        self.stakes.apply(
            canonical_account(staker),
            role,
            canonical_account(target),
            block,
            log_index,
            amount,
            source,
            seq,
        )

    def retract_stake(
        self, staker: str, role: str, target: str, block: int, log_index: int, source: str, seq: int
    ) -> bool:
        """Undo a stake change whose chain log was retracted (a reorg deeper than the
        indexer's confirmation depth)."""
        key = (canonical_account(staker), role, canonical_account(target))
        return self.stakes.history(key).retract(block, log_index, source, seq)

    def retract_api(self, prefix: str, source: str, seq: int) -> bool:
        kept = [a for a in self.apis if (a.prefix, a.source, a.seq) != (prefix, source, seq)]
        found = len(kept) != len(self.apis)
        self.apis = kept
        return found

    def enable_api(self, prefix: str, vendor: str, source: str = "", seq: int = 0) -> None:
        self.apis.append(Api(prefix, canonical_account(vendor), source, seq))

    def vendor_of(self, uri: str, marks: Marks | None = None) -> str:
        """The vendor of the longest enabled API prefix covering `uri` ("" if none)."""
        best: Api | None = None
        for api in self.apis:
            if marks is not None and api.seq > marks.get(api.source, 0):
                continue
            if api_matches(api.prefix, uri) and (
                best is None or len(api.prefix) > len(best.prefix)
            ):
                best = api
        return best.vendor if best else ""

    # -- epochs -------------------------------------------------------------------------------------
    def epoch_of(self, block: int) -> int:
        return self.schedule.epoch_of(block)

    def span(self, epoch: int) -> EpochSpan:
        return self.schedule.span(epoch)

    @property
    def next_epoch(self) -> int:
        if self.closed_epoch >= 0:
            return self.closed_epoch + 1
        return self.schedule.epoch_of(self.created_block)

    def router_authorized(self, router: str, first_block: int, last_block: int) -> bool:
        """A router holds a provision stake of its own at every block it reports."""
        return self.stakes.holds_provision_throughout(
            canonical_account(router), first_block, last_block
        )

    def check_close(self, epoch: int, first_block: int, last_block: int) -> None:
        """Refuse an epoch close that is not the realm's next epoch with the scheduled bounds."""
        if epoch <= self.closed_epoch:
            raise CloseRefused("epoch_already_closed", f"{self.name} epoch {epoch} closed before")
        if epoch != self.next_epoch:
            raise CloseRefused(
                "epoch_out_of_order", f"{self.name} epoch {epoch}, next is {self.next_epoch}"
            )
        span = self.span(epoch)
        if (span.first_block, span.last_block) != (first_block, last_block):
            raise CloseRefused(
                "schema",
                f"{self.name} epoch {epoch} is blocks {span.first_block}..{span.last_block},"
                f" not {first_block}..{last_block}",
            )

    def close(self, epoch: int, marks: Marks, rows: Iterable[UsageRow]) -> EpochClose:
        """Close `epoch` under `marks` (cumulative with the previous close's) over the usage rows
        not yet counted; the book moves on to the next epoch."""
        span = self.span(epoch)
        prev_marks = self.marks
        marks = {**prev_marks, **marks}
        used: dict[str, Counter[str]] = defaultdict(Counter)
        late: dict[str, Counter[str]] = defaultdict(Counter)
        late_records: Counter[tuple[str, int, int]] = Counter()
        counted: list[UsageRow] = []
        for row in rows:
            mark = marks.get(row.source, 0)
            if row.epoch > epoch or row.last_seq > mark:
                continue
            if row.epoch < epoch and row.last_seq <= prev_marks.get(row.source, 0):
                continue  # counted by an earlier close
            counted.append(row)
            if row.payee_class == "api":
                vendor = self.vendor_of(row.account, marks)
                if not vendor:
                    continue
                cls, account = "vendor", vendor
            else:
                cls, account = row.payee_class, canonical_account(row.account)
            used[cls][account] += row.messages
            if row.epoch < epoch:
                late[cls][account] += row.messages
                if cls == "router":
                    late_records[(row.source, row.last_seq, row.epoch)] += row.messages
        spm = span.params.stake_per_mpb
        provided = {
            cls: {
                account: block_sum(
                    self.stakes.provided_steps(cls, account, marks),
                    span.first_block,
                    span.last_block,
                    spm,
                )
                for account in used[cls]
            }
            for cls in ("router", "service")
        }
        reservation = block_sum(
            self.stakes.reserved_steps(marks), span.first_block, span.last_block
        )
        result = compute_payouts(span.params, reservation, self.carry, used, provided)
        usage = tuple(
            AccountUsage(
                cls,
                account,
                n,
                late[cls].get(account, 0),
                cap := provided.get(cls, {}).get(account, n),
                min(n, cap),
            )
            for cls in ("router", "service", "vendor")
            for account, n in sorted(used[cls].items())
        )
        self.closed_epoch, self.marks, self.carry = epoch, marks, result.remainder
        return EpochClose(
            span=span,
            marks=marks,
            result=result,
            digest=payout_digest(self.name, epoch, result.payouts),
            usage=usage,
            late=tuple(
                LateRecord(src, seq, ep, n) for (src, seq, ep), n in sorted(late_records.items())
            ),
            counted=tuple(counted),
        )

    def restore_close(self, epoch: int, marks: Mapping[str, int], carry: int) -> None:
        """State after a close recorded earlier (loading from the projections)."""
        self.closed_epoch, self.marks, self.carry = epoch, dict(marks), carry

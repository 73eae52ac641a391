"""The sync loop: confirmed chunks of blocks from a source, in order, into the emitter, with the
reorg window checked before every chunk and the checkpoint written before every emission.

One chunk = blocks `first..last` of one branch whose first parent is the cursor. Its events
(realm-scoped ones under their realm, chain-wide ones under "") are emitted as one deterministic
sequence: realms in sorted order, each realm's events in (block, log_index) order, then the
chunk's `ChainHead`. See indexer/checkpoint.py for why that makes a restart exactly-once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson
from eth_hash.auto import keccak

from domain.events import ChainHead, ChequebookCreated, Event, LogRetracted, PriceObserved
from indexer import checkpoint as checkpoints
from indexer.checkpoint import Checkpoint, CheckpointError, Pending
from indexer.decoding import RealmNames
from indexer.rpc import Chunk, Inconsistent, NodeBehind, RpcUnavailable
from indexer.window import HashWindow

log = logging.getLogger(__name__)

ZERO_HASH = "0x" + "00" * 32
#: errors that mean "the source cannot answer right now": wait, then try again
TRANSIENT = (RpcUnavailable, NodeBehind, Inconsistent, TimeoutError, ConnectionError)


class Source(Protocol):
    kind: str
    chain_id: int

    def head(self) -> int: ...

    def finalized(self) -> int | None: ...

    def block_hashes(self, numbers: Iterable[int]) -> dict[int, str | None]: ...

    def fetch(self, first: int, last: int) -> Chunk: ...

    def follow(self, chequebooks: Mapping[str, int]) -> None:
        """Read these factory-created chequebooks' logs (address -> creation block) from now on."""

    def complete(self, chunk: Chunk, chequebooks: frozenset[str]) -> Chunk:
        """The chunk with the logs of followed chequebooks its fetch did not know yet."""
        ...

    def decode(self, chunk: Chunk, names: RealmNames) -> list[Event]: ...

    span_blocks: int


class Emitting(Protocol):
    """The part of `ledger.emitter.Emitter` the indexer uses."""

    source: str

    def emit_many(self, events: Iterable[Event]) -> None: ...

    def seal_all(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...


class PriceSource(Protocol):
    def observe(self, block: int) -> list[PriceObserved]: ...


@dataclass
class SyncConfig:
    """How the indexer follows the chain. Every limit is named with its unit."""

    #: first block to read (the contracts' deployment block)
    start_block: int = 0
    #: blocks behind the head before a block is emitted; None: the chain's `finalized` tag,
    #: or `fallback_confirmations` where the chain has none
    confirmations: int | None = None
    fallback_confirmations: int = 12
    window_blocks: int = 256
    #: chunks fetched ahead of the one being emitted (each up to the source's span)
    prefetch_chunks: int = 2
    poll_interval_s: float = 1.0
    retry_backoff_max_s: float = 5.0
    #: how long the source may stay unreachable before the indexer gives up (exits)
    unavailable_max_s: float = 3600.0
    #: feeds are read only at chunks this close to the head (old state may be pruned)
    feed_max_lag_blocks: int = 128


def sequence(events: Sequence[Event], kept: Sequence[Event], head: ChainHead | None) -> list[Event]:
    """The emission order of a chunk: realms sorted, each in log order (kept events after the
    logs of their realm), then the head."""
    by_realm: dict[str, list[Event]] = {}
    for event in [*events, *kept]:
        by_realm.setdefault(event.realm, []).append(event)
    out = [e for realm in sorted(by_realm) for e in by_realm[realm]]
    if head is not None:
        out.append(head)
    return out


def digest(events: Sequence[Event]) -> str:
    """Commits to the identity of every event of a sequence (same chain => same digest)."""
    ids = [
        (
            e.TYPE,
            e.realm,
            getattr(e, "block", None),
            getattr(e, "block_hash", ""),
            getattr(e, "log_index", None),
            getattr(e, "feed", ""),
        )
        for e in events
    ]
    return "0x" + keccak(orjson.dumps(ids)).hex()


class Indexer:
    """Follows one chain through one source into one emitter. Not thread-safe: one loop."""

    def __init__(
        self,
        source: Source,
        emitter: Emitting,
        checkpoint_path: Path,
        config: SyncConfig | None = None,
        feeds: PriceSource | None = None,
        wait_for_head: Callable[[threading.Event], None] | None = None,
        on_progress: Callable[[Indexer], None] | None = None,
    ) -> None:
        self.source = source
        self.emitter = emitter
        self.path = checkpoint_path
        self.config = config or SyncConfig()
        self.feeds = feeds
        self.wait_for_head = wait_for_head or (lambda stop: stop.wait(self.config.poll_interval_s))
        self.on_progress = on_progress
        self.cp: Checkpoint | None = None
        self.names = RealmNames()
        self.safe_head = -1
        #: reorgs this process handled (read by /metrics; the last one is in the checkpoint)
        self.reorgs = 0

    # -- state ---------------------------------------------------------------------------------------
    @property
    def checkpoint(self) -> Checkpoint:
        if self.cp is None:
            raise RuntimeError("indexer not opened")
        return self.cp

    def _emitter_seq(self) -> int:
        return int(self.emitter.stats()["last_seq"])

    def open(self) -> None:
        """Load (or start) the checkpoint and finish a chunk a crash left half emitted."""
        cp = checkpoints.load(self.path, self.config.window_blocks)
        if cp is None:
            start = self.config.start_block
            parent = ZERO_HASH
            if start > 0:
                parent = self._retry(lambda: self.source.block_hashes([start - 1]))[start - 1] or ""
                if not parent:
                    raise CheckpointError(f"the source has no block {start - 1} (start_block - 1)")
            window = HashWindow(self.config.window_blocks)
            window.record({start - 1: parent}, [], start - 1)
            cp = Checkpoint(
                chain_id=self.source.chain_id,
                source=self.emitter.source,
                cursor_block=start - 1,
                cursor_hash=parent,
                window=window,
            )
        if cp.chain_id != self.source.chain_id:
            raise CheckpointError(
                f"checkpoint {self.path} is of chain {cp.chain_id}, the source is {self.source.chain_id}"
            )
        if cp.source != self.emitter.source:
            raise CheckpointError(
                f"checkpoint {self.path} belongs to source {cp.source}, the key is {self.emitter.source}"
            )
        self.cp = cp
        self.names = RealmNames(dict(cp.names))
        self.source.follow(cp.chequebooks)
        if cp.pending is not None:
            self._recover(cp.pending)

    def _save(self) -> None:
        cp = self.checkpoint
        cp.names = dict(self.names.names)
        checkpoints.save(self.path, cp)

    # -- emission --------------------------------------------------------------------------------------
    def _emit(self, seq: Sequence[Event], skip: int) -> None:
        """Hand `seq[skip:]` to the emitter one realm run at a time, sealing after each run, so
        the spool holds a prefix of the sequence at every instant."""
        rest = list(seq[skip:])
        i = 0
        while i < len(rest):
            j = i
            while j < len(rest) and rest[j].realm == rest[i].realm:
                j += 1
            self.emitter.emit_many(rest[i:j])
            self.emitter.seal_all()
            i = j
        self.checkpoint.events_emitted += len(rest)

    def _start(self, pending: Pending, seq: Sequence[Event]) -> None:
        self.checkpoint.pending = pending
        self._save()
        self._emit(seq, 0)

    def _recover(self, pending: Pending) -> None:
        sealed = self._emitter_seq() - pending.seq_before
        if sealed == pending.count:
            return
        if not 0 <= sealed < pending.count:
            raise CheckpointError(
                f"the emitter's spool is at seq {self._emitter_seq()}, but the pending chunk began "
                f"at seq {pending.seq_before} with {pending.count} events: a spool of another "
                "checkpoint, or a lost spool"
            )
        log.warning(
            "resuming a half-emitted %s chunk: %d of %d sealed", pending.kind, sealed, pending.count
        )
        if pending.kind == "retract":
            self._emit(pending.kept, sealed)
            return
        chunk = self._retry(lambda: self._complete(self.source.fetch(pending.first, pending.last)))
        names = self.names.first(pending.names_before)
        events = self.source.decode(chunk, names)
        head = self._head_event(chunk)
        seq = sequence(events, pending.kept, head)
        if chunk.parent_hash == pending.parent_hash and digest(seq) == pending.digest:
            self._emit(seq, sealed)
            return
        self._retract_half_emitted(pending, sealed)

    def _retract_half_emitted(self, pending: Pending, sealed: int) -> None:
        """The chain changed under a half-emitted chunk: retract the part that was sealed."""
        cp = self.checkpoint
        window = cp.window
        blocks = range(pending.first, pending.last + 1)
        if any(window.hash_at(n) is None for n in blocks):
            raise CheckpointError(
                f"blocks {pending.first}..{pending.last} changed while half emitted and are older "
                f"than the reorg window ({window.max_blocks} blocks): cannot retract them"
            )
        by_realm: dict[str, list[Any]] = {}
        for n in blocks:
            for lg in window.logs_at(n):
                by_realm.setdefault(lg.realm, []).append((n, lg))
        for kept in pending.kept:
            by_realm.setdefault(kept.realm, []).append(None)
        order = [item for realm in sorted(by_realm) for item in by_realm[realm]]
        emitted = [item for item in order[:sealed] if item is not None]
        retractions = [
            LogRetracted(
                realm=lg.realm,
                chain_id=cp.chain_id,
                block=n,
                block_hash=window.hash_at(n) or "",
                log_index=lg.log_index,
                retracted=lg.type,
            )
            for n, lg in reversed(emitted)
        ]
        window.retract_above(pending.first - 1, cp.chain_id)
        self._forget_chequebooks_above(pending.first - 1)
        cp.cursor_block, cp.cursor_hash = pending.first - 1, pending.parent_hash
        self._note_reorg(pending.first - 1, pending.last - pending.first + 1, len(retractions))
        self._emit_retractions(retractions)

    def _emit_retractions(self, retractions: list[LogRetracted]) -> None:
        seq = sequence(retractions, [], None)
        pending = Pending("retract", self._emitter_seq(), len(seq), digest(seq), kept=seq)
        self._start(pending, seq)

    def _head_event(self, chunk: Chunk) -> ChainHead:
        return ChainHead(
            realm="", chain_id=self.source.chain_id, block=chunk.last, block_hash=chunk.tip.hash
        )

    def _complete(self, chunk: Chunk) -> Chunk:
        """The chunk with the logs of every chequebook the emitted chain's factory created: a
        chunk fetched ahead, while the chunk creating one was still being fetched, lacks them."""
        missing = frozenset(a for a in self.checkpoint.chequebooks if a not in chunk.followed)
        return self.source.complete(chunk, missing) if missing else chunk

    def _learn_chequebooks(self, events: Sequence[Event]) -> None:
        created = {
            e.chequebook.lower(): e.block for e in events if isinstance(e, ChequebookCreated)
        }
        if created:
            self.checkpoint.chequebooks.update(created)
            self.source.follow(created)

    def _forget_chequebooks_above(self, ancestor: int) -> None:
        """A reorg orphaned the blocks above `ancestor`: chequebooks created there are not on
        the emitted chain any more (the source may keep reading them: they have no logs here)."""
        cp = self.checkpoint
        cp.chequebooks = {a: b for a, b in cp.chequebooks.items() if b <= ancestor}

    def _emit_chunk(self, chunk: Chunk) -> None:
        cp = self.checkpoint
        names_before = len(self.names.names)
        chunk = self._complete(chunk)
        events = self.source.decode(chunk, self.names)
        self._learn_chequebooks(events)
        prices = self._prices(chunk.last)
        seq = sequence(events, prices, self._head_event(chunk))
        pending = Pending(
            "logs",
            self._emitter_seq(),
            len(seq),
            digest(seq),
            first=chunk.first,
            last=chunk.last,
            parent_hash=chunk.parent_hash,
            names_before=names_before,
            kept=prices,
        )
        cp.window.record(chunk.hashes, events, chunk.last)
        cp.cursor_block, cp.cursor_hash = chunk.last, chunk.tip.hash
        self._start(pending, seq)

    def _prices(self, block: int) -> list[Event]:
        cp = self.checkpoint
        if self.feeds is None or cp.head - block > self.config.feed_max_lag_blocks:
            return []
        out: list[Event] = []
        for seen in self.feeds.observe(block):
            last = [str(seen.round_id), seen.status]
            if cp.feeds.get(seen.feed) != last:
                cp.feeds[seen.feed] = last
                out.append(seen)
        return out

    # -- reorgs -------------------------------------------------------------------------------------------
    def _note_reorg(self, ancestor: int, depth: int, retracted: int) -> None:
        self.reorgs += 1
        self.checkpoint.last_reorg = {
            "ancestor": ancestor,
            "depth": depth,
            "retracted": retracted,
            "at_unix": time.time(),
        }
        log.warning(
            "reorg: %d blocks above %d replaced, %d logs retracted", depth, ancestor, retracted
        )

    def _reorg(self) -> None:
        """The cursor's block is no longer canonical: back to the newest block that is, retracting
        every log emitted above it."""
        cp = self.checkpoint
        numbers = cp.window.numbers()
        canonical = self.source.block_hashes([n for n in numbers if n >= 0])
        canonical[-1] = ZERO_HASH  # before genesis: the start of every branch
        ancestor = cp.window.ancestor(canonical)
        ancestor_hash = cp.window.hash_at(ancestor) or ""
        depth = cp.cursor_block - ancestor
        retractions = cp.window.retract_above(ancestor, cp.chain_id)
        self._forget_chequebooks_above(ancestor)
        cp.cursor_block, cp.cursor_hash = ancestor, ancestor_hash
        self._note_reorg(ancestor, depth, len(retractions))
        self._emit_retractions(retractions)

    def _cursor_still_canonical(self) -> bool:
        cp = self.checkpoint
        if cp.cursor_block < 0:
            return True
        seen = self.source.block_hashes([cp.cursor_block])[cp.cursor_block]
        # a node without the block is behind (or rolled back and not regrown yet): nothing is
        # retracted on an absence, only on a different hash
        return seen is None or seen == cp.cursor_hash

    # -- the loop -----------------------------------------------------------------------------------------
    def _safe(self, head: int) -> int:
        if self.config.confirmations is not None:
            return head - self.config.confirmations
        finalized = self.source.finalized()
        return finalized if finalized is not None else head - self.config.fallback_confirmations

    def sync_once(self, pool: ThreadPoolExecutor, stop: threading.Event) -> bool:
        """Emit every confirmed block not emitted yet; False when there was nothing to do."""
        cp = self.checkpoint
        cp.head = self.source.head()
        self.safe_head = self._safe(cp.head)
        if self.safe_head <= cp.cursor_block:
            if not self._cursor_still_canonical():
                self._reorg()
                return True
            return False
        futures: deque[Future[Chunk]] = deque()
        next_first = cp.cursor_block + 1

        def refill() -> None:
            nonlocal next_first
            while next_first <= self.safe_head and len(futures) < self.config.prefetch_chunks:
                last = min(next_first + max(1, self.source.span_blocks) - 1, self.safe_head)
                futures.append(pool.submit(self.source.fetch, next_first, last))
                next_first = last + 1

        refill()
        try:
            while futures and not stop.is_set():
                chunk = futures.popleft().result()
                if chunk.parent_hash != cp.cursor_hash:
                    self._reorg()
                    return True
                self._emit_chunk(chunk)
                if self.on_progress is not None:
                    self.on_progress(self)
                refill()
        finally:
            for future in futures:
                future.cancel()
        return True

    def run(self, stop: threading.Event, until_block: int | None = None) -> None:
        """Sync until `stop` is set (or the cursor reached `until_block`); waits out an
        unreachable or lagging source for up to `unavailable_max_s`."""
        if self.cp is None:
            self.open()
        backoff_s = 0.1
        down_since: float | None = None
        with ThreadPoolExecutor(max(1, self.config.prefetch_chunks), "indexer-fetch") as pool:
            while not stop.is_set():
                try:
                    progressed = self.sync_once(pool, stop)
                except TRANSIENT as exc:
                    now = time.monotonic()
                    down_since = down_since or now
                    if now - down_since > self.config.unavailable_max_s:
                        raise
                    log.warning("source unavailable (%s); retrying in %.1fs", exc, backoff_s)
                    stop.wait(backoff_s)
                    backoff_s = min(backoff_s * 2, self.config.retry_backoff_max_s)
                    continue
                down_since, backoff_s = None, 0.1
                if until_block is not None and self.checkpoint.cursor_block >= until_block:
                    return
                if not progressed:
                    self.wait_for_head(stop)

    def _retry(self, fn: Callable[[], Any]) -> Any:
        """`fn()` retried on transient errors with capped back-off, up to `unavailable_max_s`."""
        deadline = time.monotonic() + self.config.unavailable_max_s
        backoff_s = 0.1
        while True:
            try:
                return fn()
            except TRANSIENT as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("source unavailable (%s); retrying in %.1fs", exc, backoff_s)
                time.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, self.config.retry_backoff_max_s)

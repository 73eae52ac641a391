"""Chainlink AggregatorV3 price feeds read at a block, each reading judged into a `PriceObserved`.

A price is valid only if the answer is positive and within the feed's configured bounds, its
`updatedAt` is within the feed's heartbeat of the block's timestamp, and (on an L2) the
sequencer-uptime feed says up (answer 0) since longer than the grace period. Readings are pinned
to a block and judged against that block's timestamp, so a replay judges them the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from domain.events import PriceObserved
from indexer.decoding import checksum
from indexer.rpc import JsonRpc, RpcError

LATEST_ROUND_DATA = "0xfeaf968c"  # latestRoundData()
DECIMALS = "0x313ce567"  # decimals()
DEFAULT_GRACE_PERIOD_S = 3600
#: status of a feed whose call failed (no contract, a revert): observed, never valid
UNREADABLE = "unreadable"


@dataclass(frozen=True)
class FeedConfig:
    """One price feed and what the indexer accepts from it (bounds in the feed's own units)."""

    address: str
    heartbeat_s: int
    min_answer: int = 1
    max_answer: int = (1 << 255) - 1


@dataclass(frozen=True)
class SequencerConfig:
    """An L2 sequencer-uptime feed (answer 0: up, 1: down; `startedAt`: since when)."""

    address: str
    grace_period_s: int = DEFAULT_GRACE_PERIOD_S


@dataclass(frozen=True)
class RoundData:
    round_id: int
    answer: int
    started_at: int
    updated_at: int

    @classmethod
    def from_return(cls, data: str) -> RoundData:
        words = [data[2 + 64 * i : 2 + 64 * (i + 1)] for i in range(5)]
        if any(len(w) != 64 for w in words):
            raise ValueError(f"latestRoundData returned {len(data)} hex characters, not 5 words")
        answer = int(words[1], 16)
        if answer >> 255:
            answer -= 1 << 256
        return cls(int(words[0], 16), answer, int(words[2], 16), int(words[3], 16))


def judge(
    feed: FeedConfig,
    reading: RoundData,
    now_s: int,
    sequencer: RoundData | None = None,
    grace_period_s: int = DEFAULT_GRACE_PERIOD_S,
) -> str:
    """The status of one reading at time `now_s` (see domain.events.PRICE_STATUSES)."""
    if sequencer is not None:
        if sequencer.answer != 0:
            return "sequencer_down"
        if now_s - sequencer.started_at <= grace_period_s:
            return "sequencer_grace"
    if reading.answer <= 0:
        return "non_positive"
    if not feed.min_answer <= reading.answer <= feed.max_answer:
        return "out_of_bounds"
    if now_s - reading.updated_at > feed.heartbeat_s:
        return "stale"
    return "valid"


class FeedReader:
    """Reads every configured feed (and the sequencer feed) at one block, in one batch."""

    def __init__(
        self,
        rpc: JsonRpc,
        chain_id: int,
        feeds: Sequence[FeedConfig],
        sequencer: SequencerConfig | None = None,
    ) -> None:
        self.rpc = rpc
        self.chain_id = chain_id
        self.feeds = [
            FeedConfig(checksum(f.address), f.heartbeat_s, f.min_answer, f.max_answer)
            for f in feeds
        ]
        self.sequencer = sequencer
        self._decimals: dict[str, int] = {}

    def _call(self, address: str, data: str, block: int) -> tuple[str, list[object]]:
        return ("eth_call", [{"to": address, "data": data}, hex(block)])

    def _read(self, address: str, block: int) -> RoundData | None:
        try:
            return RoundData.from_return(
                self.rpc.call(*self._call(address, LATEST_ROUND_DATA, block))
            )
        except (RpcError, ValueError):
            return None

    def _decimals_of(self, address: str, block: int) -> int:
        if address not in self._decimals:
            try:
                self._decimals[address] = int(
                    self.rpc.call(*self._call(address, DECIMALS, block)), 16
                )
            except (RpcError, ValueError):
                return 0
        return self._decimals[address]

    def observe(self, block: int) -> list[PriceObserved]:
        header = self.rpc.call("eth_getBlockByNumber", [hex(block), False])
        if not header:
            return []
        now_s = int(header["timestamp"], 16)
        sequencer = None
        grace = DEFAULT_GRACE_PERIOD_S
        if self.sequencer is not None:
            sequencer = self._read(self.sequencer.address, block)
            grace = self.sequencer.grace_period_s
            if sequencer is None:  # an unreadable uptime feed is a sequencer we cannot trust
                sequencer = RoundData(0, 1, now_s, now_s)
        out = []
        for feed in self.feeds:
            reading = self._read(feed.address, block)
            if reading is None:
                status, reading = UNREADABLE, RoundData(0, 0, 0, 0)
            else:
                status = judge(feed, reading, now_s, sequencer, grace)
            out.append(
                PriceObserved(
                    realm="",
                    chain_id=self.chain_id,
                    feed=feed.address,
                    round_id=reading.round_id,
                    answer=reading.answer,
                    decimals=self._decimals_of(feed.address, block),
                    updated_at=reading.updated_at,
                    status=status,
                    block=block,
                    block_hash=header["hash"],
                )
            )
        return out

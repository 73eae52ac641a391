"""The reorg window: hashes of the last `window_blocks` emitted blocks and what was emitted from
each, so a reorg below the cursor is found (parent hashes) and every orphaned log retracted.

Blocks older than the window are taken as final; a reorg that reaches below the window cannot be
undone log by log and stops the indexer with `ReorgTooDeep` (restart it with a larger window).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from domain.events import Event, LogRetracted, log_identity

#: blocks kept by default: past anvil's `finalized` (head - 64) and any L2's usual reorg depth
DEFAULT_WINDOW_BLOCKS = 256


class ReorgTooDeep(RuntimeError):
    """The chain changed below the oldest block the window remembers."""


@dataclass(frozen=True, slots=True)
class EmittedLog:
    """What the indexer emitted for one log: enough to retract it."""

    log_index: int
    type: str
    realm: str


class HashWindow:
    """block number -> (hash, logs emitted from it), for the last `max_blocks` blocks."""

    def __init__(self, max_blocks: int = DEFAULT_WINDOW_BLOCKS) -> None:
        if max_blocks < 1:
            raise ValueError("window_blocks must be >= 1")
        self.max_blocks = max_blocks
        self._blocks: dict[int, tuple[str, list[EmittedLog]]] = {}

    def __len__(self) -> int:
        return len(self._blocks)

    def numbers(self) -> list[int]:
        return sorted(self._blocks)

    def hash_at(self, number: int) -> str | None:
        entry = self._blocks.get(number)
        return entry[0] if entry else None

    def logs_at(self, number: int) -> list[EmittedLog]:
        entry = self._blocks.get(number)
        return list(entry[1]) if entry else []

    def record(self, hashes: Mapping[int, str], events: list[Event], tip: int) -> None:
        """Remember the blocks of an emitted chunk and its chain-derived events; forget blocks
        that fell `max_blocks` below `tip`."""
        low = tip - self.max_blocks + 1
        for number in sorted(hashes):
            if number >= low:
                self._blocks[number] = (hashes[number], [])
        for event in events:
            block = getattr(event, "block", -1)
            if block < low:
                continue
            ident = log_identity(event)
            entry = self._blocks.get(block)
            if ident is not None and entry is not None and entry[0] == ident[1]:
                entry[1].append(EmittedLog(ident[2], event.TYPE, event.realm))
        for number in [n for n in self._blocks if n < low]:
            del self._blocks[number]

    def lowest(self) -> int | None:
        return min(self._blocks) if self._blocks else None

    def ancestor(self, canonical: Mapping[int, str | None]) -> int:
        """The highest remembered block whose hash is still canonical; `ReorgTooDeep` if none."""
        for number in sorted(self._blocks, reverse=True):
            if canonical.get(number) == self._blocks[number][0]:
                return number
        raise ReorgTooDeep(
            f"no block of the reorg window ({self.lowest()}..{max(self._blocks, default=None)}) "
            f"is canonical any more: the reorg is deeper than window_blocks={self.max_blocks}"
        )

    def retract_above(self, ancestor: int, chain_id: int) -> list[LogRetracted]:
        """Forget the blocks above `ancestor`; the retractions of their logs, newest first."""
        out: list[LogRetracted] = []
        for number in sorted((n for n in self._blocks if n > ancestor), reverse=True):
            block_hash, logs = self._blocks.pop(number)
            for log in sorted(logs, key=lambda lg: lg.log_index, reverse=True):
                out.append(
                    LogRetracted(
                        realm=log.realm,
                        chain_id=chain_id,
                        block=number,
                        block_hash=block_hash,
                        log_index=log.log_index,
                        retracted=log.type,
                    )
                )
        return out

    def to_json(self) -> dict[str, Any]:
        """Per block: number, hash, and the emitted log indexes grouped by "type realm" (a busy
        block's logs are mostly of one kind: the checkpoint stays small)."""
        blocks = []
        for n, (h, logs) in sorted(self._blocks.items()):
            groups: dict[str, list[int]] = {}
            for lg in logs:
                groups.setdefault(f"{lg.type} {lg.realm}", []).append(lg.log_index)
            blocks.append([n, h, groups])
        return {"max_blocks": self.max_blocks, "blocks": blocks}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], max_blocks: int | None = None) -> HashWindow:
        window = cls(max_blocks or int(data["max_blocks"]))
        for number, block_hash, groups in data["blocks"]:
            logs = []
            for kind, indexes in groups.items():
                type_name, _, realm = kind.partition(" ")
                logs += [EmittedLog(int(i), type_name, realm) for i in indexes]
            window._blocks[int(number)] = (block_hash, sorted(logs, key=lambda lg: lg.log_index))
        return window

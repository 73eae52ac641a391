"""The indexer's checkpoint: cursor, reorg window, realm names, feed state and the one chunk whose
emission may be unfinished, in one file replaced atomically.

Exactly once, against the emitter as it is: the checkpoint naming a chunk (`Pending`: where the
emitter's seq stood, how many events the chunk's deterministic sequence holds and a digest of it)
is written *before* the chunk's events are handed to the emitter, and the emitter seals each
realm's events into its spool in sequence order. After a crash the emitter's recovered seq says
how many of those events were sealed; the rest are emitted again from the same sequence, rebuilt
from the chain. No event is sealed twice and none is skipped.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from domain.events import Event, event_from_dict, event_to_dict
from indexer.window import HashWindow


class CheckpointError(RuntimeError):
    """A checkpoint that does not belong to this chain, source or emitter state."""


@dataclass
class Pending:
    """A chunk (kind "logs": blocks first..last re-fetchable from the chain) or a retraction
    (kind "retract": its events kept here) whose emission started at emitter seq `seq_before`."""

    kind: str
    seq_before: int
    count: int
    digest: str
    first: int = 0
    last: int = 0
    parent_hash: str = ""
    names_before: int = 0
    #: events that cannot be fetched again: retractions, price observations
    kept: list[Event] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "seq_before": self.seq_before,
            "count": self.count,
            "digest": self.digest,
            "first": self.first,
            "last": self.last,
            "parent_hash": self.parent_hash,
            "names_before": self.names_before,
            "kept": [event_to_dict(e) for e in self.kept],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Pending:
        return cls(**{**data, "kept": [event_from_dict(e) for e in data["kept"]]})


@dataclass
class Checkpoint:
    chain_id: int
    source: str
    cursor_block: int
    cursor_hash: str
    window: HashWindow
    names: dict[str, str] = field(default_factory=dict)
    #: chequebooks the factory created on the emitted chain (lowercase address -> block)
    chequebooks: dict[str, int] = field(default_factory=dict)
    pending: Pending | None = None
    #: feed address -> [round_id, status] of the last PriceObserved emitted
    feeds: dict[str, list[Any]] = field(default_factory=dict)
    #: {"block", "depth", "retracted", "at_unix"} of the last reorg that retracted logs
    last_reorg: dict[str, Any] | None = None
    head: int = -1
    events_emitted: int = 0
    updated_unix: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "source": self.source,
            "cursor_block": self.cursor_block,
            "cursor_hash": self.cursor_hash,
            "window": self.window.to_json(),
            "names": self.names,
            "chequebooks": self.chequebooks,
            "pending": self.pending.to_json() if self.pending else None,
            "feeds": self.feeds,
            "last_reorg": self.last_reorg,
            "head": self.head,
            "events_emitted": self.events_emitted,
            "updated_unix": self.updated_unix,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], window_blocks: int | None = None) -> Checkpoint:
        pending = data.get("pending")
        return cls(
            chain_id=int(data["chain_id"]),
            source=str(data["source"]),
            cursor_block=int(data["cursor_block"]),
            cursor_hash=str(data["cursor_hash"]),
            window=HashWindow.from_json(data["window"], window_blocks),
            names=dict(data.get("names", {})),
            chequebooks={str(a): int(b) for a, b in data.get("chequebooks", {}).items()},
            pending=Pending.from_json(pending) if pending else None,
            feeds=dict(data.get("feeds", {})),
            last_reorg=data.get("last_reorg"),
            head=int(data.get("head", -1)),
            events_emitted=int(data.get("events_emitted", 0)),
            updated_unix=float(data.get("updated_unix", 0.0)),
        )


def load(path: Path, window_blocks: int | None = None) -> Checkpoint | None:
    if not path.exists():
        return None
    try:
        return Checkpoint.from_json(orjson.loads(path.read_bytes()), window_blocks)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc}") from exc


def save(path: Path, checkpoint: Checkpoint) -> None:
    """Write-then-rename with fsync of file and folder: after a crash, the old or the new one."""
    checkpoint.updated_unix = time.time()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(orjson.dumps(checkpoint.to_json()))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)

"""A bounded, crash-safe local spool of sealed records awaiting the broker's acknowledgement.

Every sealed record is appended here before it is sent, so a crash or a broker outage loses
nothing that was sealed. Frames: ``len u32 | crc32 u32 | topic u8 | keylen u16 | key | value``
in numbered segment files; ``checkpoint.json`` (written atomically) holds the acknowledged
position and the source's chain tip (last seq, last record hash). A torn tail after a crash is
detected by length/CRC and cut off.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from domain.topics import DEAD_TOPIC, LEDGER_TOPIC, USAGE_TOPIC

TOPIC_CODES = {USAGE_TOPIC: 0, LEDGER_TOPIC: 1, DEAD_TOPIC: 2}
TOPIC_NAMES = {v: k for k, v in TOPIC_CODES.items()}


@dataclass(frozen=True, slots=True)
class Frame:
    segment: int
    end: int  # offset just past this frame in its segment
    topic: str
    key: bytes
    value: bytes

    @property
    def size(self) -> int:
        return 11 + len(self.key) + len(self.value)


@dataclass
class Checkpoint:
    acked_segment: int = 0
    acked_offset: int = 0
    last_seq: int = 0
    last_hash: str = ""


class Spool:
    def __init__(self, directory: Path, segment_bytes: int = 64 << 20, fsync: bool = True) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.checkpoint = self._read_checkpoint()
        segments = self.segments()
        self.segment = segments[-1] if segments else max(1, self.checkpoint.acked_segment)
        self._fh = open(self._path(self.segment), "ab")  # noqa: SIM115
        self._truncate_torn_tail()

    # -- files ------------------------------------------------------------------------------
    def _path(self, segment: int) -> Path:
        return self.dir / f"spool-{segment:08d}.log"

    def segments(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.dir.glob("spool-*.log"))

    def _read_checkpoint(self) -> Checkpoint:
        path = self.dir / "checkpoint.json"
        if not path.exists():
            return Checkpoint()
        return Checkpoint(**orjson.loads(path.read_bytes()))

    def write_checkpoint(self) -> None:
        path = self.dir / "checkpoint.json"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(orjson.dumps(self.checkpoint.__dict__))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def _truncate_torn_tail(self) -> None:
        good = 0
        for frame in self._scan(self.segment, 0):
            good = frame.end
        size = self._path(self.segment).stat().st_size
        if size != good:
            self._fh.truncate(good)

    # -- writing --------------------------------------------------------------------------------
    def append(self, topic: str, key: bytes, value: bytes) -> Frame:
        body = bytes([TOPIC_CODES[topic]]) + len(key).to_bytes(2, "big") + key + value
        head = struct.pack(">II", len(value) + len(key), zlib.crc32(body))
        self._fh.write(head + body)
        self._fh.flush()
        if self.fsync:
            os.fsync(self._fh.fileno())
        end = self._fh.tell()
        frame = Frame(self.segment, end, topic, key, value)
        if end >= self.segment_bytes:
            self._fh.close()
            self.segment += 1
            self._fh = open(self._path(self.segment), "ab")  # noqa: SIM115
        return frame

    def ack(self, frame: Frame) -> None:
        """Everything up to and including `frame` reached the broker; drop finished segments."""
        self.checkpoint.acked_segment = frame.segment
        self.checkpoint.acked_offset = frame.end

    def commit_acks(self) -> None:
        self.write_checkpoint()
        for seg in self.segments():
            if seg < self.checkpoint.acked_segment:
                self._path(seg).unlink(missing_ok=True)

    # -- reading back ---------------------------------------------------------------------------
    def _scan(self, segment: int, offset: int) -> Iterator[Frame]:
        path = self._path(segment)
        if not path.exists():
            return
        data = path.read_bytes()
        pos = offset
        while pos + 8 <= len(data):
            length, crc = struct.unpack_from(">II", data, pos)
            start = pos + 8
            stop = start + 3 + length
            if stop > len(data):
                return
            body = data[start:stop]
            if zlib.crc32(body) != crc:
                return
            keylen = int.from_bytes(body[1:3], "big")
            yield Frame(
                segment, stop, TOPIC_NAMES[body[0]], body[3 : 3 + keylen], body[3 + keylen :]
            )
            pos = stop

    def unacked(self) -> Iterator[Frame]:
        """Frames written but not acknowledged, in order (used on restart)."""
        cp = self.checkpoint
        for seg in self.segments():
            if seg < cp.acked_segment:
                continue
            yield from self._scan(seg, cp.acked_offset if seg == cp.acked_segment else 0)

    def close(self) -> None:
        self._fh.close()

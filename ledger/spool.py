"""The local spool of one source's sealed records awaiting the broker's acknowledgement: an exclusive
lock, checksummed frames in numbered segments, an atomic checkpoint, and the damage check.

Every sealed record is appended (and fsynced) here before it is sent, so a crash or a broker outage
loses nothing that was sealed, and a seq once sealed is never handed out again. Layout of DIR:

* ``lock`` — ``flock``-ed by the one process that owns the spool; holds its pid.
* ``checkpoint.json`` — written atomically (temp file, fsync, rename, fsync of DIR) with a CRC: the
  acknowledged position (segment, offset, and the seq/hash of the last acknowledged record) and the
  sealed tip known when it was written.
* ``spool-NNNNNNNN.log`` — frames ``header | body``; header = magic u16, body length u32, body CRC32
  u32, header CRC32 u32; body = topic u8, key length u16, first seq u64, count u32, prev hash,
  record hash, key, value. A segment is created atomically with its first frame, so it is never
  empty.

`inspect` reads a spool without changing it and says what it found. Only a torn tail — an
incomplete last frame of the newest segment, as a crash during an append leaves it — is cut on
open: that record's append never returned, so it was never sent. Anything else (a bad frame
followed by more data, a missing, empty or out-of-chain segment, a missing or torn checkpoint while
segments exist, a tip below what the checkpoint knew was sealed) is `SpoolDamaged`: the emitter
refuses to start until `meshledger spool repair` (ledger/spool_repair.py) rebuilds the spool.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

import orjson

from domain.envelope import ZERO_HASH
from domain.topics import DEAD_TOPIC, LEDGER_TOPIC, USAGE_TOPIC

log = logging.getLogger(__name__)

TOPIC_CODES = {USAGE_TOPIC: 0, LEDGER_TOPIC: 1, DEAD_TOPIC: 2}
TOPIC_NAMES = {v: k for k, v in TOPIC_CODES.items()}
FORMAT_VERSION = 2
FRAME_MAGIC = 0x4D53
_HEAD = struct.Struct(">HIII")  # magic, body length, body crc, header crc (of the first 10 bytes)
_META = struct.Struct(">BHQI32s32s")  # topic, key length, first seq, count, prev, hash
HEAD_BYTES = _HEAD.size
#: a frame's fixed cost on disk besides its key and value
FRAME_OVERHEAD = _HEAD.size + _META.size
CHECKPOINT = "checkpoint.json"
LOCK = "lock"


class SpoolError(RuntimeError):
    """The spool cannot be used; the message says why and what to do."""


class SpoolLocked(SpoolError):
    pass


class SpoolDamaged(SpoolError):
    def __init__(self, report: SpoolReport) -> None:
        self.report = report
        super().__init__(report.describe())


def _hex(raw: bytes) -> str:
    return "0x" + raw.hex()


def _raw(hex_hash: str) -> bytes:
    return bytes.fromhex((hex_hash or ZERO_HASH).removeprefix("0x"))


@dataclass(frozen=True, slots=True)
class Frame:
    segment: int
    end: int  # offset just past this frame in its segment
    topic: str
    key: bytes
    value: bytes
    seq: int = 0
    count: int = 0
    prev: str = ZERO_HASH
    hash: str = ZERO_HASH

    @property
    def size(self) -> int:
        return FRAME_OVERHEAD + len(self.key) + len(self.value)

    @property
    def last_seq(self) -> int:
        return self.seq + self.count - 1


def encode_frame(
    topic: str, key: bytes, value: bytes, seq: int, count: int, prev: str, record_hash: str
) -> bytes:
    body = (
        _META.pack(TOPIC_CODES[topic], len(key), seq, count, _raw(prev), _raw(record_hash))
        + key
        + value
    )
    head10 = struct.pack(">HII", FRAME_MAGIC, len(body), zlib.crc32(body))
    return head10 + struct.pack(">I", zlib.crc32(head10)) + body


@dataclass
class Checkpoint:
    version: int = FORMAT_VERSION
    source: str = ""
    acked_segment: int = 0  # 0: nothing acknowledged yet
    acked_offset: int = 0
    acked_seq: int = 0
    acked_hash: str = ZERO_HASH
    sealed_seq: int = 0
    sealed_hash: str = ZERO_HASH
    #: seqs at which the chain restarts after `spool repair` found records lost in between
    breaks: list[int] = field(default_factory=list)
    #: set by `spool repair`: the tip the broker's log (or the old checkpoint) proved sealed; the
    #: next record continues from it even when the spool holds only older records to re-send
    floor_seq: int = 0
    floor_hash: str = ZERO_HASH

    def encode(self) -> bytes:
        body = asdict(self)
        body["crc"] = zlib.crc32(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def decode(cls, data: bytes) -> Checkpoint:
        """Raise ValueError when the file is torn, corrupt or of another format."""
        obj = orjson.loads(data)
        if not isinstance(obj, dict):
            raise ValueError("not an object")
        if "version" not in obj:
            raise ValueError("written by an older meshledger (no format version)")
        crc = obj.pop("crc", None)
        if crc != zlib.crc32(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)):
            raise ValueError("checksum mismatch")
        if obj["version"] != FORMAT_VERSION:
            raise ValueError(
                f"format version {obj['version']}, this meshledger reads {FORMAT_VERSION}"
            )
        return cls(**obj)


class FileSystem:
    """The file operations of the spool, in one place so storage faults can be injected in tests."""

    def open(self, path: Path, mode: str) -> IO[bytes]:
        fh: IO[bytes] = open(path, mode)  # noqa: SIM115 - the caller owns the handle
        return fh

    def fsync(self, fh: IO[bytes]) -> None:
        os.fsync(fh.fileno())

    def fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def replace(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)

    def unlink(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def truncate(self, path: Path, size: int) -> None:
        with open(path, "r+b") as fh:
            fh.truncate(size)
            os.fsync(fh.fileno())


OS_FS = FileSystem()


def write_atomically(fs: FileSystem, path: Path, data: bytes) -> None:
    """Write `path` so that a crash leaves the old or the new content, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    with fs.open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        fs.fsync(fh)
    fs.replace(tmp, path)
    fs.fsync_dir(path.parent)


# -- the lock ---------------------------------------------------------------------------------------
class SpoolLock:
    """An exclusive flock on DIR/lock for the life of this object (released on close or death)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise SpoolLocked(
                    f"spool {directory} is in use by another emitter (pid {holder}); "
                    "two emitters on one spool would fork the source's seqs: give each its own "
                    "spool directory, or stop the other process"
                ) from exc
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# -- reading and checking ---------------------------------------------------------------------------
def segment_path(directory: Path, segment: int) -> Path:
    return directory / f"spool-{segment:08d}.log"


def list_segments(directory: Path) -> list[int]:
    out = []
    for p in directory.glob("spool-*.log"):
        with contextlib.suppress(ValueError):
            out.append(int(p.stem.split("-")[1]))
    return sorted(out)


@dataclass
class SegmentScan:
    frames: list[Frame]
    size: int
    good_end: int  # offset past the last intact frame
    bad: str = ""  # what is wrong at good_end, if anything
    torn: bool = False  # the defect is an incomplete last frame (a crash during the append)


def scan_segment(data: bytes, segment: int, offset: int = 0) -> SegmentScan:
    frames: list[Frame] = []
    pos = offset
    size = len(data)
    while pos < size:
        rest = size - pos
        if rest < HEAD_BYTES:
            return SegmentScan(frames, size, pos, f"{rest} bytes of an incomplete header", True)
        magic, length, crc, hcrc = _HEAD.unpack_from(data, pos)
        if magic != FRAME_MAGIC or hcrc != zlib.crc32(data[pos : pos + 10]):
            if not data[pos:].strip(b"\x00"):  # zero-filled: space allocated, never written
                return SegmentScan(frames, size, pos, f"{rest} zero bytes", True)
            return SegmentScan(frames, size, pos, "a frame header fails its checksum")
        stop = pos + HEAD_BYTES + length
        if stop > size:
            return SegmentScan(
                frames, size, pos, f"a frame cut after {rest} of {stop - pos} bytes", True
            )
        body = data[pos + HEAD_BYTES : stop]
        if zlib.crc32(body) != crc or length < _META.size:
            return SegmentScan(frames, size, pos, "a frame body fails its checksum")
        topic, keylen, seq, count, prev, rhash = _META.unpack_from(body, 0)
        key = body[_META.size : _META.size + keylen]
        frames.append(
            Frame(
                segment,
                stop,
                TOPIC_NAMES.get(topic, USAGE_TOPIC),
                key,
                body[_META.size + keylen :],
                seq,
                count,
                _hex(prev),
                _hex(rhash),
            )
        )
        pos = stop
    return SegmentScan(frames, size, pos)


def read_checkpoint(directory: Path) -> tuple[Checkpoint | None, str]:
    """(checkpoint, problem): (None, '') when there is none, (None, why) when it is unreadable."""
    path = directory / CHECKPOINT
    if not path.exists():
        return None, ""
    try:
        return Checkpoint.decode(path.read_bytes()), ""
    except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
        return None, f"{CHECKPOINT} is unreadable ({exc})"


@dataclass
class SpoolReport:
    directory: Path
    checkpoint: Checkpoint | None = None
    fresh: bool = False
    damage: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    segments: list[int] = field(default_factory=list)
    stale_segments: list[int] = field(default_factory=list)
    frames: list[Frame] = field(default_factory=list)  # from the acknowledged position on
    acked_frames: int = 0
    torn: tuple[int, int, int] | None = None  # (segment, cut at, bytes)
    tip_seq: int = 0
    tip_hash: str = ZERO_HASH

    @property
    def ok(self) -> bool:
        return not self.damage

    def describe(self) -> str:
        if self.ok:
            state = "new, empty" if self.fresh else f"tip seq {self.tip_seq}"
            return f"spool {self.directory}: intact ({state}; {len(self.frames)} unacknowledged records)"
        found = "; ".join(self.damage)
        return (
            f"spool {self.directory} is damaged: {found}. Nothing was changed and the emitter will "
            f"not start on it (it could lose records or reuse seqs). See `meshledger spool check "
            f"{self.directory}`; recover with `meshledger spool repair {self.directory} --bootstrap "
            "HOST:PORT`, which keeps every intact unacknowledged record, takes the source's tip from "
            "the broker's log when the spool cannot say it, and never reuses a seq."
        )


def inspect(directory: Path, source: str | None = None) -> SpoolReport:
    """Read the spool and report what is there and what is wrong with it; change nothing."""
    report = SpoolReport(directory)
    segments = list_segments(directory)
    cp, problem = read_checkpoint(directory)
    if problem:
        report.damage.append(
            problem + (f" while {len(segments)} segments exist" if segments else "")
        )
        report.segments = segments
        return report
    if cp is None:
        if segments:
            report.damage.append(
                f"{CHECKPOINT} is missing while {len(segments)} segments exist: the acknowledged "
                "position and the sealed tip are unknown"
            )
        else:
            report.fresh = True
        report.segments = segments
        return report
    report.checkpoint = cp
    if source is not None and cp.source and cp.source != source:
        report.damage.append(f"the spool belongs to source {cp.source}, not {source}")
        return report
    report.stale_segments = [s for s in segments if s < cp.acked_segment]
    live = [s for s in segments if s >= cp.acked_segment]
    report.segments = live
    first = cp.acked_segment or 1
    if live and live != list(range(first, live[-1] + 1)):
        missing = sorted(set(range(first, live[-1] + 1)) - set(live))
        report.damage.append(f"segments {missing} are missing between {first} and {live[-1]}")
        return report
    if cp.acked_segment and cp.acked_segment not in live:
        report.damage.append(
            f"segment {cp.acked_segment}, which holds the acknowledged position, is missing"
        )
        return report
    tip = (cp.acked_seq, cp.acked_hash)
    breaks = set(cp.breaks)
    for index, seg in enumerate(live):
        data = segment_path(directory, seg).read_bytes()
        scan = scan_segment(data, seg)
        last_segment = index == len(live) - 1
        if scan.bad:
            if scan.torn and last_segment and scan.frames:
                report.torn = (seg, scan.good_end, scan.size - scan.good_end)
                report.notes.append(
                    f"torn tail in segment {seg}: {scan.bad} at offset {scan.good_end}"
                )
            else:
                where = (
                    "followed by more data"
                    if not scan.torn
                    else "in a segment that should be whole"
                )
                report.damage.append(
                    f"segment {seg}: {scan.bad} at offset {scan.good_end} ({where})"
                )
                return report
        if not scan.frames:
            report.damage.append(
                f"segment {seg} is empty ({scan.size} bytes): it should hold records"
            )
            return report
        frames = scan.frames
        if seg == cp.acked_segment:
            ends = [f.end for f in frames]
            if cp.acked_offset not in ends:
                report.damage.append(
                    f"segment {seg} has no record ending at the acknowledged offset {cp.acked_offset}"
                )
                return report
            at = ends.index(cp.acked_offset)
            acked = frames[at]
            if (acked.last_seq, acked.hash) != (cp.acked_seq, cp.acked_hash):
                report.damage.append(
                    f"the record at the acknowledged position is seq {acked.last_seq}, the "
                    f"checkpoint says {cp.acked_seq}"
                )
                return report
            report.acked_frames += at + 1
            frames = frames[at + 1 :]
        for frame in frames:
            expected = tip[0] + 1
            if frame.seq in breaks and frame.seq > tip[0]:
                pass
            elif frame.seq != expected or frame.prev != tip[1]:
                report.damage.append(
                    f"segment {seg}: the record at seq {frame.seq} does not follow seq {tip[0]} "
                    "(records between are missing or the chain is broken)"
                )
                return report
            tip = (frame.last_seq, frame.hash)
            report.frames.append(frame)
    if cp.floor_seq > tip[0]:
        tip = (cp.floor_seq, cp.floor_hash)
    report.tip_seq, report.tip_hash = tip
    if tip[0] < cp.sealed_seq:
        report.damage.append(
            f"the spool ends at seq {tip[0]} but the checkpoint knew seq {cp.sealed_seq} was "
            "sealed: records were lost"
        )
    elif tip[0] == cp.sealed_seq and tip[1] != cp.sealed_hash:
        report.damage.append(f"the record at seq {tip[0]} is not the one the checkpoint knew")
    return report


# -- the spool ---------------------------------------------------------------------------------------
class Spool:
    """The open spool of one source. Open it with `Spool.open`; not thread-safe (the emitter locks)."""

    def __init__(
        self,
        directory: Path,
        lock: SpoolLock,
        report: SpoolReport,
        segment_bytes: int,
        fsync: bool,
        fs: FileSystem,
    ) -> None:
        self.dir = directory
        self._lock = lock
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.fs = fs
        assert report.checkpoint is not None
        self.checkpoint = report.checkpoint
        self.tip_seq, self.tip_hash = report.tip_seq, report.tip_hash
        self._unacked = list(report.frames)  # handed to the emitter once, at start
        self.segment = report.segments[-1] if report.segments else 0
        self._fh: IO[bytes] | None = None
        self.failed: OSError | None = None

    @classmethod
    def open(
        cls,
        directory: Path,
        source: str,
        segment_bytes: int = 64 << 20,
        fsync: bool = True,
        fs: FileSystem = OS_FS,
    ) -> Spool:
        """Lock, check, cut a torn tail; SpoolLocked or SpoolDamaged when it cannot be used."""
        lock = SpoolLock(directory)  # before anything else: nobody else may read or write it
        try:
            for leftover in directory.glob("*.tmp"):
                fs.unlink(leftover)  # an atomic write that never completed
            report = inspect(directory, source)
            if not report.ok:
                raise SpoolDamaged(report)
            if report.fresh:
                report.checkpoint = Checkpoint(source=source)
                write_atomically(fs, directory / CHECKPOINT, report.checkpoint.encode())
            elif report.checkpoint is not None and not report.checkpoint.source:
                report.checkpoint.source = source
            if report.torn is not None:
                seg, cut, size = report.torn
                log.warning(
                    "spool %s: cutting a torn tail of %d bytes in segment %d", directory, size, seg
                )
                fs.truncate(segment_path(directory, seg), cut)
            for seg in report.stale_segments:
                fs.unlink(segment_path(directory, seg))
            return cls(directory, lock, report, segment_bytes, fsync, fs)
        except BaseException:
            lock.release()
            raise

    # -- writing ----------------------------------------------------------------------------------
    def append(
        self, topic: str, key: bytes, value: bytes, seq: int, count: int, prev: str, rhash: str
    ) -> Frame:
        """Write one record durably (fsync unless disabled); on an I/O error nothing is appended."""
        data = encode_frame(topic, key, value, seq, count, prev, rhash)
        try:
            self._ensure_open()
            if self._fh is None or self._fh.tell() >= self.segment_bytes:
                end = self._start_segment(data)
            else:
                end = self._write(data)
        except OSError as exc:
            self.failed = exc
            raise
        self.failed = None
        frame = Frame(self.segment, end, topic, key, value, seq, count, prev, rhash)
        self.tip_seq, self.tip_hash = frame.last_seq, rhash
        return frame

    def _write(self, data: bytes) -> int:
        fh = self._fh
        assert fh is not None
        start = fh.tell()
        try:
            fh.write(data)
            fh.flush()
            if self.fsync:
                self.fs.fsync(fh)
        except OSError:
            # a partial frame must not stay in the middle of the segment (the next append would
            # bury it); if even that fails, the next start finds a torn tail and cuts it
            with contextlib.suppress(OSError):
                fh.seek(start)
                fh.truncate(start)
            raise
        return start + len(data)

    def _start_segment(self, first: bytes) -> int:
        """A new segment appears atomically with its first frame, so it is never empty."""
        nxt = self.segment + 1
        path = segment_path(self.dir, nxt)
        write_atomically(self.fs, path, first)
        if self._fh is not None:
            self._fh.close()
        self._fh = self.fs.open(path, "ab")
        self.segment = nxt
        return len(first)

    def _ensure_open(self) -> None:
        if self._fh is None and self.segment:
            self._fh = self.fs.open(segment_path(self.dir, self.segment), "ab")

    def unacked(self) -> list[Frame]:
        """Frames found unacknowledged at open, in order (the emitter sends them again)."""
        frames, self._unacked = self._unacked, []
        return frames

    def ack(self, frame: Frame) -> None:
        """Everything up to and including `frame` reached the broker (persisted by commit_acks)."""
        cp = self.checkpoint
        cp.acked_segment, cp.acked_offset = frame.segment, frame.end
        cp.acked_seq, cp.acked_hash = frame.last_seq, frame.hash
        cp.breaks = [b for b in cp.breaks if b > frame.last_seq]

    def commit_acks(self) -> None:
        """Persist the acknowledged position (and the sealed tip); then drop finished segments."""
        self.write_checkpoint(self.checkpoint_snapshot())

    def checkpoint_snapshot(self) -> tuple[bytes, int]:
        """The checkpoint as of now (acknowledged position, sealed tip), to write later with
        `write_checkpoint` — outside the lock that orders appends: the sealed tip it names was
        sealed when it was taken, and only one thread (the sender) writes checkpoints."""
        cp = self.checkpoint
        cp.sealed_seq, cp.sealed_hash = self.tip_seq, self.tip_hash
        return cp.encode(), cp.acked_segment

    def write_checkpoint(self, snapshot: tuple[bytes, int]) -> None:
        data, acked_segment = snapshot
        write_atomically(self.fs, self.dir / CHECKPOINT, data)
        for seg in list_segments(self.dir):
            if seg < acked_segment:
                self.fs.unlink(segment_path(self.dir, seg))

    def close(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None
        self._lock.release()


def salvage(directory: Path) -> tuple[list[Frame], int]:
    """Every intact frame of every segment, and how many bytes of damage lay between them."""
    frames: list[Frame] = []
    damaged = 0
    for seg in list_segments(directory):
        data = segment_path(directory, seg).read_bytes()
        pos = 0
        while pos < len(data):
            scan = scan_segment(data, seg, pos)
            frames += scan.frames
            if not scan.bad:
                break
            nxt = data.find(struct.pack(">H", FRAME_MAGIC), scan.good_end + 1)
            damaged += (nxt if nxt >= 0 else len(data)) - scan.good_end
            if nxt < 0:
                break
            pos = nxt
    return frames, damaged


def iter_frames(directory: Path) -> Iterator[Frame]:
    """Every intact frame of every segment, skipping damaged stretches."""
    yield from salvage(directory)[0]

"""`meshledger spool check / repair`: say what a spool holds, and rebuild a damaged one without ever
reusing a seq — the tip comes from the broker's log when the spool cannot say it.

Repair keeps every intact record (frame checksum, signature and hash verified) that the broker does
not have yet, moves the damaged files aside (``DIR/damaged-<time>/``, never deleted), and writes a
new spool whose next seq follows the highest seq anyone saw sealed: the broker's log (mesh.usage,
mesh.ledger, and the emitter's dead letters in mesh.dead), the intact records, the old checkpoint.
Records lost everywhere leave a seq gap, which consumers declare: visible, never silent.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from domain.envelope import MIN_EVENT_BYTES, ZERO_HASH, RecordError, claims_source, decode
from domain.topics import DEAD_TOPIC, LEDGER_TOPIC, USAGE_TOPIC
from ledger.spool import (
    CHECKPOINT,
    OS_FS,
    Checkpoint,
    Frame,
    SpoolLock,
    encode_frame,
    inspect,
    list_segments,
    read_checkpoint,
    salvage,
    segment_path,
    write_atomically,
)


class RepairError(RuntimeError):
    pass


@dataclass
class LogTip:
    """What the broker's log holds of one source."""

    seq: int = 0
    hash: str = ZERO_HASH
    seqs: set[int] = field(default_factory=set)  # first seqs of the records present (or dead)
    ranges: list[tuple[int, int]] = field(default_factory=list)
    records: int = 0


def scan_log(
    bootstrap: str,
    source: str,
    on_progress: Callable[[int], None] | None = None,
    idle_polls: int = 4,
) -> LogTip:
    """Read mesh.usage, mesh.ledger and mesh.dead from the start; the source's highest verified
    record (or dead-lettered one) is its tip."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        request_timeout_ms=10000,
    )
    tip = LogTip()
    try:
        tps = []
        for topic in (USAGE_TOPIC, LEDGER_TOPIC, DEAD_TOPIC):
            parts = consumer.partitions_for_topic(topic) or set()
            tps += [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            raise RepairError(f"no meshledger topics on {bootstrap}")
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        quiet = 0
        seen = 0
        while quiet < idle_polls:
            batches = consumer.poll(timeout_ms=500, max_records=50_000)
            quiet = 0 if batches else quiet + 1
            for tp, msgs in batches.items():
                for msg in msgs:
                    seen += 1
                    value = msg.value or b""
                    if tp.topic == DEAD_TOPIC:
                        _dead_letter_tip(tip, value, source)
                    elif claims_source(value, source):
                        _record_tip(tip, value, source)
            if on_progress:
                on_progress(seen)
    finally:
        consumer.close()
    return tip


def _record_tip(tip: LogTip, value: bytes, source: str) -> None:
    try:
        record = decode(value)
        record.verify()
    except RecordError:
        return  # a forgery or garbage under this source's name proves nothing
    if record.source != source:
        return
    tip.records += 1
    tip.seqs.add(record.seq)
    tip.ranges.append((record.seq, record.last_seq))
    if record.last_seq > tip.seq:
        tip.seq, tip.hash = record.last_seq, record.hash_hex


def _dead_letter_tip(tip: LogTip, value: bytes, source: str) -> None:
    try:
        letter = orjson.loads(value)
    except orjson.JSONDecodeError:
        return
    if not isinstance(letter, dict) or letter.get("origin") != "emitter":
        return
    if letter.get("source") != source or letter.get("part") != letter.get("parts", 1) - 1:
        return
    # the emitter dead-lettered this record: its seqs were sealed and must never be reused
    tip.seqs.add(int(letter["seq"]))
    tip.ranges.append((int(letter["seq"]), int(letter["last_seq"])))
    if int(letter["last_seq"]) > tip.seq:
        tip.seq, tip.hash = int(letter["last_seq"]), str(letter["hash"])


@dataclass
class RepairResult:
    source: str
    tip_seq: int
    tip_from: str
    kept: int
    dropped_on_broker: int
    unverifiable: int
    lost: list[tuple[int, int]]
    moved_to: Path | None


def _verified(frames: list[Frame]) -> tuple[list[Frame], int]:
    good, bad = [], 0
    for frame in frames:
        try:
            record = decode(frame.value)
            record.verify()
        except RecordError:
            bad += 1
            continue
        if (record.seq, record.last_seq, record.hash_hex) != (
            frame.seq,
            frame.last_seq,
            frame.hash,
        ):
            bad += 1
            continue
        good.append(frame)
    return good, bad


def repair(
    directory: Path,
    bootstrap: str,
    source: str | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> RepairResult:
    lock = SpoolLock(directory)
    try:
        return _repair(directory, bootstrap, source, on_progress)
    finally:
        lock.release()


def _repair(
    directory: Path, bootstrap: str, source: str | None, on_progress: Callable[[int], None] | None
) -> RepairResult:
    cp, _ = read_checkpoint(directory)
    intact, damaged_bytes = salvage(directory)
    frames, unverifiable = _verified(intact)
    sources = {decode(f.value).source for f in frames}
    if cp is not None and cp.source:
        sources.add(cp.source)
    if source:
        sources.add(source)
    if len(sources) != 1:
        raise RepairError(
            f"cannot tell whose spool {directory} is ({sorted(sources) or 'no records'}): "
            "pass --source ADDRESS"
        )
    (owner,) = sources
    log_tip = scan_log(bootstrap, owner, on_progress)
    candidates: list[tuple[int, str, str]] = [(log_tip.seq, log_tip.hash, "the broker's log")]
    if frames:
        last = max(frames, key=lambda f: f.last_seq)
        candidates.append((last.last_seq, last.hash, "the spool's intact records"))
    if cp is not None:
        candidates.append((cp.sealed_seq, cp.sealed_hash, "the old checkpoint"))
        candidates.append((cp.floor_seq, cp.floor_hash, "the old checkpoint"))
    tip_seq, tip_hash, tip_from = max(candidates, key=lambda c: c[0])
    unverified_bytes = damaged_bytes + sum(f.size for f in intact if f not in frames)
    if unverified_bytes:
        # damaged bytes may have held sealed records nobody else saw: skip every seq they could
        # hold (no event takes fewer than MIN_EVENT_BYTES), so none is ever sealed twice
        tip_seq += unverified_bytes // MIN_EVENT_BYTES + 1
        tip_from += f" + {unverified_bytes // MIN_EVENT_BYTES + 1} seqs damaged records may hold"
    # the records to send again: intact, and not in the log yet; each seq once, in seq order
    by_seq: dict[int, Frame] = {}
    for frame in frames:
        if frame.seq not in log_tip.seqs:
            by_seq.setdefault(frame.seq, frame)
    keep = [by_seq[s] for s in sorted(by_seq)]
    lost = _missing_ranges(log_tip.ranges + [(f.seq, f.last_seq) for f in frames], tip_seq)
    moved = _move_aside(directory)
    breaks, data, prev_tip = (
        [],
        b"",
        (keep[0].seq - 1, keep[0].prev) if keep else (tip_seq, tip_hash),
    )
    for frame in keep:
        if (frame.seq, frame.prev) != (prev_tip[0] + 1, prev_tip[1]):
            breaks.append(frame.seq)
        prev_tip = (frame.last_seq, frame.hash)
        data += encode_frame(
            frame.topic, frame.key, frame.value, frame.seq, frame.count, frame.prev, frame.hash
        )
    if keep and tip_seq > keep[-1].last_seq:
        breaks.append(tip_seq + 1)  # new records continue from the tip, after the old ones
    first_seq, first_prev = (keep[0].seq - 1, keep[0].prev) if keep else (tip_seq, tip_hash)
    checkpoint = Checkpoint(
        source=owner,
        acked_seq=first_seq,
        acked_hash=first_prev,
        sealed_seq=tip_seq,
        sealed_hash=tip_hash,
        breaks=breaks,
        floor_seq=tip_seq,
        floor_hash=tip_hash,
    )
    if data:
        write_atomically(OS_FS, segment_path(directory, 1), data)
    write_atomically(OS_FS, directory / CHECKPOINT, checkpoint.encode())
    report = inspect(directory, owner)
    if not report.ok:  # never hand over a spool the emitter would refuse
        raise RepairError(f"the rebuilt spool does not check out: {report.describe()}")
    return RepairResult(
        owner,
        tip_seq,
        tip_from,
        len(keep),
        len([f for f in frames if f.seq in log_tip.seqs]),
        unverifiable,
        lost,
        moved,
    )


def _missing_ranges(covered: list[tuple[int, int]], tip_seq: int) -> list[tuple[int, int]]:
    """Seq ranges in 1..tip that no record of the log or the spool covers (consumers see gaps)."""
    holes: list[tuple[int, int]] = []
    nxt = 1
    for first, last in sorted(covered):
        if first > nxt:
            holes.append((nxt, first - 1))
        nxt = max(nxt, last + 1)
    if tip_seq >= nxt:
        holes.append((nxt, tip_seq))
    return holes


def _move_aside(directory: Path) -> Path | None:
    files = [segment_path(directory, s) for s in list_segments(directory)]
    files += [p for p in (directory / CHECKPOINT,) if p.exists()]
    files += list(directory.glob("*.tmp"))
    if not files:
        return None
    aside = directory / f"damaged-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**6}"
    aside.mkdir()
    for path in files:
        path.rename(aside / path.name)
    OS_FS.fsync_dir(directory)
    return aside


def describe_result(result: RepairResult) -> list[str]:
    lines = [
        f"source {result.source}: next seq {result.tip_seq + 1} (tip from {result.tip_from})",
        f"{result.kept} intact records kept to send; {result.dropped_on_broker} already in the log",
    ]
    if result.unverifiable:
        lines.append(f"{result.unverifiable} records failed verification and were not kept")
    if result.lost:
        spans = ", ".join(f"{a}..{b}" if a != b else str(a) for a, b in result.lost)
        lines.append(f"seqs lost everywhere (consumers will declare these gaps): {spans}")
    if result.moved_to:
        lines.append(f"the damaged files are kept in {result.moved_to}")
    return lines


def dead_letter_original(letters: list[dict[str, Any]]) -> bytes:
    """The original bytes of a record dead-lettered in parts (the parts of one seq, any order)."""
    ordered = sorted(letters, key=lambda item: int(item["part"]))
    return b"".join(base64.b64decode(item["original"]) for item in ordered)

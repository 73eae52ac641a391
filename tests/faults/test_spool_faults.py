"""Storage faults in the emitter's spool, seeded and repeatable: torn writes, lost fsyncs, bit flips
at rest, ENOSPC, at random points. After each: no sealed (acknowledged) event lost, no seq reused,
or a clean refusal that names the damage (then `spool repair` makes any loss a visible gap).

Seeds: FAULT_SEEDS (comma-separated; default a short run), `make fault` for long runs."""

from __future__ import annotations

import errno
import os
import random
import time
from collections import defaultdict
from pathlib import Path

import pytest
from eth_hash.auto import keccak
from faulty_fs import Crash, FaultyFS
from kafka import KafkaConsumer, TopicPartition

from domain.envelope import Signer, decode
from domain.topics import USAGE_TOPIC
from infra.broker import Broker
from ledger.emitter import Emitter, EmitterConfig, NotAccepted
from ledger.spool import SpoolDamaged
from ledger.spool_repair import repair

SEEDS = [int(s) for s in os.environ.get("FAULT_SEEDS", "1,2,3,4,5,6,7,8").split(",")]
FAULTS = ("torn", "lost_fsync", "bitflip", "enospc")


def _config(bootstrap: str, spool: Path, rng: random.Random) -> EmitterConfig:
    return EmitterConfig(
        bootstrap=bootstrap,
        spool_dir=spool,
        batch_max_events=rng.choice([1, 3, 10]),
        linger_ms=rng.choice([0, 2, 10]),
        segment_bytes=rng.choice([600, 4000, 1 << 20]),  # small segments: rolls happen too
        request_timeout_ms=2000,
    )


def _log(bootstrap: str, source: str) -> dict[int, tuple[set[str], list[int]]]:
    """seq -> (record hashes seen for it, payload ids of its events) for one source."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(USAGE_TOPIC, p) for p in consumer.partitions_for_topic(USAGE_TOPIC) or ()]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    out: dict[int, tuple[set[str], list[int]]] = defaultdict(lambda: (set(), []))
    quiet = 0
    while quiet < 3:
        batches = consumer.poll(timeout_ms=300)
        quiet = 0 if batches else quiet + 1
        for msgs in batches.values():
            for msg in msgs:
                record = decode(msg.value)
                if record.source != source:
                    continue
                hashes, ids = out[record.seq]
                hashes.add(record.hash_hex)
                if len(hashes) == 1 and not ids:
                    ids.extend(e.payload_bytes for _, e in record.iter_events())
    consumer.close()
    return out


def _flushed(em: Emitter, fs: FaultyFS, timeout_s: float = 60) -> bool:
    """Flush; False as soon as the simulated crash stops the emitter."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            em.flush(timeout_s=0.5)
            return True
        except Crash:
            return False
        except TimeoutError:
            if fs.crashed:
                return False
        except OSError as exc:  # the spool is full: buffered events wait, sealed when it clears
            assert exc.errno == errno.ENOSPC, exc
    raise TimeoutError(f"not flushed; {em.stats()}")


@pytest.mark.parametrize("seed", SEEDS)
def test_spool_storage_faults(broker: Broker, tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    fault = FAULTS[seed % len(FAULTS)]
    signer = Signer(keccak(f"spool-fault-{seed}".encode()))
    spool = tmp_path / "spool"
    fs = FaultyFS(rng, fault, crash_at=rng.randint(5, 120))
    em = Emitter(signer, _config(broker.bootstrap, spool, rng), fs)
    accepted: list[int] = []
    for i in range(1, 400):
        try:
            em.meter("r1", "0xa", "0xb", "event", "t", i, i // 10)
            accepted.append(i)
        except Crash:
            break
        except NotAccepted as exc:  # ENOSPC: refused in the caller, with its cause
            assert "No space left on device" in str(exc)
        if fs.crashed:  # the sender thread hit the crash
            break
        if i % 50 == 0 and not _flushed(em, fs):
            break
    crashed = fs.crashed
    if fault == "enospc":  # the process lives on: everything accepted goes out
        assert _flushed(em, fs)
    sealed_seq = em.stats()["last_seq"]  # only a record in the spool has taken its seqs
    # the process ends (or dies): its sender stops, its lock goes with it
    em._closed = True
    em._wake.set()
    em._sender.join(timeout=10)
    em._spool.close()
    assert fault == "enospc" or crashed, f"the fault never fired ({fs.ops} file operations)"
    fs.after_crash(spool)

    lost: list[tuple[int, int]] = []
    cfg = _config(broker.bootstrap, spool, random.Random(seed + 1))
    try:
        again = Emitter(signer, cfg)
    except SpoolDamaged as exc:
        assert fault in ("bitflip", "torn", "lost_fsync"), f"{fault}: refused {exc}"
        assert "is damaged: " in str(exc) and "spool repair" in str(exc)
        result = repair(spool, broker.bootstrap)
        lost = result.lost
        again = Emitter(signer, cfg)
    resumed_at = again.stats()["last_seq"]
    assert resumed_at >= sealed_seq, f"tip went back from {sealed_seq} to {resumed_at}: {fs.events}"
    for i in range(1000, 1020):
        again.meter("r1", "0xa", "0xb", "event", "t", i, 99)
    again.flush(timeout_s=60)
    again.close()

    log = _log(broker.bootstrap, signer.address)
    forks = {seq: h for seq, (h, _) in log.items() if len(h) > 1}
    assert not forks, f"seqs sealed twice with different records: {forks}; {fs.events}"
    seqs = {seq + k for seq, (_, ids) in log.items() for k in range(len(ids))}
    ids = [i for _, (_, record_ids) in sorted(log.items()) for i in record_ids]
    assert ids[-20:] == list(range(1000, 1020))
    before = [s + len(r) - 1 for s, (_, r) in log.items() if r and r[0] < 1000]
    after = [s for s, (_, r) in log.items() if r and r[0] >= 1000]
    assert min(after) > max([sealed_seq, *before]), "a record after the restart reused a seq"

    def declared(seq: int) -> bool:
        return any(a <= seq <= b for a, b in lost)

    missing = [s for s in range(1, sealed_seq + 1) if s not in seqs and not declared(s)]
    assert not missing, f"{fault}: sealed seqs lost without a trace: {missing[:10]}; {fs.events}"
    if lost:
        assert fault == "bitflip", f"{fault} lost {lost}: only media damage may lose sealed records"
    if fault == "enospc":
        assert sorted(set(ids) - set(range(1000, 1020))) == accepted  # exactly what was accepted


def test_a_crash_during_the_fault_run_is_seeded_and_repeatable(tmp_path: Path) -> None:
    """Same seed, same fault at the same operation: a failing seed can be rerun as it happened."""
    runs = []
    for _ in range(2):
        rng = random.Random(42)
        fs = FaultyFS(rng, "torn", crash_at=rng.randint(5, 120))
        path = tmp_path / f"f{len(runs)}"
        path.mkdir()
        fh = fs.open(path / "x", "ab")
        with pytest.raises(Crash):
            for i in range(200):
                fh.write(bytes([i]) * 100)
        runs.append((fs.ops, fs.events, (path / "x").stat().st_size))
    assert runs[0] == runs[1]

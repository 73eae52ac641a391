"""Issue 9 items 8 and 9: a damaged spool is refused with what was found, repaired without reusing a
seq; a torn tail is cut; one emitter per spool directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from ledger_world import World, caught_up, run_until, table

from domain.envelope import MIN_EVENT_BYTES, Signer, decode
from infra.broker import Broker
from infra.procs import free_port
from ledger.emitter import Emitter
from ledger.simulate import emitter, new_signer
from ledger.spool import CHECKPOINT, SpoolDamaged, SpoolLocked, iter_frames, segment_path
from ledger.spool_cli import spool as spool_group
from ledger.spool_repair import repair

EVENTS_PER_RECORD = 5


def _records(em: Emitter, realm: str, count: int, first_block: int = 0) -> None:
    for i in range(count * EVENTS_PER_RECORD):
        em.meter(realm, "0xa", "0xb", "event", "t", 10, first_block + i // EVENTS_PER_RECORD)


def _offline(signer: Signer, spool: Path) -> Emitter:
    """An emitter whose broker is down: what it seals stays in the spool, unacknowledged."""
    return emitter(
        signer,
        f"127.0.0.1:{free_port()}",
        spool,
        batch_max_events=EVENTS_PER_RECORD,
        request_timeout_ms=300,
    )


def _spool_of(tmp: Path, signer: Signer, broker: Broker, acked: int, unacked: int) -> Path:
    online = emitter(signer, broker.bootstrap, tmp, batch_max_events=EVENTS_PER_RECORD)
    _records(online, "r1", acked)
    online.flush()
    online.close()
    offline = _offline(signer, tmp)
    _records(offline, "r1", unacked, first_block=acked)
    offline.seal_all()
    offline.close(timeout_s=0.5)
    return tmp / signer.address


def _frame_start(directory: Path, index: int) -> int:
    frame = list(iter_frames(directory))[index]
    return frame.end - frame.size


def _refusal(signer: Signer, tmp: Path) -> str:
    with pytest.raises(SpoolDamaged) as err:
        emitter(signer, "127.0.0.1:1", tmp)
    return str(err.value)


def test_a_flipped_byte_mid_spool_is_refused_not_cut(broker: Broker, tmp_path: Path) -> None:
    signer = new_signer()
    directory = _spool_of(tmp_path, signer, broker, acked=0, unacked=10)
    seg = segment_path(directory, 1)
    size = seg.stat().st_size
    data = bytearray(seg.read_bytes())
    data[_frame_start(directory, 2) + 60] ^= 0x10  # record 3 of 10
    seg.write_bytes(bytes(data))
    message = _refusal(signer, tmp_path)
    assert "segment 1: a frame body fails its checksum" in message
    assert "followed by more data" in message and "spool repair" in message
    assert seg.stat().st_size == size  # nothing was cut


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("empty segment", "segment 1 is empty"),
        ("deleted checkpoint", "checkpoint.json is missing while 1 segments exist"),
        ("torn checkpoint", "checkpoint.json is unreadable"),
    ],
)
def test_lost_segments_and_checkpoints_are_refused(
    broker: Broker, tmp_path: Path, damage: str, expected: str
) -> None:
    signer = new_signer()
    directory = _spool_of(tmp_path, signer, broker, acked=5, unacked=5)
    if damage == "empty segment":
        segment_path(directory, 1).write_bytes(b"")
    elif damage == "deleted checkpoint":
        (directory / CHECKPOINT).unlink()
    else:
        cp = directory / CHECKPOINT
        cp.write_bytes(cp.read_bytes()[:20])
    assert expected in _refusal(signer, tmp_path)


def test_a_torn_tail_is_cut_and_its_seq_sealed_again(broker: Broker, tmp_path: Path) -> None:
    signer = new_signer()
    directory = _spool_of(tmp_path, signer, broker, acked=0, unacked=4)
    seg = segment_path(directory, 1)
    last = list(iter_frames(directory))[-1]
    with open(seg, "r+b") as fh:  # the crash came in the middle of the 4th append
        fh.truncate(last.end - last.size // 2)
    em = emitter(signer, broker.bootstrap, tmp_path, batch_max_events=EVENTS_PER_RECORD)
    assert em.stats()["last_seq"] == 3 * EVENTS_PER_RECORD  # the torn record never went out
    assert em.pending_records() == 3
    em.flush()
    em.close()


def test_repair_recovers_the_tip_and_never_reuses_a_seq(
    fresh_broker: Broker, tmp_path: Path
) -> None:
    world = World(fresh_broker.bootstrap, tmp_path, head=10_000)
    router = world.router
    directory = _spool_of(tmp_path / "spool", router, fresh_broker, acked=10, unacked=10)
    seg = segment_path(directory, 1)
    data = bytearray(seg.read_bytes())
    damaged = list(iter_frames(directory))[12]  # record 13 of 20, never acknowledged
    data[damaged.end - 40] ^= 0x01
    seg.write_bytes(bytes(data))
    assert "fails its checksum" in _refusal(router, tmp_path / "spool")

    result = repair(directory, fresh_broker.bootstrap)
    # the damaged bytes could have held more seqs than record 13 did: all of them are skipped
    skipped = damaged.size // MIN_EVENT_BYTES + 1
    tip = 20 * EVENTS_PER_RECORD + skipped
    assert result.tip_seq == tip
    assert result.kept == 9 and result.lost == [(61, 65), (101, tip)]
    assert result.moved_to is not None and (result.moved_to / seg.name).exists()
    em = emitter(router, fresh_broker.bootstrap, tmp_path / "spool", batch_max_events=5)
    _records(em, "r1", 2, first_block=50)
    em.flush()
    em.close()

    service = world.service(gap_timeout_ms=200)
    total = tip + 2 * EVENTS_PER_RECORD
    run_until(
        service,
        lambda s: (
            caught_up(s)
            and s.projector.sources.get(router.address) is not None
            and s.projector.sources[router.address].last_seq == total
        ),
    )
    service.projector.commit()
    # every seq once: the lost record is a declared gap, nothing was sealed twice
    assert table(service, "SELECT from_seq, to_seq FROM seq_gaps ORDER BY 1") == [
        (61, 65),
        (101, tip),
    ]
    assert "duplicate" not in service.projector.rejected
    assert "broken_chain" not in service.projector.rejected
    assert table(
        service, f"SELECT sum(messages)::BIGINT FROM usage_blocks WHERE source = '{router.address}'"
    ) == [(21 * EVENTS_PER_RECORD,)]
    service.close()


def test_repair_takes_the_tip_from_the_log_when_the_spool_lost_it(
    broker: Broker, tmp_path: Path
) -> None:
    signer = new_signer()
    directory = _spool_of(tmp_path, signer, broker, acked=6, unacked=0)
    for path in directory.iterdir():
        if path.name != "lock":
            path.unlink()  # everything gone; a fresh start would hand out seq 1 again
    result = repair(directory, broker.bootstrap, source=signer.address)
    assert (result.tip_seq, result.tip_from) == (30, "the broker's log")
    em = emitter(signer, broker.bootstrap, tmp_path)
    em.meter("r1", "0xa", "0xb", "event", "t", 1, 99)
    em.seal_all()
    assert em.stats()["last_seq"] == 31
    em.close()
    frame = list(iter_frames(directory))[-1]
    assert decode(frame.value).seq == 31


def test_spool_check_cli_says_what_it_found(broker: Broker, tmp_path: Path) -> None:
    signer = new_signer()
    directory = _spool_of(tmp_path, signer, broker, acked=2, unacked=3)
    runner = CliRunner()
    ok = runner.invoke(spool_group, ["check", str(directory)])
    assert ok.exit_code == 0 and "intact (tip seq 25; 3 unacknowledged records)" in ok.output
    (directory / CHECKPOINT).unlink()
    bad = runner.invoke(spool_group, ["check", str(directory)])
    assert bad.exit_code == 1 and "checkpoint.json is missing" in bad.output


def test_a_second_emitter_on_one_spool_is_refused_naming_the_holder(
    broker: Broker, tmp_path: Path
) -> None:
    signer = new_signer()
    first = emitter(signer, broker.bootstrap, tmp_path)
    with pytest.raises(SpoolLocked, match=f"in use by another emitter \\(pid {os.getpid()}\\)"):
        emitter(signer, broker.bootstrap, tmp_path)
    first.close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from ledger.spool import SpoolLock;"
            "SpoolLock(Path(sys.argv[1])); print('held', flush=True); time.sleep(60)",
            str(tmp_path / signer.address),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(SpoolLocked, match=f"pid {holder.pid}"):
            emitter(signer, broker.bootstrap, tmp_path)
    finally:
        holder.kill()
        holder.wait()
    emitter(signer, broker.bootstrap, tmp_path).close()  # the lock died with its holder

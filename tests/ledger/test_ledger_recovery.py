"""Crashes and outages: a SIGKILLed projector, a stopped broker, and the audit's detections."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ledger_world import World, caught_up, run_until, table

from infra.broker import Broker
from infra.procs import wait_until
from ledger import store
from ledger.audit import EXIT_GAPS, EXIT_MISMATCH, LiveSide, run_audit
from ledger.query import QueryClient
from ledger.service import replay
from ledger.simulate import emitter

#: blocks are i // 40: 300k messages end at block 7,500, below the head of 10,000
STREAM_MAX_MESSAGES = 300_000


def _long_stream(
    world: World,
    tmp_path: Path,
    records: int = 8000,
    per_record: int = 5,
    pause_every: int = 0,
    until: threading.Event | None = None,
) -> int:
    """A router's metered stream; with `pause_every`, flushed and paused every so many messages
    so that it keeps arriving while a projector runs; with `until`, it goes on past `records`
    until that is set (however slowly the machine runs what waits for it)."""
    em = emitter(world.router, world.bootstrap, tmp_path / "spool", batch_max_events=per_record)
    rng = random.Random(3)
    i = 0
    # with `until`: at most STREAM_MAX_MESSAGES, whose blocks stay under the world's head
    while i < records * per_record or (
        until is not None and not until.is_set() and i < STREAM_MAX_MESSAGES
    ):
        em.meter(
            "r1",
            world.user,
            f"0xpeer{rng.randint(0, 5)}",
            rng.choice(["event", "invocation"]),
            "t",
            rng.randint(1, 500),
            i // 40,
        )
        if pause_every and i % pause_every == pause_every - 1:
            em.flush()
            time.sleep(0.03)
        i += 1
    em.flush()
    em.close()
    return i


def _consumed(url: str) -> int:
    """Records the running projector has committed (its offsets, read through its endpoint)."""
    return sum(int(o) for _, _, o in QueryClient(url, timeout_s=2).get("snapshot")["offsets"])


def test_sigkilled_projector_restarts_to_the_tables_of_a_clean_replay(
    fresh_broker: Broker, tmp_path: Path
) -> None:
    world = World(fresh_broker.bootstrap, tmp_path, head=10_000)
    sent: list[int] = []
    kills_done = threading.Event()
    stream = threading.Thread(
        target=lambda: sent.append(
            _long_stream(world, tmp_path, 2000, 5, pause_every=200, until=kills_done)
        )
    )
    stream.start()  # records keep arriving while the projector is killed again and again
    db = tmp_path / "killed.duckdb"
    cmd = [
        sys.executable,
        "-m",
        "ledger.cli",
        "project",
        "--bootstrap",
        fresh_broker.bootstrap,
        "--db",
        str(db),
        "--indexer-source",
        world.indexer_key.address,
    ]
    rng = random.Random(11)
    mid_stream = 0
    progress = [0]
    marker = Path(f"{db}.query")
    for run in range(4):
        marker.unlink(missing_ok=True)
        with open(tmp_path / f"projector-{run}.log", "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            # kill it only once it is running and has committed past where the last run died
            wait_until(
                lambda: marker.exists() and _consumed(marker.read_text()) > progress[-1],
                60,
                "projector committing",
                proc,
            )
            time.sleep(rng.uniform(0, 0.3))  # somewhere in the stream, mid-transaction or not
            assert proc.poll() is None, "the projector exited before it was killed"
            progress.append(_consumed(marker.read_text()))
            mid_stream += stream.is_alive()
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        if run == 2:
            kills_done.set()  # the last run sees the stream end
    stream.join()
    assert mid_stream >= 2, "the kills came after the stream ended"
    assert progress == sorted(progress) and len(set(progress)) == 5  # each run moved on
    service = world.service("killed.duckdb")
    run_until(service, caught_up, 60)
    service.projector.commit()
    assert table(service, "SELECT sum(messages)::BIGINT FROM usage_blocks") == [(sent[0],)]
    assert "duplicate" not in service.projector.rejected
    clean = replay(fresh_broker.bootstrap, tmp_path / "clean.duckdb", world.trust)
    for name in store.AUDITED_TABLES:
        assert store.fingerprint(service.con, name) == store.fingerprint(clean.con, name), name
    service.close()
    clean.close()


def test_broker_stopped_while_emitting_every_event_arrives_exactly_once(
    fresh_broker: Broker, tmp_path: Path
) -> None:
    world = World(fresh_broker.bootstrap, tmp_path, head=10_000)
    em = emitter(
        world.router,
        fresh_broker.bootstrap,
        tmp_path / "spool",
        batch_max_events=100,
        request_timeout_ms=1000,
    )
    sent = 0
    for i in range(3000):
        em.meter("r1", world.user, "0xpeer", "event", "t", 10, i // 100)
        sent += 1
    os.kill(fresh_broker.pid, signal.SIGSTOP)  # unreachable: requests hang and time out
    try:
        for i in range(3000, 6000):
            em.meter("r1", world.user, "0xpeer", "event", "t", 10, i // 100)
            sent += 1
        wait_until(
            lambda: em.pending_records() > 0 and em.stats()["send_errors"] > 0,
            30,
            "the emitter noticing the stopped broker",
        )
        assert em.stats()["broker_reachable"] is False
    finally:
        os.kill(fresh_broker.pid, signal.SIGCONT)
    em.flush(timeout_s=60)
    # in the log: every seq 1..sent at least once, and each (source, seq) always with the same bytes
    service = world.service()
    run_until(service, caught_up, 60)
    service.projector.commit()
    assert table(
        service,
        f"SELECT sum(messages)::BIGINT FROM usage_blocks WHERE source = '{world.router.address}'",
    ) == [(sent,)]
    assert service.projector.sources[world.router.address].last_seq == sent
    assert table(service, "SELECT count(*) FROM seq_gaps") == [(0,)]
    service.close()
    em.close()


def test_audit_detects_a_tampered_row_and_a_missing_record(
    fresh_broker: Broker, tmp_path: Path
) -> None:
    world = World(fresh_broker.bootstrap, tmp_path, head=10_000)
    for block in (1, 2, 3):
        world.send_raw(world.crafted_metered(4, block=block))
    service = world.service()
    run_until(service, caught_up)
    service.projector.commit()
    service.close()
    clean = run_audit(
        fresh_broker.bootstrap,
        world.trust,
        LiveSide(db_path=tmp_path / "live.duckdb"),
        tmp_path / "a1",
    )
    assert clean.matches and clean.exit_code == 0

    import duckdb

    con = duckdb.connect(str(tmp_path / "live.duckdb"))
    con.execute("UPDATE usage_blocks SET messages = messages + 1 WHERE block = 2")
    con.close()
    tampered = run_audit(
        fresh_broker.bootstrap,
        world.trust,
        LiveSide(db_path=tmp_path / "live.duckdb"),
        tmp_path / "a2",
    )
    assert tampered.exit_code == EXIT_MISMATCH
    assert [d.table for d in tampered.diffs] == ["usage_blocks"]
    assert len(tampered.diffs[0].only_live) == 1 and len(tampered.diffs[0].only_replayed) == 1

    # a record missing from the log: seq 5 of the crafted router never arrives, seq 6 does
    world.crafted_seq += 4
    world.send_raw(world.crafted_metered(2, block=4))
    fresh = world.service("fresh.duckdb", gap_timeout_ms=0)
    run_until(
        fresh,
        lambda s: (
            caught_up(s)
            and s.projector.sources[world.crafted.address].last_seq == world.crafted_seq
        ),
    )
    fresh.projector.commit()
    fresh.close()
    gaps = run_audit(
        fresh_broker.bootstrap,
        world.trust,
        LiveSide(db_path=tmp_path / "fresh.duckdb"),
        tmp_path / "a3",
    )
    assert gaps.matches and gaps.exit_code == EXIT_GAPS
    assert gaps.gaps == [(world.crafted.address, 13, 16)]

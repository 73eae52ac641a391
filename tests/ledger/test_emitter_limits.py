"""Issue 9 item 5 (emitter side): records are sealed by their encoded size under record_max_bytes;
an event too big for any record is refused at emit, never sealed; bad metered input is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from domain.envelope import decode
from domain.events import ChequeRejected
from infra.broker import Broker
from ledger.emitter import EventTooLarge
from ledger.simulate import emitter, new_signer
from ledger.spool import iter_frames

LIMIT = 60_000


def _rejected(n: int, chequebook_bytes: int) -> ChequeRejected:
    return ChequeRejected(
        realm="r1", peer="0xp", chequebook="c" * chequebook_bytes, cumulative=n, reason="x", block=n
    )


def test_records_are_sealed_under_record_max_bytes(broker: Broker, tmp_path: Path) -> None:
    signer = new_signer()
    em = emitter(signer, broker.bootstrap, tmp_path, record_max_bytes=LIMIT, linger_ms=60_000)
    for n in range(40):  # peer-chosen strings of 7 KB: the old 256-bytes-an-event guess
        em.emit(_rejected(n, 7_000))
    for i in range(3000):  # metered messages with long, mostly distinct URIs
        em.meter(
            "r1", "0xa", f"0xpeer{i % 7}", "event", f"com.example.{i % 400}." + "u" * 100, 9, i
        )
    em.flush()
    em.close()
    frames = list(iter_frames(tmp_path / signer.address))
    assert len(frames) > 5
    assert max(len(f.value) for f in frames) <= LIMIT
    events = [e for f in frames for _, e in decode(f.value).iter_events()]
    assert sum(isinstance(e, ChequeRejected) for e in events) == 40
    assert len(events) == 3040
    assert [s for f in frames for s, _ in decode(f.value).iter_events()] == list(range(1, 3041))


def test_an_event_too_big_for_any_record_is_refused_at_emit(broker: Broker, tmp_path: Path) -> None:
    signer = new_signer()
    em = emitter(signer, broker.bootstrap, tmp_path, record_max_bytes=LIMIT)
    em.emit(_rejected(1, 100))
    with pytest.raises(
        EventTooLarge, match=r"ChequeRejected event of \d+ encoded bytes cannot fit"
    ):
        em.emit(_rejected(2, 1 << 20))
    with pytest.raises(EventTooLarge, match="cannot fit in a record of record_max_bytes=60000"):
        em.meter("r1", "0xa", "0xb", "event", "u" * LIMIT, 1, 1)
    em.emit(_rejected(3, 100))
    em.flush()
    em.close()
    events = [
        e for f in iter_frames(tmp_path / signer.address) for _, e in decode(f.value).iter_events()
    ]
    assert [e.cumulative for e in events] == [1, 3]  # the refused ones never got a seq


@pytest.mark.parametrize(
    ("kind", "payload", "block", "message"),
    [
        ("teleport", 1, 1, "unknown meter kind 'teleport'"),
        ("event", -1, 1, "out of range"),
        ("event", 1, 1 << 64, "out of range"),
        ("event", 1.5, 1, "out of range"),
    ],
)
def test_bad_metered_input_is_refused_and_loses_nothing(
    broker: Broker, tmp_path: Path, kind: str, payload: int, block: int, message: str
) -> None:
    signer = new_signer()
    em = emitter(signer, broker.bootstrap, tmp_path)
    em.meter("r1", "0xa", "0xb", "event", "t", 5, 1)
    with pytest.raises(ValueError, match=message):
        em.meter("r1", "0xa", "0xb", kind, "t", payload, block)
    em.meter("r1", "0xa", "0xb", "event", "t", 6, 2)
    em.flush()
    em.close()
    frames = list(iter_frames(tmp_path / signer.address))
    events = [e for f in frames for _, e in decode(f.value).iter_events()]
    assert [e.payload_bytes for e in events] == [5, 6]

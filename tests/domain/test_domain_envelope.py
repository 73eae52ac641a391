"""Signed records: round trip, tampering, schema errors, upcasting."""

from __future__ import annotations

import os

import orjson
import pytest

from domain.envelope import MAGIC, ZERO_HASH, MeteredBuilder, RecordError, Signer, decode, seal
from domain.events import RealmCreated, RealmParams, StakeChanged, event_from_dict, event_to_dict


def test_metered_record_round_trip_keeps_each_seq() -> None:
    signer = Signer(os.urandom(32))
    cols = MeteredBuilder()
    for i in range(5):
        cols.add("0xa", "0xb", "invocation", "com.x.f", 10 + i, 100 + i)
    wire, sealed = seal(signer, 7, ZERO_HASH, "r", metered=cols.build())
    record = decode(wire)
    record.verify()
    events = list(record.iter_events())
    assert [seq for seq, _ in events] == [7, 8, 9, 10, 11]
    assert [e.payload_bytes for _, e in events] == [10, 11, 12, 13, 14]
    assert record.hash == sealed.hash and record.last_seq == 11


def test_a_changed_byte_breaks_the_signature() -> None:
    signer = Signer(os.urandom(32))
    ev = StakeChanged(
        realm="r",
        staker="0xa",
        role="user",
        target="0xk",
        amount=10**20,
        tx_hash="0x1",
        block=1,
        log_index=0,
    )
    wire, _ = seal(signer, 1, ZERO_HASH, "r", events=[ev])
    tampered = wire.replace(b'"100000000000000000000"', b'"900000000000000000000"')
    assert tampered != wire
    with pytest.raises(RecordError) as err:
        decode(tampered).verify()
    assert err.value.reason == "bad_signature"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "undecodable"),
        (b"[1,2]", "schema"),
        (
            b'{"src":"0x1","seq":1,"n":1,"prev":"0x","realm":"r","events":[{"type":"Nope","v":1}]}',
            "unknown_type",
        ),
        (
            b'{"src":"0x1","seq":1,"n":1,"prev":"0x","realm":"r","events":[{"type":"ChainHead","v":9,"realm":"r"}]}',
            "unknown_version",
        ),
        (b'{"src":"0x1","seq":0,"n":1,"prev":"0x","realm":"r","events":[]}', "schema"),
    ],
)
def test_malformed_bodies_get_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(RecordError) as err:
        decode(MAGIC + b"\x00" * 65 + body)
    assert err.value.reason == reason


def test_v1_realm_created_is_upcast() -> None:
    current = event_to_dict(RealmCreated(realm="r", keeper="0xk", params=RealmParams(), block=3))
    old = orjson.loads(orjson.dumps(current))
    old["v"] = 1
    del old["params"]["price_per_message"]
    assert event_from_dict(old) == RealmCreated(
        realm="r", keeper="0xk", params=RealmParams(), block=3
    )


def test_amounts_must_be_decimal_strings() -> None:
    data = event_to_dict(
        StakeChanged(
            realm="r",
            staker="a",
            role="user",
            target="k",
            amount=5,
            tx_hash="",
            block=1,
            log_index=0,
        )
    )
    data["amount"] = 5
    with pytest.raises(ValueError, match="decimal string"):
        event_from_dict(data)

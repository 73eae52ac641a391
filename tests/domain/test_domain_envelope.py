"""Signed records: round trip, tampering, schema errors, upcasting."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pytest

from domain.envelope import (
    MAGIC,
    MAGIC_COLUMNAR,
    ZERO_HASH,
    MeteredBuilder,
    MeteredColumns,
    RecordError,
    Signer,
    decode,
    peek_count,
    seal,
)
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


LEGACY = Path(__file__).parent / "data" / "ml1_metered_record.hex"


def test_a_metered_record_of_the_first_format_still_decodes_and_verifies() -> None:
    # written by the projector's first format (orjson columns, magic ML1) before ML2 existed
    wire = bytes.fromhex(LEGACY.read_text())
    assert wire.startswith(MAGIC)
    record = decode(wire)
    record.verify()
    assert record.source == Signer(bytes([0x11]) * 32).address
    assert (record.seq, record.count, record.realm) == (5, 3, "realm.legacy")
    events = [e for _, e in record.iter_events()]
    assert [(e.kind, e.to_peer[:4], e.payload_bytes, e.block) for e in events] == [
        ("invocation", "0xbb", 120, 7),
        ("result", "0xaa", 30, 7),
        ("event", "0xcc", 2**40, 9),
    ]
    assert peek_count(wire) == 3


def test_metered_records_are_binary_columns_each_as_narrow_as_its_values() -> None:
    signer = Signer(os.urandom(32))
    cols = MeteredBuilder()
    for i in range(4096):
        block = 7_000_000_000 + i // 1024
        cols.add(f"0x{i % 16:040x}", "0xb", "event", "com.x.topic", 100 + i % 200, block)
    wire, sealed = seal(signer, 1, ZERO_HASH, "r", metered=cols.build())
    assert wire.startswith(MAGIC_COLUMNAR)
    # a byte for each column of each message (blocks as offsets from the least), strings, header
    assert len(wire) < 4096 * 6 + 17 * 44 + 300
    record = decode(wire)
    record.verify()
    assert record.hash == sealed.hash and peek_count(wire) == 4096
    assert record.metered is not None
    assert record.metered.block.tolist()[1020:1030:3] == [
        7_000_000_000,
        7_000_000_000,
        7_000_000_001,
        7_000_000_001,
    ]
    assert record.metered.payload_bytes.tolist()[:3] == [100, 101, 102]


def _crafted(**columns: list[int]) -> MeteredColumns:
    base = {"from_idx": [0], "to_idx": [0], "kind_idx": [0], "uri_idx": [0]}
    base |= {"payload_bytes": [1], "block": [1]}
    base |= columns
    return MeteredColumns(["0xa"], ["t"], *(np.array(v, dtype=np.uint64) for v in base.values()))


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"from_idx": [1]}, "metered from index out of range"),
        ({"kind_idx": [9]}, "metered kind index out of range"),
        ({"uri_idx": [3]}, "metered uri index out of range"),
        ({"block": [1 << 63]}, "metered block over 2\\*\\*63"),
        ({"payload_bytes": [(1 << 64) - 1]}, "metered bytes over 2\\*\\*63"),
    ],
)
def test_binary_metered_columns_are_validated(columns: dict[str, list[int]], message: str) -> None:
    wire, _ = seal(Signer(os.urandom(32)), 1, ZERO_HASH, "r", metered=_crafted(**columns))
    with pytest.raises(RecordError, match=message) as err:
        decode(wire)
    assert err.value.reason == "schema"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda body: body + b"\x00", "1 bytes after the columns"),
        (lambda body: body[:-1], "column beyond the record"),
        (lambda body: b"\x01" + body[1:], "unknown flags"),
        (lambda body: body[:40], "binary metered body"),
    ],
)
def test_damaged_binary_bodies_are_schema_errors(
    edit: Callable[[bytes], bytes], message: str
) -> None:
    wire, _ = seal(Signer(os.urandom(32)), 1, ZERO_HASH, "r", metered=_crafted())
    head = len(MAGIC_COLUMNAR) + 65
    with pytest.raises(RecordError, match=message) as err:
        decode(wire[:head] + edit(wire[head:]))
    assert err.value.reason == "schema"

"""The indexer's event types: older versions upcast (old logs still replay), chain identity,
signed 256-bit values through a signed record, and the rejections of bad encodings."""

from __future__ import annotations

import os

import orjson
import pytest

from domain.envelope import ZERO_HASH, Signer, decode, seal
from domain.events import (
    ApiEnabled,
    EventDecodeError,
    LogRetracted,
    PriceObserved,
    RealmCreated,
    RealmParams,
    RealmParamsChanged,
    StakeChanged,
    event_from_dict,
    event_to_dict,
    log_identity,
)

PRICE = PriceObserved(
    realm="",
    chain_id=42161,
    feed="0x" + "ab" * 20,
    round_id=(7 << 64) + 5,  # a uint80 round id: beyond 64 bits
    answer=-(2**200),
    decimals=8,
    updated_at=1_700_000_000,
    status="non_positive",
    block=12,
    block_hash="0x" + "cd" * 32,
)


def old(event_dict: dict[str, object], version: int, *dropped: str) -> dict[str, object]:
    data = orjson.loads(orjson.dumps(event_dict))
    data["v"] = version
    for name in dropped:
        del data[name]
    return data


def test_older_versions_upcast_without_chain_identity() -> None:
    stake = StakeChanged("r", "0xa", "user", "0x" + "00" * 20, 5, "0xt", 3, 1)
    v1 = old(event_to_dict(stake), 1, "chain_id", "block_hash", "cause")
    assert event_from_dict(v1) == stake and log_identity(stake) is None
    created = RealmCreated(realm="r", keeper="0xk", params=RealmParams(), block=3)
    v2 = old(event_to_dict(created), 2, "chain_id", "block_hash", "log_index", "tx_hash")
    assert event_from_dict(v2) == created
    changed = RealmParamsChanged(realm="r", params=RealmParams(rfr_bps=1), block=4)
    assert (
        event_from_dict(
            old(event_to_dict(changed), 1, "chain_id", "block_hash", "log_index", "tx_hash")
        )
        == changed
    )
    api = ApiEnabled(realm="r", api="com.x", vendor="0xv", block=5)
    assert (
        event_from_dict(
            old(event_to_dict(api), 1, "chain_id", "block_hash", "log_index", "tx_hash")
        )
        == api
    )


def test_chain_events_round_trip_through_a_signed_record() -> None:
    retracted = LogRetracted("", 42161, 12, "0x" + "cd" * 32, 3, "StakeChanged")
    wire, _ = seal(Signer(os.urandom(32)), 1, ZERO_HASH, "", events=[PRICE, retracted])
    record = decode(wire)
    record.verify()
    assert list(record.events) == [PRICE, retracted]
    assert log_identity(retracted) == (42161, "0x" + "cd" * 32, 3)


@pytest.mark.parametrize(
    ("field", "value"),
    [("answer", "12a"), ("answer", 5), ("round_id", "-1"), ("answer", "--5")],
)
def test_bad_price_encodings_are_rejected_with_their_reason(field: str, value: object) -> None:
    data = event_to_dict(PRICE)
    data[field] = value
    with pytest.raises(EventDecodeError) as err:
        event_from_dict(data)
    assert err.value.reason == "schema" and field in err.value.detail


def test_only_signed_fields_may_be_negative() -> None:
    stake = event_to_dict(StakeChanged("r", "0xa", "user", "0xt", 5, "0xt", 3, 1))
    stake["amount"] = "-5"
    with pytest.raises(EventDecodeError, match="amount must be a decimal string"):
        event_from_dict(stake)

"""The signed record envelope: one Kafka record carries events of one source.

Wire form: ``MAGIC | signature (65 bytes) | body``, where body is orjson of
``{"src", "seq", "n", "prev", "realm", "events" | "metered"}``. ``seq`` is the first event's
sequence number; the record's events carry ``seq .. seq+n-1``. ``prev`` is the hash of the
source's previous record (zero hash for its first). The record hash is keccak256(body) and the
signature is the source's EIP-191 signature of that hash, so verification needs no
re-serialisation. Metered messages travel in columnar form (``metered``) so a batch of
thousands costs a few list decodes, not thousands of dict decodes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from eth_hash.auto import keccak
from eth_keys import keys
from eth_keys.exceptions import BadSignature

from domain.events import (
    METER_KINDS,
    Event,
    EventDecodeError,
    MessageMetered,
    event_from_dict,
    event_to_dict,
)

MAGIC = b"ML1\x00"
SIG_BYTES = 65
ZERO_HASH = "0x" + "00" * 32
_EIP191_PREFIX = b"\x19Ethereum Signed Message:\n32"
_KIND_INDEX = {kind: i for i, kind in enumerate(METER_KINDS)}


class RecordError(ValueError):
    """A record that cannot be accepted; `reason` is machine-readable (it names the dead letter)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def eip191_digest(record_hash: bytes) -> bytes:
    return keccak(_EIP191_PREFIX + record_hash)


class Signer:
    """A source's secp256k1 key: signs record hashes (EIP-191). Its address is the source."""

    def __init__(self, private_key: bytes) -> None:
        if len(private_key) != 32:
            raise ValueError("a private key is 32 bytes")
        self._key = keys.PrivateKey(private_key)
        self.address: str = self._key.public_key.to_checksum_address()

    @property
    def private_key(self) -> bytes:
        """The raw key, for handing to a child process that signs as this source."""
        return bytes(self._key.to_bytes())

    def sign_hash(self, record_hash: bytes) -> bytes:
        sig = self._key.sign_msg_hash(eip191_digest(record_hash))
        r, s, v = sig.r, sig.s, sig.v
        return r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([v + 27])


def recover_source(record_hash: bytes, signature: bytes) -> str:
    """The checksummed address that signed `record_hash`; RecordError('bad_signature') if none."""
    if len(signature) != SIG_BYTES:
        raise RecordError("bad_signature", f"signature is {len(signature)} bytes")
    v = signature[64]
    if v not in (27, 28):
        raise RecordError("bad_signature", f"v={v}")
    try:
        sig = keys.Signature(signature[:64] + bytes([v - 27]))
        return str(
            sig.recover_public_key_from_msg_hash(eip191_digest(record_hash)).to_checksum_address()
        )
    except (BadSignature, ValueError) as exc:
        raise RecordError("bad_signature", str(exc)) from exc


@dataclass(frozen=True, slots=True)
class MeteredColumns:
    """Columnar batch of metered messages of one router in one realm (one seq each)."""

    peers: list[str]
    uris: list[str]
    from_idx: list[int]
    to_idx: list[int]
    kind_idx: list[int]
    uri_idx: list[int]
    payload_bytes: list[int]
    block: list[int]

    def __len__(self) -> int:
        return len(self.block)

    def to_dict(self) -> dict[str, Any]:
        return {
            "peers": self.peers,
            "uris": self.uris,
            "from": self.from_idx,
            "to": self.to_idx,
            "kind": self.kind_idx,
            "uri": self.uri_idx,
            "bytes": self.payload_bytes,
            "block": self.block,
        }

    @classmethod
    def from_dict(cls, data: Any) -> MeteredColumns:
        if not isinstance(data, dict):
            raise RecordError("schema", "metered is not an object")
        try:
            cols = cls(
                peers=data["peers"],
                uris=data["uris"],
                from_idx=data["from"],
                to_idx=data["to"],
                kind_idx=data["kind"],
                uri_idx=data["uri"],
                payload_bytes=data["bytes"],
                block=data["block"],
            )
        except (KeyError, TypeError) as exc:
            raise RecordError("schema", f"metered column missing: {exc}") from exc
        cols.validate()
        return cols

    def validate(self) -> None:
        n = len(self.block)
        columns = (
            self.from_idx,
            self.to_idx,
            self.kind_idx,
            self.uri_idx,
            self.payload_bytes,
            self.block,
        )
        if not all(isinstance(c, list) and len(c) == n for c in columns):
            raise RecordError("schema", "metered columns differ in length or are not lists")
        if not (isinstance(self.peers, list) and isinstance(self.uris, list)):
            raise RecordError("schema", "metered dictionaries are not lists")
        if not all(isinstance(p, str) for p in self.peers) or not all(
            isinstance(u, str) for u in self.uris
        ):
            raise RecordError("schema", "metered dictionaries must hold strings")
        if n == 0:
            raise RecordError("schema", "empty metered batch")
        # min/max run in C; a negative or out-of-range index is a schema error, not a crash later
        for name, col, bound in (
            ("from", self.from_idx, len(self.peers)),
            ("to", self.to_idx, len(self.peers)),
            ("kind", self.kind_idx, len(METER_KINDS)),
            ("uri", self.uri_idx, len(self.uris)),
        ):
            try:
                if min(col) < 0 or max(col) >= bound:
                    raise RecordError("schema", f"metered {name} index out of range")
            except TypeError as exc:
                raise RecordError("schema", f"metered {name} holds non-integers") from exc
        for name, col in (("bytes", self.payload_bytes), ("block", self.block)):
            try:
                if min(col) < 0:
                    raise RecordError("schema", f"metered {name} is negative")
            except TypeError as exc:
                raise RecordError("schema", f"metered {name} holds non-integers") from exc
            if any(type(x) is not int for x in col):
                raise RecordError("schema", f"metered {name} holds non-integers")


class MeteredBuilder:
    """Accumulates metered messages into columns, interning peers and URIs."""

    __slots__ = (
        "_peers",
        "_uris",
        "from_idx",
        "to_idx",
        "kind_idx",
        "uri_idx",
        "payload_bytes",
        "block",
    )

    def __init__(self) -> None:
        self._peers: dict[str, int] = {}
        self._uris: dict[str, int] = {}
        self.from_idx: list[int] = []
        self.to_idx: list[int] = []
        self.kind_idx: list[int] = []
        self.uri_idx: list[int] = []
        self.payload_bytes: list[int] = []
        self.block: list[int] = []

    def __len__(self) -> int:
        return len(self.block)

    def add(
        self, from_peer: str, to_peer: str, kind: str, uri: str, payload_bytes: int, block: int
    ) -> None:
        peers = self._peers
        f = peers.get(from_peer)
        if f is None:
            f = peers[from_peer] = len(peers)
        t = peers.get(to_peer)
        if t is None:
            t = peers[to_peer] = len(peers)
        u = self._uris.get(uri)
        if u is None:
            u = self._uris[uri] = len(self._uris)
        self.from_idx.append(f)
        self.to_idx.append(t)
        self.kind_idx.append(_KIND_INDEX[kind])
        self.uri_idx.append(u)
        self.payload_bytes.append(payload_bytes)
        self.block.append(block)

    def build(self) -> MeteredColumns:
        return MeteredColumns(
            peers=list(self._peers),
            uris=list(self._uris),
            from_idx=self.from_idx,
            to_idx=self.to_idx,
            kind_idx=self.kind_idx,
            uri_idx=self.uri_idx,
            payload_bytes=self.payload_bytes,
            block=self.block,
        )


@dataclass(frozen=True, slots=True)
class Record:
    """A decoded, not yet verified record."""

    source: str
    seq: int
    count: int
    prev: str
    realm: str
    hash: bytes
    signature: bytes
    events: tuple[Event, ...] = ()
    metered: MeteredColumns | None = None

    @property
    def last_seq(self) -> int:
        return self.seq + self.count - 1

    @property
    def hash_hex(self) -> str:
        return "0x" + self.hash.hex()

    def verify(self) -> None:
        """Raise RecordError('bad_signature') unless `source` signed this record."""
        signer = recover_source(self.hash, self.signature)
        if signer != self.source:
            raise RecordError("bad_signature", f"signed by {signer}, claims {self.source}")

    def iter_events(self) -> Iterator[tuple[int, Event]]:
        """(seq, event) pairs; metered columns expand into MessageMetered events."""
        if self.metered is None:
            yield from zip(range(self.seq, self.seq + self.count), self.events, strict=True)
            return
        m = self.metered
        for i in range(len(m)):
            yield (
                self.seq + i,
                MessageMetered(
                    realm=self.realm,
                    router=self.source,
                    from_peer=m.peers[m.from_idx[i]],
                    to_peer=m.peers[m.to_idx[i]],
                    kind=METER_KINDS[m.kind_idx[i]],
                    uri=m.uris[m.uri_idx[i]],
                    payload_bytes=m.payload_bytes[i],
                    block=m.block[i],
                ),
            )


def seal(
    signer: Signer,
    seq: int,
    prev: str,
    realm: str,
    events: Sequence[Event] = (),
    metered: MeteredColumns | None = None,
) -> tuple[bytes, Record]:
    """Encode and sign a record; returns its wire bytes and the record itself."""
    if (metered is None) == (not events):
        if metered is None:
            raise ValueError("a record carries events or metered messages")
        raise ValueError("a record carries events or metered messages, not both")
    count = len(metered) if metered is not None else len(events)
    body_obj: dict[str, Any] = {
        "src": signer.address,
        "seq": seq,
        "n": count,
        "prev": prev,
        "realm": realm,
    }
    if metered is not None:
        body_obj["metered"] = metered.to_dict()
    else:
        body_obj["events"] = [event_to_dict(e) for e in events]
    body = orjson.dumps(body_obj)
    record_hash = keccak(body)
    signature = signer.sign_hash(record_hash)
    record = Record(
        source=signer.address,
        seq=seq,
        count=count,
        prev=prev,
        realm=realm,
        hash=record_hash,
        signature=signature,
        events=tuple(events),
        metered=metered,
    )
    return MAGIC + signature + body, record


def peek_count(wire: bytes) -> int:
    """The number of events a record claims (`n`), without decoding or verifying it."""
    return int(orjson.loads(wire[len(MAGIC) + SIG_BYTES :])["n"])


def decode(wire: bytes) -> Record:
    """Parse wire bytes into a Record (signature not yet checked); RecordError on any defect."""
    if len(wire) < len(MAGIC) + SIG_BYTES + 2 or not wire.startswith(MAGIC):
        raise RecordError("undecodable", "not a meshledger record (magic or length)")
    signature = wire[len(MAGIC) : len(MAGIC) + SIG_BYTES]
    body = wire[len(MAGIC) + SIG_BYTES :]
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RecordError("undecodable", f"body is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise RecordError("schema", "body is not an object")
    try:
        source, seq, count, prev, realm = (
            obj["src"],
            obj["seq"],
            obj["n"],
            obj["prev"],
            obj["realm"],
        )
    except KeyError as exc:
        raise RecordError("schema", f"missing {exc}") from exc
    if not (isinstance(source, str) and isinstance(prev, str) and isinstance(realm, str)):
        raise RecordError("schema", "src, prev and realm must be strings")
    if type(seq) is not int or type(count) is not int or seq < 1 or count < 1:
        raise RecordError("schema", f"seq={seq!r} n={count!r} must be positive ints")
    events: tuple[Event, ...] = ()
    metered = None
    if "metered" in obj:
        metered = MeteredColumns.from_dict(obj["metered"])
        actual = len(metered)
    elif isinstance(obj.get("events"), list):
        try:
            events = tuple(event_from_dict(e) for e in obj["events"])
        except EventDecodeError as exc:
            raise RecordError(exc.reason, exc.detail) from exc
        actual = len(events)
        for e in events:
            if e.realm != realm:
                raise RecordError("schema", f"event for realm {e.realm!r} in a record of {realm!r}")
    else:
        raise RecordError("schema", "record carries neither events nor metered")
    if actual != count:
        raise RecordError("schema", f"n={count} but {actual} events")
    return Record(
        source=source,
        seq=seq,
        count=count,
        prev=prev,
        realm=realm,
        hash=keccak(body),
        signature=signature,
        events=events,
        metered=metered,
    )

"""The signed record envelope: one Kafka record carries events of one source.

Wire form: ``MAGIC | signature (65 bytes) | body``. The record hash is keccak256(body) and the
signature is the source's EIP-191 signature of that hash, so verification needs no
re-serialisation. Every body says ``src``, ``seq`` (the first event's sequence number; the
record's events carry ``seq .. seq+n-1``), ``n``, ``prev`` (the hash of the source's previous
record, zero hash for its first) and ``realm``. Two body formats, told apart by the magic:

* ``ML1``: orjson of ``{"src", "seq", "n", "prev", "realm", "events" | "metered"}`` — domain
  events, and metered messages as JSON columns in records written before ``ML2`` (still read);
* ``ML2``: metered messages, binary and columnar (see ``_HEADER``): packed little-endian
  unsigned columns, each as narrow as its largest value, plus interned string tables; decoded
  into numpy views and validated without a Python step per message.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import orjson
from coincurve import PrivateKey as CurvePrivateKey
from coincurve import PublicKey
from eth_hash.auto import keccak
from eth_keys import keys
from eth_utils import to_checksum_address

from domain.events import (
    METER_KINDS,
    Event,
    EventDecodeError,
    MessageMetered,
    event_from_dict,
    event_to_dict,
)

MAGIC = b"ML1\x00"
#: binary columnar metered records
MAGIC_COLUMNAR = b"ML2\x00"
SIG_BYTES = 65
ZERO_HASH = "0x" + "00" * 32
_EIP191_PREFIX = b"\x19Ethereum Signed Message:\n32"
KIND_INDEX = {kind: i for i, kind in enumerate(METER_KINDS)}


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
        self._curve_key = CurvePrivateKey(private_key)
        self.address: str = self._key.public_key.to_checksum_address()

    @property
    def private_key(self) -> bytes:
        """The raw key, for handing to a child process that signs as this source."""
        return bytes(self._key.to_bytes())

    def sign_hash(self, record_hash: bytes) -> bytes:
        # libsecp256k1 through coincurve: RFC 6979, low s (what eth_keys gives, without its
        # Python layers); r | s | recovery id, the id as v = 27 + id
        sig = self._curve_key.sign_recoverable(eip191_digest(record_hash), hasher=None)
        return sig[:64] + bytes([sig[64] + 27])


def recover_source(record_hash: bytes, signature: bytes) -> str:
    """The checksummed address that signed `record_hash`; RecordError('bad_signature') if none."""
    if len(signature) != SIG_BYTES:
        raise RecordError("bad_signature", f"signature is {len(signature)} bytes")
    v = signature[64]
    if v not in (27, 28):
        raise RecordError("bad_signature", f"v={v}")
    try:
        # coincurve directly: eth_keys' validation and checksumming cost more than the curve
        public = PublicKey.from_signature_and_message(
            signature[:64] + bytes([v - 27]), eip191_digest(record_hash), hasher=None
        )
    except ValueError as exc:
        raise RecordError("bad_signature", str(exc)) from exc
    return _checksummed(keccak(public.format(compressed=False)[1:])[-20:])


@lru_cache(maxsize=4096)
def _checksummed(address: bytes) -> str:
    """EIP-55 form of an address (sources are few: cached)."""
    return str(to_checksum_address(address))


#: the metered columns in wire order: (name in the legacy JSON body, attribute)
COLUMNS = (
    ("from", "from_idx"),
    ("to", "to_idx"),
    ("kind", "kind_idx"),
    ("uri", "uri_idx"),
    ("bytes", "payload_bytes"),
    ("block", "block"),
)
#: counts and sizes are below 2**63: DuckDB's BIGINT
INT_LIMIT = 1 << 63
_WIDTHS: dict[int, np.dtype[Any]] = {
    1: np.dtype("<u1"),
    2: np.dtype("<u2"),
    4: np.dtype("<u4"),
    8: np.dtype("<u8"),
}


def column_width(largest: int) -> int:
    """Bytes per value of an unsigned little-endian column whose largest value is `largest`."""
    return 1 if largest < 1 << 8 else 2 if largest < 1 << 16 else 4 if largest < 1 << 32 else 8


@dataclass(frozen=True, slots=True)
class MeteredColumns:
    """Columnar batch of metered messages of one router in one realm (one seq each): interned
    peers and URIs, and one unsigned integer array per column (numpy), indices into them."""

    peers: list[str]
    uris: list[str]
    from_idx: Any
    to_idx: Any
    kind_idx: Any
    uri_idx: Any
    payload_bytes: Any
    block: Any

    def __len__(self) -> int:
        return len(self.block)

    def validate(self) -> None:
        """Vectorized: equal lengths, indices inside their tables, counts below 2**63."""
        n = len(self.block)
        if n == 0:
            raise RecordError("schema", "empty metered batch")
        if any(len(getattr(self, attr)) != n for _, attr in COLUMNS):
            raise RecordError("schema", "metered columns differ in length")
        for name, col, bound in (
            ("from", self.from_idx, len(self.peers)),
            ("to", self.to_idx, len(self.peers)),
            ("kind", self.kind_idx, len(METER_KINDS)),
            ("uri", self.uri_idx, len(self.uris)),
            ("bytes", self.payload_bytes, INT_LIMIT),
            ("block", self.block, INT_LIMIT),
        ):
            if int(col.max()) >= bound:
                raise RecordError(
                    "schema",
                    f"metered {name} index out of range"
                    if bound < INT_LIMIT
                    else f"metered {name} over 2**63",
                )

    @classmethod
    def from_legacy(cls, data: Any) -> MeteredColumns:
        """The JSON columns of the first record format (``ML1``), checked element by element
        (JSON may hold anything), then held as arrays like the binary format's."""
        if not isinstance(data, dict):
            raise RecordError("schema", "metered is not an object")
        try:
            peers, uris = data["peers"], data["uris"]
            lists = [data[name] for name, _ in COLUMNS]
        except (KeyError, TypeError) as exc:
            raise RecordError("schema", f"metered column missing: {exc}") from exc
        if not (isinstance(peers, list) and isinstance(uris, list)):
            raise RecordError("schema", "metered dictionaries are not lists")
        if not all(isinstance(p, str) for p in peers) or not all(isinstance(u, str) for u in uris):
            raise RecordError("schema", "metered dictionaries must hold strings")
        if not all(isinstance(c, list) for c in lists):
            raise RecordError("schema", "metered columns differ in length or are not lists")
        for (name, _), col in zip(COLUMNS, lists, strict=True):
            if any(type(x) is not int for x in col):
                raise RecordError("schema", f"metered {name} holds non-integers")
            if col and min(col) < 0:
                raise RecordError("schema", f"metered {name} is negative")
            if col and max(col) >= INT_LIMIT:
                raise RecordError("schema", f"metered {name} over 2**63")
        arrays = [np.array(col, dtype=np.uint64) for col in lists]
        cols = cls(peers, uris, *arrays)
        cols.validate()
        return cols


class MeteredBuilder:
    """Accumulates metered messages, interning peers and URIs: one row of six unsigned
    integers per message in one array (a single C append), turned into columns at build."""

    __slots__ = ("peers", "uris", "rows", "string_bytes")

    #: bytes a message adds to a record at most (index widths 4, kind 1, counts 8)
    ROW_BYTES = 4 + 4 + 1 + 4 + 8 + 8

    def __init__(self) -> None:
        self.peers: dict[str, int] = {}
        self.uris: dict[str, int] = {}
        #: row-major (from, to, kind, uri, bytes, block) per message
        self.rows = array("Q")
        #: encoded bytes of the interned strings (their UTF-8 and a 4-byte length each)
        self.string_bytes = 0

    def __len__(self) -> int:
        return len(self.rows) // len(COLUMNS)

    def peer(self, peer: str) -> int:
        index = self.peers.get(peer)
        if index is None:
            index = self.peers[peer] = len(self.peers)
            self.string_bytes += string_bytes(peer)
        return index

    def uri(self, uri: str) -> int:
        index = self.uris.get(uri)
        if index is None:
            index = self.uris[uri] = len(self.uris)
            self.string_bytes += string_bytes(uri)
        return index

    def add(
        self, from_peer: str, to_peer: str, kind: str, uri: str, payload_bytes: int, block: int
    ) -> None:
        self.rows.extend(
            (self.peer(from_peer), self.peer(to_peer), KIND_INDEX[kind], self.uri(uri),
             payload_bytes, block)
        )  # fmt: skip

    def build(self) -> MeteredColumns:
        table = np.frombuffer(self.rows, dtype=np.uint64).reshape(-1, len(COLUMNS))
        return MeteredColumns(list(self.peers), list(self.uris), *table.T.copy())


def string_bytes(value: str) -> int:
    """Bytes a string takes in a binary record's string table."""
    return len(value.encode()) + 4


def _pack_strings(values: list[str]) -> bytes:
    encoded = [v.encode() for v in values]
    lengths = np.array([len(e) for e in encoded], dtype="<u4")
    return struct.pack("<I", len(encoded)) + lengths.tobytes() + b"".join(encoded)


def _unpack_strings(body: bytes, offset: int) -> tuple[list[str], int]:
    (count,) = struct.unpack_from("<I", body, offset)
    offset += 4
    if offset + 4 * count > len(body):
        raise RecordError("schema", "string table beyond the record")
    lengths = np.frombuffer(body, "<u4", count, offset)
    offset += 4 * count
    ends = offset + np.cumsum(lengths, dtype=np.int64)
    if count and int(ends[-1]) > len(body):
        raise RecordError("schema", "string table beyond the record")
    starts = [offset, *ends[:-1].tolist()]
    try:
        values = [body[a:b].decode() for a, b in zip(starts, ends.tolist(), strict=True)]
    except UnicodeDecodeError as exc:
        raise RecordError("schema", f"string table is not UTF-8: {exc}") from exc
    return values, int(ends[-1]) if count else offset


#: the binary metered body's fixed header: flags, source (checksummed, ASCII), first seq, count,
#: prev (the previous record's hash), realm length; then the realm (UTF-8), the peers' and URIs'
#: string tables, and each column as frame of reference: a width byte, the base (its least
#: value, u64) and each value less the base in that width, little-endian
_HEADER = struct.Struct("<B42sQI32sH")


_BASE = struct.Struct("<BQ")


def _encode_columnar(source: str, seq: int, prev: str, realm: str, m: MeteredColumns) -> bytes:
    name = realm.encode()
    parts = [
        _HEADER.pack(0, source.encode("ascii"), seq, len(m), bytes.fromhex(prev[2:]), len(name)),
        name,
        _pack_strings(m.peers),
        _pack_strings(m.uris),
    ]
    for _, attr in COLUMNS:
        col = getattr(m, attr)
        base, top = int(col.min()), int(col.max())
        # never narrower than a byte: spool repair bounds the events damaged bytes could hold
        # by MIN_EVENT_BYTES
        width = column_width(top - base)
        deltas = (col - np.uint64(base)) if base else col
        parts += [_BASE.pack(width, base), deltas.astype(_WIDTHS[width], copy=False).tobytes()]
    return b"".join(parts)


def _decode_columnar(body: bytes) -> tuple[str, int, int, str, str, MeteredColumns]:
    """(source, seq, n, prev, realm, columns) of a binary metered body."""
    try:
        flags, source, seq, count, prev, realm_len = _HEADER.unpack_from(body, 0)
        offset = _HEADER.size + realm_len
        realm = body[_HEADER.size : offset].decode()
        peers, offset = _unpack_strings(body, offset)
        uris, offset = _unpack_strings(body, offset)
        columns = []
        for name, _ in COLUMNS:
            width, base = _BASE.unpack_from(body, offset)
            offset += _BASE.size
            dtype = _WIDTHS.get(width)
            if dtype is None:
                raise RecordError("schema", f"metered {name} column of unknown width {width}")
            if offset + count * width > len(body):
                raise RecordError("schema", f"metered {name} column beyond the record")
            deltas = np.frombuffer(body, dtype, count, offset)
            if base + int(deltas.max()) >= 1 << 64:
                raise RecordError("schema", f"metered {name} over 2**64")
            columns.append(deltas + np.uint64(base) if base else deltas)
            offset += count * width
    except (struct.error, UnicodeDecodeError) as exc:
        raise RecordError("schema", f"binary metered body: {exc}") from exc
    if flags != 0:
        raise RecordError("schema", f"unknown flags {flags:#x}")
    if offset != len(body):
        raise RecordError("schema", f"{len(body) - offset} bytes after the columns")
    if not source.isascii():
        raise RecordError("schema", "source is not an address")
    cols = MeteredColumns(peers, uris, *columns)
    cols.validate()
    return source.decode(), seq, count, "0x" + prev.hex(), realm, cols


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
        columns = zip(*(getattr(m, attr).tolist() for _, attr in COLUMNS), strict=True)
        for i, (f, t, k, u, size, block) in enumerate(columns):
            yield (
                self.seq + i,
                MessageMetered(
                    realm=self.realm,
                    router=self.source,
                    from_peer=m.peers[f],
                    to_peer=m.peers[t],
                    kind=METER_KINDS[k],
                    uri=m.uris[u],
                    payload_bytes=size,
                    block=block,
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
    if metered is not None:
        count = len(metered)
        magic = MAGIC_COLUMNAR
        body = _encode_columnar(signer.address, seq, prev, realm, metered)
    else:
        count = len(events)
        magic = MAGIC
        body = orjson.dumps(
            {
                "src": signer.address,
                "seq": seq,
                "n": count,
                "prev": prev,
                "realm": realm,
                "events": [event_to_dict(e) for e in events],
            }
        )
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
    return magic + signature + body, record


def claims_source(wire: bytes, source: str) -> bool:
    """Whether a record's body names `source` (a cheap filter; `decode` and `verify` decide)."""
    body_at = len(MAGIC) + SIG_BYTES
    if wire.startswith(MAGIC_COLUMNAR):
        return wire.startswith(source.encode("ascii"), body_at + 1)
    return wire.startswith(b'{"src":"' + source.encode() + b'"', body_at)


#: no event takes fewer bytes in a record (a binary metered message: six 1-byte values)
MIN_EVENT_BYTES = len(COLUMNS)


def peek_count(wire: bytes) -> int:
    """The number of events a record claims (`n`), without decoding or verifying it."""
    if wire.startswith(MAGIC_COLUMNAR):
        return int(_HEADER.unpack_from(wire, len(MAGIC_COLUMNAR) + SIG_BYTES)[3])
    return int(orjson.loads(wire[len(MAGIC) + SIG_BYTES :])["n"])


def decode(wire: bytes) -> Record:
    """Parse wire bytes into a Record (signature not yet checked); RecordError on any defect."""
    if len(wire) < len(MAGIC) + SIG_BYTES + 2 or not wire.startswith((MAGIC, MAGIC_COLUMNAR)):
        raise RecordError("undecodable", "not a meshledger record (magic or length)")
    signature = wire[len(MAGIC) : len(MAGIC) + SIG_BYTES]
    body = wire[len(MAGIC) + SIG_BYTES :]
    if wire.startswith(MAGIC_COLUMNAR):
        source, seq, count, prev, realm, columns = _decode_columnar(body)
        _check_header(seq, count)
        return Record(source, seq, count, prev, realm, keccak(body), signature, (), columns)
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
    _check_header(seq, count)
    events: tuple[Event, ...] = ()
    metered: MeteredColumns | None = None
    if "metered" in obj:
        metered = MeteredColumns.from_legacy(obj["metered"])
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
    return Record(source, seq, count, prev, realm, keccak(body), signature, events, metered)


def _check_header(seq: Any, count: Any) -> None:
    if type(seq) is not int or type(count) is not int or seq < 1 or count < 1:
        raise RecordError("schema", f"seq={seq!r} n={count!r} must be positive ints")

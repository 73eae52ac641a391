"""The two WAMP serializers a router speaks: wamp.2.json (text frames) and wamp.2.msgpack.

Integers of any size travel exactly in JSON (as autobahn's stdlib-json serializer does); msgpack
has no integers beyond 64 bits, so such a message cannot be encoded for a msgpack peer and
`encode` says so with a `SerializationError` (autobahn's msgpack serializer cannot send one).
Map keys are strings only: a msgpack peer's binary or integer key is refused at decode.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, Protocol

import msgpack
import orjson


class SerializationError(ValueError):
    """A frame that does not decode into a WAMP message, or a message one serializer cannot
    represent (an integer beyond 64 bits in msgpack)."""


class Serializer(Protocol):
    subprotocol: str
    binary: bool

    def encode(self, msg: list[Any]) -> bytes: ...

    def decode(self, payload: bytes) -> Any: ...


def _binary_to_json(value: Any) -> str:
    # WAMP JSON convention for binary payloads (they arrive from msgpack peers)
    if isinstance(value, bytes | bytearray):
        return "\x00" + base64.b64encode(value).decode()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# orjson turns an integer outside [-2**63, 2**64) into a float without a word; such an integer
# has at least 19 digits, so a payload without a run of 19 digits is safe for orjson.
_LONG_DIGITS = re.compile(rb"\d{19}")


class JsonSerializer:
    """orjson for speed; a payload that may hold an integer beyond 64 bits (a token amount) goes
    through the stdlib parser, which keeps it exact."""

    subprotocol = "wamp.2.json"
    binary = False

    def encode(self, msg: list[Any]) -> bytes:
        try:
            return orjson.dumps(msg, default=_binary_to_json)
        except TypeError:
            try:
                return json.dumps(
                    msg, separators=(",", ":"), ensure_ascii=False, default=_binary_to_json
                ).encode()
            except (TypeError, ValueError) as exc:
                raise SerializationError(f"not representable in JSON: {exc}") from exc

    def decode(self, payload: bytes) -> Any:
        try:
            if _LONG_DIGITS.search(payload) is None:
                return orjson.loads(payload)
            return json.loads(payload, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:  # orjson.JSONDecodeError is a ValueError
            raise SerializationError(f"invalid JSON: {exc}") from exc


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not part of WAMP")


def _str_keys(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    for key, _ in pairs:
        if type(key) is not str:
            raise ValueError(f"map key {key!r} is not a string")
    return dict(pairs)


# msgpack's bin family (0xc4-0xc6): only a payload holding one can carry a binary map key
_BIN_MARKERS = (b"\xc4", b"\xc5", b"\xc6")


class MsgPackSerializer:
    subprotocol = "wamp.2.msgpack"
    binary = True

    def encode(self, msg: list[Any]) -> bytes:
        try:
            return msgpack.packb(msg, use_bin_type=True)  # type: ignore[no-any-return]
        except (OverflowError, TypeError, ValueError) as exc:
            raise SerializationError(f"not representable in msgpack: {exc}") from exc

    def decode(self, payload: bytes) -> Any:
        try:
            if any(marker in payload for marker in _BIN_MARKERS):
                return msgpack.unpackb(
                    payload, raw=False, ext_hook=_refuse_ext, object_pairs_hook=_str_keys
                )
            # strict keys: str or bytes only, and without a bin marker there are no bytes
            return msgpack.unpackb(payload, raw=False, strict_map_key=True, ext_hook=_refuse_ext)
        except Exception as exc:  # msgpack raises assorted errors on hostile input
            raise SerializationError(f"invalid msgpack: {exc}") from exc


def serializers() -> dict[str, Serializer]:
    """Supported subprotocols, in the router's order of preference."""
    return {
        "wamp.2.msgpack": MsgPackSerializer(),
        "wamp.2.json": JsonSerializer(),
    }

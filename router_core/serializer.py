"""The two WAMP serializers a router speaks: wamp.2.json (text frames) and wamp.2.msgpack."""

from __future__ import annotations

import base64
import json
from typing import Any, Protocol

import msgpack
import orjson


class SerializationError(ValueError):
    """A frame that does not decode into a WAMP message."""


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


class JsonSerializer:
    """orjson for speed; integers beyond 64 bits (token amounts) fall back to the json module."""

    subprotocol = "wamp.2.json"
    binary = False

    def encode(self, msg: list[Any]) -> bytes:
        try:
            return orjson.dumps(msg, default=_binary_to_json)
        except TypeError:
            return json.dumps(
                msg, separators=(",", ":"), ensure_ascii=False, default=_binary_to_json
            ).encode()

    def decode(self, payload: bytes) -> Any:
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            # orjson refuses integers beyond 64 bits; the stdlib parser takes them
            try:
                return json.loads(payload)
            except (ValueError, RecursionError) as exc2:
                raise SerializationError(f"invalid JSON: {exc}") from exc2


class MsgPackSerializer:
    subprotocol = "wamp.2.msgpack"
    binary = True

    def encode(self, msg: list[Any]) -> bytes:
        return msgpack.packb(msg, use_bin_type=True)  # type: ignore[no-any-return]

    def decode(self, payload: bytes) -> Any:
        try:
            return msgpack.unpackb(
                payload,
                raw=False,
                strict_map_key=False,
            )
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise SerializationError(f"invalid msgpack: {exc}") from exc
        except Exception as exc:  # msgpack raises assorted errors on hostile input
            raise SerializationError(f"invalid msgpack: {exc!r}") from exc


def serializers() -> dict[str, Serializer]:
    """Supported subprotocols, in the router's order of preference."""
    return {
        "wamp.2.msgpack": MsgPackSerializer(),
        "wamp.2.json": JsonSerializer(),
    }

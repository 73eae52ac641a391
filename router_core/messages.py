"""WAMP v2 message codes, well-known URIs and the shape checks every inbound message passes."""

from __future__ import annotations

import re
from typing import Any

HELLO = 1
WELCOME = 2
ABORT = 3
CHALLENGE = 4
AUTHENTICATE = 5
GOODBYE = 6
ERROR = 8
PUBLISH = 16
PUBLISHED = 17
SUBSCRIBE = 32
SUBSCRIBED = 33
UNSUBSCRIBE = 34
UNSUBSCRIBED = 35
EVENT = 36
CALL = 48
CANCEL = 49
RESULT = 50
REGISTER = 64
REGISTERED = 65
UNREGISTER = 66
UNREGISTERED = 67
INVOCATION = 68
INTERRUPT = 69
YIELD = 70

MAX_ID = 2**53

# -- error and close reasons ---------------------------------------------------------------------
PROTOCOL_VIOLATION = "wamp.error.protocol_violation"
NO_SUCH_REALM = "wamp.error.no_such_realm"
NOT_AUTHORIZED = "wamp.error.not_authorized"
AUTHENTICATION_FAILED = "wamp.error.authentication_failed"
NO_AUTH_METHOD = "wamp.error.no_auth_method"
INVALID_URI = "wamp.error.invalid_uri"
INVALID_ARGUMENT = "wamp.error.invalid_argument"
NO_SUCH_PROCEDURE = "wamp.error.no_such_procedure"
PROCEDURE_ALREADY_EXISTS = "wamp.error.procedure_already_exists"
NO_SUCH_REGISTRATION = "wamp.error.no_such_registration"
NO_SUCH_SUBSCRIPTION = "wamp.error.no_such_subscription"
CANCELED = "wamp.error.canceled"
TIMEOUT = "wamp.error.timeout"
CLOSE_NORMAL = "wamp.close.normal"
CLOSE_GOODBYE_AND_OUT = "wamp.close.goodbye_and_out"
CLOSE_SYSTEM_SHUTDOWN = "wamp.close.system_shutdown"
PAYMENT_REQUIRED = "mesh.error.payment_required"
NO_RESERVATION = "mesh.error.no_reservation"
BANDWIDTH_EXCEEDED = "mesh.error.bandwidth_exceeded"
SWAP_HANDSHAKE_REFUSED = "mesh.error.swap_handshake_refused"
CHEQUE_REJECTED = "mesh.error.cheque_rejected"
#: the auth role of a peer router's link session (router_core.links)
ROUTER_ROLE = "router"
SLOW_CONSUMER = "mesh.error.slow_consumer"

# loose URI rule of the WAMP spec: dot-separated non-empty components without whitespace or '#'
_URI = re.compile(r"^([^\s\.#]+\.)*([^\s\.#]+)$")
_PREFIX_URI = re.compile(r"^([^\s\.#]+\.)*([^\s\.#]*)$")


#: longest URI (topic, procedure) a router accepts, in characters: a URI is copied into every
#: metered event, so a peer must not choose its size
MAX_URI_CHARS = 512


def valid_uri(uri: Any, prefix: bool = False) -> bool:
    if type(uri) is not str or not uri or len(uri) > MAX_URI_CHARS:
        return False
    return (_PREFIX_URI if prefix else _URI).match(uri) is not None


def valid_id(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_ID


class ProtocolViolation(Exception):
    """The peer broke the protocol: its session is aborted, nobody else is affected."""


# Message arity (min, max) and the type of each fixed position, for the messages a router
# accepts after WELCOME. Positions past the fixed ones are Arguments (list) and ArgumentsKw (dict).
_SHAPES: dict[int, tuple[int, int, tuple[type, ...]]] = {
    GOODBYE: (3, 3, (dict, str)),
    ERROR: (5, 7, (int, int, dict, str)),
    PUBLISH: (4, 6, (int, dict, str)),
    SUBSCRIBE: (4, 4, (int, dict, str)),
    UNSUBSCRIBE: (3, 3, (int, int)),
    CALL: (4, 6, (int, dict, str)),
    CANCEL: (3, 3, (int, dict)),
    REGISTER: (4, 4, (int, dict, str)),
    UNREGISTER: (3, 3, (int, int)),
    YIELD: (3, 5, (int, dict)),
    HELLO: (3, 3, (str, dict)),
    AUTHENTICATE: (3, 3, (str, dict)),
    ABORT: (3, 3, (dict, str)),
}


def check_shape(msg: Any) -> int:
    """Return the message code of a well-formed message or raise ProtocolViolation."""
    if type(msg) is not list or not msg:
        raise ProtocolViolation("a WAMP message is a non-empty list")
    code = msg[0]
    if type(code) is not int:
        raise ProtocolViolation(f"message code {code!r} is not an integer")
    shape = _SHAPES.get(code)
    if shape is None:
        raise ProtocolViolation(f"message code {code} is not accepted by a router")
    lo, hi, types = shape
    n = len(msg)
    if n < lo or n > hi:
        raise ProtocolViolation(f"message {code} has {n} elements, expected {lo}..{hi}")
    for i, expected in enumerate(types, 1):
        value = msg[i]
        if type(value) is not expected:
            raise ProtocolViolation(f"message {code} element {i} must be {expected.__name__}")
        if expected is int and not 0 <= value <= MAX_ID:  # type: ignore[operator]
            raise ProtocolViolation(f"message {code} element {i} is out of the ID range")
    fixed = len(types) + 1
    if n > fixed and type(msg[fixed]) is not list:
        raise ProtocolViolation(f"message {code} Arguments must be a list")
    if n > fixed + 1 and type(msg[fixed + 1]) is not dict:
        raise ProtocolViolation(f"message {code} ArgumentsKw must be a dict")
    return code

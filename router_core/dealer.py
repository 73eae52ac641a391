"""Routed calls of one realm: registrations, invocations, results, errors, timeouts, cancels.

A callee that leaves fails its pending calls with `wamp.error.canceled`; a call that outlives
its timeout fails with `wamp.error.timeout` (and the callee gets an INTERRUPT if it can cancel).
Procedures under `mesh.` may be served by the router itself (meta procedures).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from router_core import messages as m
from router_core.broker import Routed
from router_core.serializer import SerializationError
from router_core.session import Session, State

_ids = itertools.count(1)
log = logging.getLogger("router_core.dealer")


class RemoteCalls(Protocol):
    """Calls routed to peer routers (`router_core.links.Federation`)."""

    def call(self, caller: Session, msg: list[Any], timeout_s: float) -> bool: ...

    def cancel(self, caller: Session, request: int) -> bool: ...


class MetaError(Exception):
    """Raised by a meta procedure: becomes an ERROR with `uri` to the caller."""

    def __init__(self, uri: str, message: str, kwargs: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.uri = uri
        self.message = message
        self.kwargs = kwargs or {}


#: a meta procedure: (caller, args, kwargs) -> the result (its RESULT's one positional
#: argument), or an awaitable of it (one that reads the chain); it raises MetaError to refuse
MetaProcedure = Callable[[Session, list[Any], dict[str, Any]], Any]


class MarketHooks(Protocol):
    """The marketplace's view of calls (`router_core.market.MarketService`): who may register
    under a service's operator prefix, and each call's outcome (assessment, pricing)."""

    def may_register(self, session: Session, uri: str) -> str | None: ...

    def call_started(self, pending: PendingCall, payload: list[Any]) -> None: ...

    def call_ended(self, pending: PendingCall, outcome: str) -> None: ...


class Registration:
    __slots__ = ("id", "uri", "callee")

    def __init__(self, uri: str, callee: Session) -> None:
        self.id = next(_ids)
        self.uri = uri
        self.callee = callee


class PendingCall:
    __slots__ = (
        "invocation", "caller", "request", "callee", "uri", "timer", "started", "market", "result",
    )  # fmt: skip

    def __init__(
        self, invocation: int, caller: Session, request: int, callee: Session, uri: str
    ) -> None:
        self.invocation = invocation
        self.caller = caller
        self.request = request
        self.callee = callee
        self.uri = uri
        self.timer: asyncio.TimerHandle | None = None
        #: loop time of the INVOCATION, and what the marketplace keeps of the call (None: not a
        #: market call); set by the market hook only
        self.started = 0.0
        self.market: Any = None
        #: a market call's result payload (args, kwargs), kept for its verification
        self.result: list[Any] = []


class Dealer:
    def __init__(
        self,
        routed: Routed,
        loop: asyncio.AbstractEventLoop,
        call_timeout_ms: int = 30_000,
        max_pending_per_session: int = 10_000,
        max_registrations_per_session: int = 1_000,
    ) -> None:
        self._routed = routed
        self._loop = loop
        self._timeout_s = call_timeout_ms / 1000
        self._max_pending = max_pending_per_session
        self._max_registrations = max_registrations_per_session
        self._procs: dict[str, Registration] = {}
        self._regs: dict[int, Registration] = {}
        self._pending: dict[int, PendingCall] = {}
        self._by_caller: dict[tuple[int, int], PendingCall] = {}
        self.meta: dict[str, MetaProcedure] = {}
        #: calls with no local callee go to peer routers (router_core.links), if any
        self.links: RemoteCalls | None = None
        #: called when a procedure is registered or unregistered (router links)
        self.on_interest: Callable[[], None] | None = None
        #: the marketplace's hooks (None: no marketplace on this router)
        self.market: MarketHooks | None = None

    def procedures(self) -> Any:
        """The URIs registered now (a live view)."""
        return self._procs.keys()

    # -- registrations ----------------------------------------------------------------------------

    def register(self, session: Session, msg: list[Any]) -> None:
        request, options, uri = msg[1], msg[2], msg[3]
        if not m.valid_uri(uri) or uri.startswith(("wamp.", "mesh.")):
            session.error(m.REGISTER, request, m.INVALID_URI, f"cannot register {uri!r}")
            return
        if options.get("match", "exact") != "exact" or options.get("invoke", "single") != "single":
            session.error(
                m.REGISTER, request, m.INVALID_ARGUMENT, "only exact match, single invoke"
            )
            return
        if uri in self._procs:
            session.error(m.REGISTER, request, m.PROCEDURE_ALREADY_EXISTS, f"{uri} is registered")
            return
        refusal = self.market.may_register(session, uri) if self.market is not None else None
        if refusal is not None:
            session.error(m.REGISTER, request, m.NOT_AUTHORIZED, refusal)
            return
        if len(session.registrations) >= self._max_registrations:
            session.error(
                m.REGISTER,
                request,
                m.INVALID_ARGUMENT,
                f"too many registrations (limit {self._max_registrations} per session)",
            )
            return
        reg = Registration(uri, session)
        self._procs[uri] = reg
        self._regs[reg.id] = reg
        session.registrations.add(reg.id)
        session.send([m.REGISTERED, request, reg.id])
        if self.on_interest is not None:
            self.on_interest()

    def unregister(self, session: Session, msg: list[Any]) -> None:
        request, reg_id = msg[1], msg[2]
        reg = self._regs.get(reg_id)
        if reg is None or reg.callee is not session:
            session.error(m.UNREGISTER, request, m.NO_SUCH_REGISTRATION)
            return
        self._drop(reg)
        session.send([m.UNREGISTERED, request])

    def _drop(self, reg: Registration) -> None:
        del self._regs[reg.id]
        del self._procs[reg.uri]
        reg.callee.registrations.discard(reg.id)
        if self.on_interest is not None:
            self.on_interest()

    # -- calls ------------------------------------------------------------------------------------

    def call(self, caller: Session, msg: list[Any], nbytes: int) -> None:
        request, options, uri = msg[1], msg[2], msg[3]
        reg = self._procs.get(uri)
        if reg is None:
            meta = self.meta.get(uri)
            if meta is not None:
                self._call_meta(caller, request, meta, msg)
            elif not m.valid_uri(uri):
                caller.error(m.CALL, request, m.INVALID_URI, f"invalid procedure URI {uri!r}")
            elif self.links is None or not self.links.call(caller, msg, self._timeout_s):
                caller.error(m.CALL, request, m.NO_SUCH_PROCEDURE, f"no callee registered {uri}")
            return
        key = (caller.id, request)
        if key in self._by_caller:
            caller.violation(f"CALL request id {request} is already pending")
            return
        if caller.pending_calls >= self._max_pending:
            caller.error(m.CALL, request, m.CANCELED, "too many pending calls")
            return
        callee = reg.callee
        if callee.suspended:
            caller.error(m.CALL, request, m.NO_SUCH_PROCEDURE, f"the callee of {uri} is suspended")
            return
        details: dict[str, Any] = {}
        if options.get("receive_progress") is True:
            details["receive_progress"] = True
        invocation = next(_ids)
        try:
            frame = callee.serializer.encode([m.INVOCATION, invocation, reg.id, details, *msg[4:]])
        except SerializationError as exc:
            caller.error(m.CALL, request, m.INVALID_ARGUMENT, f"callee cannot receive it: {exc}")
            return
        pending = PendingCall(invocation, caller, request, callee, uri)
        self._pending[invocation] = pending
        self._by_caller[key] = pending
        caller.pending_calls += 1
        timeout = options.get("timeout")
        timeout_s = timeout / 1000 if type(timeout) is int and timeout > 0 else self._timeout_s
        if timeout_s > 0:
            pending.timer = self._loop.call_later(timeout_s, self._timed_out, invocation)
        if self.market is not None:
            self.market.call_started(pending, msg[4:])
        callee.send_frame(frame)
        self._routed("invocation", caller, callee, uri, len(frame))

    def _call_meta(
        self, caller: Session, request: int, meta: MetaProcedure, msg: list[Any]
    ) -> None:
        args = msg[4] if len(msg) > 4 else []
        kwargs = msg[5] if len(msg) > 5 else {}
        try:
            result = meta(caller, args, kwargs)
        except MetaError as exc:
            caller.send([m.ERROR, m.CALL, request, {}, exc.uri, [exc.message], exc.kwargs])
            return
        if inspect.isawaitable(result):
            task = self._loop.create_task(_awaited(result))
            task.add_done_callback(lambda t: self._meta_done(caller, request, t))
            return
        self.reply(caller, [m.RESULT, request, {}, [result]], request)

    def _meta_done(self, caller: Session, request: int, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if caller.state is not State.ESTABLISHED:
            return  # nobody to answer
        if isinstance(exc, MetaError):
            caller.send([m.ERROR, m.CALL, request, {}, exc.uri, [exc.message], exc.kwargs])
        elif exc is not None:
            log.error("meta procedure failed", exc_info=exc)
            caller.send([m.ERROR, m.CALL, request, {}, m.CANCELED, ["router error"]])
        else:
            self.reply(caller, [m.RESULT, request, {}, [task.result()]], request)

    @staticmethod
    def reply(caller: Session, msg: list[Any], request: int) -> bytes:
        """Encode a RESULT/ERROR for the caller; one its serializer cannot carry becomes an
        ERROR saying so. Returns the frame sent."""
        try:
            frame = caller.serializer.encode(msg)
        except SerializationError as exc:
            frame = caller.serializer.encode(
                [m.ERROR, m.CALL, request, {}, m.INVALID_ARGUMENT, [f"result not sent: {exc}"]]
            )
        caller.send_frame(frame)
        return frame

    def _finish(self, pending: PendingCall, outcome: str) -> None:
        del self._pending[pending.invocation]
        del self._by_caller[(pending.caller.id, pending.request)]
        pending.caller.pending_calls -= 1
        if pending.timer is not None:
            pending.timer.cancel()
        if pending.market is not None and self.market is not None:
            self.market.call_ended(pending, outcome)

    def yield_(self, callee: Session, msg: list[Any]) -> None:
        pending = self._pending.get(msg[1])
        if pending is None or pending.callee is not callee:
            return  # late (timed out, canceled, caller gone): ignored, as the spec allows
        progress = msg[2].get("progress") is True
        if not progress:
            if pending.market is not None:
                pending.result = msg[3:]
            self._finish(pending, "result")
        caller = pending.caller
        frame = self.reply(
            caller,
            [m.RESULT, pending.request, {"progress": True} if progress else {}, *msg[3:]],
            pending.request,
        )
        self._routed("result", callee, caller, pending.uri, len(frame))

    def error(self, callee: Session, msg: list[Any]) -> None:
        if msg[1] != m.INVOCATION:
            callee.violation(f"ERROR for request type {msg[1]} sent to a router")
            return
        pending = self._pending.get(msg[2])
        if pending is None or pending.callee is not callee:
            return
        self._finish(pending, "error")
        caller = pending.caller
        frame = self.reply(
            caller, [m.ERROR, m.CALL, pending.request, {}, *msg[4:]], pending.request
        )
        self._routed("error", callee, caller, pending.uri, len(frame))

    def refuse_result(self, callee: Session, msg: list[Any], reason: str) -> None:
        """A suspended callee's YIELD or ERROR is not routed: the call fails instead."""
        invocation = msg[1] if msg[0] == m.YIELD else msg[2]
        pending = self._pending.get(invocation)
        if pending is not None and pending.callee is callee:
            self._fail(
                pending, m.CANCELED, f"callee suspended: {reason}", interrupt=False, outcome="error"
            )

    def cancel(self, caller: Session, msg: list[Any]) -> None:
        pending = self._by_caller.get((caller.id, msg[1]))
        if pending is None:
            if self.links is not None:
                self.links.cancel(caller, msg[1])
            return
        self._fail(pending, m.CANCELED, "canceled by the caller", outcome="canceled")

    def _timed_out(self, invocation: int) -> None:
        pending = self._pending.get(invocation)
        if pending is not None:
            pending.timer = None
            self._fail(pending, m.TIMEOUT, "call timed out", outcome="timeout")

    def _fail(
        self,
        pending: PendingCall,
        uri: str,
        message: str,
        interrupt: bool = True,
        outcome: str = "error",
    ) -> None:
        self._finish(pending, outcome)
        pending.caller.send([m.ERROR, m.CALL, pending.request, {}, uri, [message]])
        callee = pending.callee
        if interrupt and callee.state is State.ESTABLISHED and _can_cancel(callee):
            callee.send([m.INTERRUPT, pending.invocation, {"mode": "killnowait", "reason": uri}])

    def session_left(self, session: Session) -> None:
        for reg_id in list(session.registrations):
            reg = self._regs.get(reg_id)
            if reg is not None:
                self._drop(reg)
        if not (session.pending_calls or self._pending):
            return
        for pending in list(self._pending.values()):
            if pending.callee is session:
                self._fail(pending, m.CANCELED, "callee left", interrupt=False, outcome="error")
            elif pending.caller is session:
                self._finish(pending, "canceled")
                if pending.callee.state is State.ESTABLISHED and _can_cancel(pending.callee):
                    pending.callee.send(
                        [
                            m.INTERRUPT,
                            pending.invocation,
                            {"mode": "killnowait", "reason": m.CANCELED},
                        ]
                    )


def _can_cancel(session: Session) -> bool:
    callee = session.roles.get("callee")
    if not isinstance(callee, dict):
        return False
    features = callee.get("features")
    return isinstance(features, dict) and features.get("call_canceling") is True


async def _awaited(result: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    return await result

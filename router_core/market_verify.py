"""Verification of deterministic services by redundant calls: the router sends every
`every_calls`-th call of such a service also to other operators (`min_requests` answers in all),
compares the answers with the service's verifier (exact equality of a strict majority, or a
WebAssembly module, `router_core.verifier`), records each wrong answer as `ResultMismatch`, and
convicts an operator after `conviction_mismatches` of them (`OperatorConvicted`: it is no longer
offered). The client gets the first operator's answer at once; verification never holds a call.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from eth_hash.auto import keccak

from domain.events import OperatorConvicted, ResultMismatch
from domain.market import majority_wrong, operator_prefix
from router_core import messages as m
from router_core.chain_clock import ChainClock
from router_core.metering import UsageSink
from router_core.session import State
from router_core.verifier import VerifierError, VerifierLimits, WasmVerifier

log = logging.getLogger("router_core.market_verify")

ZERO_HASH = "0x" + "00" * 32
#: ids of the router's own verification calls (apart from WAMP session ids, which are <= 2**53)
_caller_ids = itertools.count(2**53 + 1)


class RouterCaller:
    """The router itself as the caller of verification calls: what the dealer needs of a
    session. Answers (RESULT or ERROR) go to the callback given with each call."""

    def __init__(self, realm: Any, address: str) -> None:
        self.id = next(_caller_ids)
        self.realm = realm
        self.authid = address
        self.state = State.ESTABLISHED
        self.pending_calls = 0
        self.swap = None
        self.suspended = ""
        self.roles: dict[str, Any] = {}
        self.serializer = self
        self._requests = itertools.count(1)
        self._waiting: dict[int, Callable[[list[Any] | None], None]] = {}

    def call(
        self,
        uri: str,
        payload: list[Any],
        timeout_ms: int,
        done: Callable[[list[Any] | None], None],
    ) -> None:
        request = next(self._requests)
        self._waiting[request] = done
        self.realm.dealer.call(self, [m.CALL, request, {"timeout": timeout_ms}, uri, *payload], 0)

    # what the dealer calls on a caller
    def encode(self, msg: list[Any]) -> list[Any]:
        return msg

    def send_frame(self, msg: Any) -> None:
        self.send(msg)

    def send(self, msg: list[Any]) -> None:
        if msg[0] == m.RESULT:
            self._answer(msg[1], list(msg[3:]))
        elif msg[0] == m.ERROR:
            self._answer(msg[2], None)

    def error(self, request_type: int, request: int, uri: str, message: str | None = None) -> None:
        self._answer(request, None)

    def violation(self, reason: str) -> None:
        log.error("the router's verification call broke a rule: %s", reason)

    def _answer(self, request: int, payload: list[Any] | None) -> None:
        done = self._waiting.pop(request, None)
        if done is not None:
            done(payload)


def canonical(payload: list[Any]) -> bytes:
    """One answer (or request) as bytes two correct operators agree on: JSON, keys sorted."""
    args = payload[0] if payload else []
    kwargs = payload[1] if len(payload) > 1 else {}
    return orjson.dumps([args or [], kwargs or {}], option=orjson.OPT_SORT_KEYS)


@dataclass
class Check:
    """One verified request: the answers expected and those received (None: no result)."""

    realm: str
    service_id: str
    verifier_hash: str
    request: bytes
    expected: int
    answers: dict[str, bytes | None] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return "0x" + keccak(self.request).hex()


class Verification:
    def __init__(
        self,
        router: str,
        sink: UsageSink,
        clock: ChainClock,
        *,
        every_calls: int = 10,
        conviction_mismatches: int = 3,
        max_open_checks: int = 1_000,
        call_timeout_ms: int = 10_000,
        verifiers_dir: Path | None = None,
        limits: VerifierLimits | None = None,
    ) -> None:
        if every_calls < 0 or conviction_mismatches < 1 or max_open_checks < 1:
            raise ValueError("every_calls >= 0, conviction_mismatches >= 1, max_open_checks >= 1")
        self.router = router
        self._sink = sink
        self._clock = clock
        #: verify every N-th call of a deterministic service (0: never)
        self.every_calls = every_calls
        self.conviction_mismatches = conviction_mismatches
        #: requests being verified at once; beyond it a sampled call is not verified (counted)
        self.max_open_checks = max_open_checks
        self.call_timeout_ms = call_timeout_ms
        self.verifiers_dir = verifiers_dir
        self.limits = limits or VerifierLimits()
        self.mismatches: Counter[tuple[str, str, str]] = Counter()
        self.convicted: set[tuple[str, str, str]] = set()
        #: why sampled requests were not decided (too few operators, a verifier's failure, ...)
        self.undecided: Counter[str] = Counter()
        self.decided = 0
        self._seen: Counter[str] = Counter()
        self._open = 0
        self._callers: dict[str, RouterCaller] = {}
        self._verifiers: dict[str, WasmVerifier | VerifierError] = {}
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="market-verifier")

    def is_convicted(self, realm: str, service_id: str, operator: str) -> bool:
        return (realm, service_id, operator.lower()) in self.convicted

    def is_router(self, caller: Any) -> bool:
        return isinstance(caller, RouterCaller)

    def start(
        self,
        realm: Any,
        service: Any,
        operator: str,
        procedure: str,
        payload: list[Any],
        offers: list[tuple[str, int]],
    ) -> Check | None:
        """Sample this call of a deterministic service; if sampled, send it to the other
        operators it needs and return the check its own answer completes."""
        sid = service.service_id
        self._seen[sid] += 1
        if self.every_calls == 0 or self._seen[sid] % self.every_calls:
            return None
        if self._open >= self.max_open_checks:
            self.undecided["busy"] += 1
            return None
        registered = realm.dealer.procedures()
        others = sorted(
            (server, uri)
            for server, _ in offers
            if server.lower() != operator.lower()
            and not self.is_convicted(realm.name, sid, server)
            and (uri := f"{operator_prefix(service.api, server)}.{procedure}") in registered
        )[: max(service.min_requests - 1, 1)]
        if len(others) < max(service.min_requests - 1, 1):
            self.undecided["too_few_operators"] += 1
            return None
        check = Check(
            realm.name, sid, service.verifier_hash,
            orjson.dumps([procedure, orjson.loads(canonical(payload))]), len(others) + 1,
        )  # fmt: skip
        self._open += 1
        caller = self._callers.get(realm.name)
        if caller is None:
            caller = self._callers[realm.name] = RouterCaller(realm, self.router)
        for server, uri in others:
            caller.call(
                uri, payload, self.call_timeout_ms,
                functools.partial(self.answered, check, server),
            )  # fmt: skip
        return check

    def answered(self, check: Check, operator: str, payload: list[Any] | None) -> None:
        check.answers[operator] = None if payload is None else canonical(payload)
        if len(check.answers) == check.expected:
            self._open -= 1
            self._decide(check)

    def _decide(self, check: Check) -> None:
        answered = sorted((op, a) for op, a in check.answers.items() if a is not None)
        if len(answered) < 2:
            self.undecided["too_few_answers"] += 1
            return
        operators = [op for op, _ in answered]
        answers = [a for _, a in answered]
        if int(check.verifier_hash, 16) == 0:
            self._verdict(check, operators, majority_wrong(answers), "exact")
            return
        verifier = self._verifier(check.verifier_hash)
        if isinstance(verifier, VerifierError):
            self.undecided[verifier.reason] += 1
            return
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, verifier.verify, check.request, answers
        )
        future.add_done_callback(functools.partial(self._verified, check, operators))

    def _verified(self, check: Check, operators: list[str], future: Any) -> None:
        exc = future.exception()
        if isinstance(exc, VerifierError):
            log.warning("verifier %s of %s: %s", check.verifier_hash, check.service_id, exc)
            self.undecided[exc.reason] += 1
        elif exc is not None:
            log.error("verifier %s failed", check.verifier_hash, exc_info=exc)
            self.undecided["error"] += 1
        else:
            self._verdict(check, operators, future.result(), check.verifier_hash)

    def _verifier(self, verifier_hash: str) -> WasmVerifier | VerifierError:
        found = self._verifiers.get(verifier_hash)
        if found is None:
            try:
                if self.verifiers_dir is None:
                    raise VerifierError("no_module", "the router has no verifiers directory")
                found = WasmVerifier.load(self.verifiers_dir, verifier_hash, self.limits)
            except VerifierError as exc:
                log.error("verifier %s cannot be used: %s", verifier_hash, exc)
                found = exc
            self._verifiers[verifier_hash] = found
        return found

    def _verdict(
        self, check: Check, operators: list[str], wrong: list[int] | None, verifier: str
    ) -> None:
        if wrong is None:
            self.undecided["no_majority"] += 1
            return
        self.decided += 1
        block = self._clock.block
        for i in wrong:
            operator = operators[i]
            self._sink.emit(
                ResultMismatch(
                    realm=check.realm, router=self.router, service_id=check.service_id,
                    request_digest=check.digest, operator=operator, compared=",".join(operators),
                    verifier=verifier, block=block,
                )
            )  # fmt: skip
            key = (check.realm, check.service_id, operator.lower())
            self.mismatches[key] += 1
            if self.mismatches[key] == self.conviction_mismatches:
                self.convicted.add(key)
                self._sink.emit(
                    OperatorConvicted(
                        realm=check.realm, router=self.router, operator=operator,
                        service_id=check.service_id, mismatches=self.mismatches[key], block=block,
                    )
                )  # fmt: skip

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

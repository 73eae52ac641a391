"""Client helper on autobahn: connect, log in with an Ethereum key, SWAP handshake, pay cheques.

    session = await connect("ws://127.0.0.1:8080/ws", "realm1", key, swap=offer, state_path=p)
    await session.call("com.example.add", 2, 3)

Cheques are cumulative. Before a cheque is sent, its cumulative amount and signature are
written (atomically, fsynced) to `state_path`, so a crash between signing and sending resends
the same cheque instead of issuing a second one for the same debt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from autobahn.asyncio.wamp import ApplicationSession
from autobahn.asyncio.websocket import WampWebSocketClientFactory
from autobahn.wamp.serializer import JsonSerializer, MsgPackSerializer
from autobahn.wamp.types import Challenge, CloseDetails, ComponentConfig, SessionDetails
from eth_account import Account
from eth_account.messages import encode_defunct

from domain.cheque import Cheque
from domain.swap import SWAP_VERSION
from router_core.auth import ETH_EIP191, login_message, sign_challenge
from router_core.discovery import Endpoint
from router_core.swap import CHEQUE_PROCEDURE, PAYMENT_DUE_TOPIC

#: JoinRefused reason: the router at an endpoint did not prove the operator key it is known by
WRONG_ROUTER = "mesh.error.wrong_router"


class JoinRefused(Exception):
    def __init__(self, reason: str, message: str | None) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class SwapOffer:
    """The peer's side of the SWAP handshake."""

    chequebook: str
    chain_id: int
    token: str
    payment_threshold: int
    price_per_message: int
    version: str = SWAP_VERSION


class ChequeJournal:
    """The issued cumulative per (chain id, chequebook, beneficiary), persisted before sending."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._state: dict[str, dict[str, Any]] = {}
        if path is not None and path.exists():
            self._state = json.loads(path.read_text())

    @staticmethod
    def key(chain_id: int, chequebook: str, beneficiary: str) -> str:
        return f"{chain_id}:{chequebook.lower()}:{beneficiary.lower()}"

    def issued(self, key: str) -> tuple[int, str]:
        entry = self._state.get(key)
        return (int(entry["cumulative"]), str(entry["signature"])) if entry else (0, "")

    def record(self, key: str, cumulative: int, signature: str) -> None:
        previous, _ = self.issued(key)
        assert cumulative > previous, "an issued cumulative only grows"
        self._state[key] = {"cumulative": cumulative, "signature": signature}
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with open(tmp, "w") as f:
            json.dump(self._state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


class MeshSession(ApplicationSession):
    """An autobahn session that logs in with `eth-eip191` and pays SWAP cheques when asked."""

    def __init__(
        self,
        config: ComponentConfig,
        private_key: bytes,
        offer: SwapOffer | None,
        journal: ChequeJournal,
        joined: asyncio.Future[MeshSession],
        auto_pay: bool = True,
        expect_router: str = "",
    ) -> None:
        super().__init__(config)
        #: the operator address the router must prove it is (its signature of a nonce in
        #: WELCOME); "" to take any router at the URL
        self.expect_router = expect_router
        self._router_nonce = secrets.token_hex(16) if expect_router else ""
        #: the router's operator address, as its WELCOME says
        self.router = ""
        self._key = private_key
        self.address: str = Account.from_key(private_key).address
        self._offer = offer
        self.journal = journal
        self._joined = joined
        self.auto_pay = auto_pay
        self.swap_terms: dict[str, Any] = {}
        self.close_reason: str | None = None
        self.close_message: str | None = None
        self.left: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.payments: list[dict[str, Any]] = []
        self._pay_lock = asyncio.Lock()

    def onConnect(self) -> None:  # noqa: N802 (autobahn API)
        authextra: dict[str, Any] = {"swap": asdict(self._offer)} if self._offer else {}
        if self._router_nonce:
            authextra["router_nonce"] = self._router_nonce
        self.join(
            self.config.realm, authmethods=[ETH_EIP191], authid=self.address, authextra=authextra
        )

    def onChallenge(self, challenge: Challenge) -> str:  # noqa: N802
        if challenge.method != ETH_EIP191:
            raise ValueError(f"unexpected authmethod {challenge.method}")
        return sign_challenge(self._key, challenge.extra)

    async def onJoin(self, details: SessionDetails) -> None:  # noqa: N802
        extra = details.authextra or {}
        self.router = str(extra.get("router", ""))
        if self.expect_router and not self._router_proven(extra.get("router_proof", "")):
            if not self._joined.done():
                self._joined.set_exception(
                    JoinRefused(
                        WRONG_ROUTER,
                        f"the router at this URL did not prove it is {self.expect_router}",
                    )
                )
            self.leave()
            return
        self.swap_terms = extra.get("swap") or {}
        if self.swap_terms and self.auto_pay:
            await self.subscribe(self._payment_due, PAYMENT_DUE_TOPIC)
            if self.swap_terms.get("debt", 0) >= self.swap_terms.get("payment_threshold", 1):
                await self.pay(self.swap_terms["debt"], self.swap_terms["last_cumulative"])
        if not self._joined.done():
            self._joined.set_result(self)

    def _router_proven(self, proof: Any) -> bool:
        text = login_message(str(self.config.realm), self.address, self._router_nonce)
        try:
            signer = Account.recover_message(encode_defunct(text=text), signature=proof)
        except Exception:  # noqa: BLE001 - any malformed proof is no proof
            return False
        return bool(signer.lower() == self.expect_router.lower())

    def onLeave(self, details: CloseDetails) -> None:  # noqa: N802
        self.close_reason = details.reason
        self.close_message = details.message
        if not self._joined.done():
            self._joined.set_exception(JoinRefused(details.reason or "", details.message))
        self.disconnect()

    def onDisconnect(self) -> None:  # noqa: N802
        if not self._joined.done():
            self._joined.set_exception(
                JoinRefused("transport_lost", "connection closed before WELCOME")
            )
        if not self.left.done():
            self.left.set_result(None)

    async def _payment_due(self, **kwargs: Any) -> None:
        await self.pay(int(kwargs["debt"]), int(kwargs["last_cumulative"]))

    async def pay(self, debt: int, router_last_cumulative: int) -> dict[str, Any] | None:
        """Send a cheque bringing the balance to zero (or resend one issued but not received)."""
        async with self._pay_lock:
            claim = next_cheque(
                self.journal, self.swap_terms, self._key, debt, router_last_cumulative
            )
            if claim is None:
                return None
            result: dict[str, Any] = await self.call(CHEQUE_PROCEDURE, **claim)
            self.payments.append(result)
            return result


def sign_cheque(terms: dict[str, Any], key: bytes, cumulative: int) -> dict[str, Any]:
    """The arguments of `mesh.swap.cheque` for a cumulative cheque on the agreed chequebook."""
    cheque = Cheque(
        int(terms["chain_id"]), str(terms["chequebook"]), str(terms["beneficiary"]), cumulative
    )
    return {
        "chain_id": cheque.chain_id,
        "chequebook": cheque.chequebook,
        "beneficiary": cheque.beneficiary,
        "cumulative": cumulative,
        "signature": "0x" + cheque.sign(key).hex(),
    }


def next_cheque(
    journal: ChequeJournal,
    terms: dict[str, Any],
    key: bytes,
    debt: int,
    router_last_cumulative: int,
) -> dict[str, Any] | None:
    """The cheque to send for `debt` (journaled before it is returned), the one issued but not
    yet received by the router (resent, the same), or None when nothing is owed."""
    entry = ChequeJournal.key(
        int(terms["chain_id"]), str(terms["chequebook"]), str(terms["beneficiary"])
    )
    issued, _ = journal.issued(entry)
    if issued > router_last_cumulative:
        return sign_cheque(terms, key, issued)  # deterministic: the same cheque as journaled
    if debt <= 0:
        return None
    claim = sign_cheque(terms, key, router_last_cumulative + debt)
    journal.record(entry, claim["cumulative"], claim["signature"])
    return claim


def _serializer(name: str) -> Any:
    if name == "json":
        return JsonSerializer()
    if name == "msgpack":
        return MsgPackSerializer()
    raise ValueError(f"unknown serializer {name!r}")


async def connect(
    url: str,
    realm: str,
    private_key: bytes,
    *,
    serializer: str = "json",
    swap: SwapOffer | None = None,
    state_path: Path | None = None,
    auto_pay: bool = True,
    timeout_s: float = 10.0,
    expect_router: str = "",
) -> MeshSession:
    """Connect, log in and (with `swap`) complete the SWAP handshake; JoinRefused if refused
    (also when `expect_router` is given and the router does not prove it is that operator)."""
    loop = asyncio.get_running_loop()
    joined: asyncio.Future[MeshSession] = loop.create_future()
    journal = ChequeJournal(state_path)

    def make_session() -> MeshSession:
        return MeshSession(
            ComponentConfig(realm=realm),
            private_key,
            swap,
            journal,
            joined,
            auto_pay,
            expect_router,
        )

    factory = WampWebSocketClientFactory(
        make_session, url=url, serializers=[_serializer(serializer)]
    )
    parsed = urlparse(url)
    await loop.create_connection(factory, parsed.hostname or "127.0.0.1", parsed.port or 80)
    return await asyncio.wait_for(joined, timeout_s)


# -- a realm's routers, found on chain ----------------------------------------------------------


class NoRouterReachable(ConnectionError):
    """No router announced for the realm could be reached and logged into."""


async def probe_latency(url: str, timeout_s: float) -> float | None:
    """Seconds to open a TCP connection to the endpoint, or None when it is unreachable."""
    parsed = urlparse(url)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(parsed.hostname, parsed.port or 80)
    except (OSError, TimeoutError):
        return None
    elapsed = loop.time() - started
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return elapsed


async def rank_routers(
    endpoints: list[Endpoint], timeout_s: float, prefer: str = ""
) -> tuple[list[Endpoint], list[Endpoint]]:
    """(reachable endpoints, lowest latency first with `prefer`'s operator ahead of all,
    unreachable ones), probing all at once."""
    latencies = await asyncio.gather(*(probe_latency(e.url, timeout_s) for e in endpoints))
    reachable = sorted(
        (lat, e.operator.lower() != prefer.lower(), i)
        for i, (e, lat) in enumerate(zip(endpoints, latencies, strict=True))
        if lat is not None
    )
    order = sorted(reachable, key=lambda r: (r[1], r[0])) if prefer else reachable
    found = [endpoints[i] for _, _, i in order]
    return found, [e for e, lat in zip(endpoints, latencies, strict=True) if lat is None]


async def connect_realm(
    realm: str,
    chain_rpc_url: str,
    registry: str,
    private_key: bytes,
    *,
    prefer: str = "",
    avoid: str = "",
    probe_timeout_s: float = 2.0,
    max_tries: int = 8,
    names: Any = None,
    **options: Any,
) -> MeshSession:
    """A session in `realm` on one of the routers announced for it in RouterRegistry at
    `registry` on the chain at `chain_rpc_url`: the reachable ones are tried lowest latency
    first (`prefer`'s operator ahead, `avoid`'s last: the one that just failed), at most
    `max_tries` of them, each one proving its operator key. `prefer` may be an ENS name
    (`router-a.eth`) when `names` (an `infra.ens.Names`) resolves it. `options` go to
    `connect`. NoRouterReachable names what failed at each."""
    from web3 import Web3

    from router_core.discovery import read_endpoints

    if prefer and not Web3.is_address(prefer):
        if names is None:
            raise ValueError(f"prefer={prefer!r} is a name: pass names= to resolve it")
        prefer = names.resolve(prefer)

    w3 = Web3(Web3.HTTPProvider(chain_rpc_url, request_kwargs={"timeout": probe_timeout_s * 5}))
    endpoints = await asyncio.to_thread(read_endpoints, w3, registry, realm)
    if not endpoints:
        raise NoRouterReachable(f"realm {realm!r} has no router announced in {registry}")
    reachable, unreachable = await rank_routers(endpoints, probe_timeout_s, prefer)
    reachable.sort(key=lambda e: e.operator.lower() == avoid.lower())  # stable: avoid goes last
    failures = [f"{e.url} ({e.operator}): unreachable" for e in unreachable]
    for endpoint in reachable[:max_tries]:
        try:
            return await connect(
                endpoint.url, realm, private_key, expect_router=endpoint.operator, **options
            )
        except (OSError, TimeoutError, JoinRefused) as exc:
            failures.append(f"{endpoint.url} ({endpoint.operator}): {exc}")
    raise NoRouterReachable(
        f"no router of realm {realm!r} took the session: " + "; ".join(failures)
    )


class RealmConnection:
    """One session in a realm, on a router found on chain; when it drops, `session()` picks
    again (the router that dropped it tried last). Each pick is one `connect_realm`."""

    def __init__(
        self, realm: str, chain_rpc_url: str, registry: str, private_key: bytes, **options: Any
    ) -> None:
        self.realm = realm
        self.chain_rpc_url = chain_rpc_url
        self.registry = registry
        self.private_key = private_key
        self.options = options
        self.current: MeshSession | None = None
        #: routers this connection used, in order (operator addresses)
        self.history: list[str] = []

    async def session(self) -> MeshSession:
        current = self.current
        if current is not None and not current.left.done():
            return current
        avoid = current.expect_router if current is not None else ""
        self.current = await connect_realm(
            self.realm,
            self.chain_rpc_url,
            self.registry,
            self.private_key,
            avoid=avoid,
            **self.options,
        )
        self.history.append(self.current.expect_router)
        return self.current

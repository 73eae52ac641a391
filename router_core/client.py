"""Client helper on autobahn: connect, log in with an Ethereum key, SWAP handshake, pay cheques.

    session = await connect("ws://127.0.0.1:8080/ws", "realm1", key, swap=offer, state_path=p)
    await session.call("com.example.add", 2, 3)

Cheques are cumulative. Before a cheque is sent, its cumulative amount and signature are
written (atomically, fsynced) to `state_path`, so a crash between signing and sending resends
the same cheque instead of issuing a second one for the same debt.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from autobahn.asyncio.wamp import ApplicationSession
from autobahn.asyncio.websocket import WampWebSocketClientFactory
from autobahn.wamp.serializer import JsonSerializer, MsgPackSerializer
from autobahn.wamp.types import Challenge, CloseDetails, ComponentConfig, SessionDetails
from eth_account import Account

from domain.cheque import Cheque
from domain.swap import SWAP_VERSION
from router_core.auth import ETH_EIP191, sign_challenge
from router_core.swap import CHEQUE_PROCEDURE, PAYMENT_DUE_TOPIC


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
    ) -> None:
        super().__init__(config)
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
        authextra = {"swap": asdict(self._offer)} if self._offer is not None else {}
        self.join(
            self.config.realm, authmethods=[ETH_EIP191], authid=self.address, authextra=authextra
        )

    def onChallenge(self, challenge: Challenge) -> str:  # noqa: N802
        if challenge.method != ETH_EIP191:
            raise ValueError(f"unexpected authmethod {challenge.method}")
        return sign_challenge(self._key, challenge.extra)

    async def onJoin(self, details: SessionDetails) -> None:  # noqa: N802
        extra = details.authextra or {}
        self.swap_terms = extra.get("swap") or {}
        if self.swap_terms and self.auto_pay:
            await self.subscribe(self._payment_due, PAYMENT_DUE_TOPIC)
            if self.swap_terms.get("debt", 0) >= self.swap_terms.get("payment_threshold", 1):
                await self.pay(self.swap_terms["debt"], self.swap_terms["last_cumulative"])
        if not self._joined.done():
            self._joined.set_result(self)

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
) -> MeshSession:
    """Connect, log in and (with `swap`) complete the SWAP handshake; JoinRefused if refused."""
    loop = asyncio.get_running_loop()
    joined: asyncio.Future[MeshSession] = loop.create_future()
    journal = ChequeJournal(state_path)

    def make_session() -> MeshSession:
        return MeshSession(
            ComponentConfig(realm=realm), private_key, swap, journal, joined, auto_pay
        )

    factory = WampWebSocketClientFactory(
        make_session, url=url, serializers=[_serializer(serializer)]
    )
    parsed = urlparse(url)
    await loop.create_connection(factory, parsed.hostname or "127.0.0.1", parsed.port or 80)
    return await asyncio.wait_for(joined, timeout_s)

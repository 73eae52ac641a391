"""The demo's WAMP clients: stock autobahn sessions (`router_core.client`: an Ethereum key, the
SWAP handshake, cheques from the client's own chequebook) that publish, subscribe, register and
call. Every message a router routes to them is counted here, apart from the ledger, so the
ledger's metering can be checked against what the clients saw."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import PublishOptions

from router_core.client import JoinRefused, MeshSession, SwapOffer, connect
from router_core.swap import BALANCE_PROCEDURE

#: how long a client keeps retrying to join while its router does not see its stake yet
JOIN_TIMEOUT_S = 120.0
JOIN_RETRY_S = 0.5
#: how long one publish or call may take before the round gives up on it (and counts it)
REQUEST_TIMEOUT_S = 30.0
#: balance reads and cheques a client tries to pay off its debt with before it gives up
PAY_OFF_ATTEMPTS = 5


@dataclass
class Tally:
    """Messages routed to the clients, as the clients received them."""

    events: int = 0  # EVENTs delivered to subscribers
    invocations: int = 0  # INVOCATIONs delivered to callees
    results: int = 0  # RESULTs delivered to callers
    published: int = 0  # publications acknowledged by the router
    calls: int = 0  # calls made
    failed: int = 0  # publications or calls that failed or timed out

    @property
    def routed(self) -> int:
        """What routers delivered: every EVENT, INVOCATION and RESULT (metered one for one)."""
        return self.events + self.invocations + self.results


@dataclass
class ClientSpec:
    """One client session: its key, chequebook, realm and router."""

    name: str
    private_key: bytes
    chequebook: str
    realm: str
    router: str  # the router's name
    url: str
    topic: str
    #: procedures it registers (a service operator); empty for a user
    procedures: tuple[str, ...] = ()
    #: the last traffic round it takes part in (None: all)
    last_round: int | None = None


@dataclass
class Client:
    spec: ClientSpec
    session: MeshSession
    tally: Tally

    @property
    def accepted(self) -> dict[str, int]:
        """Beneficiary (router) -> the highest cumulative cheque it accepted from this client."""
        out: dict[str, int] = {}
        terms = self.session.swap_terms
        for payment in self.session.payments:
            if payment.get("accepted"):
                router = str(terms.get("beneficiary", ""))
                out[router] = max(out.get(router, 0), int(payment["cumulative"]))
        return out


async def join(spec: ClientSpec, offer: SwapOffer, state_dir: Path) -> MeshSession:
    """Connect and log in, retrying while the router does not know the client's stake yet."""
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while True:
        try:
            return await connect(
                spec.url,
                spec.realm,
                spec.private_key,
                swap=offer,
                state_path=state_dir / f"{spec.name}-{spec.router}.json",
            )
        except (JoinRefused, OSError) as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{spec.name} could not join {spec.realm}: {exc}") from exc
            await asyncio.sleep(JOIN_RETRY_S)


@dataclass
class Traffic:
    """Rounds of traffic: every active user publishes once on its realm's topic and calls one of
    the procedures registered on its router."""

    clients: list[Client] = field(default_factory=list)

    async def start(
        self, specs: list[ClientSpec], offer_of: Callable[[ClientSpec], SwapOffer], state: Path
    ) -> None:
        """Services join and register first, then users join and subscribe."""
        for spec in sorted(specs, key=lambda s: not s.procedures):
            session = await join(spec, offer_of(spec), state)
            client = Client(spec, session, Tally())
            for procedure in spec.procedures:
                await session.register(_callee(client.tally, procedure), procedure)
            await session.subscribe(_subscriber(client.tally), spec.topic)
            self.clients.append(client)

    def procedures(self, realm: str, router: str) -> list[str]:
        return sorted(
            {
                p
                for c in self.clients
                if c.spec.realm == realm and c.spec.router == router
                for p in c.spec.procedures
            }
        )

    async def run(
        self,
        rounds: int,
        interval_s: float,
        on_round: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        for n in range(rounds):
            started = time.monotonic()
            requests = []
            for client in self.clients:
                last = client.spec.last_round
                if client.spec.procedures or (last is not None and n > last):
                    continue
                procedures = self.procedures(client.spec.realm, client.spec.router)
                requests.append(_publish(client, n))
                if procedures:
                    requests.append(_call(client, procedures[n % len(procedures)], n))
            await asyncio.gather(*requests)
            if on_round is not None:
                await on_round(n)
            await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))

    async def stop(self) -> None:
        """Every client pays what it owes by a last cheque, then leaves."""
        for client in self.clients:
            await _pay_off(client)
        for client in self.clients:
            client.session.leave()
        await asyncio.gather(
            *(asyncio.wait_for(c.session.left, REQUEST_TIMEOUT_S) for c in self.clients),
            return_exceptions=True,
        )

    def tally(self) -> Tally:
        total = Tally()
        for client in self.clients:
            for name in ("events", "invocations", "results", "published", "calls", "failed"):
                setattr(total, name, getattr(total, name) + getattr(client.tally, name))
        return total


async def _pay_off(client: Client) -> None:
    """Pay the router what the client owes. The balance is read before `pay` takes the
    session's payment lock, so a cheque sent meanwhile (on a payment request) can make it stale:
    `pay` then resends that cheque and the router answers `not_increasing`; read it again."""
    for _ in range(PAY_OFF_ATTEMPTS):
        balance = await client.session.call(BALANCE_PROCEDURE)
        if int(balance["debt"]) <= 0:
            return
        try:
            await client.session.pay(int(balance["debt"]), int(balance["last_cumulative"]))
        except ApplicationError as exc:
            if (exc.kwargs or {}).get("reason") != "not_increasing":
                raise
    raise RuntimeError(
        f"{client.spec.name} still owes {client.spec.router} after {PAY_OFF_ATTEMPTS} cheques"
    )


def _subscriber(tally: Tally) -> Callable[..., None]:
    def on_event(*args: Any, **kwargs: Any) -> None:
        tally.events += 1

    return on_event


def _callee(tally: Tally, procedure: str) -> Callable[..., dict[str, Any]]:
    def invoked(*args: Any, **kwargs: Any) -> dict[str, Any]:
        tally.invocations += 1
        return {"procedure": procedure, "echo": list(args)}

    return invoked


async def _publish(client: Client, n: int) -> None:
    try:
        await asyncio.wait_for(
            client.session.publish(
                client.spec.topic,
                {"round": n, "from": client.spec.name},
                options=PublishOptions(acknowledge=True),
            ),
            REQUEST_TIMEOUT_S,
        )
        client.tally.published += 1
    except Exception:  # counted: a publication the router refused or never acknowledged
        client.tally.failed += 1


async def _call(client: Client, procedure: str, n: int) -> None:
    client.tally.calls += 1
    try:
        await asyncio.wait_for(
            client.session.call(procedure, n, client.spec.name), REQUEST_TIMEOUT_S
        )
        client.tally.results += 1
    except Exception:  # counted: an error or a timeout is no RESULT
        client.tally.failed += 1

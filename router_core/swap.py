"""SWAP peer sessions: handshake at join, per-message charging, payment requests, cheques.

Handshake: the peer announces its terms in HELLO `authextra.swap` (payment_threshold,
price_per_message, token, chain_id, chequebook, version); the router validates them
(`domain.swap.negotiate`) and answers in WELCOME `authextra.swap` with its own terms, the
beneficiary (router address), the peer's current debt and the last cumulative it accepted.

Charging: the sender of each routed message owes the realm's price per message. Charges
accumulate in memory and are recorded on the peer's `PeerAccount` aggregate (eventsourcing,
SQLite) every `flush_interval_ms`, before every cheque decision, when the peer leaves and when
the router stops; so a clean restart resumes every balance exactly and a crash loses at most
`flush_interval_ms` of charges (the metered usage in the ledger still has them).

Payment: when the debt reaches the payment threshold the router sends the peer an EVENT on
`mesh.swap.payment_due` (if subscribed); the peer calls `mesh.swap.cheque` with a cumulative
EIP-712 cheque. Past the disconnect threshold the session is closed with
`mesh.error.payment_required`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application

from domain.events import ChequeReceived, ChequeRejected, HandshakeCompleted, PeerDisconnected
from domain.swap import (
    AgreedTerms,
    ChequeClaim,
    ChequeInvalid,
    HandshakeRefused,
    PeerAccount,
    RouterTerms,
    account_id,
    check_cheque,
    negotiate,
)
from router_core import messages as m
from router_core.auth import AuthFailed
from router_core.chain_clock import ChainClock
from router_core.dealer import MetaError
from router_core.metering import UsageSink
from router_core.session import Session

log = logging.getLogger("router_core.swap")

PAYMENT_DUE_TOPIC = "mesh.swap.payment_due"
CHEQUE_PROCEDURE = "mesh.swap.cheque"
BALANCE_PROCEDURE = "mesh.swap.balance"


class SolvencyCheck(Protocol):
    def covers(self, chain_id: int, chequebook: str, beneficiary: str, cumulative: int) -> bool:
        """Whether the chequebook can pay `cumulative` (minus what it already paid out)."""


class Web3Solvency:
    """Solvency from the chain: the chequebook's token balance plus what it already paid the
    beneficiary must cover the cumulative amount (a synchronous RPC with a short timeout)."""

    _ABI: list[dict[str, Any]] = [
        {
            "name": "token",
            "type": "function",
            "stateMutability": "view",
            "inputs": [],
            "outputs": [{"name": "", "type": "address"}],
        },
        {
            "name": "paidOut",
            "type": "function",
            "stateMutability": "view",
            "inputs": [{"name": "beneficiary", "type": "address"}],
            "outputs": [{"name": "", "type": "uint256"}],
        },
        {
            "name": "balanceOf",
            "type": "function",
            "stateMutability": "view",
            "inputs": [{"name": "account", "type": "address"}],
            "outputs": [{"name": "", "type": "uint256"}],
        },
    ]

    def __init__(self, rpc_url: str, chain_id: int, timeout_s: float = 3.0) -> None:
        from web3 import HTTPProvider, Web3

        self._w3 = Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": timeout_s}))
        self.chain_id = chain_id

    def covers(self, chain_id: int, chequebook: str, beneficiary: str, cumulative: int) -> bool:
        if chain_id != self.chain_id:
            return False
        w3 = self._w3
        book = w3.eth.contract(address=w3.to_checksum_address(chequebook), abi=self._ABI)
        token = w3.eth.contract(address=book.functions.token().call(), abi=self._ABI)
        paid = int(book.functions.paidOut(w3.to_checksum_address(beneficiary)).call())
        balance = int(token.functions.balanceOf(book.address).call())
        return balance + paid >= cumulative


#: called with every accepted cheque (the cash-out queue)
ChequeSink = Callable[[str, str, ChequeClaim], None]


class SwapAccounts(Application):
    """The router's own store of peer accounts (eventsourcing, SQLite by default)."""

    name = "SwapAccounts"


def open_accounts(db_path: Path | None) -> SwapAccounts:
    if db_path is None:
        return SwapAccounts(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    db_path.parent.mkdir(parents=True, exist_ok=True)
    return SwapAccounts(
        env={
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(db_path),
            "SQLITE_LOCK_TIMEOUT": "10",
        }
    )


class PeerSwap:
    """The live SWAP state of one peer in one realm (shared by its sessions)."""

    __slots__ = (
        "account",
        "agreed",
        "realm",
        "price",
        "payment_threshold",
        "disconnect_threshold",
        "pending_messages",
        "pending_amount",
        "due_notified",
        "disconnecting",
        "sessions",
    )

    def __init__(self, account: PeerAccount, agreed: AgreedTerms, realm: str) -> None:
        self.account = account
        self.agreed = agreed
        self.realm = realm
        self.price = agreed.price_per_message
        self.payment_threshold = agreed.payment_threshold
        self.disconnect_threshold = agreed.disconnect_threshold
        self.pending_messages = 0
        self.pending_amount = 0
        self.due_notified = False
        self.disconnecting = False
        self.sessions: set[Session] = set()

    @property
    def debt(self) -> int:
        return int(self.account.debt) + self.pending_amount

    def fold_pending(self) -> bool:
        """Record pending charges on the aggregate; True if there were any."""
        if not self.pending_messages:
            return False
        self.account.charge(self.pending_messages, self.pending_amount)
        self.pending_messages = 0
        self.pending_amount = 0
        return True


class SwapService:
    """Joins peers into SWAP, charges routed messages, serves the cheque meta procedures."""

    def __init__(
        self,
        router: str,
        terms: dict[str, RouterTerms],
        sink: UsageSink,
        clock: ChainClock,
        db_path: Path | None,
        flush_interval_ms: int = 200,
        solvency: SolvencyCheck | None = None,
        on_cheque: ChequeSink | None = None,
    ) -> None:
        self.router = router
        self.terms = terms
        self._sink = sink
        self._clock = clock
        self._flush_s = flush_interval_ms / 1000
        self._solvency = solvency
        self._on_cheque = on_cheque
        self.accounts = open_accounts(db_path)
        self._live: dict[UUID, PeerSwap] = {}
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._flush_s)
            try:
                self.flush()
            except Exception:  # keep charging in memory; the next flush retries
                log.exception("flushing SWAP accounts failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.flush()
        self.accounts.close()

    def flush(self) -> None:
        changed = [ps.account for ps in self._live.values() if ps.fold_pending()]
        if changed:
            self.accounts.save(*changed)

    # -- join / leave -----------------------------------------------------------------------------

    def _load(self, realm: str, peer: str) -> PeerAccount:
        try:
            account: Any = self.accounts.repository.get(account_id(self.router, realm, peer))
        except AggregateNotFoundError:
            return PeerAccount(self.router, realm, peer)
        assert isinstance(account, PeerAccount)
        return account

    def join(self, session: Session, realm: str, details: dict[str, Any]) -> dict[str, Any]:
        """Run the handshake; returns the router's side for WELCOME authextra.swap."""
        terms = self.terms.get(realm)
        if terms is None:
            return {}
        authextra = details.get("authextra")
        announced = authextra.get("swap") if isinstance(authextra, dict) else None
        try:
            agreed = negotiate(terms, announced)
        except HandshakeRefused as exc:
            raise AuthFailed(
                m.SWAP_HANDSHAKE_REFUSED, f"SWAP handshake refused ({exc.reason}): {exc.detail}"
            ) from exc
        peer = session.authid
        key = account_id(self.router, realm, peer)
        ps = self._live.get(key)
        if ps is None:
            account: PeerAccount = self._load(realm, peer)
            if (
                account.chequebook.lower() != agreed.chequebook.lower()
                or account.chain_id != agreed.chain_id
            ):
                account.complete_handshake(
                    agreed.chequebook, agreed.chain_id, agreed.price_per_message
                )
            self.accounts.save(account)
            ps = self._live[key] = PeerSwap(account, agreed, realm)
        elif ps.agreed.chequebook.lower() != agreed.chequebook.lower():
            raise AuthFailed(
                m.SWAP_HANDSHAKE_REFUSED, "another session of this peer uses another chequebook"
            )
        ps.sessions.add(session)
        session.swap = ps
        self._sink.emit(
            HandshakeCompleted(
                realm=realm,
                router=self.router,
                peer=peer,
                payment_threshold=agreed.payment_threshold,
                disconnect_threshold=agreed.disconnect_threshold,
                price_per_message=agreed.price_per_message,
                token=agreed.token,
                chain_id=agreed.chain_id,
                chequebook=agreed.chequebook,
                version=agreed.version,
                block=self._clock.block,
            )
        )
        reply = terms.announce(self.router)
        reply.update(
            debt=ps.debt,
            last_cumulative=int(ps.account.last_cumulative),
            chequebook=agreed.chequebook,
        )
        return reply

    def leave(self, session: Session) -> None:
        ps = session.swap
        if ps is None:
            return
        session.swap = None
        ps.sessions.discard(session)
        if not ps.sessions:
            if ps.fold_pending():
                self.accounts.save(ps.account)
            self._live.pop(ps.account.id, None)

    # -- charging (routing observer) --------------------------------------------------------------

    def routed(
        self, realm: str, kind: str, sender: Session, receiver: Session, uri: str, nbytes: int
    ) -> None:
        ps = sender.swap
        if ps is None:
            return
        ps.pending_messages += 1
        ps.pending_amount += ps.price
        debt = ps.account.debt + ps.pending_amount
        if debt >= ps.payment_threshold and not ps.due_notified:
            self._payment_due(ps, sender, debt)
        if debt > ps.disconnect_threshold and not ps.disconnecting:
            self._disconnect(ps, debt)

    def _payment_due(self, ps: PeerSwap, session: Session, debt: int) -> None:
        ps.due_notified = True
        realm = session.realm
        if realm is not None:
            realm.broker.notify(
                session,
                PAYMENT_DUE_TOPIC,
                {
                    "debt": debt,
                    "last_cumulative": int(ps.account.last_cumulative),
                    "beneficiary": self.router,
                    "chain_id": ps.agreed.chain_id,
                    "chequebook": ps.agreed.chequebook,
                },
            )

    def _disconnect(self, ps: PeerSwap, debt: int) -> None:
        ps.disconnecting = True
        loop = asyncio.get_running_loop()
        text = f"debt {debt} is past the disconnect threshold {ps.disconnect_threshold}"
        log.info("peer %s in %s: %s, disconnecting", ps.account.peer, ps.realm, text)
        for session in list(ps.sessions):
            loop.call_soon(session.goodbye, m.PAYMENT_REQUIRED, text)
        self._sink.emit(
            PeerDisconnected(
                realm=ps.realm,
                router=self.router,
                peer=ps.account.peer,
                reason="payment_required",
                balance=debt,
                block=self._clock.block,
            )
        )

    # -- meta procedures --------------------------------------------------------------------------

    def balance(self, session: Session, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        ps = session.swap
        if ps is None:
            raise MetaError(m.INVALID_ARGUMENT, "this session runs no SWAP")
        return {"debt": ps.debt, "last_cumulative": int(ps.account.last_cumulative)}

    def cheque(self, session: Session, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        ps = session.swap
        if ps is None:
            raise MetaError(m.CHEQUE_REJECTED, "this session runs no SWAP", {"reason": "no_swap"})
        account = ps.account
        block = self._clock.block
        claim: ChequeClaim | None = None
        try:
            claim = ChequeClaim.from_wire(kwargs)
            amount = check_cheque(
                claim,
                issuer=session.authid,
                beneficiary=self.router,
                agreed=ps.agreed,
                last_cumulative=int(account.last_cumulative),
            )
            if self._solvency is not None and not self._solvency.covers(
                claim.chain_id, claim.chequebook, claim.beneficiary, claim.cumulative
            ):
                raise ChequeInvalid(
                    "insolvent", f"chequebook cannot cover cumulative {claim.cumulative}"
                )
        except ChequeInvalid as exc:
            cumulative = claim.cumulative if claim is not None else 0
            ps.fold_pending()
            account.reject_cheque(cumulative, exc.reason)
            self.accounts.save(account)
            self._sink.emit(
                ChequeRejected(
                    realm=ps.realm,
                    peer=session.authid,
                    chequebook=str(kwargs.get("chequebook", ""))
                    if isinstance(kwargs, dict)
                    else "",
                    cumulative=cumulative,
                    reason=exc.reason,
                    block=block,
                )
            )
            raise MetaError(m.CHEQUE_REJECTED, exc.detail, {"reason": exc.reason}) from exc
        ps.fold_pending()
        account.accept_cheque(claim.cumulative, amount, claim.signature)
        self.accounts.save(account)
        self._sink.emit(
            ChequeReceived(
                realm=ps.realm,
                peer=session.authid,
                beneficiary=claim.beneficiary,
                chain_id=claim.chain_id,
                chequebook=claim.chequebook,
                cumulative=claim.cumulative,
                amount=amount,
                signature=claim.signature,
                block=block,
            )
        )
        if self._on_cheque is not None:
            self._on_cheque(ps.realm, session.authid, claim)
        debt = ps.debt
        if debt < ps.payment_threshold:
            ps.due_notified = False
        if debt <= ps.disconnect_threshold:
            ps.disconnecting = False
        return {"accepted": True, "amount": amount, "cumulative": claim.cumulative, "debt": debt}

    # -- queries (tests, operators) ---------------------------------------------------------------

    def debt(self, realm: str, peer: str) -> int:
        ps = self._live.get(account_id(self.router, realm, peer))
        if ps is not None:
            return ps.debt
        return int(self._load(realm, peer).debt)

    def last_cumulative(self, realm: str, peer: str) -> int:
        ps = self._live.get(account_id(self.router, realm, peer))
        account = ps.account if ps is not None else self._load(realm, peer)
        return int(account.last_cumulative)

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
EIP-712 cheque. The cheque's pure checks run first (`domain.swap.check_claim`), then the
chequebook's issuer, token, balance and paidOut are read from the chain without blocking the loop
(`router_core.chequebooks`), then `check_cheque` decides, with no await between that decision
and recording it. Past the disconnect threshold the session is closed with
`mesh.error.payment_required`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application

from domain.events import ChequeReceived, ChequeRejected, HandshakeCompleted, PeerDisconnected
from domain.swap import (
    AgreedTerms,
    ChequebookAccount,
    ChequeClaim,
    ChequeInvalid,
    HandshakeRefused,
    PeerAccount,
    RouterTerms,
    account_id,
    check_cheque,
    check_claim,
    chequebook_id,
    negotiate,
)
from router_core import messages as m
from router_core.auth import AuthFailed
from router_core.chain_clock import ChainClock
from router_core.chequebooks import ChequebookReader, NoChain
from router_core.dealer import MetaError
from router_core.metering import UsageSink
from router_core.session import Session, State

log = logging.getLogger("router_core.swap")

PAYMENT_DUE_TOPIC = "mesh.swap.payment_due"
CHEQUE_PROCEDURE = "mesh.swap.cheque"
BALANCE_PROCEDURE = "mesh.swap.balance"


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
        "verifying",
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
        #: a cheque of this peer is being read from the chain (one at a time per peer)
        self.verifying = False

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
        chequebooks: ChequebookReader | None = None,
        on_cheque: ChequeSink | None = None,
        max_cached_chequebooks: int = 10_000,
        payment_grace_ms: int = 10_000,
    ) -> None:
        self.router = router
        self.terms = terms
        self._sink = sink
        self._clock = clock
        self._flush_s = flush_interval_ms / 1000
        self._chequebooks: ChequebookReader = chequebooks or NoChain()
        self._on_cheque = on_cheque
        self.accounts = open_accounts(db_path)
        self._live: dict[UUID, PeerSwap] = {}
        self._books: dict[UUID, ChequebookAccount] = {}
        self._max_books = max_cached_chequebooks
        #: how long a peer that joins past its disconnect threshold may take to pay
        self._grace_s = payment_grace_ms / 1000
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
        await self._chequebooks.close()

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

    def _book(self, chain_id: int, chequebook: str) -> ChequebookAccount:
        """The chequebook's account (cached; every change is saved, so a reload is current)."""
        key = chequebook_id(self.router, chain_id, chequebook)
        book = self._books.get(key)
        if book is not None:
            return book
        try:
            found: Any = self.accounts.repository.get(key)
            assert isinstance(found, ChequebookAccount)
            book = found
        except AggregateNotFoundError:
            book = ChequebookAccount(self.router, chain_id, chequebook)
        if len(self._books) >= self._max_books:
            self._books.pop(next(iter(self._books)))
        self._books[key] = book
        return book

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
            book = self._book(agreed.chain_id, agreed.chequebook)
            if (
                account.chequebook.lower() != agreed.chequebook.lower()
                or account.chain_id != agreed.chain_id
                or account.last_cumulative != book.last_cumulative
            ):
                account.complete_handshake(
                    agreed.chequebook,
                    agreed.chain_id,
                    agreed.price_per_message,
                    book.last_cumulative,
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
            suspended=ps.debt > ps.disconnect_threshold,
        )
        return reply

    def admit(self, session: Session) -> None:
        """After the session joined its realm: a peer still past its disconnect threshold (from
        an earlier session) is served nothing; it may pay within the grace period, else it is
        closed."""
        ps = session.swap
        realm = session.realm
        if ps is None or realm is None or ps.debt <= ps.disconnect_threshold:
            return
        text = f"debt {ps.debt} is past the disconnect threshold {ps.disconnect_threshold}: pay"
        realm.suspend(session, text)
        asyncio.get_running_loop().call_later(self._grace_s, self._grace_over, session, text)

    @staticmethod
    def _grace_over(session: Session, text: str) -> None:
        if session.suspended and session.state is State.ESTABLISHED:
            session.goodbye(m.PAYMENT_REQUIRED, text)

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
        text = f"debt {debt} is past the disconnect threshold {ps.disconnect_threshold}"
        log.info("peer %s in %s: %s, disconnecting", ps.account.peer, ps.realm, text)
        # at once, not deferred: the rest of this read (pipelined publishes) is not routed
        for session in list(ps.sessions):
            if session.realm is not None:
                session.realm.suspend(session, text)
            session.goodbye(m.PAYMENT_REQUIRED, text)
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

    async def cheque(
        self, session: Session, args: list[Any], kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """`mesh.swap.cheque`: accept a cumulative cheque the chain would pay, or refuse it."""
        ps = session.swap
        if ps is None:
            raise MetaError(m.CHEQUE_REJECTED, "this session runs no SWAP", {"reason": "no_swap"})
        peer = session.authid
        claim: ChequeClaim | None = None
        try:
            claim = ChequeClaim.from_wire(kwargs)
            if ps.verifying:
                raise ChequeInvalid("busy", "another cheque of this peer is being verified")
            book = self._book(claim.chain_id, claim.chequebook)
            check_claim(
                claim,
                peer=peer,
                beneficiary=self.router,
                agreed=ps.agreed,
                last_cumulative=book.last_cumulative,
            )
            ps.verifying = True
            try:
                state = await self._chequebooks.read(claim.chain_id, claim.chequebook, self.router)
            finally:
                ps.verifying = False
            if session.swap is not ps:
                raise MetaError(m.CHEQUE_REJECTED, "the session ended", {"reason": "session_gone"})
            # decided and recorded with no await in between: nothing can interleave
            book = self._book(claim.chain_id, claim.chequebook)
            amount = check_cheque(
                claim,
                peer=peer,
                beneficiary=self.router,
                agreed=ps.agreed,
                last_cumulative=book.last_cumulative,
                book=state,
            )
        except ChequeInvalid as exc:
            self._rejected(ps, peer, claim, exc)
            raise MetaError(m.CHEQUE_REJECTED, exc.detail, {"reason": exc.reason}) from exc
        account = ps.account
        ps.fold_pending()
        account.accept_cheque(claim.cumulative, amount, claim.signature)
        book.accept(claim.cumulative)
        self.accounts.save(account, book)
        self._sink.emit(
            ChequeReceived(
                realm=ps.realm,
                peer=peer,
                beneficiary=claim.beneficiary,
                chain_id=claim.chain_id,
                chequebook=claim.chequebook,
                cumulative=claim.cumulative,
                amount=amount,
                signature=claim.signature,
                block=self._clock.block,
            )
        )
        if self._on_cheque is not None:
            self._on_cheque(ps.realm, peer, claim)
        debt = ps.debt
        ps.due_notified = False
        if debt >= ps.payment_threshold:
            # charges that arrived while the cheque was read from the chain are due again
            self._payment_due(ps, session, debt)
        if debt <= ps.disconnect_threshold:
            ps.disconnecting = False
            for other in ps.sessions:
                if other.suspended and other.realm is not None:
                    other.realm.resume(other)
        return {"accepted": True, "amount": amount, "cumulative": claim.cumulative, "debt": debt}

    def _rejected(
        self, ps: PeerSwap, peer: str, claim: ChequeClaim | None, exc: ChequeInvalid
    ) -> None:
        # only validated fields reach the event: a malformed cheque records no chequebook
        cumulative = claim.cumulative if claim is not None else 0
        ps.fold_pending()
        ps.account.reject_cheque(cumulative, exc.reason)
        self.accounts.save(ps.account)
        self._sink.emit(
            ChequeRejected(
                realm=ps.realm,
                peer=peer,
                chequebook=claim.chequebook if claim is not None else "",
                cumulative=cumulative,
                reason=exc.reason,
                block=self._clock.block,
            )
        )

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

    def chequebook_cumulative(self, chain_id: int, chequebook: str) -> int:
        return int(self._book(chain_id, chequebook).last_cumulative)

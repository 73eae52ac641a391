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

Storage never runs on the event loop: aggregates are loaded (at login, before WELCOME) and their
events recorded by one worker thread, in the order the loop decided them; an aggregate stays in
memory while it has events not yet recorded, so nothing is ever read back older than decided.

Payment: when the debt reaches the payment threshold the router sends the peer an EVENT on
`mesh.swap.payment_due` (if subscribed); the peer calls `mesh.swap.cheque` with a cumulative
EIP-712 cheque. The cheque's pure checks run first (`domain.swap.check_claim`), then the
chequebook's issuer, token, balance and paidOut are read from the chain without blocking the loop
(`router_core.chequebooks`), then `check_cheque` decides, with no await between that decision
and crediting it in memory. The cash-out queue's room is checked before the credit; the cheque is
then written to the cash-out queue (the intent to cash it) and the credit recorded, in that order
and off the loop, before the peer hears "accepted": a crash never loses an accepted cheque and a
cheque is never credited twice (the chequebook's last cumulative is recorded with the credit).
Past the disconnect threshold the session is closed with `mesh.error.payment_required`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.utils import Environment

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
from infra import sqlite_guard
from router_core import messages as m
from router_core.auth import AuthFailed
from router_core.cashout import CashoutQueueFull
from router_core.chain_clock import ChainClock
from router_core.chequebooks import ChequebookReader, NoChain
from router_core.dealer import MetaError
from router_core.metering import UsageSink
from router_core.session import Session, State

log = logging.getLogger("router_core.swap")

PAYMENT_DUE_TOPIC = "mesh.swap.payment_due"
CHEQUE_PROCEDURE = "mesh.swap.cheque"
BALANCE_PROCEDURE = "mesh.swap.balance"


class ChequeQueue(Protocol):
    """Where accepted cheques go to be cashed (`router_core.cashout.CashoutQueue`)."""

    def add(self, realm: str, peer: str, claim: ChequeClaim) -> None:
        """Queue the cheque (blocking I/O: called off the loop); raises CashoutQueueFull."""
        ...


class TermsSource(Protocol):
    """The router's terms per realm, as of now (a realm's price may follow the log or a USD
    price feed)."""

    def serves(self, realm: str) -> bool:
        """Whether peers of `realm` run SWAP with this router."""
        ...

    def terms(self, realm: str) -> RouterTerms | None:
        """The terms a new handshake gets; raises HandshakeRefused when none can be given now
        (a USD price without a valid exchange rate)."""
        ...


class StaticTerms:
    """Terms fixed at start (tests, dev)."""

    def __init__(self, terms: dict[str, RouterTerms]) -> None:
        self._terms = terms

    def serves(self, realm: str) -> bool:
        return realm in self._terms

    def terms(self, realm: str) -> RouterTerms | None:
        return self._terms.get(realm)


SWAP_STORE = sqlite_guard.GuardedStore(
    "SWAP account store",
    ("stored_events",),
    "Move the file aside and restore it from a backup. A new, empty store forgets each peer's "
    "unpaid debt and each chequebook's last accepted cumulative; the event log's ChequeReceived "
    "events (in the ledger's swap_events table) show the cheques accepted before.",
)


class SwapAccounts(Application):
    """The router's own store of peer accounts (eventsourcing; SQLite guarded by
    `infra.sqlite_guard`: a recorded event is in the main file, a damaged file is refused)."""

    name = "SwapAccounts"

    def construct_factory(self, env: Environment) -> InfrastructureFactory[Any]:
        if env.get("PERSISTENCE_MODULE") == "eventsourcing.sqlite":
            return sqlite_guard.GuardedSQLiteFactory(env, SWAP_STORE)
        return super().construct_factory(env)


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
        "pending_calls_charged",
        "pending_charge",
        "pending_calls_credited",
        "pending_credit",
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
        #: market calls under agreed quotes, not yet recorded: charged to this peer as a client,
        #: credited to it as an operator
        self.pending_calls_charged = 0
        self.pending_charge = 0
        self.pending_calls_credited = 0
        self.pending_credit = 0

    @property
    def debt(self) -> int:
        return (
            int(self.account.debt) + self.pending_amount + self.pending_charge - self.pending_credit
        )

    def fold_pending(self) -> bool:
        """Record pending charges and credits on the aggregate; True if there were any."""
        folded = False
        if self.pending_messages:
            self.account.charge(self.pending_messages, self.pending_amount)
            self.pending_messages = 0
            self.pending_amount = 0
            folded = True
        if self.pending_calls_charged:
            self.account.charge_call(self.pending_calls_charged, self.pending_charge)
            self.pending_calls_charged = self.pending_charge = 0
            folded = True
        if self.pending_calls_credited:
            self.account.credit_call(self.pending_calls_credited, self.pending_credit)
            self.pending_calls_credited = self.pending_credit = 0
            folded = True
        return folded


class SwapService:
    """Joins peers into SWAP, charges routed messages, serves the cheque meta procedures."""

    def __init__(
        self,
        router: str,
        terms: dict[str, RouterTerms] | TermsSource,
        sink: UsageSink,
        clock: ChainClock,
        db_path: Path | None,
        flush_interval_ms: int = 200,
        chequebooks: ChequebookReader | None = None,
        on_cheque: ChequeQueue | None = None,
        max_cached_chequebooks: int = 10_000,
        payment_grace_ms: int = 10_000,
    ) -> None:
        self.router = router
        self.terms: TermsSource = StaticTerms(terms) if isinstance(terms, dict) else terms
        self._sink = sink
        self._clock = clock
        self._flush_s = flush_interval_ms / 1000
        self._chequebooks: ChequebookReader = chequebooks or NoChain()
        self._on_cheque = on_cheque
        self.accounts = open_accounts(db_path)
        self._live: dict[UUID, PeerSwap] = {}
        #: peer accounts and chequebook accounts in memory (live, or with unrecorded events, or
        #: recently used: at most `max_cached_chequebooks` of the clean ones beyond those)
        self._aggregates: dict[UUID, Any] = {}
        self._max_cached = max_cached_chequebooks
        #: events decided on the loop, not yet recorded (in order), and per aggregate how many
        self._unsaved: list[Any] = []
        self._dirty: Counter[UUID] = Counter()
        self._store = ThreadPoolExecutor(1, thread_name_prefix="swap-store")
        self._save_lock: asyncio.Lock | None = None
        self._saving: set[asyncio.Task[None]] = set()
        #: accepted cheques on their way into the cash-out queue (its room is checked with them)
        #: chequebooks with a cheque being decided (one at a time: decide, queue, credit, record)
        self._books_busy: set[UUID] = set()
        #: how long a peer that joins past its disconnect threshold may take to pay
        self._grace_s = payment_grace_ms / 1000
        #: cheques received, by outcome ("accepted" or the refusal reason; read by /metrics)
        self.cheque_outcomes: Counter[str] = Counter()
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
        for ps in self._live.values():
            ps.fold_pending()
        await self._persist(*self._live_accounts())
        if self._saving:
            await asyncio.gather(*self._saving, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(self._store, self.accounts.close)
        self._store.shutdown()
        await self._chequebooks.close()

    def _live_accounts(self) -> list[PeerAccount]:
        return [ps.account for ps in self._live.values()]

    def flush(self) -> None:
        """Fold pending charges into the aggregates and record them (off the loop, soon)."""
        changed = [ps.account for ps in self._live.values() if ps.fold_pending()]
        if changed:
            self._persist_soon(*changed)

    # -- storage (one worker thread, in the loop's order) ------------------------------------------

    def _collect(self, aggregates: tuple[Any, ...]) -> None:
        for aggregate in aggregates:
            events = aggregate.collect_events()
            if events:
                self._unsaved.extend(events)
                self._dirty[aggregate.id] += len(events)

    async def _persist(self, *aggregates: Any) -> None:
        """Record the aggregates' new events (and every event decided before them) off the loop.
        On failure the events stay queued (retried by the next save) and the error is raised."""
        self._collect(aggregates)
        if self._save_lock is None:
            self._save_lock = asyncio.Lock()
        async with self._save_lock:
            batch = list(self._unsaved)
            if not batch:
                return
            await asyncio.get_running_loop().run_in_executor(
                self._store, lambda: self.accounts.save(*batch)
            )
            del self._unsaved[: len(batch)]
            for event in batch:
                key = event.originator_id
                self._dirty[key] -= 1
                if self._dirty[key] <= 0:
                    del self._dirty[key]

    def _persist_soon(self, *aggregates: Any) -> None:
        self._collect(aggregates)
        task = asyncio.get_running_loop().create_task(self._persist_logged())
        self._saving.add(task)
        task.add_done_callback(self._saving.discard)

    async def _persist_logged(self) -> None:
        try:
            await self._persist()
        except Exception:  # kept in memory and queued: the next save retries them
            log.exception("recording SWAP accounts failed")

    async def _fetch(self, key: UUID, make: Callable[[], Any]) -> Any:
        """The aggregate `key` from memory, else read by the worker (`make()` if never saved)."""
        found = self._aggregates.get(key)
        if found is not None:
            return found

        def read() -> Any:
            try:
                return self.accounts.repository.get(key)
            except AggregateNotFoundError:
                return make()

        loaded = await asyncio.get_running_loop().run_in_executor(self._store, read)
        found = self._aggregates.setdefault(key, loaded)  # a concurrent read may have won
        self._evict()
        return found

    def _evict(self) -> None:
        """Forget clean aggregates nobody uses beyond `max_cached` (never a live or dirty one)."""
        excess = len(self._aggregates) - self._max_cached
        if excess <= 0:
            return
        live = {ps.account.id for ps in self._live.values()}
        for key in list(self._aggregates):
            if excess <= 0:
                break
            if key not in live and key not in self._dirty:
                del self._aggregates[key]
                excess -= 1

    def _read_now(self, key: UUID, make: Callable[[], Any]) -> Any:
        """Blocking read for the query methods (tests, operators), memory first."""
        found = self._aggregates.get(key)
        if found is not None:
            return found
        try:
            return self.accounts.repository.get(key)
        except AggregateNotFoundError:
            return make()

    # -- join / leave -----------------------------------------------------------------------------

    def _negotiate(self, realm: str, details: dict[str, Any]) -> tuple[RouterTerms, AgreedTerms]:
        authextra = details.get("authextra")
        announced = authextra.get("swap") if isinstance(authextra, dict) else None
        try:
            terms = self.terms.terms(realm)
            assert terms is not None
            return terms, negotiate(terms, announced)
        except HandshakeRefused as exc:
            raise AuthFailed(
                m.SWAP_HANDSHAKE_REFUSED, f"SWAP handshake refused ({exc.reason}): {exc.detail}"
            ) from exc

    async def prepare(self, realm: str, peer: str, details: dict[str, Any]) -> None:
        """Before WELCOME: validate the handshake and bring the peer's account and chequebook
        into memory (read off the loop), so that `join` decides without I/O."""
        if not self.terms.serves(realm):
            return
        _, agreed = self._negotiate(realm, details)
        await self._fetch(
            account_id(self.router, realm, peer), lambda: PeerAccount(self.router, realm, peer)
        )
        await self._fetch(
            chequebook_id(self.router, agreed.chain_id, agreed.chequebook),
            lambda: ChequebookAccount(self.router, agreed.chain_id, agreed.chequebook),
        )

    def join(self, session: Session, realm: str, details: dict[str, Any]) -> dict[str, Any]:
        """Run the handshake; returns the router's side for WELCOME authextra.swap."""
        if not self.terms.serves(realm):
            return {}
        terms, agreed = self._negotiate(realm, details)
        peer = session.authid
        key = account_id(self.router, realm, peer)
        ps = self._live.get(key)
        if ps is None:
            account = self._aggregates.get(key)
            book = self._aggregates.get(
                chequebook_id(self.router, agreed.chain_id, agreed.chequebook)
            )
            if account is None or book is None:  # `prepare` was not awaited: a router bug
                raise AuthFailed(m.SWAP_HANDSHAKE_REFUSED, "SWAP state not loaded; log in again")
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
                self._persist_soon(account)
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
                self._persist_soon(ps.account)  # stays in memory until recorded
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

    def settle_call(self, client: Session, operator: Session, price: int, fee: int) -> bool:
        """A market call answered under an agreed quote: the client owes `price`, the operator
        is credited `price - fee` (the router keeps `fee`). Both must run SWAP with this router
        in the realm; False (nothing charged) otherwise. Recorded with the next flush, as the
        per-message charges are."""
        payer, payee = client.swap, operator.swap
        if payer is None or payee is None or not 0 <= fee <= price:
            return False
        payer.pending_calls_charged += 1
        payer.pending_charge += price
        payee.pending_calls_credited += 1
        payee.pending_credit += price - fee
        debt = payer.debt
        if debt >= payer.payment_threshold and not payer.due_notified:
            self._payment_due(payer, client, debt)
        if debt > payer.disconnect_threshold and not payer.disconnecting:
            self._disconnect(payer, debt)
        return True

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
        book_key: UUID | None = None
        try:
            claim = ChequeClaim.from_wire(kwargs)
            if ps.verifying:
                raise ChequeInvalid("busy", "another cheque of this peer is being verified")
            book_key = chequebook_id(self.router, claim.chain_id, claim.chequebook)
            if book_key in self._books_busy:
                book_key = None
                raise ChequeInvalid("busy", "another cheque on this chequebook is being verified")
            ps.verifying = True
            self._books_busy.add(book_key)
            try:
                answer = await self._cheque(session, ps, peer, claim, book_key)
                self.cheque_outcomes["accepted"] += 1
                return answer
            finally:
                ps.verifying = False
                self._books_busy.discard(book_key)
        except ChequeInvalid as exc:
            self.cheque_outcomes[exc.reason] += 1
            self._rejected(ps, peer, claim, exc)
            raise MetaError(m.CHEQUE_REJECTED, exc.detail, {"reason": exc.reason}) from exc

    async def _cheque(
        self, session: Session, ps: PeerSwap, peer: str, claim: ChequeClaim, book_key: UUID
    ) -> dict[str, Any]:
        def new_book() -> ChequebookAccount:
            return ChequebookAccount(self.router, claim.chain_id, claim.chequebook)

        book = await self._fetch(book_key, new_book)
        check_claim(
            claim,
            peer=peer,
            beneficiary=self.router,
            agreed=ps.agreed,
            last_cumulative=book.last_cumulative,
        )
        state = await self._chequebooks.read(claim.chain_id, claim.chequebook, self.router)
        if session.swap is not ps:
            raise MetaError(m.CHEQUE_REJECTED, "the session ended", {"reason": "session_gone"})
        # nothing else decides on this chequebook until this cheque is done (`_books_busy`)
        book = await self._fetch(book_key, new_book)
        amount = check_cheque(
            claim,
            peer=peer,
            beneficiary=self.router,
            agreed=ps.agreed,
            last_cumulative=book.last_cumulative,
            book=state,
        )
        queue = self._on_cheque
        if queue is not None:
            # the intent to cash it is written before the peer is credited: a full queue or a
            # failed write refuses the cheque with nothing credited
            realm = ps.realm
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self._store, queue.add, realm, peer, claim
                )
            except CashoutQueueFull as exc:
                raise ChequeInvalid("cashout_full", str(exc)) from exc
        account = ps.account
        ps.fold_pending()
        account.accept_cheque(claim.cumulative, amount, claim.signature)
        book.accept(claim.cumulative)
        try:
            await self._persist(account, book)
        except Exception as exc:  # credited in memory and queued to record: retried by flushes
            log.exception("recording an accepted cheque of %s failed", peer)
            raise MetaError(
                m.CHEQUE_REJECTED,
                "the router could not record the cheque yet; it is credited and queued for"
                " cash-out, and recorded when its storage recovers",
                {"reason": "not_recorded"},
            ) from exc
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
        self._persist_soon(ps.account)
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
        return int(self._account_now(realm, peer).debt)

    def last_cumulative(self, realm: str, peer: str) -> int:
        ps = self._live.get(account_id(self.router, realm, peer))
        account = ps.account if ps is not None else self._account_now(realm, peer)
        return int(account.last_cumulative)

    def chequebook_cumulative(self, chain_id: int, chequebook: str) -> int:
        book = self._read_now(
            chequebook_id(self.router, chain_id, chequebook),
            lambda: ChequebookAccount(self.router, chain_id, chequebook),
        )
        return int(book.last_cumulative)

    def _account_now(self, realm: str, peer: str) -> PeerAccount:
        account: PeerAccount = self._read_now(
            account_id(self.router, realm, peer), lambda: PeerAccount(self.router, realm, peer)
        )
        return account

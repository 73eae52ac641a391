"""Cheque cash-out: the router's queue keeps every valid cheque and parks what the chain refuses;
the Chequebook sink isolates a bad cheque or chequebook and cashes the rest (real anvil); a
router's received cheques are cashed by its own service."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import uvloop
from _submitter_chain import SETTLE_CHAIN_ID, deploy_reverter, fund_eth, make_submitter
from _submitter_settle import deploy
from autobahn.wamp.types import PublishOptions
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract

from domain.cheque import Cheque
from domain.swap import ChequeClaim
from infra.anvil import Anvil
from infra.procs import free_port
from ledger.keys import write_new_key
from router_core.cashout import (
    CashoutPolicy,
    CashoutQueue,
    CashoutQueueFull,
    QueuedCheque,
    cheque_signer,
)
from router_core.client import SwapOffer, connect
from router_core.config import CashoutConfig, RealmConfig, RouterConfig, SwapConfig
from router_core.service import RouterService
from settlement.cashout import CashResult, ChequebookCashout
from settlement.contracts import Stack, deploy_chequebook, transact
from settlement.journal import Journal, TxState

pytestmark = pytest.mark.integration

BOOK = "0x" + "b0" * 20
ROUTER = "0x" + "aa" * 20


def claim(key: LocalAccount, cumulative: int, book: str = BOOK, to: str = ROUTER) -> ChequeClaim:
    signature = Cheque(SETTLE_CHAIN_ID, book, to, cumulative).sign(key.key)
    return ChequeClaim(SETTLE_CHAIN_ID, book, to, cumulative, "0x" + signature.hex())


def queue_at(path: Path, max_pending_cheques: int = 100) -> CashoutQueue:
    """A queue that hands out every pending cheque at once."""
    policy = CashoutPolicy(1, 0.0, max_pending_cheques=max_pending_cheques)
    return CashoutQueue(path, policy)


class RefusingSink:
    """Refuses the cheques of one signer (as the chain refuses a signer that is not the issuer),
    cashes the rest in full."""

    def __init__(self, refused_signer: str) -> None:
        self.refused_signer = refused_signer.lower()
        self.handed: list[list[tuple[str, int]]] = []

    def cash_out(self, batch: Sequence[QueuedCheque]) -> list[CashResult[QueuedCheque]]:
        self.handed.append([(c.signer, c.cumulative) for c in batch])
        return [
            CashResult(c, c.cashed, "InvalidChequeSignature")
            if c.signer == self.refused_signer
            else CashResult(c, c.cumulative)
            for c in batch
        ]


# -- the queue (pure SQLite) -----------------------------------------------------------------------


def test_a_forged_cheque_sits_beside_the_valid_one_and_is_parked(tmp_path: Path) -> None:
    issuer, forger = Account.create(), Account.create()
    queue = queue_at(tmp_path / "q.sqlite")
    queue.add("r", "owner", claim(issuer, 100))
    queue.add("r", "attacker", claim(forger, 150))  # same chequebook and beneficiary, higher
    assert sorted((c.signer, c.cumulative) for c in queue.pending()) == sorted(
        [(issuer.address.lower(), 100), (forger.address.lower(), 150)]
    )

    sink = RefusingSink(forger.address)
    assert queue.run_once(sink) == 100  # the valid cheque is cashed in the same round
    assert queue.pending() == []
    [parked] = queue.parked()
    assert (parked.peer, parked.cumulative, parked.parked_reason) == (
        "attacker",
        150,
        "InvalidChequeSignature",
    )
    assert queue.run_once(sink) == 0 and len(sink.handed) == 1  # never handed out again

    queue.add("r", "owner", claim(issuer, 130))  # the owner's next cheque: only its 30 count
    assert [(c.cumulative, c.value) for c in queue.pending()] == [(130, 30)]
    queue.add("r", "attacker", claim(forger, 160))  # a newer cheque of a parked signer is retried
    assert sorted(c.cumulative for c in queue.pending()) == [130, 160]


def test_the_queue_is_bounded_and_refuses_a_new_cheque_when_full(tmp_path: Path) -> None:
    queue = queue_at(tmp_path / "q.sqlite", max_pending_cheques=2)
    keys = [Account.create() for _ in range(3)]
    queue.add("r", "p0", claim(keys[0], 10))
    queue.add("r", "p1", claim(keys[1], 10))
    with pytest.raises(CashoutQueueFull, match="2 cheques wait for cash-out"):
        queue.add("r", "p2", claim(keys[2], 10))
    queue.add("r", "p0", claim(keys[0], 25))  # a waiting signer's newer cheque still replaces
    assert sorted((c.peer, c.cumulative) for c in queue.pending()) == [("p0", 25), ("p1", 10)]


def test_a_version_1_queue_is_rekeyed_by_signer_and_loses_nothing(tmp_path: Path) -> None:
    issuer = Account.create()
    old = claim(issuer, 2**100)  # beyond 64-bit integers
    db = sqlite3.connect(tmp_path / "q.sqlite")
    db.execute(
        "CREATE TABLE cheques (chain_id INTEGER NOT NULL, chequebook TEXT NOT NULL,"
        " beneficiary TEXT NOT NULL, cumulative TEXT NOT NULL, signature TEXT NOT NULL,"
        " cashed TEXT NOT NULL DEFAULT '0', realm TEXT NOT NULL, peer TEXT NOT NULL,"
        " queued_at_s REAL NOT NULL, PRIMARY KEY (chain_id, chequebook, beneficiary))"
    )
    db.execute(
        "INSERT INTO cheques VALUES (?,?,?,?,?,?,?,?,?)",
        (SETTLE_CHAIN_ID, BOOK, ROUTER, str(old.cumulative), old.signature, "5", "r", "p", 1.0),
    )
    db.commit()
    db.close()

    [cheque] = queue_at(tmp_path / "q.sqlite").pending()

    assert (cheque.cumulative, cheque.cashed, cheque.signature) == (2**100, 5, old.signature)
    assert cheque.signer == cheque_signer(old) == issuer.address.lower()


# -- the Chequebook sink on anvil ------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(mining_anvil: Anvil) -> Stack:
    return deploy(Web3(Web3.HTTPProvider(mining_anvil.url)))


def funded_book(w3: Web3, stack: Stack, issuer: str, amount: int) -> Contract:
    """A chequebook whose cheques `issuer` signs, holding `amount`."""
    book = deploy_chequebook(w3, stack.token.address, issuer, sender=stack.deployer)
    if amount:
        transact(w3, stack.token.functions.mint(stack.deployer, amount), stack.deployer)
        transact(w3, stack.token.functions.approve(book.address, amount), stack.deployer)
        transact(w3, book.functions.deposit(amount), stack.deployer)
    return book


def queued(key: LocalAccount, book: str, beneficiary: str, cumulative: int) -> QueuedCheque:
    c = claim(key, cumulative, book, beneficiary)
    return QueuedCheque(
        c.chain_id, book, beneficiary, cumulative, c.signature, 0, "r", "p", 0.0, cheque_signer(c)
    )


def token_balances(stack: Stack, *accounts: str) -> tuple[int, ...]:
    return tuple(int(stack.token.functions.balanceOf(a).call()) for a in accounts)


def test_cheque_batch_is_cashed_once_and_a_bounce_is_cashed_later(
    w3: Web3, stack: Stack, sender: LocalAccount, tmp_path: Path
) -> None:
    issuer = Account.create()
    book = funded_book(w3, stack, issuer.address, 250)
    alice, bob = Account.create().address, Account.create().address
    batch = [
        queued(issuer, book.address, alice, 100),
        queued(issuer, book.address, bob, 50),
        queued(issuer, book.address, bob, 200),  # bob: the latest of the signer counts
    ]
    with make_submitter(w3, sender, tmp_path / "j.sqlite", confirmations=1) as sub:
        sink = ChequebookCashout(w3, sub)
        results = sink.cash_out(batch)
        paid_alice, paid_bob = token_balances(stack, alice, bob)  # 300 due, 250 held: a bounce
        assert (paid_alice + paid_bob, paid_alice <= 100, paid_bob <= 200) == (250, True, True)
        assert [r.paid_out for r in results] == [paid_alice, paid_bob, paid_bob]
        assert not any(r.refused for r in results)

        again = sink.cash_out([batch[0], batch[2]])  # 50 are owed, the book is empty: skipped
        assert sink.outcomes == [] and sum(token_balances(stack, alice, bob)) == 250
        assert [r.paid_out for r in again] == [paid_alice, paid_bob]

        transact(w3, stack.token.functions.mint(stack.deployer, 100), stack.deployer)
        transact(w3, stack.token.functions.approve(book.address, 100), stack.deployer)
        transact(w3, book.functions.deposit(100), stack.deployer)
        sink.cash_out([batch[0], batch[2]])  # refilled: the bounced rest
        assert token_balances(stack, alice, bob) == (100, 200)
        sink.cash_out([batch[0], batch[2]])  # all cashed: nothing is sent
        assert sink.outcomes == []
    states = [r.state for r in Journal(tmp_path / "j.sqlite").all()]
    # the batch, then the bounced rest; under load a slow confirmation may have been replaced
    # with bumped fees (the superseded attempt paid nothing, the balances above show it)
    assert [s for s in states if s is not TxState.SUPERSEDED] == [TxState.CONFIRMED] * 2


def test_a_forged_cheque_and_a_broken_chequebook_are_isolated_the_rest_is_cashed(
    w3: Web3, stack: Stack, sender: LocalAccount, tmp_path: Path
) -> None:
    a, b, forger = Account.create(), Account.create(), Account.create()
    book_a = funded_book(w3, stack, a.address, 1_000)
    book_b = funded_book(w3, stack, b.address, 1_000)
    broken = deploy_reverter(w3)  # answers nothing a Chequebook would
    router = Account.create().address
    batch = [
        queued(a, book_a.address, router, 100),
        queued(forger, book_a.address, router, 900),  # signed by someone else than A's issuer
        queued(b, book_b.address, router, 70),
        queued(a, broken, router, 5),
    ]
    with make_submitter(w3, sender, tmp_path / "j.sqlite", confirmations=1) as sub:
        results = ChequebookCashout(w3, sub).cash_out(batch)

    assert token_balances(stack, router) == (170,)
    assert [r.paid_out for r in results[:3]] == [100, 100, 70]
    assert [r.refused for r in results[::2]] == ["", ""]
    assert results[1].refused == f"InvalidChequeSignature({forger.address}, {a.address})"
    assert results[3].refused.startswith(f"chequebook {broken} does not answer as a Chequebook")


# -- a router's own service cashes what its peers paid -------------------------------------------

PRICE = 1_000


def test_a_router_cashes_its_peers_cheques_on_chain_and_parks_a_bad_one(
    mining_anvil: Anvil, w3: Web3, stack: Stack, tmp_path: Path
) -> None:
    peers = [Account.create() for _ in range(2)]
    books = [funded_book(w3, stack, p.address, 10**6) for p in peers]
    router_key = write_new_key(tmp_path / "router.key")
    cashout_key = write_new_key(tmp_path / "cashout.key")
    fund_eth(w3, cashout_key.address)
    config = RouterConfig(
        realms=[
            RealmConfig(
                "cash", price_per_message=PRICE, reservations={p.address: 10**6 for p in peers}
            )
        ],
        listen=f"127.0.0.1:{free_port('127.0.0.1')}",
        key_file=str(tmp_path / "router.key"),
        data_dir=str(tmp_path / "router"),
        chain_id=SETTLE_CHAIN_ID,
        chain_rpc_url=mining_anvil.url,
        swap=SwapConfig(
            token=stack.token.address, payment_threshold=10 * PRICE, disconnect_threshold=40 * PRICE
        ),
        cashout=CashoutConfig(
            min_batch_value=1,
            max_age_s=0.0,
            key_file=str(tmp_path / "cashout.key"),
            interval_s=0.2,
            confirmations=1,
        ),
    )

    async def body() -> tuple[list[int], list[QueuedCheque], list[QueuedCheque]]:
        service = RouterService(config)
        router = await service.start()
        try:
            assert isinstance(service.cashout_sink, ChequebookCashout)  # wired from the config
            queue, swap = service.cashout, router.swap
            assert queue is not None and swap is not None
            # a cheque the router accepted earlier that the chain refuses (signed by someone else
            # than the chequebook's issuer): it must not hold back the others
            forged = claim(Account.create(), 10**5, books[0].address, router_key.address)
            queue.add("cash", "someone", forged)
            sessions = []
            for peer, book in zip(peers, books, strict=True):
                offer = SwapOffer(
                    book.address, SETTLE_CHAIN_ID, stack.token.address, 10 * PRICE, PRICE
                )
                session = await connect(
                    f"ws://127.0.0.1:{router.port}/ws", "cash", bytes(peer.key), swap=offer
                )
                await session.subscribe(lambda *_: None, "com.example.ticks")
                sessions.append(session)
            for session in sessions:  # each event reaches the other peer: the publisher pays
                for i in range(25):
                    await session.publish(
                        "com.example.ticks", i, options=PublishOptions(acknowledge=True)
                    )
            keys = [
                s.journal.key(SETTLE_CHAIN_ID, b.address, router_key.address)
                for s, b in zip(sessions, books, strict=True)
            ]

            def settled() -> bool:  # no cheque in flight, every accepted one handed to the chain
                issued = [s.journal.issued(k)[0] for s, k in zip(sessions, keys, strict=True)]
                accepted = [swap.last_cumulative("cash", p.address) for p in peers]
                return issued == accepted and all(accepted) and not queue.pending()

            deadline = asyncio.get_running_loop().time() + 60
            while not settled() and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.2)
            assert settled(), "cheques still in flight or queued after 60 s"
            for session in sessions:
                session.leave()
            paid = [swap.last_cumulative("cash", p.address) for p in peers]
            return paid, queue.pending(), queue.parked()
        finally:
            await service.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        paid, pending, parked = runner.run(body())

    assert all(p >= 10 * PRICE for p in paid), paid  # both peers paid cheques over WAMP
    assert pending == []
    assert [(c.peer, c.parked_reason.split("(")[0]) for c in parked] == [
        ("someone", "InvalidChequeSignature")
    ]
    assert token_balances(stack, router_key.address) == (sum(paid),)
    assert [int(b.functions.paidOut(router_key.address).call()) for b in books] == paid
    assert replace(parked[0], parked_reason="").value == 10**5  # kept, not lost

"""The router's cheque cash-out sink: `Chequebook.cashChequeBatch` through the crash-safe submitter.

Implements `router_core.cashout.CashoutSink`. One transaction per chequebook in the batch; its
work key hashes the cheques, so a batch handed again after a crash resumes its journaled
transaction instead of signing a new one, and the "already done?" check (every cheque's
`paidOut` has reached its cumulative amount) keeps a repeat from sending anything. Cheques that
add nothing on chain are left out (the contract would revert the whole batch on them); an empty
chequebook raises `ChequebookEmpty` rather than paying gas for a zero payment.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from eth_hash.auto import keccak
from eth_typing import ChecksumAddress
from eth_utils import to_checksum_address
from web3 import Web3
from web3.contract import Contract

from settlement.contracts import load_artifact
from settlement.submitter import Outcome, Submitter, TxRequest

log = logging.getLogger(__name__)


class Cheque(Protocol):
    """What a queued cheque provides (`router_core.cashout.QueuedCheque` has these fields)."""

    @property
    def chain_id(self) -> int: ...
    @property
    def chequebook(self) -> str: ...
    @property
    def beneficiary(self) -> str: ...
    @property
    def cumulative(self) -> int: ...
    @property
    def signature(self) -> str: ...


class WrongChequeChain(ValueError):
    pass


class ChequebookEmpty(RuntimeError):
    """Cheques are due but the chequebook holds nothing: cashing now would pay 0 for gas."""


class ChequebookCashout:
    """CashoutSink over an opened `Submitter` (the router's key on the cheques' chain)."""

    def __init__(self, w3: Web3, submitter: Submitter) -> None:
        self.w3 = w3
        self.submitter = submitter
        self.abi = load_artifact("Chequebook")["abi"]
        self.outcomes: list[Outcome] = []  # of the last cash_out call

    def cash_out(self, batch: Sequence[Cheque]) -> None:
        """Cash every cheque of the batch, one transaction per chequebook; raise on failure."""
        self.outcomes = []
        by_book: dict[ChecksumAddress, list[Cheque]] = {}
        for cheque in batch:
            if cheque.chain_id != self.submitter.config.chain_id:
                raise WrongChequeChain(
                    f"cheque for chain {cheque.chain_id}, submitter is on {self.submitter.config.chain_id}"
                )
            by_book.setdefault(to_checksum_address(cheque.chequebook), []).append(cheque)
        for address, cheques in sorted(by_book.items()):
            self.outcomes.append(
                self._cash_book(self.w3.eth.contract(address=address, abi=self.abi), cheques)
            )

    def _cash_book(self, book: Contract, cheques: list[Cheque]) -> Outcome:
        latest: dict[str, Cheque] = {}
        for cheque in cheques:  # cumulative cheques: only the highest per beneficiary counts
            who = to_checksum_address(cheque.beneficiary)
            if who not in latest or cheque.cumulative > latest[who].cumulative:
                latest[who] = cheque
        ordered = [latest[who] for who in sorted(latest)]
        digest = keccak(
            "".join(f"{c.beneficiary.lower()}:{c.cumulative};" for c in ordered).encode()
        ).hex()
        work_key = f"cashout:{self.submitter.config.chain_id}:{book.address}:{digest}"

        def outstanding() -> list[Cheque]:
            return [
                c
                for c in ordered
                if int(book.functions.paidOut(to_checksum_address(c.beneficiary)).call())
                < c.cumulative
            ]

        due = outstanding()
        if not due:
            log.info("%s: every cheque already cashed", work_key)
            return Outcome(work_key, "already_done")
        token = self.w3.eth.contract(
            address=to_checksum_address(book.functions.token().call()),
            abi=load_artifact("WMPToken")["abi"],
        )
        if int(token.functions.balanceOf(book.address).call()) == 0:
            raise ChequebookEmpty(f"chequebook {book.address} is empty; {len(due)} cheques wait")
        call = book.functions.cashChequeBatch(
            [
                (
                    to_checksum_address(c.beneficiary),
                    c.cumulative,
                    bytes.fromhex(c.signature.removeprefix("0x")),
                )
                for c in due
            ]
        )
        data = bytes.fromhex(call._encode_transaction_data().removeprefix("0x"))
        request = TxRequest(work_key=work_key, to=book.address, data=data)
        return self.submitter.submit(request, lambda: not outstanding())

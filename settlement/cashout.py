"""The router's cheque cash-out sink: `Chequebook.cashChequeBatch` through the crash-safe submitter.

Implements `router_core.cashout.CashoutSink`. One transaction per chequebook in the batch; its
work key hashes the cheques, so a batch handed again after a crash resumes its journaled
transaction instead of signing a new one, and the "already done?" check (every cheque's
`paidOut` has reached its cumulative amount) keeps a repeat from sending anything. A batch the
chain would revert (gas estimation fails, nothing signed) is split in halves until the cheques it
refuses stand alone: those are reported refused with the decoded revert reason, the others are
cashed, so one forged cheque or broken chequebook never holds back the rest. Cheques that add
nothing on chain are left out; an empty chequebook is skipped (its cheques stay queued) rather
than paying gas for a zero payment.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from eth_hash.auto import keccak
from eth_typing import ChecksumAddress
from eth_utils import to_checksum_address
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import BadFunctionCallOutput, ContractLogicError

from settlement.contracts import load_artifact, revert_reason
from settlement.submitter import Outcome, Submitter, TxRequest, WouldRevert

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
    @property
    def signer(self) -> str:
        """The address the signature recovers to (lowercase)."""
        ...


C = TypeVar("C", bound=Cheque)


@dataclass(frozen=True, slots=True)
class CashResult(Generic[C]):
    """One cheque of a batch afterwards: the chequebook's `paidOut` to its beneficiary, and why
    the chain refuses the cheque ("" if it does not)."""

    cheque: C
    paid_out: int
    refused: str = ""


class ChequebookCashout:
    """CashoutSink over an opened `Submitter` (the cash-out key on the cheques' chain)."""

    def __init__(self, w3: Web3, submitter: Submitter) -> None:
        self.w3 = w3
        self.submitter = submitter
        self.abi = load_artifact("Chequebook")["abi"]
        self.outcomes: list[Outcome] = []  # transactions of the last cash_out call

    def close(self) -> None:
        self.submitter.close()

    def cash_out(self, batch: Sequence[C]) -> list[CashResult[C]]:
        """Cash what the chain accepts of the batch, one transaction per chequebook (more when a
        refused cheque has to be split off); every cheque's result, in batch order."""
        self.outcomes = []
        chain_id = self.submitter.config.chain_id
        results: dict[int, CashResult[C]] = {}
        by_book: dict[ChecksumAddress, list[C]] = {}
        for cheque in batch:
            if cheque.chain_id != chain_id:
                reason = f"cheque for chain {cheque.chain_id}; cash-out runs on chain {chain_id}"
                results[id(cheque)] = CashResult(cheque, 0, reason)
            else:
                by_book.setdefault(to_checksum_address(cheque.chequebook), []).append(cheque)
        for address, cheques in sorted(by_book.items()):
            book = self.w3.eth.contract(address=address, abi=self.abi)
            try:
                book_results = self._cash_book(book, cheques)
            except (ContractLogicError, BadFunctionCallOutput) as err:  # not a Chequebook
                reason = f"chequebook {address} does not answer as a Chequebook: {err}"
                log.warning("%s (%d cheques parked)", reason, len(cheques))
                book_results = [CashResult(c, 0, reason) for c in cheques]
            for result in book_results:
                results[id(result.cheque)] = result
        return [results[id(c)] for c in batch]

    def _cash_book(self, book: Contract, cheques: list[C]) -> list[CashResult[C]]:
        refused: dict[int, str] = {}
        self._cash_part(book, _highest_per_signer(cheques), refused)
        paid = {
            who: int(book.functions.paidOut(who).call())
            for who in {to_checksum_address(c.beneficiary) for c in cheques}
        }
        return [
            CashResult(c, paid[to_checksum_address(c.beneficiary)], refused.get(id(c), ""))
            for c in cheques
        ]

    def _outstanding(self, book: Contract, cheques: Sequence[C]) -> list[C]:
        return [
            c
            for c in cheques
            if int(book.functions.paidOut(to_checksum_address(c.beneficiary)).call()) < c.cumulative
        ]

    def _cash_part(self, book: Contract, cheques: list[C], refused: dict[int, str]) -> None:
        due = self._outstanding(book, cheques)
        if not due:
            return
        token = self.w3.eth.contract(
            address=to_checksum_address(book.functions.token().call()),
            abi=load_artifact("WMPToken")["abi"],
        )
        if int(token.functions.balanceOf(book.address).call()) == 0:
            log.info("chequebook %s is empty; %d cheques stay queued", book.address, len(due))
            return
        request = self._request(book, due)
        try:
            self.outcomes.append(
                self.submitter.submit(request, lambda: not self._outstanding(book, due))
            )
        except WouldRevert as err:
            if len(due) > 1:
                half = len(due) // 2
                self._cash_part(book, due[:half], refused)
                self._cash_part(book, due[half:], refused)
            elif self._outstanding(book, due):  # not merely cashed by someone else meanwhile
                reason = revert_reason("Chequebook", err.data) or err.reason
                refused[id(due[0])] = reason
                log.warning("cheque on %s refused by the chain: %s", book.address, reason)

    def _request(self, book: Contract, due: list[C]) -> TxRequest:
        digest = keccak(
            "".join(f"{c.beneficiary.lower()}:{c.cumulative}:{c.signature};" for c in due).encode()
        ).hex()
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
        work_key = f"cashout:{self.submitter.config.chain_id}:{book.address}:{digest}"
        return TxRequest(work_key=work_key, to=book.address, data=data)


def _highest_per_signer(cheques: list[C]) -> list[C]:
    """Cumulative cheques: per beneficiary and signer only the highest counts. Ordered by
    beneficiary and amount, so a valid lower cheque never follows a higher one in a batch."""
    latest: dict[tuple[str, str], C] = {}
    for c in cheques:
        key = (c.beneficiary.lower(), c.signer.lower())
        if key not in latest or c.cumulative > latest[key].cumulative:
            latest[key] = c
    return sorted(latest.values(), key=lambda c: (c.beneficiary.lower(), c.cumulative))

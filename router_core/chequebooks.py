"""Chequebook state from the chain, read at the edge for `domain.swap.check_cheque`.

`Web3Chequebooks` reads with async web3 (never blocking the router's loop): `issuer` and `token`
are immutable in the contract and cached per chequebook; `balance` and `paidOut` are read for
every cheque. `NoChain` is the router without `chain_rpc_url`: it cannot know a chequebook's
issuer, so every cheque is refused with reason `no_chain` rather than credited unverified.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from web3 import AsyncHTTPProvider, AsyncWeb3, Web3

from domain.swap import ChequebookState, ChequeInvalid, checksummed

CHEQUEBOOK_ABI: list[dict[str, Any]] = [
    {
        "name": name,
        "type": "function",
        "stateMutability": "view",
        "inputs": [],
        "outputs": [{"name": "", "type": "address"}],
    }
    for name in ("issuer", "token")
] + [
    {
        "name": name,
        "type": "function",
        "stateMutability": "view",
        "inputs": [{"name": "account", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
    }
    for name in ("paidOut", "balanceOf")
]


class ChequebookReader(Protocol):
    async def read(self, chain_id: int, chequebook: str, beneficiary: str) -> ChequebookState:
        """The chequebook's state, or ChequeInvalid (no chain, not a chequebook, RPC down)."""

    async def close(self) -> None:
        """Release connections (called when the router stops)."""


class NoChain:
    """No chain configured: no cheque can be verified, so none is credited."""

    async def read(self, chain_id: int, chequebook: str, beneficiary: str) -> ChequebookState:
        raise ChequeInvalid(
            "no_chain",
            "this router has no chain_rpc_url: it cannot read the chequebook's issuer, token or "
            "balance, so it accepts no cheque",
        )

    async def close(self) -> None:
        return None


class Web3Chequebooks:
    """Chequebook state over JSON-RPC (async web3), each read bounded by `timeout_s`; at most
    `max_cached` chequebooks' immutable fields are kept (oldest dropped first)."""

    def __init__(
        self, rpc_url: str, chain_id: int, timeout_s: float = 5.0, max_cached: int = 10_000
    ) -> None:

        self.chain_id = chain_id
        self.timeout_s = timeout_s
        self.max_cached = max_cached
        self._provider = AsyncHTTPProvider(rpc_url, request_kwargs={"timeout": timeout_s})
        self._w3 = AsyncWeb3(self._provider)
        self._immutable: dict[str, tuple[str, str]] = {}

    async def close(self) -> None:
        await self._provider.disconnect()

    async def _call(self, address: str, fn: str, *args: Any) -> Any:
        contract = self._w3.eth.contract(
            address=Web3.to_checksum_address(address), abi=CHEQUEBOOK_ABI
        )
        return await asyncio.wait_for(
            contract.functions[fn](*args).call(block_identifier="latest"), self.timeout_s
        )

    async def _issuer_and_token(self, book: str) -> tuple[str, str]:
        cached = self._immutable.get(book)
        if cached is not None:
            return cached
        if not await self._w3.eth.get_code(Web3.to_checksum_address(book)):
            raise ChequeInvalid("not_a_chequebook", f"no contract at {book}")
        try:
            issuer, token = await asyncio.gather(
                self._call(book, "issuer"), self._call(book, "token")
            )
        except (TimeoutError, OSError):
            raise
        except Exception as exc:  # a contract without these views reverts or returns nothing
            raise ChequeInvalid("not_a_chequebook", f"{book} is not a Chequebook: {exc}") from exc
        found = (checksummed(issuer), checksummed(token))
        if len(self._immutable) >= self.max_cached:
            self._immutable.pop(next(iter(self._immutable)))
        self._immutable[book] = found
        return found

    async def read(self, chain_id: int, chequebook: str, beneficiary: str) -> ChequebookState:
        if chain_id != self.chain_id:
            raise ChequeInvalid("wrong_chain_id", f"router reads chain {self.chain_id} only")
        book, payee = checksummed(chequebook), checksummed(beneficiary)
        try:
            issuer, token = await self._issuer_and_token(book)
            balance, paid = await asyncio.gather(
                self._call(token, "balanceOf", book), self._call(book, "paidOut", payee)
            )
        except ChequeInvalid:
            raise
        except Exception as exc:  # RPC down, timeout: the cheque is refused, the peer may retry
            raise ChequeInvalid("chain_unavailable", f"chain read failed: {exc!r}") from exc
        return ChequebookState(chain_id, book, issuer, token, int(balance), int(paid))

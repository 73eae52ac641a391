"""Chequebook state from the chain, read at the edge for `domain.swap.check_cheque`.

`Web3Chequebooks` reads with async web3 (never blocking the router's loop): `issuer` and `token`
are immutable in the contract and cached per chequebook; `balance` and `paidOut` are read for
every cheque. `NoChain` is the router without `chain_rpc_url`: it cannot know a chequebook's
issuer, so every cheque is refused with reason `no_chain` rather than credited unverified.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import requests
from web3 import HTTPProvider, Web3

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


def rpc_provider(rpc_url: str, timeout_s: float) -> HTTPProvider:
    """web3's synchronous provider with a session of its own (web3 then never takes its
    process-wide session lock) and no retries (a read ends at `timeout_s`)."""
    return HTTPProvider(
        rpc_url,
        request_kwargs={"timeout": timeout_s},
        session=requests.Session(),
        exception_retry_configuration=None,
    )


class Web3Chequebooks:
    """Chequebook state over JSON-RPC, each read bounded by `timeout_s`; at most `max_cached`
    chequebooks' immutable fields are kept (oldest dropped first).

    Reads run on threads with web3's synchronous provider, not on its AsyncHTTPProvider: an
    async request cancelled while it waits for web3's process-wide session lock (a timeout, a
    peer gone) leaves that lock held forever, after which no JSON-RPC call of the process
    returns (web3.py issue 3867); a thread is never cancelled half-way through it."""

    def __init__(
        self, rpc_url: str, chain_id: int, timeout_s: float = 5.0, max_cached: int = 10_000
    ) -> None:

        self.chain_id = chain_id
        self.timeout_s = timeout_s
        self.max_cached = max_cached
        self._w3 = Web3(rpc_provider(rpc_url, timeout_s))
        self._immutable: dict[str, tuple[str, str]] = {}

    async def close(self) -> None:
        return None

    async def _off_loop(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        # the HTTP timeout ends the thread's request; wait_for only stops waiting for it
        return await asyncio.wait_for(asyncio.to_thread(fn, *args, **kwargs), self.timeout_s)

    async def _call(self, address: str, fn: str, *args: Any) -> Any:
        contract = self._w3.eth.contract(
            address=Web3.to_checksum_address(address), abi=CHEQUEBOOK_ABI
        )
        return await self._off_loop(contract.functions[fn](*args).call, block_identifier="latest")

    async def _issuer_and_token(self, book: str) -> tuple[str, str]:
        cached = self._immutable.get(book)
        if cached is not None:
            return cached
        if not await self._off_loop(self._w3.eth.get_code, Web3.to_checksum_address(book)):
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

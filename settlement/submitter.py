"""Crash-safe transaction submitter: one sender per key, journal before broadcast, reorg-aware.

A `Submitter` owns one key on one chain (an exclusive file lock next to the journal). `submit()`
takes a transaction request and the caller's on-chain "already done?" check and drives the work to
a confirmed receipt:

* the check runs before every broadcast (new, rebroadcast or replacement); when the work turns out
  done while a transaction of ours is still unmined, its nonce is filled with a cancellation;
* nonces come from the journal and the chain (``max(pending count, highest journaled + 1)``);
* EIP-1559 fees: ``min(cap, 2·base fee + tip)``; a transaction unmined after ``stuck_after_s`` is
  replaced at the same nonce with fees bumped by ``bump_bps`` (at most ``max_replacements`` times,
  never above the cap);
* every signed transaction is journaled (SQLite, fsync'd) before it is broadcast;
* a receipt with status 0 is a revert; after N confirmations the receipt is fetched again and its
  block hash compared with the canonical chain: a transaction reorged out is sent again (bounded
  by ``max_resends``);
* after a crash the open lineage in the journal is resumed: rebroadcast, confirmed or cancelled.

Test hook: ``MESHLEDGER_CRASH_AT=<point>[@<work-key substring>]`` makes the process SIGKILL
itself at ``after_sign``, ``after_broadcast`` or ``waiting_confirmations`` (see `crash_point`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3RPCError

from settlement.journal import Journal, JournaledTx, TxState

log = logging.getLogger(__name__)

CRASH_ENV = "MESHLEDGER_CRASH_AT"
CRASH_POINTS = ("after_sign", "after_broadcast", "waiting_confirmations")
CANCEL_GAS = 21_000
BPS = 10_000
MIN_BUMP_BPS = 1_000  # what geth and anvil require of a replacement

IsDone = Callable[[], bool]
Observer = Callable[[str, JournaledTx], None]


def crash_point(point: str, work_key: str) -> None:
    """Test hook: SIGKILL this process when ``MESHLEDGER_CRASH_AT`` names `point`.

    The value is ``point`` or ``point@substring``; with a substring only work keys containing it
    crash. Production never sets the variable; failure tests use it to kill a job at an exact step.
    """
    wanted = os.environ.get(CRASH_ENV, "")
    if not wanted:
        return
    name, _, key_part = wanted.partition("@")
    if name == point and key_part in work_key:
        log.warning("test hook %s=%s: SIGKILL at %s of %s", CRASH_ENV, wanted, point, work_key)
        os.kill(os.getpid(), signal.SIGKILL)


# -- errors ----------------------------------------------------------------------------------------


class SubmitError(Exception):
    """A transaction that could not be driven to a confirmed receipt; the journal stays consistent."""


class WrongChain(SubmitError):
    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"node is on chain id {actual}, configured chain id is {expected}")
        self.expected = expected
        self.actual = actual


class SenderBusy(SubmitError):
    """Another process holds this sender's lock."""


class FeeCapExceeded(SubmitError):
    def __init__(self, base_fee_wei: int, cap_wei: int) -> None:
        super().__init__(f"base fee {base_fee_wei} wei exceeds the fee cap {cap_wei} wei")
        self.base_fee_wei = base_fee_wei
        self.cap_wei = cap_wei


class WouldRevert(SubmitError):
    """Gas estimation reverted: nothing was signed."""

    def __init__(self, work_key: str, reason: str, data: str | None) -> None:
        super().__init__(f"{work_key}: would revert: {reason}")
        self.work_key = work_key
        self.reason = reason
        self.data = data


class TxReverted(SubmitError):
    def __init__(self, work_key: str, tx_hash: str, block: int) -> None:
        super().__init__(f"{work_key}: transaction {tx_hash} reverted in block {block}")
        self.work_key = work_key
        self.tx_hash = tx_hash
        self.block = block


class StuckTransaction(SubmitError):
    pass


class BroadcastFailed(SubmitError):
    pass


class ReorgLimit(SubmitError):
    pass


# -- configuration and results ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeePolicy:
    max_fee_cap_wei: int  # never pay more than this per gas
    priority_fee_wei: int = 10**8  # tip of a fresh transaction
    bump_bps: int = 1250  # replacement bump; nodes require >= 10% on both fee fields


@dataclass(frozen=True, slots=True)
class SubmitterConfig:
    chain_id: int
    fees: FeePolicy
    confirmations: int = 3  # head - receipt block + 1 before the receipt is re-checked
    stuck_after_s: float = 30.0  # unmined this long: replace with bumped fees
    max_replacements: int = 5
    receipt_timeout_s: float = 600.0  # give up waiting for any receipt of a lineage
    confirm_timeout_s: float = 600.0  # give up waiting for confirmations
    max_resends: int = 3  # reorged-out or lost transactions sent again before giving up
    gas_margin_bps: int = 2_000  # added to the gas estimate
    poll_interval_s: float = 0.25
    lock_timeout_s: float = 300.0


@dataclass(frozen=True, slots=True)
class TxRequest:
    work_key: str  # names the work: one lineage at a time per key, e.g. "post:42161:0x..:realm:7"
    to: str
    data: bytes
    value: int = 0
    gas_limit: int | None = None  # estimated (plus margin) when None


@dataclass(frozen=True, slots=True)
class Outcome:
    work_key: str
    status: Literal["confirmed", "already_done"]
    tx_hash: str | None = None
    block_number: int | None = None
    block_hash: str | None = None
    gas_used: int | None = None


@dataclass(frozen=True, slots=True)
class _Resolved:
    """How a lineage ended."""

    kind: Literal["mined", "confirmed", "cancelled", "reverted", "dropped"]
    row: JournaledTx | None = None
    gas_used: int | None = None


def _hex(value: bytes | HexBytes) -> str:
    return "0x" + bytes(value).hex()


def _rpc_message(err: Exception) -> str:
    if isinstance(err, Web3RPCError) and isinstance(err.rpc_response, dict):
        error = err.rpc_response.get("error")
        if isinstance(error, dict):
            return str(error.get("message", err))
    return str(err)


# -- the submitter -------------------------------------------------------------------------------


class Submitter:
    """One sender (key) on one chain; use as a context manager (chain check + sender lock)."""

    def __init__(
        self,
        w3: Web3,
        account: LocalAccount,
        journal: Journal,
        config: SubmitterConfig,
        observer: Observer | None = None,
    ) -> None:
        self.w3 = w3
        self.account = account
        self.sender: ChecksumAddress = account.address
        self.journal = journal
        self.config = config
        self.observer = observer
        self._lock_file: IO[str] | None = None
        #: gas of the transactions this submitter saw confirmed (`settle --metrics-file`)
        self.gas_used_total = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Submitter:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Check the chain id (before anything is signed) and take the sender's lock."""
        check_chain_id(self.w3, self.config.chain_id)
        lock_path = Path(f"{self.journal.path}.{self.sender.lower()}.lock")
        handle = lock_path.open("a")
        deadline = time.monotonic() + self.config.lock_timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.close()
                    raise SenderBusy(
                        f"sender {self.sender} is locked by another process ({lock_path})"
                    ) from None
                time.sleep(self.config.poll_interval_s)
        self._lock_file = handle

    def close(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    # -- public API --------------------------------------------------------------------------

    def submit(self, request: TxRequest, is_done: IsDone) -> Outcome:
        """Drive `request` to a confirmed receipt, or find it already done on chain.

        Raises WouldRevert (nothing signed), TxReverted (mined with status 0 and still not done),
        FeeCapExceeded, StuckTransaction, ReorgLimit, BroadcastFailed.
        """
        if self._lock_file is None:
            raise SubmitError("submitter not opened (use it as a context manager)")
        resends = 0
        while True:
            lineage = self._open_lineage()
            if lineage is None:
                if is_done():
                    log.info("%s: already done on chain", request.work_key)
                    return Outcome(request.work_key, "already_done")
                self._send_new(request)
                continue
            if lineage[0].work_key != request.work_key:
                if is_done():
                    return Outcome(request.work_key, "already_done")
                # a crashed run's transaction for other work blocks the nonce: finish or cancel it
                self._resolve(lineage, None)
                continue
            resolved = self._resolve(lineage, is_done)
            if resolved.kind == "confirmed":
                row = resolved.row
                assert row is not None
                self.gas_used_total += resolved.gas_used or 0
                return Outcome(
                    request.work_key,
                    "confirmed",
                    row.tx_hash,
                    row.block_number,
                    row.block_hash,
                    resolved.gas_used,
                )
            if resolved.kind == "cancelled":
                return Outcome(request.work_key, "already_done")
            if resolved.kind == "reverted":
                row = resolved.row
                assert row is not None
                if is_done():  # lost a race with another sender doing the same work
                    return Outcome(request.work_key, "already_done")
                raise TxReverted(request.work_key, row.tx_hash, row.block_number or -1)
            resends += 1  # dropped: check again and send anew
            if resends > self.config.max_resends:
                raise ReorgLimit(f"{request.work_key}: dropped {resends} times, giving up")

    def resume(self) -> None:
        """Finish (confirm) or cancel whatever a crashed run left open for this sender."""
        while (lineage := self._open_lineage()) is not None:
            self._resolve(lineage, None)

    # -- sending -----------------------------------------------------------------------------

    def _open_lineage(self) -> list[JournaledTx] | None:
        lineages = self.journal.open_lineages(self.config.chain_id, self.sender)
        return lineages[0] if lineages else None

    def _fresh_fees(self) -> tuple[int, int]:
        return fresh_fees(self._base_fee(), self.config.fees)

    def _bumped_fees(self, lineage: list[JournaledTx]) -> tuple[int, int] | None:
        prev_max = max(r.max_fee_wei for r in lineage)
        prev_tip = max(r.priority_fee_wei for r in lineage)
        return bumped_fees(prev_max, prev_tip, self._base_fee(), self.config.fees)

    def _base_fee(self) -> int:
        block = self.w3.eth.get_block("latest")
        return int(block.get("baseFeePerGas", 0) or 0)

    def _next_nonce(self) -> int:
        chain = self.w3.eth.get_transaction_count(self.sender, "pending")
        journaled = self.journal.max_nonce(self.config.chain_id, self.sender)
        return max(int(chain), -1 if journaled is None else journaled + 1)

    def _estimate_gas(self, request: TxRequest) -> int:
        if request.gas_limit is not None:
            return request.gas_limit
        try:
            estimate = self.w3.eth.estimate_gas(
                {
                    "from": self.sender,
                    "to": Web3.to_checksum_address(request.to),
                    "data": HexBytes(request.data),
                    "value": request.value,  # type: ignore[typeddict-item]
                }
            )
        except ContractLogicError as err:
            data = err.data if isinstance(err.data, str) else None
            raise WouldRevert(request.work_key, str(err), data) from err
        return int(estimate) * (BPS + self.config.gas_margin_bps) // BPS

    def _sign_and_journal(
        self,
        *,
        work_key: str,
        kind: str,
        nonce: int,
        to: str,
        data: bytes,
        value: int,
        gas: int,
        fees: tuple[int, int],
    ) -> JournaledTx:
        tx: dict[str, Any] = {
            "type": 2,
            "chainId": self.config.chain_id,
            "nonce": nonce,
            "to": Web3.to_checksum_address(to),
            "value": value,
            "data": HexBytes(data),
            "gas": gas,
            "maxFeePerGas": fees[0],
            "maxPriorityFeePerGas": fees[1],
        }
        signed = self.account.sign_transaction(tx)
        row = self.journal.add(
            chain_id=self.config.chain_id,
            sender=self.sender,
            nonce=nonce,
            work_key=work_key,
            kind=kind,
            tx_hash=_hex(signed.hash),
            raw_tx=_hex(signed.raw_transaction),
            max_fee_wei=fees[0],
            priority_fee_wei=fees[1],
            gas_limit=gas,
        )
        self._notify("signed", row)
        crash_point("after_sign", work_key)
        return row

    def _send_new(self, request: TxRequest) -> None:
        gas = self._estimate_gas(request)
        fees = self._fresh_fees()
        row = self._sign_and_journal(
            work_key=request.work_key,
            kind="work",
            nonce=self._next_nonce(),
            to=request.to,
            data=request.data,
            value=request.value,
            gas=gas,
            fees=fees,
        )
        self._broadcast(row)

    def _broadcast(self, row: JournaledTx) -> Literal["sent", "nonce_used", "conflict"]:
        """Send the journaled raw transaction; 'nonce_used' when the nonce is already consumed."""
        try:
            self.w3.eth.send_raw_transaction(HexBytes(row.raw_tx))
        except (Web3RPCError, ValueError) as err:
            message = _rpc_message(err).lower()
            if "already known" in message or "already imported" in message:
                pass
            elif "nonce too low" in message or "nonce has already been used" in message:
                return "nonce_used"
            elif "underpriced" in message:
                return "conflict"  # a transaction with this nonce we do not know of is pooled
            else:
                raise BroadcastFailed(
                    f"{row.work_key}: broadcast of {row.tx_hash}: {message}"
                ) from err
        if row.state == TxState.SIGNED:
            self.journal.set_state(row.tx_hash, TxState.SENT)
        self._notify("sent", row)
        crash_point("after_broadcast", row.work_key)
        return "sent"

    def _cancel(self, lineage: list[JournaledTx]) -> None:
        """Fill the lineage's nonce with a 0-value self-transfer (the work is done elsewhere)."""
        fees = self._bumped_fees(lineage) or self._fresh_fees()
        row = self._sign_and_journal(
            work_key=lineage[0].work_key,
            kind="cancel",
            nonce=lineage[0].nonce,
            to=self.sender,
            data=b"",
            value=0,
            gas=CANCEL_GAS,
            fees=fees,
        )
        self._broadcast(row)
        self._notify("cancelling", row)

    def _replace(self, lineage: list[JournaledTx]) -> bool:
        """Re-sign the lineage's work at the same nonce with bumped fees; False when capped."""
        fees = self._bumped_fees(lineage)
        if fees is None:
            return False
        latest = lineage[-1]
        signed_tx = self._decode_raw(latest)
        row = self._sign_and_journal(
            work_key=latest.work_key,
            kind=latest.kind,
            nonce=latest.nonce,
            to=signed_tx["to"],
            data=signed_tx["data"],
            value=signed_tx["value"],
            gas=latest.gas_limit,
            fees=fees,
        )
        self._broadcast(row)
        self._notify("replaced", row)
        return True

    @staticmethod
    def _decode_raw(row: JournaledTx) -> dict[str, Any]:
        from eth_account.typed_transactions import TypedTransaction

        tx = TypedTransaction.from_bytes(HexBytes(row.raw_tx)).as_dict()
        return {"to": _hex(tx["to"]), "data": bytes(tx["data"]), "value": int(tx["value"])}

    # -- following a lineage -----------------------------------------------------------------

    def _resolve(self, lineage: list[JournaledTx], is_done: IsDone | None) -> _Resolved:
        """Drive an open lineage to its end. `is_done` None: a foreign lineage, cancel if unmined."""
        while True:
            mined = next((r for r in lineage if r.state == TxState.MINED), None)
            if mined is None:
                found = self._until_mined(lineage, is_done)
                if found.kind != "mined":
                    return found
                mined = found.row
                assert mined is not None
            result = self._confirm(mined)
            if result is not None:
                return result
            # reorged out and back to SENT: follow the lineage again
            refreshed = self._open_lineage()
            if refreshed is None or refreshed[0].nonce != mined.nonce:
                return _Resolved("dropped")
            lineage = refreshed

    def _until_mined(self, lineage: list[JournaledTx], is_done: IsDone | None) -> _Resolved:
        """Wait for a receipt of any transaction of the lineage, (re)broadcasting, replacing
        (stuck) or cancelling (done elsewhere) as needed. Returns kind 'mined' with the MINED row
        (confirmations still to come), or the lineage's final outcome."""
        nonce = lineage[0].nonce
        deadline = time.monotonic() + self.config.receipt_timeout_s
        replacements = 0
        need_send = True
        sent_at = time.monotonic()
        while True:
            hit = self._find_receipt(lineage)
            if hit is not None:
                return self._on_receipt(lineage, *hit)
            if self._nonce_consumed(nonce):
                # consumed but no receipt of ours: give the node a moment, then call it dropped
                hit = self._wait_receipt(lineage, 2.0)
                if hit is not None:
                    return self._on_receipt(lineage, *hit)
                self.journal.close_lineage(self.config.chain_id, self.sender, nonce, None)
                self._notify("dropped", lineage[-1])
                return _Resolved("dropped")
            if time.monotonic() >= deadline:
                raise StuckTransaction(
                    f"{lineage[0].work_key}: nonce {nonce} unmined after "
                    f"{self.config.receipt_timeout_s:.0f}s and {replacements} replacements"
                )
            if need_send:
                need_send = False
                cancelling = any(r.kind == "cancel" for r in lineage)
                if not cancelling and (is_done is None or is_done()):
                    self._cancel(lineage)
                else:
                    status = self._broadcast(lineage[-1])
                    if status == "conflict":
                        replacements += self._replace(lineage)
                lineage = self._lineage_rows(nonce)
                sent_at = time.monotonic()
                continue
            hit = self._wait_receipt(lineage, self.config.stuck_after_s, since=sent_at)
            if hit is not None:
                return self._on_receipt(lineage, *hit)
            if self._nonce_consumed(nonce):
                continue
            # stuck: check the work again, then replace with bumped fees (or cancel)
            if replacements < self.config.max_replacements:
                cancelling = any(r.kind == "cancel" for r in lineage)
                if not cancelling and (is_done is None or is_done()):
                    self._cancel(lineage)
                elif self._replace(lineage):
                    replacements += 1
                else:
                    log.warning("%s: fee cap reached, waiting", lineage[0].work_key)
                lineage = self._lineage_rows(nonce)
            sent_at = time.monotonic()

    def _lineage_rows(self, nonce: int) -> list[JournaledTx]:
        for lineage in self.journal.open_lineages(self.config.chain_id, self.sender):
            if lineage[0].nonce == nonce:
                return lineage
        raise SubmitError(f"lineage of nonce {nonce} vanished from the journal")

    def _wait_receipt(
        self, lineage: list[JournaledTx], timeout_s: float, since: float | None = None
    ) -> tuple[JournaledTx, Any] | None:
        deadline = (since if since is not None else time.monotonic()) + timeout_s
        while time.monotonic() < deadline:
            hit = self._find_receipt(lineage)
            if hit is not None:
                return hit
            if self._nonce_consumed(lineage[0].nonce):
                return self._find_receipt(lineage)
            time.sleep(self.config.poll_interval_s)
        return None

    def _find_receipt(self, lineage: list[JournaledTx]) -> tuple[JournaledTx, Any] | None:
        for row in lineage:
            receipt = self._receipt(row.tx_hash)
            if receipt is not None:
                return row, receipt
        return None

    def _receipt(self, tx_hash: str) -> Any | None:
        try:
            receipt = self.w3.eth.get_transaction_receipt(HexBytes(tx_hash))
        except TransactionNotFound:
            return None
        if receipt is None or receipt.get("blockNumber") is None:
            return None
        return receipt

    def _nonce_consumed(self, nonce: int) -> bool:
        return int(self.w3.eth.get_transaction_count(self.sender, "latest")) > nonce

    def _on_receipt(self, lineage: list[JournaledTx], row: JournaledTx, receipt: Any) -> _Resolved:
        block = int(receipt["blockNumber"])
        block_hash = _hex(receipt["blockHash"])
        self.journal.close_lineage(self.config.chain_id, self.sender, row.nonce, row.tx_hash)
        if int(receipt["status"]) != 1:
            self.journal.set_state(
                row.tx_hash, TxState.REVERTED, block_number=block, block_hash=block_hash
            )
            row = self._row(row.tx_hash)
            self._notify("reverted", row)
            return _Resolved("reverted", row)
        self.journal.set_state(
            row.tx_hash, TxState.MINED, block_number=block, block_hash=block_hash
        )
        row = self._row(row.tx_hash)
        self._notify("mined", row)
        return _Resolved("mined", row, int(receipt["gasUsed"]))

    def _row(self, tx_hash: str) -> JournaledTx:
        row = self.journal.by_hash(tx_hash)
        assert row is not None
        return row

    def _confirm(self, row: JournaledTx) -> _Resolved | None:
        """Wait for N confirmations, then re-check the receipt against the canonical chain.

        Returns the final outcome, or None when the transaction was reorged out (its row is back
        to SENT, to be broadcast again after the "already done?" check)."""
        crash_point("waiting_confirmations", row.work_key)
        assert row.block_number is not None
        deadline = time.monotonic() + self.config.confirm_timeout_s
        while True:
            target = row.block_number + self.config.confirmations - 1
            while int(self.w3.eth.block_number) < target or time.monotonic() >= deadline:
                if time.monotonic() >= deadline:
                    raise SubmitError(
                        f"{row.work_key}: {self.config.confirmations} confirmations of "
                        f"{row.tx_hash} not reached in {self.config.confirm_timeout_s:.0f}s"
                    )
                time.sleep(self.config.poll_interval_s)
            receipt = self._receipt(row.tx_hash)
            canonical = self._canonical_hash(row.block_number)
            if receipt is None:
                self.journal.set_state(
                    row.tx_hash, TxState.SENT, detail=f"reorged out of block {row.block_number}"
                )
                self._notify("reorged", self._row(row.tx_hash))
                return None
            block = int(receipt["blockNumber"])
            block_hash = _hex(receipt["blockHash"])
            if block != row.block_number or block_hash != row.block_hash:
                # re-mined elsewhere after a reorg: count confirmations again from there
                self.journal.set_state(
                    row.tx_hash, TxState.MINED, block_number=block, block_hash=block_hash
                )
                row = self._row(row.tx_hash)
                self._notify("remined", row)
                continue
            if canonical != block_hash:
                time.sleep(self.config.poll_interval_s)  # the node is mid-reorg: look again
                continue
            if int(receipt["status"]) != 1:
                self.journal.set_state(
                    row.tx_hash, TxState.REVERTED, block_number=block, block_hash=block_hash
                )
                return _Resolved("reverted", self._row(row.tx_hash))
            self.journal.set_state(
                row.tx_hash, TxState.CONFIRMED, block_number=block, block_hash=block_hash
            )
            row = self._row(row.tx_hash)
            self._notify("confirmed", row)
            kind: Literal["confirmed", "cancelled"] = (
                "cancelled" if row.kind == "cancel" else "confirmed"
            )
            return _Resolved(kind, row, int(receipt["gasUsed"]))

    def _canonical_hash(self, number: int) -> str | None:
        block = self.w3.eth.get_block(number)
        return _hex(block["hash"]) if block is not None else None

    def _notify(self, stage: str, row: JournaledTx) -> None:
        log.info("%s %s nonce=%d %s", row.work_key, stage, row.nonce, row.tx_hash)
        if self.observer is not None:
            self.observer(stage, row)


def fresh_fees(base_fee_wei: int, policy: FeePolicy) -> tuple[int, int]:
    """(max fee, priority fee) per gas of a new transaction: ``min(cap, 2·base + tip)``."""
    cap = policy.max_fee_cap_wei
    if base_fee_wei >= cap:
        raise FeeCapExceeded(base_fee_wei, cap)
    max_fee = min(cap, 2 * base_fee_wei + policy.priority_fee_wei)
    return max_fee, min(policy.priority_fee_wei, max_fee - base_fee_wei)


def bumped_fees(
    prev_max_fee_wei: int, prev_tip_wei: int, base_fee_wei: int, policy: FeePolicy
) -> tuple[int, int] | None:
    """Fees of a replacement: both fields raised by ``bump_bps`` (at least the 10% nodes
    require), the max fee also covering twice the current base fee, never above the cap; the
    bump shrinks towards 10% under the cap; None when not even that fits."""

    def raised(value: int, bps: int) -> int:
        return -(-value * (BPS + bps) // BPS)

    min_max_fee = raised(prev_max_fee_wei, MIN_BUMP_BPS)
    min_tip = raised(prev_tip_wei, MIN_BUMP_BPS)
    wanted_tip = max(raised(prev_tip_wei, policy.bump_bps), min_tip)
    wanted_max = max(raised(prev_max_fee_wei, policy.bump_bps), 2 * base_fee_wei + wanted_tip)
    max_fee = min(wanted_max, policy.max_fee_cap_wei)
    tip = min(wanted_tip, max_fee)
    if max_fee < min_max_fee or tip < min_tip:
        return None
    return max_fee, tip


def check_chain_id(w3: Web3, expected: int) -> None:
    """Refuse a node on another chain before anything is signed."""
    actual = int(w3.eth.chain_id)
    if actual != expected:
        raise WrongChain(expected, actual)

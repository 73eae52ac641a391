"""The settlement job: pays one closed realm epoch on the L2 `EpochSettlement` contract, once.

Steps for (realm, epoch), each an idempotent `Submitter` work item with its on-chain check:
verify the payouts against the log's PayoutsComputed digest, plan the tree (cumulative claimable
per account across the realm's epochs, active payees pushed), fund the realm when configured to
(approve + fund), post the root, push the batches, then record SettlementSubmitted /
SettlementConfirmed. Wrong chain id or wrong contract code is refused before anything is signed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from eth_hash.auto import keccak
from eth_utils import to_checksum_address
from web3 import Web3
from web3.contract import Contract

from domain.economics import Payout, payout_digest
from domain.events import Event, SettlementConfirmed, SettlementSubmitted
from settlement.contracts import load_artifact
from settlement.journal import Journal, JournaledTx
from settlement.merkle import EpochPlan, PayoutTree, plan_epoch, realm_id
from settlement.submitter import (
    FeeCapExceeded,
    Outcome,
    SubmitError,
    Submitter,
    TxRequest,
    WouldRevert,
    WrongChain,
    check_chain_id,
)

log = logging.getLogger(__name__)

BPS = 10_000
# pushBatch gas model for sizing batches: fixed part and per entry (a transfer to a new holder)
PUSH_BASE_GAS = 80_000
PUSH_ENTRY_GAS = 32_000

# exit codes a scheduler can act on (documented in `meshledger settle --help`)
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_NOT_DUE = 3
EXIT_UNDERFUNDED = 4
EXIT_CHAIN = 5
EXIT_WRONG_DEPLOYMENT = 6
EXIT_RECORDING = 7


# -- errors --------------------------------------------------------------------------------------


class JobError(Exception):
    """A settlement that cannot proceed; `exit_code` tells a scheduler what to do."""

    exit_code = EXIT_CHAIN


class NotDue(JobError):
    """No PayoutsComputed on the log for the epoch (not closed yet): retry later."""

    exit_code = EXIT_NOT_DUE


class DigestMismatch(JobError):
    """The payouts read do not hash to the logged digest: do not pay, investigate."""

    exit_code = EXIT_NOT_DUE


class RootConflict(JobError):
    """The epoch is posted on chain with another root or total: do not pay, investigate."""

    exit_code = EXIT_NOT_DUE


class Underfunded(JobError):
    exit_code = EXIT_UNDERFUNDED

    def __init__(self, realm: str, epoch: int, required: int, available: int, how: str) -> None:
        super().__init__(
            f"realm {realm} epoch {epoch} underfunded: needs {required} base units, "
            f"{available} available; {how}; nothing was sent"
        )
        self.required = required
        self.available = available


class WrongDeployment(JobError):
    """Wrong chain id, or no / wrong contract code at the configured address."""

    exit_code = EXIT_WRONG_DEPLOYMENT


class SourceUnavailable(JobError):
    """The ledger (query API or log) could not be read: retry later."""

    exit_code = EXIT_CHAIN


class RecordingFailed(JobError):
    """The chain work is done but its events could not be recorded: rerun to record them."""

    exit_code = EXIT_RECORDING


# -- ports ---------------------------------------------------------------------------------------


class PayoutSource(Protocol):
    """What the ledger computed: closed epochs, their payouts and the logged digest."""

    def due_epochs(self, realm: str | None) -> list[tuple[str, int]]:
        """(realm, epoch) of closed epochs with computed payouts, ascending by epoch."""
        ...

    def payouts(self, realm: str, epoch: int) -> list[Payout]: ...

    def logged_digest(self, realm: str, epoch: int) -> str | None:
        """The digest of the verified PayoutsComputed event on the log, None if there is none."""
        ...


class Recorder(Protocol):
    """Records settlement events as signed records in mesh.ledger; durable when it returns."""

    def record(self, event: Event) -> None: ...


@dataclass
class MemoryPayouts:
    """A PayoutSource held in memory (tests, dry runs from a file)."""

    epochs: dict[tuple[str, int], list[Payout]] = field(default_factory=dict)
    digests: dict[tuple[str, int], str] = field(default_factory=dict)

    def add(
        self, realm: str, epoch: int, payouts: Sequence[Payout], digest: str | None = None
    ) -> None:
        self.epochs[(realm, epoch)] = list(payouts)
        self.digests[(realm, epoch)] = digest or payout_digest(realm, epoch, payouts)

    def due_epochs(self, realm: str | None) -> list[tuple[str, int]]:
        keys = [k for k in self.epochs if realm is None or k[0] == realm]
        return sorted(keys, key=lambda k: (k[1], k[0]))

    def payouts(self, realm: str, epoch: int) -> list[Payout]:
        return list(self.epochs.get((realm, epoch), []))

    def logged_digest(self, realm: str, epoch: int) -> str | None:
        return self.digests.get((realm, epoch))


@dataclass
class ListRecorder:
    """A Recorder that keeps the events (tests, dry runs)."""

    events: list[Event] = field(default_factory=list)

    def record(self, event: Event) -> None:
        self.events.append(event)


# -- configuration and plan -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobConfig:
    chain_id: int
    contract: str  # the EpochSettlement address
    fund: bool = False  # fund the realm from the job's key when its budget falls short
    # payouts of at least this many base units are pushed; smaller ones are left to claim. A realm
    # must keep this value: earlier epochs' claimable cumulatives are recomputed with it.
    push_min_amount: int = 1
    batch_max_entries: int = 200  # upper bound; lowered to fit the block gas limit
    block_gas_fill_bps: int = 5_000  # a push batch uses at most this share of the block gas limit


@dataclass(frozen=True)
class Step:
    """One chain action of a settlement: the request and its "already done?" check."""

    name: str
    request: TxRequest
    is_done: Callable[[], bool]


@dataclass(frozen=True)
class SettlementPlan:
    realm: str
    epoch: int
    payouts: list[Payout]
    plan: EpochPlan
    tree: PayoutTree
    batch_max_entries: int

    @property
    def root_hex(self) -> str:
        return "0x" + self.tree.root.hex()


@dataclass(frozen=True)
class SettleResult:
    realm: str
    epoch: int
    status: str  # "settled" (this run sent something) or "already_settled"
    root: str
    total: int
    post_tx: str | None
    outcomes: list[Outcome]


# -- the job ---------------------------------------------------------------------------------------


class SettlementJob:
    """Settles realm epochs on one EpochSettlement contract with one submitter (one key)."""

    def __init__(
        self,
        w3: Web3,
        source: PayoutSource,
        recorder: Recorder,
        config: JobConfig,
        submitter: Submitter | None = None,
        sender: str | None = None,
    ) -> None:
        self.w3 = w3
        self.source = source
        self.recorder = recorder
        self.config = config
        self.submitter = submitter
        self.sender = to_checksum_address(
            sender or (submitter.sender if submitter else "0x" + "00" * 20)
        )
        self.settlement: Contract = w3.eth.contract(
            address=to_checksum_address(config.contract),
            abi=load_artifact("EpochSettlement")["abi"],
        )
        self._token: Contract | None = None

    @property
    def journal(self) -> Journal | None:
        return self.submitter.journal if self.submitter else None

    # -- checks before anything is signed ----------------------------------------------------

    def preflight(self) -> None:
        """Refuse a node on another chain or a contract address without the EpochSettlement code."""
        try:
            check_chain_id(self.w3, self.config.chain_id)
        except WrongChain as err:
            raise WrongDeployment(str(err)) from err
        code = bytes(self.w3.eth.get_code(self.settlement.address))
        if not code:
            raise WrongDeployment(f"no contract code at {self.settlement.address}")
        expected = bytes.fromhex(
            load_artifact("EpochSettlement")["deployedBytecode"].removeprefix("0x")
        )
        if not code_matches(code, expected):
            raise WrongDeployment(
                f"code at {self.settlement.address} (keccak 0x{keccak(code).hex()}) is not "
                "EpochSettlement's"
            )
        if (
            self.submitter is not None
            and not self.settlement.functions.isPoster(self.sender).call()
        ):
            raise WrongDeployment(
                f"key {self.sender} may not post roots on {self.settlement.address} (setPoster)"
            )

    @property
    def token(self) -> Contract:
        if self._token is None:
            address = self.settlement.functions.token().call()
            self._token = self.w3.eth.contract(
                address=address, abi=load_artifact("WMPToken")["abi"]
            )
        return self._token

    # -- planning ------------------------------------------------------------------------------

    def verified_payouts(self, realm: str, epoch: int) -> list[Payout]:
        digest = self.source.logged_digest(realm, epoch)
        if digest is None:
            raise NotDue(
                f"realm {realm} epoch {epoch}: no PayoutsComputed on the log (not closed?)"
            )
        payouts = self.source.payouts(realm, epoch)
        computed = payout_digest(realm, epoch, payouts)
        if computed.lower() != digest.lower():
            raise DigestMismatch(
                f"realm {realm} epoch {epoch}: payouts hash to {computed}, the log says {digest}"
            )
        return payouts

    def plan(self, realm: str, epoch: int) -> SettlementPlan:
        """The tree of (realm, epoch): claimable cumulatives replayed over the realm's earlier
        epochs with the same push rule, so every rerun (and every machine) builds the same root."""
        payouts = self.verified_payouts(realm, epoch)
        claimable = self._claimable_before(realm, epoch)
        amounts = per_account(payouts)
        batch_max = self._batch_max_entries(realm, epoch)
        plan = plan_epoch(amounts, claimable, self._push_set(amounts), batch_max)
        tree = PayoutTree.from_plan(
            self.config.chain_id, self.settlement.address, realm_id(realm), epoch, plan
        )
        return SettlementPlan(realm, epoch, payouts, plan, tree, batch_max)

    def _claimable_before(self, realm: str, epoch: int) -> dict[str, int]:
        """Every account's cumulative claimable after the realm's epochs before `epoch`.

        Replays the verified payouts of earlier epochs; results are kept in the journal (keyed by
        the push rule) so a long-lived realm replays only the epochs since the last run."""
        earlier = sorted(e for r, e in self.source.due_epochs(realm) if r == realm and e < epoch)
        journal = self.journal
        claimable: dict[str, int] = {}
        start = 0
        for i in range(len(earlier) - 1, -1, -1):
            kept = (
                journal.record_detail(self._claimable_key(realm, earlier[i])) if journal else None
            )
            if kept is not None:
                claimable = {a: int(v) for a, v in json.loads(kept).items()}
                start = i + 1
                break
        for e in earlier[start:]:
            amounts = per_account(self.verified_payouts(realm, e))
            claimable = plan_epoch(amounts, claimable, self._push_set(amounts), 1).claimable_after
            if journal is not None:
                journal.mark_recorded(self._claimable_key(realm, e), json.dumps(claimable))
        return claimable

    def _claimable_key(self, realm: str, epoch: int) -> str:
        rule = f"push>={self.config.push_min_amount}"
        return self._record_key("claimable", realm, epoch) + f":{rule}"

    def _push_set(self, amounts: dict[str, int]) -> set[str]:
        return {a for a, amount in amounts.items() if amount >= self.config.push_min_amount}

    def _batch_max_entries(self, realm: str, epoch: int) -> int:
        """Entries per push batch: fits the block gas limit; the first choice for an epoch is kept
        in the journal so a rerun rebuilds the same root even if the gas limit moved."""
        key = self._record_key("plan", realm, epoch)
        journal = self.journal
        if journal is not None and (kept := journal.record_detail(key)) is not None:
            return int(json.loads(kept)["batch_max_entries"])
        gas_limit = int(self.w3.eth.get_block("latest")["gasLimit"])
        budget = gas_limit * self.config.block_gas_fill_bps // BPS - PUSH_BASE_GAS
        fits = max(1, budget // PUSH_ENTRY_GAS)
        return min(self.config.batch_max_entries, fits)

    # -- steps ---------------------------------------------------------------------------------

    def steps(self, plan: SettlementPlan) -> list[Step]:
        """The chain actions of a settlement, in order; each knows whether it is done on chain."""
        realm_b = realm_id(plan.realm)
        epoch = plan.epoch
        root = plan.tree.root
        total = plan.plan.total
        base = f"{self.config.chain_id}:{self.settlement.address}:{plan.realm}:{epoch}"
        fn = self.settlement.functions

        def posted() -> bool:
            on_chain_root, on_chain_total, _ = fn.epochRecord(realm_b, epoch).call()
            if on_chain_root == b"\x00" * 32:
                return False
            if bytes(on_chain_root) != root or int(on_chain_total) != total:
                raise RootConflict(
                    f"realm {plan.realm} epoch {epoch} is posted with root "
                    f"0x{bytes(on_chain_root).hex()} total {on_chain_total}; this plan has "
                    f"{plan.root_hex} total {total}"
                )
            return True

        steps: list[Step] = []
        shortfall = self.shortfall(plan)
        if shortfall > 0 and self.config.fund:

            def funded() -> bool:
                return posted() or self.shortfall(plan) == 0

            def approved() -> bool:
                allowance = self.token.functions.allowance(self.sender, self.settlement.address)
                return funded() or int(allowance.call()) >= shortfall

            steps.append(
                Step(
                    "approve",
                    self._request(
                        f"approve:{base}",
                        self.token.functions.approve(self.settlement.address, shortfall),
                        self.token.address,
                    ),
                    approved,
                )
            )
            steps.append(
                Step("fund", self._request(f"fund:{base}", fn.fund(realm_b, shortfall)), funded)
            )
        steps.append(
            Step(
                "post",
                self._request(f"post:{base}", fn.postEpoch(realm_b, epoch, root, total)),
                posted,
            )
        )
        for idx in range(len(plan.tree.batches)):

            def pushed(i: int = idx) -> bool:
                return bool(fn.isBatchPushed(realm_b, epoch, i).call())

            call = fn.pushBatch(
                realm_b, epoch, idx, plan.tree.packed_batch(idx), plan.tree.batch_proof(idx)
            )
            steps.append(Step(f"push {idx}", self._request(f"push:{base}:{idx}", call), pushed))
        return steps

    def _request(self, work_key: str, call: Any, to: str | None = None) -> TxRequest:
        data = bytes.fromhex(call._encode_transaction_data().removeprefix("0x"))
        return TxRequest(work_key=work_key, to=to or self.settlement.address, data=data)

    def shortfall(self, plan: SettlementPlan) -> int:
        """Base units the realm lacks to post this epoch (0 once posted or funded enough)."""
        realm_b = realm_id(plan.realm)
        on_chain_root, _, _ = self.settlement.functions.epochRecord(realm_b, plan.epoch).call()
        if on_chain_root != b"\x00" * 32:
            return 0
        funded, allocated, _ = self.settlement.functions.realmBudget(realm_b).call()
        return max(0, plan.plan.total - (int(funded) - int(allocated)))

    # -- running -------------------------------------------------------------------------------

    def settle(self, realm: str, epoch: int) -> SettleResult:
        """Settle one epoch: idempotent, resumable, never pays twice."""
        if self.submitter is None:
            raise JobError("settle needs a submitter (dry runs use plan/steps)")
        self.preflight()
        plan = self.plan(realm, epoch)
        if plan.plan.total == 0:
            raise NotDue(f"realm {realm} epoch {epoch}: no payouts to settle")
        self._keep_batch_size(plan)
        steps = self.steps(plan)
        self._check_funds(plan)
        submitted_key = self._record_key("submitted", realm, epoch)
        post_key = next(s.request.work_key for s in steps if s.name == "post")

        def on_stage(stage: str, row: JournaledTx) -> None:
            if stage == "sent" and row.work_key == post_key and row.kind == "work":
                self._record_once(submitted_key, self._submitted(plan, row.tx_hash))

        outcomes: list[Outcome] = []
        previous = self.submitter.observer
        self.submitter.observer = _chain(previous, on_stage)
        try:
            for step in steps:
                log.info("%s %s epoch %d: %s", step.name, realm, epoch, step.request.work_key)
                outcomes.append(self.submitter.submit(step.request, step.is_done))
        except WouldRevert as err:
            raise JobError(f"{err} (nothing was signed for this step)") from err
        except FeeCapExceeded as err:
            raise JobError(str(err)) from err
        except SubmitError as err:
            raise JobError(f"chain error: {err}") from err
        finally:
            self.submitter.observer = previous
        post_tx = self._post_tx(plan, post_key)
        if post_tx is not None:
            tx_hash, block, block_hash = post_tx
            self._record_once(submitted_key, self._submitted(plan, tx_hash))
            confirmed = SettlementConfirmed(
                realm=realm,
                epoch=epoch,
                chain_id=self.config.chain_id,
                contract=self.settlement.address,
                tx_hash=tx_hash,
                block=block,
                block_hash=block_hash,
            )
            self._record_once(self._record_key("confirmed", realm, epoch), confirmed)
        sent = any(o.status == "confirmed" for o in outcomes)
        return SettleResult(
            realm,
            epoch,
            "settled" if sent else "already_settled",
            plan.root_hex,
            plan.plan.total,
            post_tx[0] if post_tx else None,
            outcomes,
        )

    def settle_all_due(self, realm: str | None = None) -> list[SettleResult]:
        """Settle every closed epoch with payouts (ascending); settled ones cost a few reads."""
        results = []
        for r, e in self.source.due_epochs(realm):
            if not self.source.payouts(r, e):
                continue
            results.append(self.settle(r, e))
        return results

    def _check_funds(self, plan: SettlementPlan) -> None:
        shortfall = self.shortfall(plan)
        if shortfall == 0:
            return
        realm_b = realm_id(plan.realm)
        funded, allocated, _ = self.settlement.functions.realmBudget(realm_b).call()
        available = int(funded) - int(allocated)
        if not self.config.fund:
            raise Underfunded(
                plan.realm,
                plan.epoch,
                plan.plan.total,
                available,
                "funding by the job is off (--fund)",
            )
        balance = int(self.token.functions.balanceOf(self.sender).call())
        if balance < shortfall:
            raise Underfunded(
                plan.realm,
                plan.epoch,
                plan.plan.total,
                available,
                f"the job key {self.sender} holds {balance} of the {shortfall} to fund",
            )

    def _keep_batch_size(self, plan: SettlementPlan) -> None:
        key = self._record_key("plan", plan.realm, plan.epoch)
        journal = self.journal
        if journal is not None and journal.record_detail(key) is None:
            detail = {"batch_max_entries": plan.batch_max_entries, "root": plan.root_hex}
            journal.mark_recorded(key, json.dumps(detail))

    def _submitted(self, plan: SettlementPlan, tx_hash: str) -> SettlementSubmitted:
        return SettlementSubmitted(
            realm=plan.realm,
            epoch=plan.epoch,
            chain_id=self.config.chain_id,
            contract=self.settlement.address,
            root=plan.root_hex,
            total=plan.plan.total,
            tx_hash=tx_hash,
        )

    def _post_tx(self, plan: SettlementPlan, post_key: str) -> tuple[str, int, str] | None:
        """(tx hash, block, block hash) of the transaction that posted the root: ours from the
        journal, else the EpochPosted log (another job posted it)."""
        journal = self.journal
        if (
            journal is not None
            and (row := journal.confirmed(post_key)) is not None
            and row.kind == "work"
        ):
            assert row.block_number is not None and row.block_hash is not None
            return row.tx_hash, row.block_number, row.block_hash
        logs = self.settlement.events.EpochPosted().get_logs(
            from_block=0,
            argument_filters={"realm": realm_id(plan.realm), "epoch": plan.epoch},
        )
        if not logs:
            return None
        entry = logs[-1]
        return (
            "0x" + bytes(entry["transactionHash"]).hex(),
            int(entry["blockNumber"]),
            "0x" + bytes(entry["blockHash"]).hex(),
        )

    def _record_once(self, key: str, event: Event) -> None:
        journal = self.journal
        if journal is not None and journal.recorded(key):
            return
        try:
            self.recorder.record(event)
        except Exception as err:  # noqa: BLE001 - any recorder failure means "not recorded"
            raise RecordingFailed(f"{event.TYPE} not recorded ({err}); rerun to record it") from err
        if journal is not None:
            journal.mark_recorded(key, json.dumps(event.to_dict(), default=str))

    def _record_key(self, kind: str, realm: str, epoch: int) -> str:
        return f"{kind}:{self.config.chain_id}:{self.settlement.address}:{realm}:{epoch}"


def per_account(payouts: Sequence[Payout]) -> dict[str, int]:
    """An account's payouts of one epoch over all its payee classes."""
    amounts: dict[str, int] = {}
    for payout in payouts:
        account = to_checksum_address(payout.account)
        amounts[account] = amounts.get(account, 0) + payout.amount
    return {a: v for a, v in amounts.items() if v > 0}


def code_matches(on_chain: bytes, artifact_runtime: bytes) -> bool:
    """Runtime code equals the artifact's except in immutable slots, which the compiler leaves
    zero in the artifact and the constructor fills in (token address, batch-transfer flag)."""
    if len(on_chain) != len(artifact_runtime):
        return False
    return all(a == b or b == 0 for a, b in zip(on_chain, artifact_runtime, strict=True))


def _chain(
    first: Callable[[str, JournaledTx], None] | None, second: Callable[[str, JournaledTx], None]
) -> Callable[[str, JournaledTx], None]:
    def both(stage: str, row: JournaledTx) -> None:
        if first is not None:
            first(stage, row)
        second(stage, row)

    return both

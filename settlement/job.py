"""The settlement job: pays one closed realm epoch on the L2 `EpochSettlement` contract, once.

Steps for (realm, epoch), each an idempotent `Submitter` work item with its on-chain check:
verify the payouts against the log's PayoutsComputed digest, plan the tree (cumulative claimable
per account continuing the realm's earlier epochs exactly as they were posted on chain, active
payees pushed; an epoch waits until every earlier one is posted), fund the realm when configured
to (approve + fund), post the root, push the batches, then record SettlementSubmitted /
SettlementConfirmed. Wrong chain id or wrong contract code is refused before anything is signed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
    IsDone,
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
ZERO_ROOT = b"\x00" * 32
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


class LedgerConflict(JobError):
    """The ledger contradicts itself (query endpoint against log, two digests for one epoch, a
    forked ledger source): do not pay, investigate."""

    exit_code = EXIT_NOT_DUE


class DigestMismatch(LedgerConflict):
    """The payouts read do not hash to the logged digest: do not pay, investigate."""


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


# -- configuration and plan -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobConfig:
    chain_id: int
    contract: str  # the EpochSettlement address
    fund: bool = False  # fund the realm from the job's key when its budget falls short
    # payouts of at least this many base units are pushed; smaller ones are left to claim. Applies
    # to epochs this job posts: a posted epoch keeps the rule it was posted with.
    push_min_amount: int = 1
    batch_max_entries: int = 200  # upper bound; lowered to fit the block gas limit
    block_gas_fill_bps: int = 5_000  # a push batch uses at most this share of the block gas limit


@dataclass(frozen=True, slots=True)
class PlanRule:
    """How an epoch's payouts are split: pushed from `push_min_amount` on, in batches of at most
    `batch_max_entries`. Part of what a posted root commits to."""

    push_min_amount: int
    batch_max_entries: int


@dataclass(frozen=True)
class Step:
    """One chain action of a settlement: the request and its "already done?" check."""

    name: str
    request: TxRequest
    is_done: IsDone


@dataclass(frozen=True)
class SettlementPlan:
    realm: str
    epoch: int
    payouts: list[Payout]
    plan: EpochPlan
    tree: PayoutTree
    rule: PlanRule

    @property
    def batch_max_entries(self) -> int:
        return self.rule.batch_max_entries

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
        journal: Journal | None = None,
    ) -> None:
        self.w3 = w3
        self.source = source
        self.recorder = recorder
        self.config = config
        self.submitter = submitter
        #: without a submitter (dry runs, audits): a journal to read the rules epochs were
        #: planned with (opened read-only by an auditor)
        self._journal = journal
        self.sender = to_checksum_address(
            sender or (submitter.sender if submitter else "0x" + "00" * 20)
        )
        self.settlement: Contract = w3.eth.contract(
            address=to_checksum_address(config.contract),
            abi=load_artifact("EpochSettlement")["abi"],
        )
        self._token: Contract | None = None
        #: told before each step of each epoch: (realm, epoch, step name, step index, steps)
        self.on_step: Callable[[str, int, str, int, int], None] | None = None

    @property
    def journal(self) -> Journal | None:
        return self.submitter.journal if self.submitter else self._journal

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
        """The tree of (realm, epoch). Claimable cumulatives continue those of the realm's earlier
        epochs *as they were posted on chain*; an epoch already posted is rebuilt as it was posted
        (whatever the configured push rule says now), so every rerun builds the same root."""
        payouts = self.verified_payouts(realm, epoch)
        claimable = self._claimable_before(realm, epoch)
        posted = self._posted_root(realm, epoch)
        if posted is not None:
            return self._rebuild_posted(realm, epoch, payouts, claimable, posted)
        return self._build(realm, epoch, payouts, claimable, self._rules(realm, epoch)[0])

    def candidates(self, realm: str, epoch: int) -> list[SettlementPlan]:
        """The plans the ledger's payouts give for (realm, epoch) under each rule the job would
        try (`plan` picks the one whose root is posted): the journal's rule first, then the
        configured one. Claimable amounts continue the earlier epochs as posted on chain. What an
        auditor compares with the chain."""
        payouts = self.verified_payouts(realm, epoch)
        claimable = self._claimable_before(realm, epoch)
        return [
            self._build(realm, epoch, payouts, claimable, rule)
            for rule in self._rules(realm, epoch)
        ]

    def posted_root(self, realm: str, epoch: int) -> bytes | None:
        """The root (realm, epoch) is posted with on chain, None if it is not posted."""
        return self._posted_root(realm, epoch)

    def _build(
        self,
        realm: str,
        epoch: int,
        payouts: list[Payout],
        claimable: dict[str, int],
        rule: PlanRule,
    ) -> SettlementPlan:
        amounts = per_account(payouts)
        push = {a for a, amount in amounts.items() if amount >= rule.push_min_amount}
        plan = plan_epoch(amounts, claimable, push, rule.batch_max_entries)
        tree = PayoutTree.from_plan(
            self.config.chain_id, self.settlement.address, realm_id(realm), epoch, plan
        )
        return SettlementPlan(realm, epoch, payouts, plan, tree, rule)

    def _rebuild_posted(
        self,
        realm: str,
        epoch: int,
        payouts: list[Payout],
        claimable: dict[str, int],
        posted_root: bytes,
    ) -> SettlementPlan:
        """The plan whose root is the one posted on chain, under the rule kept in the journal or
        the configured one; RootConflict when neither rebuilds it (never guess at what was paid)."""
        rules = self._rules(realm, epoch)
        for rule in rules:
            plan = self._build(realm, epoch, payouts, claimable, rule)
            if plan.tree.root == posted_root:
                return plan
        tried = ", ".join(f"push>={r.push_min_amount} batch<={r.batch_max_entries}" for r in rules)
        raise RootConflict(
            f"realm {realm} epoch {epoch} is posted on chain with root 0x{posted_root.hex()}, "
            f"which the ledger's payouts do not rebuild under {tried}: run with the "
            "--push-min-amount it was posted with, or with the journal of the job that posted "
            "it; nothing was sent"
        )

    def _claimable_before(self, realm: str, epoch: int) -> dict[str, int]:
        """Every account's cumulative claimable after the realm's epochs before `epoch`, as posted.

        Epochs are settled in order: an earlier epoch with payouts that is not posted yet makes
        this one NotDue (its claim leaves would promise money no posted total allocated). Results
        are kept in the journal with the root they were verified against, so a long-lived realm
        rebuilds only the epochs since the last run."""
        earlier = sorted(e for r, e in self.source.due_epochs(realm) if r == realm and e < epoch)
        claimable: dict[str, int] = {}
        start = 0
        for i in range(len(earlier) - 1, -1, -1):
            kept = self._kept_claimable(realm, earlier[i])
            if kept is not None:
                claimable, start = kept, i + 1
                break
        for e in earlier[start:]:
            payouts = self.verified_payouts(realm, e)
            if not per_account(payouts):
                continue  # nothing to pay, never posted
            root = self._posted_root(realm, e)
            if root is None:
                raise NotDue(
                    f"realm {realm} epoch {epoch}: epoch {e} before it is not posted on chain; "
                    f"epochs are settled in order (settle epoch {e} first, or use --all-due)"
                )
            claimable = self._rebuild_posted(
                realm, e, payouts, claimable, root
            ).plan.claimable_after
            if self.journal is not None and not self.journal.read_only:
                detail = {"root": "0x" + root.hex(), "claimable": claimable}
                self.journal.mark_recorded(
                    self._record_key("claimable", realm, e), json.dumps(detail)
                )
        return claimable

    def _kept_claimable(self, realm: str, epoch: int) -> dict[str, int] | None:
        """The journal's cumulatives after `epoch`, if the root they were built from is still the
        one on chain (a reorg could have dropped it)."""
        kept = (
            self.journal.record_detail(self._record_key("claimable", realm, epoch))
            if self.journal is not None
            else None
        )
        if kept is None:
            return None
        detail = json.loads(kept)
        root = self._posted_root(realm, epoch)
        if root is None or "0x" + root.hex() != detail["root"]:
            return None
        return {a: int(v) for a, v in detail["claimable"].items()}

    def _posted_root(self, realm: str, epoch: int) -> bytes | None:
        root, _, _ = self.settlement.functions.epochRecord(realm_id(realm), epoch).call()
        return None if bytes(root) == ZERO_ROOT else bytes(root)

    def _rules(self, realm: str, epoch: int) -> list[PlanRule]:
        """Candidate rules of (realm, epoch): the one kept in the journal when this job planned it
        before, then the configured one (its batch size fitted to the block gas limit)."""
        rules = []
        journal = self.journal
        if journal is not None and (
            kept := journal.record_detail(self._record_key("plan", realm, epoch))
        ):
            detail = json.loads(kept)
            rules.append(
                PlanRule(
                    int(detail.get("push_min_amount", self.config.push_min_amount)),
                    int(detail["batch_max_entries"]),
                )
            )
        gas_limit = int(self.w3.eth.get_block("latest")["gasLimit"])
        budget = gas_limit * self.config.block_gas_fill_bps // BPS - PUSH_BASE_GAS
        fits = max(1, budget // PUSH_ENTRY_GAS)
        configured = PlanRule(self.config.push_min_amount, min(self.config.batch_max_entries, fits))
        return rules + [configured] if configured not in rules else rules

    # -- steps ---------------------------------------------------------------------------------

    def steps(self, plan: SettlementPlan) -> list[Step]:
        """The chain actions of a settlement, in order; each knows whether it is done on chain."""
        realm_b = realm_id(plan.realm)
        epoch = plan.epoch
        root = plan.tree.root
        total = plan.plan.total
        base = f"{self.config.chain_id}:{self.settlement.address}:{plan.realm}:{epoch}"
        fn = self.settlement.functions
        steps: list[Step] = []

        def step(name: str, work_key: str, call: Any, is_done: IsDone, to: str = "") -> None:
            data = bytes.fromhex(call._encode_transaction_data().removeprefix("0x"))
            request = TxRequest(work_key=work_key, to=to or self.settlement.address, data=data)
            steps.append(Step(name, request, is_done))

        def posted() -> bool:
            on_chain_root, on_chain_total, _ = fn.epochRecord(realm_b, epoch).call()
            if bytes(on_chain_root) == ZERO_ROOT:
                return False
            if bytes(on_chain_root) != root or int(on_chain_total) != total:
                raise RootConflict(
                    f"realm {plan.realm} epoch {epoch} is posted with root "
                    f"0x{bytes(on_chain_root).hex()} total {on_chain_total}; this plan has "
                    f"{plan.root_hex} total {total}"
                )
            return True

        shortfall = self.shortfall(plan)
        if shortfall > 0 and self.config.fund:

            def funded() -> bool:
                return posted() or self.shortfall(plan) == 0

            def approved() -> bool:
                allowance = self.token.functions.allowance(
                    self.sender, self.settlement.address
                ).call()
                return funded() or int(allowance) >= shortfall

            approve = self.token.functions.approve(self.settlement.address, shortfall)
            step("approve", f"approve:{base}", approve, approved, to=self.token.address)
            step("fund", f"fund:{base}", fn.fund(realm_b, shortfall), funded)
        step("post", f"post:{base}", fn.postEpoch(realm_b, epoch, root, total), posted)
        for idx in range(len(plan.tree.batches)):

            def pushed(i: int = idx) -> bool:
                return bool(fn.isBatchPushed(realm_b, epoch, i).call())

            tree = plan.tree
            push = fn.pushBatch(realm_b, epoch, idx, tree.packed_batch(idx), tree.batch_proof(idx))
            step(f"push {idx}", f"push:{base}:{idx}", push, pushed)
        return steps

    def shortfall(self, plan: SettlementPlan) -> int:
        """Base units the realm lacks to post this epoch (0 once posted or funded enough)."""
        if self._posted_root(plan.realm, plan.epoch) is not None:
            return 0
        funded, allocated, _ = self.settlement.functions.realmBudget(realm_id(plan.realm)).call()
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
        steps = self.steps(plan)
        self._check_funds(plan)
        self._keep_plan(plan)
        submitted_key = self._record_key("submitted", realm, epoch)
        post_key = next(s.request.work_key for s in steps if s.name == "post")

        def on_stage(stage: str, row: JournaledTx) -> None:
            if stage == "sent" and row.work_key == post_key and row.kind == "work":
                self._record_once(submitted_key, self._submitted(plan, row.tx_hash))

        outcomes: list[Outcome] = []
        previous = self.submitter.observer
        self.submitter.observer = _chain(previous, on_stage)
        try:
            for i, step in enumerate(steps):
                log.info("%s %s epoch %d: %s", step.name, realm, epoch, step.request.work_key)
                if self.on_step is not None:
                    self.on_step(realm, epoch, step.name, i, len(steps))
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
            if not per_account(self.source.payouts(r, e)):
                continue  # nothing to pay (as `_claimable_before` skips it)
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

    def _keep_plan(self, plan: SettlementPlan) -> None:
        """Keep the rule before anything is signed: a rerun (new gas limit, new push rule) rebuilds
        the root this run journals transactions for."""
        key = self._record_key("plan", plan.realm, plan.epoch)
        journal = self.journal
        if journal is not None and journal.record_detail(key) is None:
            detail = {
                "push_min_amount": plan.rule.push_min_amount,
                "batch_max_entries": plan.rule.batch_max_entries,
                "root": plan.root_hex,
            }
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

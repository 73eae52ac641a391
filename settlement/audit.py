"""The chain side of `meshledger audit --chain-rpc`: every settled epoch's root, total and push
batches on `EpochSettlement` against what the replayed log computes, and what payees received.

The plan of an epoch is the settlement job's own (`SettlementJob.candidates`: the push rule the
job kept in its journal, else the configured one; claimable amounts continuing the earlier
epochs as posted), never re-derived here. Every difference becomes one line of `differences`.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from eth_utils import to_checksum_address
from web3 import Web3

from domain.events import Event
from settlement.contracts import load_artifact
from settlement.job import JobConfig, JobError, PayoutSource, SettlementJob, SettlementPlan
from settlement.journal import Journal
from settlement.merkle import realm_id

log = logging.getLogger(__name__)


class ReplayedLedger(PayoutSource, Protocol):
    """A replayed ledger (ledger.audit.ReplayedPayouts): payouts, realms, and the epochs its log
    records as settled."""

    def realms(self) -> list[str]: ...

    def settled(self, chain_id: int, contract: str) -> list[tuple[str, int]]: ...


@dataclass(frozen=True)
class SettledEpoch:
    """An epoch whose chain record equals what the log computes."""

    realm: str
    epoch: int
    root: str
    total: int
    batches: int
    pushed: int
    claim_leaves: int


@dataclass
class ChainAudit:
    chain_id: int
    contract: str
    epochs: list[SettledEpoch] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    #: payouts of the epochs settled on chain, as the log computes them
    ledger_total: int = 0
    #: pushed plus claimed on chain (`realmBudget.paid`), over the ledger's realms
    paid_onchain: int = 0
    #: payees whose received amounts were compared
    payees: int = 0

    @property
    def matches(self) -> bool:
        return not self.differences


class _NoRecorder:
    def record(self, event: Event) -> None:
        raise JobError("an audit records nothing")


def audit_chain(
    w3: Web3,
    config: JobConfig,
    source: PayoutSource,
    realms: Iterable[str],
    logged_settled: Iterable[tuple[str, int]] = (),
    journal: Journal | None = None,
) -> ChainAudit:
    """Compare the chain with the replayed ledger (`source`): for every epoch posted on chain
    or recorded as settled in the log, the root, total and push batches must be what the job's
    plan of the log's payouts gives, and every payee must have received exactly its pushed
    amounts plus what it claimed."""
    job = SettlementJob(w3, source, _NoRecorder(), config, journal=journal)
    report = ChainAudit(config.chain_id, job.settlement.address)
    try:
        job.preflight()
    except JobError as err:
        report.differences.append(f"deployment: {err}")
        return report
    names = {"0x" + realm_id(r).hex(): r for r in realms}
    due = set(source.due_epochs(None))
    logged = set(logged_settled)
    posted = _posted_epochs(job, names)
    for realm, epoch in sorted(posted - due):
        report.differences.append(
            f"realm {realm} epoch {epoch}: posted on chain, but the log has no payouts for it"
        )
    expected: dict[str, int] = defaultdict(int)
    for realm, epoch in sorted(due | logged, key=lambda k: (k[0], k[1])):
        if (realm, epoch) not in posted:
            if (realm, epoch) in logged:
                report.differences.append(
                    f"realm {realm} epoch {epoch}: the log records it settled, the chain has no root"
                )
            continue
        plan = _check_epoch(job, realm, epoch, report)
        if plan is None:
            continue
        report.ledger_total += plan.plan.total
        for i, batch in enumerate(plan.plan.batches):
            if job.settlement.functions.isBatchPushed(realm_id(realm), epoch, i).call():
                for account, amount in batch:
                    expected[to_checksum_address(account)] += amount
    _check_claims(job, names, expected, report)
    known = {
        str(to_checksum_address(p.account)) for key in due for p in source.payouts(*key) if p.amount
    }
    _check_received(job, expected, known, report)
    for realm in names.values():
        _, _, paid = job.settlement.functions.realmBudget(realm_id(realm)).call()
        report.paid_onchain += int(paid)
    return report


def _posted_epochs(job: SettlementJob, names: dict[str, str]) -> set[tuple[str, int]]:
    """(realm, epoch) of every EpochPosted of the ledger's realms on the contract."""
    logs = job.settlement.events.EpochPosted().get_logs(from_block=0)
    out = set()
    for log in logs:
        realm = names.get("0x" + bytes(log["args"]["realm"]).hex())
        if realm is not None:
            out.add((realm, int(log["args"]["epoch"])))
    return out


def _check_epoch(
    job: SettlementJob, realm: str, epoch: int, report: ChainAudit
) -> SettlementPlan | None:
    """The job's plan of the epoch when the chain's record equals it; else the differences."""
    where = f"realm {realm} epoch {epoch}"
    try:
        candidates = job.candidates(realm, epoch)
    except JobError as err:
        report.differences.append(f"{where}: the log's payouts cannot be planned: {err}")
        return None
    fn = job.settlement.functions
    root, total, pushed = fn.epochRecord(realm_id(realm), epoch).call()
    root, total, pushed = bytes(root), int(total), int(pushed)
    plan = next((p for p in candidates if p.tree.root == root), None)
    if plan is None:
        best = candidates[0]
        report.differences.append(
            f"{where}: root on chain 0x{root.hex()}, the log computes {best.root_hex} "
            f"(push >= {best.rule.push_min_amount}, batches <= {best.rule.batch_max_entries})"
        )
        if total != best.plan.total:
            report.differences.append(
                f"{where}: total on chain {total}, the log computes {best.plan.total}"
            )
        return None
    before = len(report.differences)
    if total != plan.plan.total:
        report.differences.append(
            f"{where}: total on chain {total}, the log computes {plan.plan.total}"
        )
    batches = plan.plan.batches
    events = {
        int(log["args"]["batchIdx"]): log["args"]
        for log in job.settlement.events.BatchPushed().get_logs(
            from_block=0, argument_filters={"realm": realm_id(realm), "epoch": epoch}
        )
    }
    for i, batch in enumerate(batches):
        amount = sum(a for _, a in batch)
        if not fn.isBatchPushed(realm_id(realm), epoch, i).call():
            report.differences.append(
                f"{where}: push batch {i} ({len(batch)} payees, {amount}) is not pushed on chain"
            )
            continue
        logged = events.get(i)
        if logged is None or (int(logged["entries"]), int(logged["amount"])) != (
            len(batch),
            amount,
        ):
            seen = (
                "no BatchPushed log"
                if logged is None
                else (f"{int(logged['entries'])} payees, {int(logged['amount'])}")
            )
            report.differences.append(
                f"{where}: push batch {i} on chain: {seen}; the log computes {len(batch)} payees, "
                f"{amount}"
            )
    for extra in sorted(set(events) - set(range(len(batches)))):
        report.differences.append(
            f"{where}: push batch {extra} was pushed on chain; the log computes {len(batches)} batches"
        )
    pushed_expected = sum(
        sum(a for _, a in b)
        for i, b in enumerate(batches)
        if fn.isBatchPushed(realm_id(realm), epoch, i).call()
    )
    if pushed != pushed_expected:
        report.differences.append(
            f"{where}: pushed on chain {pushed}, its pushed batches of the log add up to "
            f"{pushed_expected}"
        )
    if len(report.differences) == before:
        report.epochs.append(
            SettledEpoch(
                realm,
                epoch,
                plan.root_hex,
                plan.plan.total,
                len(batches),
                pushed,
                len(plan.plan.claims),
            )
        )
    return plan


def _check_claims(
    job: SettlementJob, names: dict[str, str], expected: dict[str, int], report: ChainAudit
) -> None:
    """Claims on chain count as received; a claim above what the log made claimable differs."""
    for log in job.settlement.events.Claimed().get_logs(from_block=0):
        args = log["args"]
        realm = names.get("0x" + bytes(args["realm"]).hex())
        if realm is None:
            continue
        account = to_checksum_address(args["account"])
        expected[account] += int(args["amount"])
        try:
            plans = job.candidates(realm, int(args["epoch"]))
        except JobError as err:
            report.differences.append(f"claim of {account} in {realm}: not verifiable: {err}")
            continue
        posted = job.posted_root(realm, int(args["epoch"]))
        plan = next((p for p in plans if p.tree.root == posted), None)
        allowed = plan.plan.claimable_after.get(account, 0) if plan is not None else 0
        if int(args["cumulative"]) > allowed:
            report.differences.append(
                f"claim of {account} in {realm} epoch {int(args['epoch'])}: cumulative "
                f"{int(args['cumulative'])} on chain, the log made {allowed} claimable"
            )


def _check_received(
    job: SettlementJob, expected: dict[str, int], known: set[str], report: ChainAudit
) -> None:
    """What each of the ledger's payees received from the contract (token transfers) equals its
    pushed payouts plus its claims (accounts only other ledgers on the contract pay are theirs)."""
    token = job.w3.eth.contract(address=job.token.address, abi=load_artifact("WMPToken")["abi"])
    received: dict[str, int] = defaultdict(int)
    for log in token.events.Transfer().get_logs(
        from_block=0, argument_filters={"from": job.settlement.address}
    ):
        received[to_checksum_address(log["args"]["to"])] += int(log["args"]["value"])
    accounts = sorted(set(expected) | (set(received) & known))
    report.payees = len(accounts)
    for account in accounts:
        if received.get(account, 0) != expected.get(account, 0):
            report.differences.append(
                f"payee {account}: received {received.get(account, 0)} from the contract, the "
                f"log's settled payouts (pushed) and its claims make {expected.get(account, 0)}"
            )


def chain_check(
    rpc_url: str,
    contract: str,
    open_ledger: Callable[[Any], ReplayedLedger],
    journal_path: Path | None = None,
    push_min_amount: int = 1,
    batch_max_entries: int = 200,
) -> Callable[[Any], ChainAudit]:
    """A check of a replayed ledger (`open_ledger(connection)`) against the chain at `rpc_url`:
    the chain id comes from the node, the push rule of each epoch from the settlement job's
    journal when it has one (opened read-only), else `push_min_amount` / `batch_max_entries`
    (settle's options)."""

    def check(con: Any) -> ChainAudit:
        w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
        config = JobConfig(
            chain_id=int(w3.eth.chain_id),
            contract=to_checksum_address(contract),
            push_min_amount=push_min_amount,
            batch_max_entries=batch_max_entries,
        )
        journal = None
        if journal_path is not None and journal_path.exists():
            try:
                journal = Journal(journal_path, read_only=True)
            except sqlite3.Error as err:
                log.warning(
                    "settlement journal %s unreadable (%s): configured rule only", journal_path, err
                )
        ledger = open_ledger(con)
        try:
            return audit_chain(
                w3,
                config,
                ledger,
                ledger.realms(),
                ledger.settled(config.chain_id, config.contract),
                journal,
            )
        finally:
            if journal is not None:
                journal.close()

    return check

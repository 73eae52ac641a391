"""Contract invariants under fuzzing: hypothesis-driven sequences of funds, posts, pushes and claims
(repeated, duplicated, forged, from the wrong poster) against the real EpochSettlement on anvil.

After every step: paid <= allocated <= funded for every realm, exactly as the model counts them;
the contract holds what was funded and not paid; no account holds more than its cumulative
entitlement; a posted root never changes. At the end of every run all honest pushes and claims
are made and everybody holds exactly its entitlement. Each run starts from an `evm_snapshot` of
the deployment, so runs are cheap and independent. `make test` runs a short seeded campaign;
`make fault` a longer one (MESHLEDGER_CONTRACT_FUZZ_EXAMPLES, MESHLEDGER_CONTRACT_FUZZ_STEPS).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from eth_abi import decode, encode
from eth_account import Account
from eth_hash.auto import keccak
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from web3 import Web3
from web3.exceptions import ContractLogicError

from infra.anvil import Anvil, start_anvil
from settlement.contracts import Stack, deploy_stack, revert_reason, transact
from settlement.merkle import MAX_PUSH_AMOUNT, PayoutTree, plan_epoch, realm_id, unpack_entry

pytestmark = pytest.mark.integration

CHAIN_ID = 42161
EXAMPLES = int(os.environ.get("MESHLEDGER_CONTRACT_FUZZ_EXAMPLES", "30"))
STEPS = int(os.environ.get("MESHLEDGER_CONTRACT_FUZZ_STEPS", "15"))
REALMS = (realm_id("fuzz-a"), realm_id("fuzz-b"))
PAYEES = tuple(str(Account.create().address) for _ in range(4))
MINTED = 2**100

amounts = st.one_of(st.integers(1, 10_000), st.integers(1, 2**80))
#: successful operations over the whole campaign: the test fails if a kind never ran
DONE: Counter[str] = Counter()

#: nothing, a little (epochs outgrow it), or plenty
fundings = st.one_of(st.just(0), st.integers(1, 50_000), st.integers(2**82, 2**84))
payouts = st.dictionaries(st.sampled_from(range(len(PAYEES))), amounts, min_size=1, max_size=4)


@dataclass
class Chain:
    """The deployment every run starts from, and the snapshot that restores it."""

    w3: Web3
    stack: Stack
    poster: str
    stranger: str  # neither owner nor poster
    caller: str  # sends pushes and claims (anyone may)
    snapshot: str = ""

    def call(self, method: str, *params: Any) -> Any:
        response = self.w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
        assert "error" not in response, response
        return response["result"]

    # raw JSON-RPC: web3's contract layer costs ~5 ms a call, this ~0.7 ms (thousands per run)

    def view(self, to: str, signature: str, args: list[Any], returns: list[str]) -> Any:
        arg_types = signature[signature.index("(") + 1 : -1].split(",")
        data = keccak(signature.encode())[:4] + encode(arg_types, args)
        result = self.call("eth_call", {"to": to, "data": "0x" + data.hex()}, "latest")
        return decode(returns, bytes.fromhex(result[2:]))

    def send(self, call: Any, sender: str) -> None:
        """Send from an unlocked account (anvil mines it at once); fail unless it succeeded."""
        tx = {"from": sender, "to": call.address, "data": call._encode_transaction_data()}
        tx_hash = self.call("eth_sendTransaction", {**tx, "gas": hex(5_000_000)})
        deadline = time.monotonic() + 30
        while (receipt := self.call("eth_getTransactionReceipt", tx_hash)) is None:
            assert time.monotonic() < deadline, f"{tx_hash} not mined"
            time.sleep(0.002)
        assert int(receipt["status"], 16) == 1, receipt

    def reset(self) -> None:
        if self.snapshot:
            assert self.call("evm_revert", self.snapshot) is True
        self.snapshot = self.call("evm_snapshot")


@pytest.fixture(scope="module")
def chain() -> Iterator[Chain]:
    node: Anvil = start_anvil(chain_id=CHAIN_ID)  # its own: runs revert the whole chain
    try:
        w3 = Web3(Web3.HTTPProvider(node.url))
        owner, poster, stranger, caller = (Web3.to_checksum_address(a) for a in w3.eth.accounts[:4])
        stack = deploy_stack(w3, owner)
        transact(w3, stack.settlement.functions.setPoster(poster, True), owner)
        transact(w3, stack.token.functions.mint(owner, MINTED), owner)
        transact(w3, stack.token.functions.approve(stack.settlement.address, MINTED), owner)
        yield Chain(w3, stack, poster, stranger, caller)
    finally:
        node.stop()


@dataclass
class Posted:
    tree: PayoutTree
    total: int


@dataclass
class RealmModel:
    funded: int = 0
    allocated: int = 0
    paid: int = 0
    epochs: list[Posted] = field(default_factory=list)
    claimable: dict[str, int] = field(default_factory=dict)  # as the settlement job plans it
    claimed: dict[str, int] = field(default_factory=dict)
    pushed: set[tuple[int, int]] = field(default_factory=set)


class SettlementMachine(RuleBasedStateMachine):
    chain: Chain  # set by the test before the machine runs

    def __init__(self) -> None:
        super().__init__()
        self.chain.reset()
        self.realms = [RealmModel() for _ in REALMS]
        self.entitled: dict[str, int] = dict.fromkeys(PAYEES, 0)
        self.received: dict[str, int] = dict.fromkeys(PAYEES, 0)

    @property
    def settlement(self) -> Any:
        return self.chain.stack.settlement.functions

    def send(self, call: Any, sender: str) -> None:
        self.chain.send(call, sender)

    def budget(self, r: int) -> tuple[int, int, int]:
        settlement = self.chain.stack.settlement.address
        return tuple(
            self.chain.view(settlement, "realmBudget(bytes32)", [REALMS[r]], ["uint256"] * 3)
        )

    def balance(self, account: str) -> int:
        token = self.chain.stack.token.address
        return int(self.chain.view(token, "balanceOf(address)", [account], ["uint256"])[0])

    def refusal(self, call: Any, sender: str) -> str:
        """The custom error `call` reverts with ("" if it would succeed)."""
        try:
            call.call({"from": sender})
        except ContractLogicError as err:
            data = err.data if isinstance(err.data, str) else None
            return revert_reason("EpochSettlement", data) or str(err)
        return ""

    def pay(self, realm: RealmModel, account: str, amount: int) -> None:
        realm.paid += amount
        self.received[account] += amount

    # -- rules ---------------------------------------------------------------------------------

    @initialize(budgets=st.lists(fundings, min_size=len(REALMS), max_size=len(REALMS)))
    def fund_realms(self, budgets: list[int]) -> None:
        for r, amount in enumerate(budgets):
            if amount:
                self.fund(r, amount)

    @rule(r=st.sampled_from(range(len(REALMS))), amount=fundings.filter(bool))
    def fund(self, r: int, amount: int) -> None:
        self.send(self.settlement.fund(REALMS[r], amount), self.chain.stack.deployer)
        self.realms[r].funded += amount

    @rule(
        r=st.sampled_from(range(len(REALMS))),
        amounts=payouts,
        push=st.sets(st.sampled_from(range(len(PAYEES)))),
        batch=st.integers(1, 3),
        by_stranger=st.sampled_from([False] * 4 + [True]),
    )
    def post_next_epoch(
        self, r: int, amounts: dict[int, int], push: set[int], batch: int, by_stranger: bool
    ) -> None:
        realm = self.realms[r]
        epoch = len(realm.epochs)
        by_account = {PAYEES[i]: v for i, v in amounts.items()}
        pushed = {PAYEES[i] for i in push}
        plan = plan_epoch(by_account, realm.claimable, pushed, batch)
        tree = PayoutTree.from_plan(
            CHAIN_ID, self.chain.stack.settlement.address, REALMS[r], epoch, plan
        )
        call = self.settlement.postEpoch(REALMS[r], epoch, tree.root, plan.total)
        if by_stranger:
            assert self.refusal(call, self.chain.stranger) == f"NotPoster({self.chain.stranger})"
            return
        if plan.total > realm.funded - realm.allocated:
            assert self.refusal(call, self.chain.poster).startswith("InsufficientFunding(")
            return
        self.send(call, self.chain.poster)
        realm.allocated += plan.total
        realm.claimable = plan.claimable_after
        realm.epochs.append(Posted(tree, plan.total))
        DONE["post"] += 1
        for account, amount in by_account.items():
            self.entitled[account] += amount

    @precondition(lambda self: any(r.epochs for r in self.realms))
    @rule(data=st.data(), same=st.booleans())
    def repost(self, data: st.DataObject, same: bool) -> None:
        r, e = self.pick_epoch(data)
        posted = self.realms[r].epochs[e]
        root = posted.tree.root if same else keccak(posted.tree.root)  # any other root
        call = self.settlement.postEpoch(REALMS[r], e, root, posted.total)
        if same:  # a retried post is a no-op
            assert call.call({"from": self.chain.poster}) is False
            self.send(call, self.chain.poster)
        else:
            assert self.refusal(call, self.chain.poster).startswith("RootMismatch(")

    @precondition(lambda self: any(p.tree.batches for r in self.realms for p in r.epochs))
    @rule(data=st.data(), tamper=st.booleans())
    def push(self, data: st.DataObject, tamper: bool) -> None:
        choices = [
            (r, e, b)
            for r, realm in enumerate(self.realms)
            for e, p in enumerate(realm.epochs)
            for b in range(len(p.tree.batches))
        ]
        r, e, b = data.draw(st.sampled_from(choices))
        realm, tree = self.realms[r], self.realms[r].epochs[e].tree
        packed = tree.packed_batch(b)
        if tamper:  # one entry pays one unit more than committed
            word = int.from_bytes(packed[0], "big") + 1
            if word & MAX_PUSH_AMOUNT == 0:
                return
            packed = [word.to_bytes(32, "big"), *packed[1:]]
        call = self.settlement.pushBatch(REALMS[r], e, b, packed, tree.batch_proof(b))
        if (e, b) in realm.pushed:  # already paid: a no-op whatever the entries say
            assert call.call({"from": self.chain.caller}) is False
            return
        if tamper:
            assert self.refusal(call, self.chain.caller).startswith("InvalidProof(")
            DONE["forged push refused"] += 1
            return
        self.send(call, self.chain.caller)
        realm.pushed.add((e, b))
        for entry in tree.packed_batch(b):
            account, amount = unpack_entry(entry)
            self.pay(realm, account, amount)
        DONE["push"] += 1

    @precondition(lambda self: any(p.tree.claims for r in self.realms for p in r.epochs))
    @rule(data=st.data(), forge=st.sampled_from(["honest", "inflated", "other account"]))
    def claim(self, data: st.DataObject, forge: str) -> None:
        choices = [
            (r, e, a)
            for r, realm in enumerate(self.realms)
            for e, p in enumerate(realm.epochs)
            for a in p.tree.claims
        ]
        r, e, account = data.draw(st.sampled_from(choices))
        realm, tree = self.realms[r], self.realms[r].epochs[e].tree
        cumulative = tree.claims[account]
        already = realm.claimed.get(account, 0)
        target = account
        if forge == "inflated":
            cumulative += data.draw(st.integers(1, 2**64))
        elif forge == "other account":
            target = next(a for a in PAYEES if a != account)
        call = self.settlement.claim(REALMS[r], e, target, cumulative, tree.claim_proof(account))
        if forge != "honest" or cumulative <= already:  # forged, or a stale or repeated claim
            refusal = self.refusal(call, self.chain.caller)
            expected = (
                ("NothingToClaim(",) if forge == "honest" else ("InvalidProof(", "NothingToClaim(")
            )
            assert refusal.startswith(expected), refusal
            DONE["claim refused"] += 1
            return
        self.send(call, self.chain.caller)
        realm.claimed[account] = cumulative
        self.pay(realm, account, cumulative - already)
        DONE["claim"] += 1

    def pick_epoch(self, data: st.DataObject) -> tuple[int, int]:
        choices = [(r, e) for r, realm in enumerate(self.realms) for e in range(len(realm.epochs))]
        return data.draw(st.sampled_from(choices))

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def budgets_hold(self) -> None:
        settlement = self.chain.stack.settlement.address
        for r, model in enumerate(self.realms):
            funded, allocated, paid = self.budget(r)
            assert paid <= allocated <= funded
            assert (funded, allocated, paid) == (model.funded, model.allocated, model.paid)
            for e, posted in enumerate(model.epochs):  # write-once roots
                root, total, pushed = self.chain.view(
                    settlement,
                    "epochRecord(bytes32,uint256)",
                    [REALMS[r], e],
                    ["bytes32", "uint256", "uint256"],
                )
                assert (root, total) == (posted.tree.root, posted.total)
                assert pushed <= total
        held = self.balance(settlement)
        assert held == sum(m.funded - m.paid for m in self.realms)

    @invariant()
    def nobody_beyond_entitlement(self) -> None:
        for account in PAYEES:
            assert self.balance(account) == self.received[account] <= self.entitled[account]

    def teardown(self) -> None:
        """Every honest push and claim still due pays, and then everybody holds its entitlement."""
        for r, realm in enumerate(self.realms):
            for e, posted in enumerate(realm.epochs):
                for b in range(len(posted.tree.batches)):
                    if (e, b) not in realm.pushed:
                        call = self.settlement.pushBatch(
                            REALMS[r], e, b, posted.tree.packed_batch(b), posted.tree.batch_proof(b)
                        )
                        self.send(call, self.chain.caller)
            latest = {a: (e, p.tree) for e, p in enumerate(realm.epochs) for a in p.tree.claims}
            for account, (e, tree) in latest.items():
                if realm.claimed.get(account, 0) < tree.claims[account]:
                    call = self.settlement.claim(
                        REALMS[r], e, account, tree.claims[account], tree.claim_proof(account)
                    )
                    self.send(call, self.chain.caller)
        for account in PAYEES:
            assert self.balance(account) == self.entitled[account]
        for r in range(len(REALMS)):
            _, allocated, paid = self.budget(r)
            assert paid == allocated


def test_settlement_invariants_hold_under_any_sequence(chain: Chain) -> None:
    SettlementMachine.chain = chain
    DONE.clear()
    run_state_machine_as_test(
        SettlementMachine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            derandomize=EXAMPLES <= 50,  # the short run in `make test` is the same every time
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    kinds = ("post", "push", "claim", "forged push refused", "claim refused")
    assert all(DONE[k] for k in kinds), dict(DONE)

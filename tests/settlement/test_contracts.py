"""Settlement contracts on a real anvil (chain id 42161): every external function's success and
revert paths, with the committed artifacts and Python-built Merkle proofs."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from eth_abi import decode
from eth_account import Account
from eth_account.messages import SignableMessage, _hash_eip191_message, encode_typed_data
from eth_hash.auto import keccak
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError
from web3.logs import DISCARD
from web3.types import RPCEndpoint

from domain.cheque import Cheque
from infra.anvil import DEV_MNEMONIC, Anvil
from settlement.contracts import Stack, deploy, deploy_stack, load_artifact, transact
from settlement.merkle import PayoutTree, pack_entry, plan_epoch, realm_id

pytestmark = pytest.mark.integration

UNSTAKE_DELAY_S = 3600
REALM_NAME = "com.example.realm"
REALM = realm_id(REALM_NAME)
#: RealmStaking.RealmParams in field order: rfrBps, stakePerMpb, epochBlocks, fundingPeriodBlocks,
#: weightRouterBps, weightServiceBps, weightVendorBps, pricePerMessage, usdPricePerMessage,
#: priceFeed
NO_FEED = "0x" + "00" * 20
PARAMS = (200, 10**18, 100, 100, 5000, 3000, 2000, 10**12, 0, NO_FEED)
FEED = "0x" + "fe" * 20
ARTIFACTS = ("WMPToken", "RealmStaking", "Chequebook", "EpochSettlement", "PlainERC20")

Account.enable_unaudited_hdwallet_features()
DEV_KEYS = [
    Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}") for i in range(10)
]


def _error_table() -> dict[bytes, tuple[str, list[str]]]:
    table: dict[bytes, tuple[str, list[str]]] = {}
    for name in ARTIFACTS:
        for item in load_artifact(name)["abi"]:
            if item["type"] == "error":
                types = [i["type"] for i in item["inputs"]]
                table[keccak(f"{item['name']}({','.join(types)})".encode())[:4]] = (
                    item["name"],
                    types,
                )
    return table


ERRORS = _error_table()


def reverts(call: Any, sender: str) -> tuple[str, tuple[Any, ...]]:
    """The custom error (name, args) that `call` reverts with when sent by `sender`."""
    try:
        call.call({"from": sender})
    except ContractCustomError as exc:
        data = bytes.fromhex(str(exc.data).removeprefix("0x"))
        name, types = ERRORS[data[:4]]
        values = decode(types, data[4:])
        return name, tuple(
            Web3.to_checksum_address(v) if t == "address" else v
            for t, v in zip(types, values, strict=True)
        )
    raise AssertionError("call did not revert")


def _hash_typed(message: SignableMessage) -> bytes:
    return bytes(_hash_eip191_message(message))


def events(contract: Contract, name: str, receipt: Any) -> list[Any]:
    return [e["args"] for e in contract.events[name]().process_receipt(receipt, errors=DISCARD)]


@pytest.fixture(scope="module")
def w3(anvil_l2: Anvil) -> Web3:
    return Web3(Web3.HTTPProvider(anvil_l2.url))


@pytest.fixture
def accounts(w3: Web3) -> list[str]:
    return [Web3.to_checksum_address(a) for a in w3.eth.accounts]


@pytest.fixture
def stack(w3: Web3, accounts: list[str]) -> Iterator[Stack]:
    """A fresh stack; the deployer holds 10**24 and approved staking and settlement."""
    deployed = deploy_stack(w3, accounts[0], unstake_delay_seconds=UNSTAKE_DELAY_S)
    transact(w3, deployed.token.functions.mint(accounts[0], 10**24), accounts[0])
    for spender in (deployed.staking, deployed.settlement, deployed.chequebook):
        transact(w3, deployed.token.functions.approve(spender.address, 2**256 - 1), accounts[0])
    yield deployed


def balance(stack: Stack, account: str) -> int:
    return int(stack.token.functions.balanceOf(account).call())


# ---------------------------------------------------------------- WMPToken


def test_token_mint_is_owner_only(w3: Web3, stack: Stack, accounts: list[str]) -> None:
    transact(w3, stack.token.functions.mint(accounts[3], 5), accounts[0])
    assert balance(stack, accounts[3]) == 5
    assert reverts(stack.token.functions.mint(accounts[3], 5), accounts[3]) == (
        "OwnableUnauthorizedAccount",
        (accounts[3],),
    )


def test_transfer_batch_debits_once_and_emits_a_transfer_per_entry(
    w3: Web3, stack: Stack, accounts: list[str]
) -> None:
    before = balance(stack, accounts[0])
    entries = [(accounts[1], 7), (accounts[2], 11), (accounts[0], 3)]
    receipt = transact(
        w3, stack.token.functions.transferBatch([pack_entry(a, v) for a, v in entries]), accounts[0]
    )
    assert balance(stack, accounts[0]) == before - 18
    assert [(t["to"], t["value"]) for t in events(stack.token, "Transfer", receipt)] == entries
    interface_id = keccak(b"transferBatch(bytes32[])")[:4]
    assert stack.token.functions.supportsInterface(interface_id).call()
    assert stack.settlement.functions.tokenBatchTransfer().call()


def test_transfer_batch_reverts_on_zero_receiver_or_short_balance(
    stack: Stack, accounts: list[str]
) -> None:
    zero_entry = (5).to_bytes(32, "big")  # address(0), amount 5
    assert reverts(stack.token.functions.transferBatch([zero_entry]), accounts[0]) == (
        "ERC20InvalidReceiver",
        ("0x" + "00" * 20,),
    )
    call = stack.token.functions.transferBatch([pack_entry(accounts[1], 10)])
    assert reverts(call, accounts[4]) == ("ERC20InsufficientBalance", (accounts[4], 0, 10))


# ---------------------------------------------------------------- RealmStaking

ROUTER_OPERATOR = 1


def register(w3: Web3, staking: Contract, keeper: str, sender: str) -> Any:
    return transact(w3, staking.functions.registerRealm(REALM_NAME, keeper, PARAMS), sender)


def test_register_realm_by_name_and_hand_over_keeper(
    w3: Web3, stack: Stack, accounts: list[str]
) -> None:
    staking = stack.staking
    receipt = register(w3, staking, accounts[1], accounts[5])
    registered = events(staking, "RealmRegistered", receipt)[0]
    assert (registered["realm"], registered["keeper"], registered["name"]) == (
        REALM,
        accounts[1],
        REALM_NAME,
    )
    assert tuple(registered["params"].values()) == PARAMS
    assert tuple(staking.functions.paramsOf(REALM).call()) == PARAMS
    call = staking.functions.registerRealm(REALM_NAME, accounts[2], PARAMS)
    assert reverts(call, accounts[2]) == ("RealmAlreadyRegistered", (REALM, accounts[1]))
    zero_keeper = staking.functions.registerRealm("other", "0x" + "00" * 20, PARAMS)
    assert reverts(zero_keeper, accounts[2])[0] == "ZeroAddress"
    # "" is the ledger's chain-wide partition, never a realm
    assert reverts(staking.functions.registerRealm("", accounts[2], PARAMS), accounts[2])[0] == (
        "EmptyName"
    )
    assert reverts(staking.functions.setKeeper(REALM, accounts[2]), accounts[2]) == (
        "NotKeeper",
        (REALM, accounts[2], accounts[1]),
    )
    transact(w3, staking.functions.setKeeper(REALM, accounts[2]), accounts[1])
    assert staking.functions.keeperOf(REALM).call() == accounts[2]


def test_keeper_sets_params_the_ledger_accepts(w3: Web3, stack: Stack, accounts: list[str]) -> None:
    staking = stack.staking
    keeper = accounts[1]
    register(w3, staking, keeper, keeper)
    changed = (300, 5, 50, 200, 6000, 2000, 2000, 7, 3 * 10**15, w3.to_checksum_address(FEED))
    assert reverts(staking.functions.setRealmParams(REALM, changed), accounts[2]) == (
        "NotKeeper",
        (REALM, accounts[2], keeper),
    )
    bad = {
        "WeightsNotWhole": ((300, 5, 50, 200, 6000, 2000, 1999, 7, 0, NO_FEED), (9999,)),
        "RateTooHigh": ((10_001, 5, 50, 200, 6000, 2000, 2000, 7, 0, NO_FEED), (10_001,)),
        "ZeroParameter": ((300, 0, 50, 200, 6000, 2000, 2000, 7, 0, NO_FEED), ("stakePerMpb",)),
    }
    for error, (params, args) in bad.items():
        assert reverts(staking.functions.setRealmParams(REALM, params), keeper) == (error, args)
    # a USD price without the feed that converts it
    no_feed = (300, 5, 50, 200, 6000, 2000, 2000, 7, 10**15, NO_FEED)
    assert reverts(staking.functions.setRealmParams(REALM, no_feed), keeper) == (
        "ZeroParameter",
        ("priceFeed",),
    )
    receipt = transact(w3, staking.functions.setRealmParams(REALM, changed), keeper)
    assert tuple(events(staking, "RealmParamsSet", receipt)[0]["params"].values()) == changed
    assert tuple(staking.functions.paramsOf(REALM).call()) == changed


def test_keeper_enables_an_api_once(w3: Web3, stack: Stack, accounts: list[str]) -> None:
    staking = stack.staking
    keeper, vendor = accounts[1], accounts[7]
    register(w3, staking, keeper, keeper)
    enable = staking.functions.enableApi(REALM, "com.example.api", vendor)
    assert reverts(enable, vendor) == ("NotKeeper", (REALM, vendor, keeper))
    assert reverts(staking.functions.enableApi(REALM, "", vendor), keeper)[0] == "EmptyPrefix"
    receipt = transact(w3, enable, keeper)
    enabled = events(staking, "ApiEnabled", receipt)[0]
    assert (enabled["prefix"], enabled["vendor"]) == ("com.example.api", vendor)
    assert staking.functions.apiVendor(REALM, keccak(b"com.example.api")).call() == vendor
    again = staking.functions.enableApi(REALM, "com.example.api", accounts[8])
    assert reverts(again, keeper) == ("ApiAlreadyEnabled", (REALM, "com.example.api", vendor))


def test_stake_requires_a_registered_realm_and_an_amount(
    w3: Web3, stack: Stack, accounts: list[str]
) -> None:
    staking = stack.staking
    call = staking.functions.stake(REALM, ROUTER_OPERATOR, accounts[3], 100)
    assert reverts(call, accounts[0]) == ("UnknownRealm", (REALM,))
    register(w3, staking, accounts[1], accounts[1])
    assert reverts(staking.functions.stake(REALM, ROUTER_OPERATOR, accounts[3], 0), accounts[0])[
        0
    ] == ("ZeroAmount")
    receipt = transact(w3, call, accounts[0])
    staked = events(staking, "Staked", receipt)[0]
    assert (staked["amount"], staked["staked"]) == (100, 100)
    receipt = transact(w3, call, accounts[0])
    staked = events(staking, "Staked", receipt)[0]
    assert (staked["amount"], staked["staked"]) == (100, 200)
    position = staking.functions.positionOf(REALM, accounts[0], ROUTER_OPERATOR, accounts[3]).call()
    assert position == [200, 0, 0]
    assert balance(stack, staking.address) == 200


def test_unstake_waits_for_the_delay(w3: Web3, stack: Stack, accounts: list[str]) -> None:
    staking = stack.staking
    target = "0x" + "00" * 20  # staked on the realm itself
    register(w3, staking, accounts[1], accounts[1])
    transact(w3, staking.functions.stake(REALM, 0, target, 1000), accounts[0])
    assert reverts(staking.functions.requestUnstake(REALM, 0, target, 1001), accounts[0]) == (
        "InsufficientStake",
        (1001, 1000),
    )
    assert reverts(staking.functions.withdraw(REALM, 0, target), accounts[0])[0] == (
        "NothingToWithdraw"
    )
    receipt = transact(w3, staking.functions.requestUnstake(REALM, 0, target, 400), accounts[0])
    requested = events(staking, "UnstakeRequested", receipt)[0]
    assert (requested["amount"], requested["staked"]) == (400, 600)
    unlock_at = requested["unlockAt"]
    assert unlock_at == w3.eth.get_block(receipt["blockNumber"])["timestamp"] + UNSTAKE_DELAY_S
    name, args = reverts(staking.functions.withdraw(REALM, 0, target), accounts[0])
    assert name == "StillLocked" and args[0] == unlock_at
    w3.provider.make_request(RPCEndpoint("evm_increaseTime"), [UNSTAKE_DELAY_S])
    w3.provider.make_request(RPCEndpoint("evm_mine"), [])
    before = balance(stack, accounts[0])
    receipt = transact(w3, staking.functions.withdraw(REALM, 0, target), accounts[0])
    withdrawn = events(staking, "Withdrawn", receipt)[0]
    assert (withdrawn["amount"], withdrawn["staked"]) == (400, 600)
    assert balance(stack, accounts[0]) == before + 400
    assert staking.functions.positionOf(REALM, accounts[0], 0, target).call()[:2] == [600, 0]


def test_only_the_keeper_slashes_staked_then_unstaking(
    w3: Web3, stack: Stack, accounts: list[str]
) -> None:
    staking = stack.staking
    keeper, staker, treasury, operator = accounts[1], accounts[0], accounts[6], accounts[3]
    register(w3, staking, keeper, keeper)
    transact(w3, staking.functions.stake(REALM, ROUTER_OPERATOR, operator, 1000), staker)
    transact(w3, staking.functions.requestUnstake(REALM, ROUTER_OPERATOR, operator, 300), staker)
    slash = staking.functions.slash(REALM, staker, ROUTER_OPERATOR, operator, 800, treasury)
    assert reverts(slash, staker) == ("NotKeeper", (REALM, staker, keeper))
    too_much = staking.functions.slash(REALM, staker, ROUTER_OPERATOR, operator, 1001, treasury)
    assert reverts(too_much, keeper) == ("InsufficientStake", (1001, 1000))
    receipt = transact(w3, slash, keeper)
    slashed = events(staking, "Slashed", receipt)[0]
    assert (slashed["amount"], slashed["staked"]) == (800, 0)
    assert balance(stack, treasury) == 800
    position = staking.functions.positionOf(REALM, staker, ROUTER_OPERATOR, operator).call()
    assert position[:2] == [0, 200]


# ---------------------------------------------------------------- Chequebook


def sign_cheque(chain_id: int, chequebook: str, beneficiary: str, cumulative: int) -> bytes:
    return Cheque(chain_id, chequebook, beneficiary, cumulative).sign(DEV_KEYS[0].key)


@pytest.fixture
def funded_chequebook(w3: Web3, stack: Stack, accounts: list[str]) -> Contract:
    receipt = transact(w3, stack.chequebook.functions.deposit(1000), accounts[0])
    assert events(stack.chequebook, "Deposited", receipt)[0]["amount"] == 1000
    return stack.chequebook


def test_cheque_pays_the_cumulative_difference(
    w3: Web3, stack: Stack, funded_chequebook: Contract, accounts: list[str], anvil_l2: Anvil
) -> None:
    book, payee = funded_chequebook, accounts[2]
    first = sign_cheque(anvil_l2.chain_id, book.address, payee, 300)
    receipt = transact(w3, book.functions.cashCheque(payee, 300, first), accounts[7])
    assert events(book, "ChequeCashed", receipt)[0]["paid"] == 300
    assert reverts(book.functions.cashCheque(payee, 300, first), accounts[7]) == (
        "NothingToCash",
        (payee, 300, 300),
    )
    second = sign_cheque(anvil_l2.chain_id, book.address, payee, 450)
    transact(w3, book.functions.cashCheque(payee, 450, second), payee)
    assert balance(stack, payee) == 450
    assert book.functions.paidOut(payee).call() == 450
    assert book.functions.totalPaidOut().call() == 450


def test_cheque_beyond_the_balance_bounces_and_pays_the_rest_later(
    w3: Web3, stack: Stack, funded_chequebook: Contract, accounts: list[str], anvil_l2: Anvil
) -> None:
    book, payee = funded_chequebook, accounts[2]
    cheque = sign_cheque(anvil_l2.chain_id, book.address, payee, 1500)
    receipt = transact(w3, book.functions.cashCheque(payee, 1500, cheque), payee)
    bounced = events(book, "ChequeBounced", receipt)
    assert [(b["due"], b["paid"]) for b in bounced] == [(1500, 1000)]
    assert book.functions.paidOut(payee).call() == 1000
    transact(w3, book.functions.deposit(2000), accounts[0])
    receipt = transact(w3, book.functions.cashCheque(payee, 1500, cheque), payee)
    assert events(book, "ChequeBounced", receipt) == []
    assert balance(stack, payee) == 1500


def test_cheque_is_bound_to_issuer_chain_and_chequebook(
    w3: Web3, stack: Stack, funded_chequebook: Contract, accounts: list[str], anvil_l2: Anvil
) -> None:
    book, payee = funded_chequebook, accounts[2]
    issuer = accounts[0]
    other_book = deploy(w3, "Chequebook", stack.token.address, issuer, sender=issuer)
    forged = Cheque(anvil_l2.chain_id, book.address, payee, 10).sign(DEV_KEYS[5].key)
    wrong_chain = sign_cheque(1, book.address, payee, 10)
    wrong_book = sign_cheque(anvil_l2.chain_id, other_book.address, payee, 10)
    for signature in (forged, wrong_chain, wrong_book):
        name, args = reverts(book.functions.cashCheque(payee, 10, signature), payee)
        assert name == "InvalidChequeSignature" and args[1] == issuer and args[0] != issuer
    good = sign_cheque(anvil_l2.chain_id, book.address, payee, 10)
    typed = encode_typed_data(
        full_message=Cheque(anvil_l2.chain_id, book.address, payee, 10).typed_data()
    )
    assert book.functions.chequeDigest(payee, 10).call() == _hash_typed(typed)
    transact(w3, book.functions.cashCheque(payee, 10, good), payee)
    assert balance(stack, payee) == 10


def test_cheque_batch_cashes_many_beneficiaries_or_none(
    w3: Web3, stack: Stack, funded_chequebook: Contract, accounts: list[str], anvil_l2: Anvil
) -> None:
    book = funded_chequebook
    batch = [
        (payee, amount, sign_cheque(anvil_l2.chain_id, book.address, payee, amount))
        for payee, amount in ((accounts[2], 100), (accounts[3], 200), (accounts[4], 50))
    ]
    bad = [*batch, (accounts[5], 70, sign_cheque(1, book.address, accounts[5], 70))]
    assert reverts(book.functions.cashChequeBatch(bad), accounts[9])[0] == "InvalidChequeSignature"
    receipt = transact(w3, book.functions.cashChequeBatch(batch), accounts[9])
    assert len(events(book, "ChequeCashed", receipt)) == 3
    assert [balance(stack, a) for a in accounts[2:5]] == [100, 200, 50]


def test_only_the_issuer_withdraws(
    w3: Web3, stack: Stack, funded_chequebook: Contract, accounts: list[str]
) -> None:
    book = funded_chequebook
    assert reverts(book.functions.withdraw(10), accounts[1]) == (
        "NotIssuer",
        (accounts[1], accounts[0]),
    )
    assert reverts(book.functions.withdraw(1001), accounts[0]) == (
        "InsufficientBalance",
        (1001, 1000),
    )
    assert reverts(book.functions.deposit(0), accounts[0]) == ("ZeroAmount", ())
    receipt = transact(w3, book.functions.withdraw(400), accounts[0])
    assert events(book, "Withdrawn", receipt)[0]["amount"] == 400
    assert balance(stack, book.address) == 600


# ---------------------------------------------------------------- EpochSettlement


def tree_for(
    stack: Stack,
    chain_id: int,
    epoch: int,
    claims: Sequence[tuple[str, int]] = (),
    batches: Sequence[Sequence[tuple[str, int]]] = (),
    realm: bytes = REALM,
) -> PayoutTree:
    return PayoutTree(chain_id, stack.settlement.address, realm, epoch, claims, batches)


def post(w3: Web3, stack: Stack, tree: PayoutTree, total: int) -> Any:
    call = stack.settlement.functions.postEpoch(tree.realm, tree.epoch, tree.root, total)
    return transact(w3, call, stack.deployer)


def claim_call(stack: Stack, tree: PayoutTree, account: str) -> Any:
    return stack.settlement.functions.claim(
        tree.realm, tree.epoch, account, tree.claims[account], tree.claim_proof(account)
    )


def push_call(stack: Stack, tree: PayoutTree, batch_idx: int) -> Any:
    return stack.settlement.functions.pushBatch(
        tree.realm, tree.epoch, batch_idx, tree.packed_batch(batch_idx), tree.batch_proof(batch_idx)
    )


def test_fund_and_posters(w3: Web3, stack: Stack, accounts: list[str], anvil_l2: Anvil) -> None:
    settlement = stack.settlement
    assert reverts(settlement.functions.fund(REALM, 0), accounts[0]) == ("ZeroAmount", ())
    receipt = transact(w3, settlement.functions.fund(REALM, 500), accounts[0])
    assert events(settlement, "Funded", receipt)[0]["amount"] == 500
    assert settlement.functions.realmBudget(REALM).call() == [500, 0, 0]
    tree = tree_for(stack, anvil_l2.chain_id, 1, claims=[(accounts[2], 10)])
    post_call = settlement.functions.postEpoch(REALM, 1, tree.root, 10)
    assert reverts(post_call, accounts[3]) == ("NotPoster", (accounts[3],))
    assert reverts(settlement.functions.setPoster(accounts[3], True), accounts[3])[0] == (
        "OwnableUnauthorizedAccount"
    )
    transact(w3, settlement.functions.setPoster(accounts[3], True), accounts[0])
    transact(w3, post_call, accounts[3])
    assert settlement.functions.epochRecord(REALM, 1).call() == [tree.root, 10, 0]


def test_post_epoch_is_write_once(
    w3: Web3, stack: Stack, accounts: list[str], anvil_l2: Anvil
) -> None:
    settlement = stack.settlement
    transact(w3, settlement.functions.fund(REALM, 100), accounts[0])
    tree = tree_for(stack, anvil_l2.chain_id, 3, claims=[(accounts[2], 60)])
    other = tree_for(stack, anvil_l2.chain_id, 3, claims=[(accounts[2], 61)])
    assert reverts(settlement.functions.postEpoch(REALM, 3, tree.root, 101), accounts[0]) == (
        "InsufficientFunding",
        (REALM, 101, 100),
    )
    assert reverts(settlement.functions.postEpoch(REALM, 3, b"\x00" * 32, 1), accounts[0]) == (
        "ZeroRoot",
        (),
    )
    receipt = post(w3, stack, tree, 60)
    assert len(events(settlement, "EpochPosted", receipt)) == 1
    assert (
        settlement.functions.postEpoch(REALM, 3, tree.root, 60).call({"from": accounts[0]}) is False
    )
    again = post(w3, stack, tree, 60)
    assert events(settlement, "EpochPosted", again) == []
    assert settlement.functions.realmBudget(REALM).call() == [100, 60, 0]
    assert reverts(settlement.functions.postEpoch(REALM, 3, other.root, 60), accounts[0]) == (
        "RootMismatch",
        (REALM, 3, tree.root, other.root),
    )
    assert reverts(settlement.functions.postEpoch(REALM, 3, tree.root, 59), accounts[0]) == (
        "TotalMismatch",
        (REALM, 3, 60, 59),
    )


def test_claims_are_cumulative_across_epochs(
    w3: Web3, stack: Stack, accounts: list[str], anvil_l2: Anvil
) -> None:
    settlement, alice, bob = stack.settlement, accounts[2], accounts[3]
    transact(w3, settlement.functions.fund(REALM, 10_000), accounts[0])
    chain = anvil_l2.chain_id
    e1 = tree_for(stack, chain, 1, claims=[(alice, 100), (bob, 40)])
    e2 = tree_for(stack, chain, 2, claims=[(alice, 250)])
    e3 = tree_for(stack, chain, 3, claims=[(alice, 300), (bob, 90)])
    post(w3, stack, e1, 140)
    assert reverts(claim_call(stack, e2, alice), bob) == ("EpochNotPosted", (REALM, 2))
    post(w3, stack, e2, 150)
    post(w3, stack, e3, 100)
    receipt = transact(w3, claim_call(stack, e1, alice), bob)  # anyone may submit
    assert events(settlement, "Claimed", receipt)[0]["amount"] == 100
    assert reverts(claim_call(stack, e1, alice), alice) == (
        "NothingToClaim",
        (REALM, alice, 100, 100),
    )
    transact(w3, claim_call(stack, e3, alice), alice)  # skips epoch 2: pays 250 + 50
    assert reverts(claim_call(stack, e2, alice), alice) == (
        "NothingToClaim",
        (REALM, alice, 250, 300),
    )
    transact(w3, claim_call(stack, e3, bob), bob)  # never claimed: pays epochs 1 and 3 at once
    assert (balance(stack, alice), balance(stack, bob)) == (300, 90)
    assert settlement.functions.claimed(REALM, alice).call() == 300
    assert settlement.functions.realmBudget(REALM).call() == [10_000, 390, 390]


def test_claim_rejects_bad_proofs_and_foreign_trees(
    w3: Web3, stack: Stack, accounts: list[str], anvil_l2: Anvil
) -> None:
    settlement, alice, bob = stack.settlement, accounts[2], accounts[3]
    transact(w3, settlement.functions.fund(REALM, 1000), accounts[0])
    tree = tree_for(stack, anvil_l2.chain_id, 1, claims=[(alice, 100), (bob, 40)])
    post(w3, stack, tree, 140)
    inflated = settlement.functions.claim(REALM, 1, alice, 101, tree.claim_proof(alice))
    assert reverts(inflated, alice)[0] == "InvalidProof"
    swapped = settlement.functions.claim(REALM, 1, bob, 100, tree.claim_proof(alice))
    assert reverts(swapped, bob)[0] == "InvalidProof"
    zero = settlement.functions.claim(REALM, 1, "0x" + "00" * 20, 1, [])
    assert reverts(zero, bob) == ("ZeroAccount", ())
    # Same leaves for another chain id or another contract: the root differs, so does the proof.
    for foreign in (
        PayoutTree(1, settlement.address, REALM, 1, [(alice, 100), (bob, 40)]),
        PayoutTree(anvil_l2.chain_id, stack.token.address, REALM, 1, [(alice, 100), (bob, 40)]),
    ):
        call = settlement.functions.claim(REALM, 1, alice, 100, foreign.claim_proof(alice))
        assert reverts(call, alice)[0] == "InvalidProof"
    # A root that promises more than the epoch allocated cannot overspend the realm.
    greedy = tree_for(stack, anvil_l2.chain_id, 2, claims=[(accounts[4], 900)])
    post(w3, stack, greedy, 10)
    assert reverts(claim_call(stack, greedy, accounts[4]), alice) == (
        "RealmOverspent",
        (REALM, 900, 150),
    )


def test_push_batch_pays_once(w3: Web3, stack: Stack, accounts: list[str], anvil_l2: Anvil) -> None:
    settlement = stack.settlement
    transact(w3, settlement.functions.fund(REALM, 1000), accounts[0])
    batches = [[(accounts[2], 10), (accounts[3], 20)], [(accounts[4], 30)]]
    tree = tree_for(stack, anvil_l2.chain_id, 1, claims=[(accounts[5], 5)], batches=batches)
    assert reverts(push_call(stack, tree, 0), accounts[9]) == ("EpochNotPosted", (REALM, 1))
    post(w3, stack, tree, 65)
    receipt = transact(w3, push_call(stack, tree, 1), accounts[9])
    pushed = events(settlement, "BatchPushed", receipt)[0]
    assert (pushed["batchIdx"], pushed["entries"], pushed["amount"]) == (1, 1, 30)
    assert (
        settlement.functions.pushBatch(
            REALM, 1, 1, tree.packed_batch(1), tree.batch_proof(1)
        ).call()
        is False
    )
    again = transact(w3, push_call(stack, tree, 1), accounts[9])
    assert events(settlement, "BatchPushed", again) == []
    assert [balance(stack, a) for a in accounts[2:5]] == [0, 0, 30]
    assert settlement.functions.isBatchPushed(REALM, 1, 1).call()
    assert not settlement.functions.isBatchPushed(REALM, 1, 0).call()
    transact(w3, push_call(stack, tree, 0), accounts[9])
    assert [balance(stack, a) for a in accounts[2:5]] == [10, 20, 30]
    assert settlement.functions.epochRecord(REALM, 1).call()[1:] == [65, 60]


def test_push_batch_rejects_uncommitted_entries(
    w3: Web3, stack: Stack, accounts: list[str], anvil_l2: Anvil
) -> None:
    settlement = stack.settlement
    transact(w3, settlement.functions.fund(REALM, 1000), accounts[0])
    tree = tree_for(stack, anvil_l2.chain_id, 1, batches=[[(accounts[2], 10), (accounts[3], 20)]])
    post(w3, stack, tree, 30)
    inflated = [pack_entry(accounts[2], 11), pack_entry(accounts[3], 20)]
    proof = tree.batch_proof(0)
    for packed, idx in ((inflated, 0), (tree.packed_batch(0)[:1], 0), (tree.packed_batch(0), 1)):
        call = settlement.functions.pushBatch(REALM, 1, idx, packed, proof)
        assert reverts(call, accounts[9])[0] == "InvalidProof"
    assert reverts(settlement.functions.pushBatch(REALM, 1, 0, [], proof), accounts[9]) == (
        "EmptyBatch",
        (),
    )
    # A root whose batches add up to more than the posted total cannot push past it.
    short = tree_for(
        stack, anvil_l2.chain_id, 2, batches=[[(accounts[2], 50)], [(accounts[3], 60)]]
    )
    post(w3, stack, short, 100)
    transact(w3, push_call(stack, short, 0), accounts[9])
    assert reverts(push_call(stack, short, 1), accounts[9]) == (
        "PushExceedsTotal",
        (REALM, 2, 110, 100),
    )


def test_push_bitmap_beyond_the_epoch_record(
    w3: Web3, stack: Stack, accounts: list[str], anvil_l2: Anvil
) -> None:
    settlement = stack.settlement
    batches = [[(accounts[2 + i % 5], 1 + i)] for i in range(300)]
    tree = tree_for(stack, anvil_l2.chain_id, 1, batches=batches)
    transact(w3, settlement.functions.fund(REALM, 50_000), accounts[0])
    post(w3, stack, tree, sum(1 + i for i in range(300)))
    for idx in (31, 32, 288, 299):
        transact(w3, push_call(stack, tree, idx), accounts[9])
    pushed = [i for i in range(300) if settlement.functions.isBatchPushed(REALM, 1, i).call()]
    assert pushed == [31, 32, 288, 299]
    assert settlement.functions.epochRecord(REALM, 1).call()[2] == 32 + 33 + 289 + 300


def test_push_and_claim_pay_each_payout_exactly_once(
    w3: Web3, stack: Stack, accounts: list[str], anvil_l2: Anvil
) -> None:
    """Two epochs planned with plan_epoch: active payees pushed, the rest claim; everything
    allocated is paid exactly once, whichever order pushes and claims arrive in."""
    settlement = stack.settlement
    active, idle = accounts[2:5], accounts[5:8]
    epochs = [
        {a: 100 + i for i, a in enumerate(active + idle)},
        {a: 1000 + 7 * i for i, a in enumerate(active + idle[:2])},
    ]
    claimable: dict[str, int] = {}
    trees = []
    for epoch, payouts in enumerate(epochs, start=1):
        push = active if epoch == 2 else active[:1]
        plan = plan_epoch(payouts, claimable, push, batch_max_entries=2)
        claimable = plan.claimable_after
        tree = PayoutTree.from_plan(anvil_l2.chain_id, settlement.address, REALM, epoch, plan)
        transact(w3, settlement.functions.fund(REALM, plan.total), accounts[0])
        post(w3, stack, tree, plan.total)
        trees.append(tree)
    for tree in reversed(trees):
        for idx in range(len(tree.batches)):
            transact(w3, push_call(stack, tree, idx), accounts[9])
            transact(w3, push_call(stack, tree, idx), accounts[9])  # a retried push pays nothing
        for account in tree.claims:
            if settlement.functions.claimed(REALM, account).call() < tree.claims[account]:
                transact(w3, claim_call(stack, tree, account), account)
    for account in active + idle:
        assert balance(stack, account) == sum(p.get(account, 0) for p in epochs)
    funded, allocated, paid = settlement.functions.realmBudget(REALM).call()
    assert funded == allocated == paid == sum(sum(p.values()) for p in epochs)
    assert balance(stack, settlement.address) == 0


def test_plain_token_push_falls_back_to_transfers(
    w3: Web3, accounts: list[str], anvil_l2: Anvil
) -> None:
    owner = accounts[0]
    token = deploy(w3, "PlainERC20", 10**6, sender=owner)
    settlement = deploy(w3, "EpochSettlement", token.address, owner, sender=owner)
    assert settlement.functions.tokenBatchTransfer().call() is False
    transact(w3, token.functions.approve(settlement.address, 10**6), owner)
    transact(w3, settlement.functions.fund(REALM, 1000), owner)
    entries = [(accounts[2], 10), (accounts[3], 20)]
    tree = PayoutTree(anvil_l2.chain_id, settlement.address, REALM, 1, batches=[entries])
    transact(w3, settlement.functions.postEpoch(REALM, 1, tree.root, 30), owner)
    call = settlement.functions.pushBatch(REALM, 1, 0, tree.packed_batch(0), tree.batch_proof(0))
    transact(w3, call, accounts[9])
    assert [token.functions.balanceOf(a).call() for a, _ in entries] == [10, 20]

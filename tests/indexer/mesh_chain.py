"""A mesh deployment on a real anvil, driven through its contracts, for the indexer's tests:
realms, params, APIs, stakes, unstakes, withdrawals, slashes, chequebooks (configured, and
created through the factory), deposits, cheques cashed and bounced, settlement funding, roots,
pushes and claims."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account import Account
from web3 import Web3

from domain.cheque import Cheque
from domain.events import ROLES, RealmParams
from indexer.decoding import Contracts, params_tuple
from infra.anvil import DEV_MNEMONIC, Anvil
from settlement.contracts import Stack, at, create_chequebook, deploy_stack, transact
from settlement.merkle import PayoutTree, realm_id

Account.enable_unaudited_hdwallet_features()
DEV_KEYS = [
    Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}") for i in range(10)
]
ZERO = "0x" + "00" * 20
UNSTAKE_DELAY_S = 60


def rpc(w3: Web3, method: str, *params: Any) -> Any:
    reply = w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
    if "error" in reply:
        raise RuntimeError(f"{method}: {reply['error']}")
    return reply.get("result")


@dataclass
class MeshChain:
    anvil: Anvil
    w3: Web3
    stack: Stack
    accounts: list[str]

    @classmethod
    def deploy(cls, anvil: Anvil) -> MeshChain:
        w3 = Web3(Web3.HTTPProvider(anvil.url))
        accounts = [Web3.to_checksum_address(a) for a in w3.eth.accounts]
        stack = deploy_stack(w3, accounts[0], unstake_delay_seconds=UNSTAKE_DELAY_S)
        chain = cls(anvil, w3, stack, accounts)
        for account in accounts[:8]:
            if account != accounts[0]:
                chain.send(stack.token.functions.mint(account, 10**24), accounts[0])
            chain.send(stack.token.functions.approve(stack.staking.address, 2**255), account)
            chain.send(stack.token.functions.approve(stack.settlement.address, 2**255), account)
            chain.send(stack.token.functions.approve(stack.chequebook.address, 2**255), account)
        chain.send(stack.token.functions.mint(accounts[0], 10**24), accounts[0])
        return chain

    @property
    def contracts(self) -> Contracts:
        s = self.stack
        return Contracts(
            staking=s.staking.address,
            settlement=s.settlement.address,
            token=s.token.address,
            chequebooks=(s.chequebook.address,),
            chequebook_factory=s.chequebook_factory.address,
        )

    def created_chequebooks(self) -> list[str]:
        """Every chequebook the factory created (the stack's own included), in order."""
        event = self.stack.chequebook_factory.events.ChequebookCreated()
        return [str(log["args"]["chequebook"]) for log in event.get_logs(from_block=0)]

    def watched(self) -> list[str]:
        """Addresses whose logs the indexer reads: configured contracts and followed chequebooks."""
        return sorted({*self.contracts.watched(), *self.created_chequebooks()})

    def holders(self) -> list[str]:
        """Addresses whose token transfers the indexer reads."""
        return sorted({*self.contracts.mesh(), *self.created_chequebooks()})

    def send(self, call: Any, sender: str) -> Any:
        return transact(self.w3, call, sender)

    def head(self) -> int:
        return int(self.w3.eth.block_number)

    def mine(self, blocks: int = 1) -> None:
        rpc(self.w3, "anvil_mine", hex(blocks))

    # -- staking ----------------------------------------------------------------------------------
    def register(self, name: str, keeper: str, params: RealmParams | None = None) -> None:
        args = params_tuple(params or RealmParams())
        self.send(self.stack.staking.functions.registerRealm(name, keeper, args), keeper)

    def set_params(self, name: str, keeper: str, params: RealmParams) -> None:
        call = self.stack.staking.functions.setRealmParams(realm_id(name), params_tuple(params))
        self.send(call, keeper)

    def enable_api(self, name: str, keeper: str, prefix: str, vendor: str) -> None:
        self.send(self.stack.staking.functions.enableApi(realm_id(name), prefix, vendor), keeper)

    def stake(self, name: str, staker: str, role: str, target: str, amount: int) -> None:
        call = self.stack.staking.functions.stake(realm_id(name), ROLES.index(role), target, amount)
        self.send(call, staker)

    def unstake(self, name: str, staker: str, role: str, target: str, amount: int) -> None:
        call = self.stack.staking.functions.requestUnstake(
            realm_id(name), ROLES.index(role), target, amount
        )
        self.send(call, staker)

    def withdraw(self, name: str, staker: str, role: str, target: str) -> None:
        rpc(self.w3, "evm_increaseTime", UNSTAKE_DELAY_S + 1)
        rpc(self.w3, "evm_mine")
        call = self.stack.staking.functions.withdraw(realm_id(name), ROLES.index(role), target)
        self.send(call, staker)

    def slash(
        self, name: str, keeper: str, staker: str, role: str, target: str, amount: int
    ) -> None:
        call = self.stack.staking.functions.slash(
            realm_id(name), staker, ROLES.index(role), target, amount, self.accounts[9]
        )
        self.send(call, keeper)

    def position(self, name: str, staker: str, role: str, target: str) -> int:
        staked, _, _ = self.stack.staking.functions.positionOf(
            realm_id(name), staker, ROLES.index(role), target
        ).call()
        return int(staked)

    # -- chequebook and settlement ----------------------------------------------------------------
    def new_chequebook(self, issuer: int) -> Any:
        """A chequebook of dev account `issuer`, created through the factory (by that account)."""
        s = self.stack
        book = create_chequebook(
            self.w3, s.chequebook_factory, s.token.address, self.accounts[issuer],
            sender=self.accounts[issuer],
        )  # fmt: skip
        self.send(s.token.functions.approve(book.address, 2**255), self.accounts[issuer])
        return at(self.w3, "Chequebook", book.address)

    def deposit(self, amount: int, book: Any = None, issuer: int = 0) -> None:
        book = book or self.stack.chequebook
        self.send(book.functions.deposit(amount), self.accounts[issuer])

    def cash(self, beneficiary: str, cumulative: int, book: Any = None, issuer: int = 0) -> None:
        book = book or self.stack.chequebook
        signature = Cheque(self.anvil.chain_id, book.address, beneficiary, cumulative).sign(
            DEV_KEYS[issuer].key
        )
        self.send(book.functions.cashCheque(beneficiary, cumulative, signature), beneficiary)

    def settle_epoch(self, name: str, epoch: int, claimant: str, pushed: list[str]) -> None:
        """Fund the realm, post an epoch with one claim and one push batch, push and claim."""
        s = self.stack.settlement
        batch = [(account, 7 + i) for i, account in enumerate(pushed)]
        tree = PayoutTree(
            self.anvil.chain_id, s.address, realm_id(name), epoch, [(claimant, 50)], [batch]
        )
        total = 50 + sum(a for _, a in batch)
        self.send(s.functions.fund(realm_id(name), total), self.accounts[0])
        self.send(s.functions.postEpoch(realm_id(name), epoch, tree.root, total), self.accounts[0])
        self.send(
            s.functions.pushBatch(
                realm_id(name), epoch, 0, tree.packed_batch(0), tree.batch_proof(0)
            ),
            self.accounts[0],
        )
        self.send(
            s.functions.claim(realm_id(name), epoch, claimant, 50, tree.claim_proof(claimant)),
            claimant,
        )


def busy_chain(chain: MeshChain) -> None:
    """Every kind of event the indexer reads, in two realms."""
    a = chain.accounts
    keeper, keeper2, router, service, user, vendor = a[1], a[2], a[3], a[4], a[5], a[6]
    chain.register("realm.one", keeper)
    chain.register("realm.two", keeper2, RealmParams(epoch_blocks=50, funding_period_blocks=50))
    chain.set_params("realm.one", keeper, RealmParams(rfr_bps=300, price_per_message=5))
    chain.enable_api("realm.one", keeper, "com.example.api", vendor)
    chain.stake("realm.one", router, "router_operator", ZERO, 5 * 10**18)
    chain.stake("realm.one", service, "service_operator", ZERO, 3 * 10**18)
    chain.stake("realm.one", user, "user", ZERO, 10**19)
    chain.stake("realm.one", user, "user", router, 2 * 10**18)
    chain.stake("realm.two", router, "router_operator", ZERO, 10**18)
    chain.unstake("realm.one", user, "user", ZERO, 4 * 10**18)
    chain.withdraw("realm.one", user, "user", ZERO)
    chain.slash("realm.one", keeper, router, "router_operator", ZERO, 10**18)
    chain.stake("realm.one", router, "router_operator", ZERO, 10**18)
    chain.deposit(1000)
    chain.cash(router, 300)
    chain.cash(service, 2000)  # bounces: 700 left in the chequebook
    # a client's chequebook, known to the indexer only through the factory's ChequebookCreated
    book = chain.new_chequebook(issuer=7)
    chain.deposit(500, book, issuer=7)
    chain.cash(router, 200, book, issuer=7)
    chain.cash(service, 400, book, issuer=7)  # bounces: 300 left in it
    chain.settle_epoch("realm.one", 0, user, [router, service])


class Burst:
    """Many stakes per transaction (StakeBurst): two logs (Staked, Transfer) per stake."""

    def __init__(self, chain: MeshChain, realm: str = "burst") -> None:
        from settlement.contracts import deploy

        self.chain = chain
        self.realm = realm
        owner = chain.accounts[0]
        chain.register(realm, chain.accounts[1])
        self.contract = deploy(
            chain.w3,
            "StakeBurst",
            chain.stack.staking.address,
            chain.stack.token.address,
            sender=owner,
        )
        chain.send(chain.stack.token.functions.mint(self.contract.address, 10**27), owner)

    def call(self, stakes: int) -> Any:
        return self.contract.functions.burst(realm_id(self.realm), 0, ZERO, 1, stakes)

    def send(self, stakes: int) -> None:
        self.chain.send(self.call(stakes), self.chain.accounts[0])

"""Epoch payout trees: OpenZeppelin StandardMerkleTree over claim and push-batch leaves.

Same leaf hash, node hash, layout and proof order as `@openzeppelin/merkle-tree` 1.x, so roots
and proofs match the npm library byte for byte and verify with OpenZeppelin's `MerkleProof`.

Leaf values (`LEAF_ENCODING`): `(uint256 chainId, address settlement, bytes32 realm,
uint256 epoch, address account, uint256 amount)`, hashed `keccak256(keccak256(abi.encode(...)))`:

* claim leaf, `account != 0`: `amount` is the account's cumulative *claimable* payout in the
  realm up to and including `epoch` (pushed payouts are not in it); `EpochSettlement.claim`
  pays `amount - claimed[realm][account]`.
* batch leaf, `account == 0`: `amount` is `int(batch_digest(batch_idx, packed))`, the
  commitment to push batch `batch_idx`; `EpochSettlement.pushBatch` pays its entries once.

Every unit of an epoch's payouts goes to exactly one channel (see `plan_epoch`), so a push and a
claim never pay the same money. Chain id and contract address bind a proof to one deployment.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from eth_abi import encode
from eth_hash.auto import keccak
from eth_utils import to_checksum_address

LEAF_ENCODING: tuple[str, ...] = ("uint256", "address", "bytes32", "uint256", "address", "uint256")
ZERO_ADDRESS = "0x" + "00" * 20
AMOUNT_BITS = 96
MAX_PUSH_AMOUNT = (1 << AMOUNT_BITS) - 1

LeafValues = tuple[int, str, bytes, int, str, int]


def realm_id(name: str) -> bytes:
    """The on-chain realm id: keccak256 of the realm's name (UTF-8)."""
    return keccak(name.encode())


def leaf_hash(values: LeafValues) -> bytes:
    """StandardMerkleTree leaf: keccak256(keccak256(abi.encode(values)))."""
    return keccak(keccak(encode(list(LEAF_ENCODING), list(values))))


def node_hash(a: bytes, b: bytes) -> bytes:
    """Commutative node hash: keccak256 of the two children in ascending byte order."""
    return keccak(a + b if a <= b else b + a)


def pack_entry(account: str, amount: int) -> bytes:
    """One push entry: the account in the high 160 bits, the amount in the low 96 bits."""
    if not 0 < amount <= MAX_PUSH_AMOUNT:
        raise ValueError(f"push amount {amount} outside 1..2**96-1")
    address = int(to_checksum_address(account), 16)
    if address == 0:
        raise ValueError("push entry to the zero address")
    return ((address << AMOUNT_BITS) | amount).to_bytes(32, "big")


def unpack_entry(word: bytes) -> tuple[str, int]:
    """Inverse of `pack_entry`: (checksummed account, amount)."""
    value = int.from_bytes(word, "big")
    return to_checksum_address(f"0x{value >> AMOUNT_BITS:040x}"), value & MAX_PUSH_AMOUNT


def batch_digest(batch_idx: int, packed: Sequence[bytes]) -> bytes:
    """keccak256(abi.encodePacked(uint256 batchIdx, bytes32[] packed)), as the contract computes it."""
    return keccak(batch_idx.to_bytes(32, "big") + b"".join(packed))


def build_tree(leaves: Sequence[bytes]) -> list[bytes]:
    """OpenZeppelin `makeMerkleTree`: a complete binary tree in an array, root at 0, leaves at
    the end in reverse order (leaf i at index len-1-i)."""
    if not leaves:
        raise ValueError("a Merkle tree needs at least one leaf")
    tree: list[bytes] = [b""] * (2 * len(leaves) - 1)
    for i, leaf in enumerate(leaves):
        tree[len(tree) - 1 - i] = leaf
    for i in range(len(tree) - 1 - len(leaves), -1, -1):
        tree[i] = node_hash(tree[2 * i + 1], tree[2 * i + 2])
    return tree


def tree_proof(tree: Sequence[bytes], index: int) -> list[bytes]:
    """Sibling hashes from the node at `index` (a tree index, not a leaf number) up to the root."""
    proof = []
    while index > 0:
        sibling = index - 1 if index % 2 == 0 else index + 1
        proof.append(tree[sibling])
        index = (index - 1) // 2
    return proof


def process_proof(leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root a leaf and its proof hash up to (OpenZeppelin `MerkleProof.processProof`)."""
    node = leaf
    for sibling in proof:
        node = node_hash(node, sibling)
    return node


@dataclass(frozen=True)
class StandardMerkleTree:
    """OpenZeppelin StandardMerkleTree.of(values, LEAF_ENCODING) with sorted leaves.

    `values` keep the caller's order; `tree` is the array layout; `proof(i)` proves values[i].
    """

    values: tuple[LeafValues, ...]
    tree: tuple[bytes, ...] = field(init=False, repr=False)
    _tree_index: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        hashes = [leaf_hash(v) for v in self.values]
        order = sorted(range(len(hashes)), key=lambda i: hashes[i])
        tree = build_tree([hashes[i] for i in order])
        tree_index = [0] * len(hashes)
        for leaf_number, value_index in enumerate(order):
            tree_index[value_index] = len(tree) - 1 - leaf_number
        object.__setattr__(self, "tree", tuple(tree))
        object.__setattr__(self, "_tree_index", tuple(tree_index))

    @property
    def root(self) -> bytes:
        return self.tree[0]

    def proof(self, value_index: int) -> list[bytes]:
        return tree_proof(self.tree, self._tree_index[value_index])


@dataclass(frozen=True)
class EpochPlan:
    """What one epoch pays, split into claimable cumulatives and push batches.

    claims: (account, cumulative claimable) for accounts whose claimable payout grew this epoch.
    batches: push batches of (account, amount this epoch), at most `batch_max_entries` each.
    total: the epoch's payouts, the `total` argument of `postEpoch`.
    claimable_after: every account's cumulative claimable after this epoch (input to the next).
    """

    claims: list[tuple[str, int]]
    batches: list[list[tuple[str, int]]]
    total: int
    claimable_after: dict[str, int]


def plan_epoch(
    payouts: Mapping[str, int],
    claimable_before: Mapping[str, int],
    push: Collection[str],
    batch_max_entries: int,
) -> EpochPlan:
    """Assign each payout of an epoch to a push batch (accounts in `push`) or to the account's
    claimable cumulative (everyone else). Accounts are ordered by address, so the plan is a
    pure function of its inputs. Payouts must be positive ints; pushed ones below 2**96."""
    if batch_max_entries <= 0:
        raise ValueError(f"batch_max_entries must be positive, got {batch_max_entries}")
    pushed_set = {to_checksum_address(a) for a in push}
    claimable: dict[str, int] = {
        to_checksum_address(a): int(v) for a, v in claimable_before.items()
    }
    claims: list[tuple[str, int]] = []
    pushed: list[tuple[str, int]] = []
    total = 0
    for raw_account, amount in sorted(payouts.items(), key=lambda kv: kv[0].lower()):
        account = to_checksum_address(raw_account)
        if amount <= 0:
            raise ValueError(f"payout for {account} must be positive, got {amount}")
        total += amount
        if account in pushed_set:
            pack_entry(account, amount)  # validates the range before anything is planned
            pushed.append((account, amount))
        else:
            claimable[account] = claimable.get(account, 0) + amount
            claims.append((account, claimable[account]))
    batches = [pushed[i : i + batch_max_entries] for i in range(0, len(pushed), batch_max_entries)]
    return EpochPlan(claims=claims, batches=batches, total=total, claimable_after=claimable)


class PayoutTree:
    """The payout tree of one (chain, settlement contract, realm, epoch).

    >>> tree = PayoutTree(42161, contract, realm_id("realm1"), 7, claims=[(alice, 100)],
    ...                   batches=[[(bob, 5), (carol, 6)]])
    >>> tree.root, tree.claim_proof(alice), tree.batch_proof(0), tree.packed_batch(0)

    claims: (account, cumulative claimable amount); batches: lists of (account, amount) pushed
    as batch 0, 1, ... Leaves are the claim leaves then the batch leaves (see module doc).
    """

    def __init__(
        self,
        chain_id: int,
        contract: str,
        realm: bytes,
        epoch: int,
        claims: Sequence[tuple[str, int]] = (),
        batches: Sequence[Sequence[tuple[str, int]]] = (),
    ) -> None:
        if len(realm) != 32:
            raise ValueError("realm must be 32 bytes (realm_id(name))")
        self.chain_id = chain_id
        self.contract = to_checksum_address(contract)
        self.realm = bytes(realm)
        self.epoch = epoch
        self.claims: dict[str, int] = {}
        for account, cumulative in claims:
            checksummed = to_checksum_address(account)
            if int(checksummed, 16) == 0:
                raise ValueError("claim leaf for the zero address")
            if checksummed in self.claims:
                raise ValueError(f"two claim leaves for {checksummed}")
            if cumulative <= 0:
                raise ValueError(f"cumulative for {checksummed} must be positive")
            self.claims[checksummed] = int(cumulative)
        self.batches: list[list[bytes]] = [
            [pack_entry(account, amount) for account, amount in batch] for batch in batches
        ]
        if any(not batch for batch in self.batches):
            raise ValueError("empty push batch")
        values = [self.leaf(account, amount) for account, amount in self.claims.items()]
        values += [
            self.leaf(ZERO_ADDRESS, int.from_bytes(batch_digest(i, packed), "big"))
            for i, packed in enumerate(self.batches)
        ]
        self.tree = StandardMerkleTree(tuple(values))
        self._claim_index = {account: i for i, account in enumerate(self.claims)}

    def leaf(self, account: str, amount: int) -> LeafValues:
        """Leaf values (chainId, contract, realm, epoch, account, amount) of this tree."""
        return (
            self.chain_id,
            self.contract,
            self.realm,
            self.epoch,
            to_checksum_address(account),
            amount,
        )

    @property
    def root(self) -> bytes:
        return self.tree.root

    @property
    def pushed_total(self) -> int:
        """Sum of all push-batch amounts."""
        return sum(unpack_entry(w)[1] for batch in self.batches for w in batch)

    def claim_proof(self, account: str) -> list[bytes]:
        """Proof of `account`'s claim leaf; KeyError if it has none in this epoch."""
        return self.tree.proof(self._claim_index[to_checksum_address(account)])

    def batch_proof(self, batch_idx: int) -> list[bytes]:
        """Proof of push batch `batch_idx`'s leaf."""
        if not 0 <= batch_idx < len(self.batches):
            raise IndexError(f"no push batch {batch_idx}")
        return self.tree.proof(len(self.claims) + batch_idx)

    def packed_batch(self, batch_idx: int) -> list[bytes]:
        """The packed entries of push batch `batch_idx`, the `packed` argument of `pushBatch`."""
        return list(self.batches[batch_idx])

    def proof(self, account: str) -> list[bytes]:
        """Alias of `claim_proof`."""
        return self.claim_proof(account)

    @classmethod
    def from_plan(
        cls, chain_id: int, contract: str, realm: bytes, epoch: int, plan: EpochPlan
    ) -> PayoutTree:
        """The tree of an `EpochPlan`."""
        return cls(chain_id, contract, realm, epoch, claims=plan.claims, batches=plan.batches)

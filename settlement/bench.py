"""Settlement gas benchmark on a fresh anvil: EpochSettlement push/claim/post against
Disperse-style and Uniswap-MerkleDistributor-style reference contracts on the same token.

`run()` returns the figures and prints them; the last stdout line is one JSON object.
"""

from __future__ import annotations

import json
from typing import Any

from eth_abi.packed import encode_packed
from eth_hash.auto import keccak
from eth_utils import to_checksum_address
from web3 import Web3

from infra.anvil import start_anvil
from settlement.contracts import Stack, deploy, deploy_stack, transact
from settlement.merkle import PayoutTree, build_tree, pack_entry, realm_id, tree_proof

BENCH_CHAIN_ID = 42161
PUSH_SIZES = (100, 500, 1000)
# Room for one 1000-payee Disperse to fresh addresses (~27M gas) in a single transaction.
BLOCK_GAS_LIMIT = 100_000_000
CLAIM_TREE_LEAVES = 1000
SETUP_CHUNK_ENTRIES = 1000


def _payees(tag: str, count: int) -> list[str]:
    return [to_checksum_address(keccak(f"{tag}:{i}".encode())[12:]) for i in range(count)]


def _amounts(count: int) -> list[int]:
    # 0.001 .. ~0.002 WMP (18 decimals): realistic per-epoch payouts, 7 significant bytes.
    return [10**15 + 7919 * i for i in range(count)]


def _hold_one_unit(w3: Web3, stack: Stack, accounts: list[str]) -> None:
    """Give every account a balance, so a later payment writes an existing balance slot."""
    for i in range(0, len(accounts), SETUP_CHUNK_ENTRIES):
        packed = [pack_entry(a, 1) for a in accounts[i : i + SETUP_CHUNK_ENTRIES]]
        transact(w3, stack.token.functions.transferBatch(packed), stack.deployer)


def _gas(receipt: Any) -> int:
    return int(receipt["gasUsed"])


def _input_bytes(w3: Web3, receipt: Any) -> int:
    tx = w3.eth.get_transaction(receipt["transactionHash"])
    return len(bytes(tx["input"]))


class _Bench:
    def __init__(self, w3: Web3) -> None:
        self.w3 = w3
        accounts: list[str] = list(w3.eth.accounts)
        self.owner = to_checksum_address(accounts[0])
        self.caller = to_checksum_address(accounts[1])
        self.stack = deploy_stack(w3, self.owner)
        self.token = self.stack.token
        self.settlement = self.stack.settlement
        self.disperse = deploy(w3, "Disperse", sender=self.owner)
        transact(w3, self.token.functions.mint(self.owner, 10**30), self.owner)
        for spender in (self.settlement.address, self.disperse.address):
            transact(w3, self.token.functions.approve(spender, 2**256 - 1), self.owner)
        self._epoch = 0

    def _post(self, realm: bytes, tree: PayoutTree, total: int) -> Any:
        transact(self.w3, self.settlement.functions.fund(realm, total), self.owner)
        call = self.settlement.functions.postEpoch(realm, tree.epoch, tree.root, total)
        return transact(self.w3, call, self.owner)

    def push(self, payees: list[str], amounts: list[int]) -> tuple[int, int, int]:
        """(gas, calldata bytes, post gas) of one pushBatch paying every payee, in an epoch whose
        tree also holds CLAIM_TREE_LEAVES claim leaves (so the batch proof has a realistic depth)."""
        self._epoch += 1
        realm = realm_id("bench-push")
        entries = list(zip(payees, amounts, strict=True))
        claims = [(payee, 1) for payee in _payees(f"inactive{self._epoch}", CLAIM_TREE_LEAVES)]
        tree = PayoutTree(
            BENCH_CHAIN_ID,
            self.settlement.address,
            realm,
            self._epoch,
            claims=claims,
            batches=[entries],
        )
        post = self._post(realm, tree, sum(amounts) + len(claims))
        call = self.settlement.functions.pushBatch(
            realm, self._epoch, 0, tree.packed_batch(0), tree.batch_proof(0)
        )
        receipt = transact(self.w3, call, self.caller)
        return _gas(receipt), _input_bytes(self.w3, receipt), _gas(post)

    def push_plain_token(self, payees: list[str], amounts: list[int]) -> int:
        """Gas of one pushBatch on a token without IBatchTransfer (one transfer per entry), the
        payees already holding that token."""
        token = deploy(self.w3, "PlainERC20", 10**30, sender=self.owner)
        settlement = deploy(
            self.w3, "EpochSettlement", token.address, self.owner, sender=self.owner
        )
        for spender in (settlement.address, self.disperse.address):
            transact(self.w3, token.functions.approve(spender, 2**256 - 1), self.owner)
        hold = self.disperse.functions.disperseToken(token.address, payees, [1] * len(payees))
        transact(self.w3, hold, self.owner)
        realm = realm_id("bench-plain")
        tree = PayoutTree(
            BENCH_CHAIN_ID,
            settlement.address,
            realm,
            1,
            claims=[(p, 1) for p in _payees("inactive-plain", CLAIM_TREE_LEAVES)],
            batches=[list(zip(payees, amounts, strict=True))],
        )
        total = sum(amounts) + CLAIM_TREE_LEAVES
        transact(self.w3, settlement.functions.fund(realm, total), self.owner)
        transact(self.w3, settlement.functions.postEpoch(realm, 1, tree.root, total), self.owner)
        call = settlement.functions.pushBatch(
            realm, 1, 0, tree.packed_batch(0), tree.batch_proof(0)
        )
        return _gas(transact(self.w3, call, self.caller))

    def disperse_token(self, payees: list[str], amounts: list[int]) -> tuple[int, int]:
        """(gas, calldata bytes) of one disperseToken paying every payee."""
        call = self.disperse.functions.disperseToken(self.token.address, payees, amounts)
        receipt = transact(self.w3, call, self.owner)
        return _gas(receipt), _input_bytes(self.w3, receipt)

    def claims(self, payees: list[str], amounts: list[int]) -> tuple[int, int]:
        """(EpochSettlement claim gas, MerkleDistributor claim gas) for the same payee in trees
        of the same size; both payees already hold the token, and in both contracts the claim
        writes a storage word that already holds earlier claims (the distributor's bitmap word;
        the payee's cumulative, from an earlier epoch)."""
        realm = realm_id("bench-claim")
        previous = PayoutTree(
            BENCH_CHAIN_ID, self.settlement.address, realm, 1_000_000, claims=[(payees[0], 1)]
        )
        self._post(realm, previous, 1)
        transact(
            self.w3,
            self.settlement.functions.claim(
                realm, previous.epoch, payees[0], 1, previous.claim_proof(payees[0])
            ),
            self.caller,
        )
        claims = [(payees[0], amounts[0] + 1)] + list(zip(payees[1:], amounts[1:], strict=True))
        tree = PayoutTree(BENCH_CHAIN_ID, self.settlement.address, realm, 1_000_001, claims=claims)
        self._post(realm, tree, sum(amounts))
        ours = transact(
            self.w3,
            self.settlement.functions.claim(
                realm, tree.epoch, payees[0], amounts[0] + 1, tree.claim_proof(payees[0])
            ),
            self.caller,
        )

        leaves = [
            keccak(encode_packed(["uint256", "address", "uint256"], [i, payee, amount]))
            for i, (payee, amount) in enumerate(zip(payees, amounts, strict=True))
        ]
        distributor_tree = build_tree(leaves)
        distributor = deploy(
            self.w3, "MerkleDistributor", self.token.address, distributor_tree[0], sender=self.owner
        )
        transact(
            self.w3, self.token.functions.transfer(distributor.address, sum(amounts)), self.owner
        )

        def distributor_claim(i: int) -> Any:
            proof = tree_proof(distributor_tree, len(distributor_tree) - 1 - i)
            call = distributor.functions.claim(i, payees[i], amounts[i], proof)
            return transact(self.w3, call, self.caller)

        distributor_claim(1)  # the bitmap word of index 0 now holds a claim
        theirs = distributor_claim(0)
        return _gas(ours), _gas(theirs)


def _per_payee(gas: int, payees: int) -> float:
    return round(gas / payees, 1)


def measure(w3: Web3) -> dict[str, Any]:
    """All figures, on a chain where nothing but this benchmark runs."""
    bench = _Bench(w3)
    result: dict[str, Any] = {}
    push_bytes: dict[int, int] = {}
    for size in PUSH_SIZES:
        amounts = _amounts(size)
        existing = _payees(f"existing{size}", size)
        _hold_one_unit(w3, bench.stack, existing)
        push_gas, push_bytes[size], post_gas = bench.push(existing, amounts)
        disperse_gas, disperse_bytes = bench.disperse_token(existing, amounts)
        fresh_push_gas, _, _ = bench.push(_payees(f"fresh-push{size}", size), amounts)
        fresh_disperse_gas, _ = bench.disperse_token(_payees(f"fresh-disp{size}", size), amounts)
        result[f"push_gas_per_payee_{size}"] = _per_payee(push_gas, size)
        result[f"disperse_gas_per_payee_{size}"] = _per_payee(disperse_gas, size)
        result[f"push_vs_disperse_{size}"] = round(push_gas / disperse_gas, 3)
        result[f"fresh_push_gas_per_payee_{size}"] = _per_payee(fresh_push_gas, size)
        result[f"fresh_disperse_gas_per_payee_{size}"] = _per_payee(fresh_disperse_gas, size)
        result[f"calldata_bytes_per_payee_{size}"] = round(push_bytes[size] / size, 2)
        result[f"disperse_calldata_bytes_per_payee_{size}"] = round(disperse_bytes / size, 2)
        result["post_root_gas"] = post_gas
    largest, smallest = PUSH_SIZES[-1], PUSH_SIZES[0]
    plain_payees = _payees("plain", largest)
    plain_gas = bench.push_plain_token(plain_payees, _amounts(largest))
    result[f"plain_token_push_gas_per_payee_{largest}"] = _per_payee(plain_gas, largest)
    claim_payees = _payees("claim", CLAIM_TREE_LEAVES)
    _hold_one_unit(w3, bench.stack, claim_payees)
    claim_gas, distributor_gas = bench.claims(claim_payees, _amounts(CLAIM_TREE_LEAVES))
    headline = {
        "push_gas_per_payee": result[f"push_gas_per_payee_{largest}"],
        "claim_gas": claim_gas,
        "post_root_gas": result["post_root_gas"],
        "disperse_gas_per_payee": result[f"disperse_gas_per_payee_{largest}"],
        "merkle_distributor_claim_gas": distributor_gas,
        # Bytes each additional pushed payee adds to the transaction (the packed entry).
        "calldata_bytes_per_payee": (push_bytes[largest] - push_bytes[smallest])
        / (largest - smallest),
        "payees": "existing holders in both push and Disperse (fresh_* keys: never held the token)",
        "push_payees_headline": largest,
        "claim_tree_leaves": CLAIM_TREE_LEAVES,
    }
    return headline | result


def run(json_out: bool = True) -> dict[str, Any]:
    """Start a fresh anvil, measure, stop it; print a table unless `json_out`, then the JSON line."""
    node = start_anvil(chain_id=BENCH_CHAIN_ID, extra_args=("--gas-limit", str(BLOCK_GAS_LIMIT)))
    try:
        result = measure(Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 120})))
    finally:
        node.stop()
    if not json_out:
        for key, value in result.items():
            print(f"{key:42} {value}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run(json_out=False)

"""Realm economics as pure integer functions: epoch funding, pools, stake-capped credit, payouts.

ARCHITECTURE "Epoch funding and payouts":

    F(r,e)   = rfr_bps/10000 * sum_blocks sum_clients reservation_stake(block) / funding_period_blocks
    pool_k   = (F + carry) * weight_k / 10000          k in {router, service, vendor}
    credit_i = min(used_i, provided_i)                  messages in the epoch, capped by stake
    payout_i = pool_k * credit_i / sum_j credit_j

Token base units, every division rounds down; everything not paid out (rounding, pools of a class
without credit) is the remainder and is carried to the realm's next epoch. Results depend only on
the multiset of inputs, never on their order: same log, same payouts, bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from eth_hash.auto import keccak

from domain.events import RealmParams

PAYEE_CLASSES = ("router", "service", "vendor")
BPS = 10_000


@dataclass(frozen=True, slots=True, order=True)
class Payout:
    account: str
    payee_class: str
    amount: int


@dataclass(frozen=True, slots=True)
class EpochPayouts:
    funding: int  # F(r, e): this epoch's funding, before the carried remainder
    carry_in: int  # remainder carried from the previous epoch
    payouts: tuple[Payout, ...]  # sorted by (class, account); no zero amounts
    remainder: int  # carried to the next epoch

    @property
    def total(self) -> int:
        return sum(p.amount for p in self.payouts)

    def __post_init__(self) -> None:
        # the pool is fully distributed plus a remainder: nothing created, nothing lost
        assert self.total + self.remainder == self.funding + self.carry_in, "payout conservation"
        assert self.remainder >= 0


def epoch_funding(params: RealmParams, reservation_stake_blocks: int) -> int:
    """F(r,e) from sum over the epoch's blocks and clients of reservation stake (base-unit blocks)."""
    return params.rfr_bps * reservation_stake_blocks // (BPS * params.funding_period_blocks)


def split_pool(pool: int, credits: Mapping[str, int]) -> dict[str, int]:
    """Pro-rata integer split, rounding down; accounts with zero credit get nothing."""
    total_credit = sum(credits.values())
    if pool == 0 or total_credit == 0:
        return {}
    return {
        account: pool * credit // total_credit for account, credit in credits.items() if credit > 0
    }


def compute_payouts(
    params: RealmParams,
    reservation_stake_blocks: int,
    carry_in: int,
    used: Mapping[str, Mapping[str, int]],
    provided: Mapping[str, Mapping[str, int]],
) -> EpochPayouts:
    """Payouts of one realm epoch.

    used[class][account]: messages of the epoch credited to the account (router: routed; service:
    invocations served; vendor: calls to its APIs). provided[class][account]: the stake-capped
    capacity in messages for router and service classes (vendors are not capped).
    """
    funding = epoch_funding(params, reservation_stake_blocks)
    pot = funding + carry_in
    weights = {
        "router": params.weight_router_bps,
        "service": params.weight_service_bps,
        "vendor": params.weight_vendor_bps,
    }
    payouts: list[Payout] = []
    for payee_class in PAYEE_CLASSES:
        pool = pot * weights[payee_class] // BPS
        class_used = used.get(payee_class, {})
        if payee_class == "vendor":
            credits = dict(class_used)
        else:
            caps = provided.get(payee_class, {})
            credits = {acct: min(n, caps.get(acct, 0)) for acct, n in class_used.items()}
        for account, amount in sorted(split_pool(pool, credits).items()):
            if amount > 0:
                payouts.append(Payout(account, payee_class, amount))
    paid = sum(p.amount for p in payouts)
    return EpochPayouts(
        funding=funding, carry_in=carry_in, payouts=tuple(payouts), remainder=pot - paid
    )


def payout_digest(realm: str, epoch: int, payouts: Sequence[Payout]) -> str:
    """keccak256 over the canonical payout list; the PayoutsComputed event carries it.

    Canonical: one line `class,address,amount` a payout, addresses as lowercase hex, sorted by
    (class, address bytes, amount), so any implementation gets the same digest whatever case or
    order its payouts come in."""
    canonical = sorted((p.payee_class, p.account.lower(), p.amount) for p in payouts)
    lines = [f"{realm}\n{epoch}\n".encode()]
    lines += [f"{cls},{account},{amount}\n".encode() for cls, account, amount in canonical]
    return "0x" + keccak(b"".join(lines)).hex()

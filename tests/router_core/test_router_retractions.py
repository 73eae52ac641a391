"""A reorg deeper than the indexer's confirmation depth retracts chain logs (`LogRetracted`): the
router's views fed from the log — reservations, realm parameters and keeper, the marketplace's
services and offers — fall back to what they were before each retracted log, and a replacement
log at the same block and index (another block hash) applies as new. Signed records through the
follower's own entry point (pure logic: no broker needed to decide what a record does)."""

from __future__ import annotations

from typing import Any

from router_harness import new_key

from domain.envelope import Signer, seal
from domain.events import (
    REALM_TARGET,
    Event,
    KeeperChanged,
    LogRetracted,
    OfferSet,
    RealmCreated,
    RealmParams,
    RealmParamsChanged,
    ServiceRegistered,
    ServiceUpdated,
    StakeChanged,
)
from router_core.ledger_follower import LedgerFollower
from router_core.market import MarketBook
from router_core.realm_settings import LedgerRealms
from router_core.stakes import LedgerStakes

CHAIN = 31337
REALM = "realm1"
SID = "0x" + "5e" * 32
ZERO = "0x" + "00" * 32


def at(block: int, fork: str = "a", index: int = 0) -> dict[str, Any]:
    """A chain log's identity on branch `fork` (another branch: another block hash)."""
    digest = f"{block:060x}{ord(fork):04x}"
    return {"chain_id": CHAIN, "block": block, "block_hash": "0x" + digest, "log_index": index}


class Feed:
    def __init__(self) -> None:
        self.indexer = Signer(new_key().private)
        self.stakes = LedgerStakes({REALM: 10})
        self.realms = LedgerRealms()
        self.market = MarketBook()
        self.follower = LedgerFollower(
            "unused:1",
            [self.indexer.address],
            self.stakes,
            None,
            realms=self.realms,
            market=self.market,
        )
        self.seq = 0
        self.prev = ZERO

    def send(self, *events: Event) -> None:
        realm = events[0].realm  # a record carries the events of one realm ("": chain-wide)
        wire, record = seal(self.indexer, self.seq + 1, self.prev, realm, list(events))
        self.seq += len(events)
        self.prev = record.hash_hex
        self.follower.handle(wire)

    def retract(self, event: Any) -> None:
        self.send(
            LogRetracted(
                realm=event.realm,  # in the partition of the retracted event's realm
                chain_id=event.chain_id,
                block=event.block,
                block_hash=event.block_hash,
                log_index=event.log_index,
                retracted=event.TYPE,
            )
        )


def test_a_retracted_reservation_is_undone_and_its_replacement_applies() -> None:
    feed = Feed()
    user = new_key().address

    def stake(amount: int, block: int, fork: str = "a") -> StakeChanged:
        return StakeChanged(REALM, user, "user", REALM_TARGET, amount, "0x", **at(block, fork))

    kept = stake(50, 5)
    orphan = stake(90, 8)
    feed.send(kept, orphan)
    assert feed.stakes.reserved_mpb(REALM, user, 9) == 9
    feed.retract(orphan)
    assert feed.stakes.reserved_mpb(REALM, user, 9) == 5  # back to the change before it
    assert feed.follower.retracted == 1
    # the canonical branch's log at the same block and index: a new log, applied
    feed.send(stake(30, 8, fork="b"))
    assert feed.stakes.reserved_mpb(REALM, user, 9) == 3
    assert feed.stakes.reserved_mpb(REALM, user, 7) == 5


def _ident(found: dict[str, Any]) -> dict[str, Any]:
    """The identity without the block (the older event types take it positionally)."""
    return {k: v for k, v in found.items() if k != "block"}


def test_retracted_realm_changes_fall_back() -> None:
    feed = Feed()
    keeper, successor = new_key().address, new_key().address
    created = RealmCreated(REALM, keeper, RealmParams(price_per_message=7), 1, **_ident(at(1)))
    raised = RealmParamsChanged(
        REALM, RealmParams(price_per_message=9), 4, tx_hash="0x", **_ident(at(4))
    )
    handed = KeeperChanged(REALM, keeper=successor, previous_keeper=keeper, tx_hash="0x", **at(5))
    feed.send(created, raised, handed)
    assert (feed.realms.latest(REALM).price_per_message, feed.realms.keeper(REALM)) == (
        9,
        successor,
    )
    feed.retract(handed)
    feed.retract(raised)
    assert (feed.realms.latest(REALM).price_per_message, feed.realms.keeper(REALM)) == (7, keeper)
    feed.retract(created)
    assert not feed.realms.known(REALM)
    assert feed.follower.retracted == 3


def test_retracted_market_changes_fall_back_and_unknown_logs_are_counted() -> None:
    feed = Feed()
    server = new_key().address
    registered = ServiceRegistered(
        realm="", service_id=SID, publisher=server, api="com.example.calc", spec_hash=ZERO,
        deterministic=False, verifier_hash=ZERO, min_requests=0, tx_hash="0x", **at(2),
    )  # fmt: skip
    updated = ServiceUpdated(
        realm="", service_id=SID, spec_hash=ZERO, deterministic=True, verifier_hash=ZERO, min_requests=3,
        tx_hash="0x", **at(3),
    )  # fmt: skip
    first = OfferSet(
        realm=REALM, server=server, service_id=SID, price_per_call=5, tx_hash="0x", **at(4)
    )
    raised = OfferSet(
        realm=REALM, server=server, service_id=SID, price_per_call=8, tx_hash="0x", **at(6)
    )
    feed.send(registered, updated)
    feed.send(first, raised)
    assert feed.market.price(REALM, SID, server) == 8
    assert feed.market.service("com.example.calc").min_requests == 3

    feed.retract(raised)
    assert feed.market.price(REALM, SID, server) == 5  # the offer before it stands again
    feed.retract(updated)
    assert feed.market.service("com.example.calc").min_requests == 0
    feed.retract(first)
    assert feed.market.offers(REALM, SID) == []
    feed.retract(registered)
    assert feed.market.service("com.example.calc") is None
    assert feed.market.service_of("com.example.calc.add") is None
    assert feed.follower.retracted == 4

    feed.retract(raised)  # twice: the log is no longer held
    assert (feed.follower.retracted, feed.follower.unmatched_retractions) == (4, 1)

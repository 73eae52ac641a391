"""A deterministic simulation of the projector's world (in the spirit of TigerBeetle's VOPR): an
in-memory partitioned log, a consumer that delivers it with seeded chaos (partitions stalled,
short fetches, arbitrary interleaving), an emitter that appends the closer's events to it, and a
seeded workload of signed records with every awkward shape the real log can hold. Test doubles:
they stand in for Kafka so the projector's own logic can be driven through millions of
schedules; the real broker is covered by the integration tests."""

from __future__ import annotations

import random
import zlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from kafka import TopicPartition

from domain.envelope import ZERO_HASH, MeteredBuilder, Signer, seal
from domain.events import (
    REALM_TARGET,
    ApiEnabled,
    ChainHead,
    Event,
    RealmCreated,
    RealmParams,
    RealmParamsChanged,
    StakeChanged,
)
from domain.topics import LEDGER_TOPIC, USAGE_TOPIC

TOKEN = 10**18
BLOCKS = 200
WINDOW = 10


@dataclass(frozen=True)
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes


class SimLog:
    """Topics of `partitions` partitions; a record's partition is a hash of its key (realm)."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.parts: dict[tuple[str, int], list[Message]] = defaultdict(list)

    def append(self, topic: str, key: bytes, value: bytes) -> None:
        part = zlib.crc32(key) % self.partitions
        log = self.parts[(topic, part)]
        log.append(Message(topic, part, len(log), key, value))

    def end(self, topic: str, part: int) -> int:
        return len(self.parts[(topic, part)])


class ChaosConsumer:
    """The subset of kafka-python's consumer `LedgerService` uses, over a `SimLog`. With a random
    generator, each poll serves a random subset of partitions a random number of records."""

    def __init__(self, log: SimLog, rng: random.Random | None = None) -> None:
        self.log = log
        self.rng = rng
        self.positions: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.log.partitions))

    def assign(self, tps: list[TopicPartition]) -> None:
        self.positions = {tp: 0 for tp in tps}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    def pause(self, tp: TopicPartition) -> None:
        self.paused.add(tp)

    def resume(self, tp: TopicPartition) -> None:
        self.paused.discard(tp)

    def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    def highwater(self, tp: TopicPartition) -> int:
        return self.log.end(tp.topic, tp.partition)

    def end_offsets(
        self, tps: list[TopicPartition], timeout_ms: int | None = None
    ) -> dict[TopicPartition, int]:
        return {tp: self.log.end(tp.topic, tp.partition) for tp in tps}

    def poll(self, timeout_ms: int = 0, max_records: int = 0) -> dict[TopicPartition, list[Any]]:
        out = {}
        for tp, pos in self.positions.items():
            if tp in self.paused:
                continue
            available = self.log.parts[(tp.topic, tp.partition)][pos:]
            if self.rng is not None:
                if self.rng.random() < 0.4:
                    continue  # this partition stalls for this poll
                available = available[: self.rng.randint(1, 6)]
            if available:
                out[tp] = list(available)
                self.positions[tp] = pos + len(available)
        return out

    def close(self) -> None:
        pass


class Chain:
    """One source's signed records: seq and prev kept like an emitter keeps them."""

    def __init__(self, signer: Signer) -> None:
        self.signer = signer
        self.seq = 1
        self.prev = ZERO_HASH

    def record(
        self, realm: str, events: list[Event] | None = None, metered: Any = None
    ) -> tuple[str, bytes, bytes]:
        wire, record = seal(self.signer, self.seq, self.prev, realm, events or (), metered)
        self.seq, self.prev = record.last_seq + 1, record.hash_hex
        topic = USAGE_TOPIC if metered is not None else LEDGER_TOPIC
        return topic, realm.encode(), wire


class SimEmitter:
    """The ledger's emitter, appending each event as its own record straight to the log."""

    def __init__(self, log: SimLog, signer: Signer) -> None:
        self.log = log
        self.chain = Chain(signer)

    def emit(self, event: Event) -> None:
        self.log.append(*self.chain.record(event.realm, [event]))


@dataclass
class Workload:
    records: list[tuple[str, bytes, bytes]]
    indexer: Signer
    ledger: Signer
    realms: tuple[str, ...]


def workload(rng: random.Random) -> Workload:
    """Two realms, three routers and an indexer over BLOCKS blocks: stake changes (several in one
    block, directed stakes, an unstake), a parameter change, metered traffic and heartbeats in
    every window, plus duplicates, a forged record, a record never sent (a gap) and a late one."""
    indexer, ledger, a, b, c, user = (Signer(rng.randbytes(32)) for _ in range(6))
    realms = ("r0", "r1")
    idx = Chain(indexer)
    routers = {s.address: Chain(s) for s in (a, b, c)}
    serving = {"r0": [a.address, b.address, c.address], "r1": [a.address, b.address]}
    params = RealmParams(epoch_blocks=50, funding_period_blocks=50, stake_per_mpb=TOKEN)
    log_index = iter(range(1_000_000))

    def stake(realm: str, staker: str, role: str, target: str, amount: int, block: int) -> Event:
        return StakeChanged(
            realm=realm, staker=staker, role=role, target=target, amount=amount * TOKEN,
            tx_hash="0x" + rng.randbytes(32).hex(), block=block, log_index=next(log_index),
        )  # fmt: skip

    def metered(realm: str, blocks: range) -> Any:
        cols = MeteredBuilder()
        for _ in range(rng.randint(1, 8)):
            kind = rng.choice(["event", "invocation", "result"])
            uri = rng.choice([f"{realm}.api.call", f"{realm}.apix.call", "t"])
            cols.add(user.address, c.address, kind, uri, rng.randint(1, 99), rng.choice(blocks))
        return cols.build()

    records: list[tuple[str, bytes, bytes]] = []
    for realm in realms:
        setup: list[Event] = [
            RealmCreated(realm=realm, keeper=user.address, params=params, block=0),
            ApiEnabled(realm=realm, api=f"{realm}.api", vendor=ledger.address, block=0),
            stake(realm, user.address, "user", REALM_TARGET, 100 + rng.randint(0, 50), 0),
        ]
        setup += [
            stake(realm, r, "router_operator", REALM_TARGET, rng.randint(1, 9), 0)
            for r in serving[realm]
        ]
        records.append(idx.record(realm, setup))
    for start in range(0, BLOCKS, WINDOW):
        window: list[list[tuple[str, bytes, bytes]]] = []  # one list a source, in seq order
        block = start + rng.randrange(WINDOW)
        chain: list[tuple[str, bytes, bytes]] = []
        if rng.random() < 0.5:  # two changes of one position in one block, out of log order
            first = stake("r0", b.address, "router_operator", REALM_TARGET, 9, block)
            second = stake(
                "r0", b.address, "router_operator", REALM_TARGET, rng.randint(1, 5), block
            )
            chain.append(idx.record("r0", [second, first]))
        if rng.random() < 0.3:  # a directed stake on router a
            amount = rng.randint(1, 4)
            chain.append(
                idx.record("r1", [stake("r1", user.address, "user", a.address, amount, block)])
            )
        if start == 90:  # router c unstakes in r0 at block 94; its later records there are refused
            chain.append(
                idx.record("r0", [stake("r0", c.address, "router_operator", REALM_TARGET, 0, 94)])
            )
        if start == 60:
            new = RealmParams(
                epoch_blocks=40, funding_period_blocks=50, stake_per_mpb=TOKEN, rfr_bps=500
            )
            chain.append(
                idx.record("r1", [RealmParamsChanged(realm="r1", params=new, block=block)])
            )
        chain.append(idx.record("", [ChainHead(realm="", chain_id=1, block=start + WINDOW - 1)]))
        window.append(chain)
        for router, source in routers.items():
            chain = []
            for realm in (r for r in realms if router in serving[r]):
                rec = source.record(realm, metered=metered(realm, range(start, start + WINDOW)))
                if not (router == b.address and realm == "r1" and start == 150):
                    chain.append(rec)  # (that one is never sent: a gap)
                beat = [ChainHead(realm=realm, chain_id=1, block=start + WINDOW - 1)]
                chain.append(source.record(realm, beat))
            window.append(chain)
        records += _interleave(rng, window)
        if rng.random() < 0.3:
            records.append(rng.choice(records))  # a re-sent record: a duplicate
    late = routers[a.address].record("r0", metered=metered("r0", range(40, 50)))
    forged = late[2].replace(a.address.encode(), b.address.encode())
    records += [late, (late[0], late[1], forged)]
    for end in range(BLOCKS + WINDOW, BLOCKS + 8 * WINDOW, WINDOW):
        records.append(idx.record("", [ChainHead(realm="", chain_id=1, block=end)]))
        for router, source in routers.items():
            for realm in (r for r in realms if router in serving[r]):
                records.append(
                    source.record(realm, [ChainHead(realm=realm, chain_id=1, block=end)])
                )
    return Workload(records, indexer, ledger, realms)


def _interleave(rng: random.Random, chains: list[list[Any]]) -> list[Any]:
    """A random interleaving of several sequences, each kept in its own order."""
    chains = [list(c) for c in chains if c]
    out = []
    while chains:
        chain = rng.choice(chains)
        out.append(chain.pop(0))
        if not chain:
            chains.remove(chain)
    return out

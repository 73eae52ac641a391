"""Every bad-record class is rejected (or held) as specified, and good data is untouched."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
from kafka import KafkaConsumer, TopicPartition
from ledger_world import World, caught_up, run_until, signed_body, table

from domain.envelope import MAGIC, ZERO_HASH
from domain.events import ChainHead
from domain.topics import DEAD_TOPIC, LEDGER_TOPIC
from infra.broker import Broker
from ledger.simulate import emitter, new_signer


def test_every_bad_record_class(fresh_broker: Broker, tmp_path: Path) -> None:
    world = World(fresh_broker.bootstrap, tmp_path)
    good = emitter(world.router, fresh_broker.bootstrap, tmp_path / "spool")
    for block in range(10, 20):
        for _ in range(30):
            good.meter("r1", world.user, "0xpeer", "event", "t", 100, block)
    good.flush()
    crafted_ok = world.crafted_metered(7, block=15)
    world.send_raw(crafted_ok)

    stranger = new_signer()
    world.send_raw(b"\x00garbage")  # undecodable
    world.send_raw(signed_body(stranger, {"src": stranger.address, "seq": 1}))  # schema
    world.send_raw(
        signed_body(
            stranger,
            {
                "src": stranger.address,
                "seq": 1,
                "n": 1,
                "prev": ZERO_HASH,
                "realm": "r1",
                "events": [{"type": "Teleported", "v": 1, "realm": "r1"}],
            },
        )
    )
    world.send_raw(
        signed_body(
            stranger,
            {
                "src": stranger.address,
                "seq": 1,
                "n": 1,
                "prev": ZERO_HASH,
                "realm": "r1",
                "events": [{"type": "ChainHead", "v": 7, "realm": "r1", "chain_id": 1, "block": 1}],
            },
        )
    )
    forged = world.crafted_metered(
        1000, block=15, signer=stranger, seq=world.crafted_seq + 1, prev=world.crafted_prev
    )
    forged = forged.replace(stranger.address.encode(), world.crafted.address.encode())
    world.send_raw(forged)  # bad signature: the crafted router's address, someone else's key
    world.send_raw(
        world.crafted_metered(5, block=16, seq=world.crafted_seq + 1, prev="0x" + "ab" * 32)
    )  # broken chain
    world.send_raw(
        world.crafted_metered(5, block=16, signer=stranger, seq=1, prev=ZERO_HASH)
    )  # unknown source
    world.send_raw(
        world.crafted_metered(5, block=16, signer=world.other_realm_router, seq=1, prev=ZERO_HASH)
    )  # unauthorized
    world.send_raw(crafted_ok)  # duplicate seq
    world.crafted_seq += 3  # seq gap: three seqs never arrive
    world.send_raw(world.crafted_metered(11, block=17))
    world.send_raw(MAGIC + os.urandom(65) + b'{"src":1}')  # schema

    service = world.service()
    run_until(
        service,
        lambda s: (
            caught_up(s)
            and s.projector.sources.get(world.crafted.address) is not None
            and s.projector.sources[world.crafted.address].last_seq == world.crafted_seq
        ),
    )
    service.projector.commit()
    rejected = dict(table(service, "SELECT reason, records FROM rejected"))
    assert rejected == {
        "undecodable": 1,
        "schema": 2,
        "unknown_type": 1,
        "unknown_version": 1,
        "bad_signature": 1,
        "broken_chain": 1,
        "unknown_source": 1,
        "unauthorized_router": 1,
        "duplicate": 1,
    }
    # the gap is declared and recorded; the record after it counts
    assert table(service, "SELECT from_seq, to_seq FROM seq_gaps") == [
        (world.crafted_seq - 13, world.crafted_seq - 11)
    ]
    used = dict(
        table(service, "SELECT source, sum(messages)::BIGINT FROM usage_blocks GROUP BY source")
    )
    assert used == {world.router.address: 300, world.crafted.address: 7 + 11}
    service.close()


def test_records_wait_for_the_chain_and_a_late_record_counts_in_the_next_epoch(
    fresh_broker: Broker, tmp_path: Path
) -> None:
    world = World(fresh_broker.bootstrap, tmp_path, head=50)
    router = emitter(world.router, fresh_broker.bootstrap, tmp_path / "spool")
    for block in range(0, 100):
        router.meter("r1", world.user, "0xpeer", "event", "t", 10, block)
    router.emit(ChainHead(realm="r1", chain_id=1, block=110))
    router.flush()
    crafted_head = world.crafted_metered(
        1, block=5
    )  # the crafted router reports one message in epoch 0
    world.send_raw(crafted_head)
    service = world.service(live=True)
    # blocks above 50 are not decidable until the chain is known there: they wait, not fail
    run_until(service, lambda s: s.progress.waits.get("chain_behind", 0) > 0, 20)
    assert service.projector.rejected == {}
    world.indexer.head(120)
    world.indexer.em.flush()
    world.send_raw(world.crafted_metered(1, block=110))
    run_until(service, lambda s: s.closed_epochs().get("r1", -1) >= 0, 30)
    # epoch 0 closed; now a record of epoch 0 arrives: it is late and counts in epoch 1
    world.send_raw(world.crafted_metered(9, block=42))
    world.indexer.head(250)
    world.indexer.em.flush()
    router.emit(ChainHead(realm="r1", chain_id=1, block=250))
    router.flush()
    world.send_raw(world.crafted_metered(1, block=240))
    run_until(service, lambda s: s.closed_epochs().get("r1", -1) >= 1, 30)
    service.projector.commit()
    usage = {
        (e, cls, acct): (n, late)
        for e, cls, acct, n, late in table(
            service, "SELECT epoch, payee_class, account, messages, late_messages FROM usage"
        )
    }
    assert usage[(0, "router", world.router.address)] == (100, 0)
    assert usage[(0, "router", world.crafted.address)] == (1, 0)
    assert usage[(1, "router", world.crafted.address)] == (9 + 1, 9)
    assert table(service, "SELECT block_epoch, counted_epoch, messages FROM late_records") == [
        (0, 1, 9)
    ]
    service.close()
    router.close()


def test_only_configured_keys_may_close_epochs(fresh_broker: Broker, tmp_path: Path) -> None:
    world = World(fresh_broker.bootstrap, tmp_path)
    impostor = emitter(world.router, fresh_broker.bootstrap, tmp_path / "spool")
    from domain.events import EpochClosed

    impostor.emit(EpochClosed(realm="r1", epoch=0, first_block=0, last_block=99, marks={}))
    impostor.flush()
    service = world.service()
    run_until(service, caught_up)
    service.projector.commit()
    assert dict(table(service, "SELECT reason, records FROM rejected")) == {"unauthorized_event": 1}
    assert table(service, "SELECT count(*) FROM epochs") == [(0,)]
    service.flush_dead_letters()
    consumer = KafkaConsumer(bootstrap_servers=fresh_broker.bootstrap, auto_offset_reset="earliest")
    consumer.assign([TopicPartition(DEAD_TOPIC, 0)])
    letters = [
        orjson.loads(m.value)
        for m in consumer.poll(timeout_ms=5000).get(TopicPartition(DEAD_TOPIC, 0), [])
    ]
    consumer.close()
    # the impostor's record came through mesh.ledger and was dead-lettered with its reason
    assert [(d["reason"], d["origin"].split("/")[0]) for d in letters] == [
        ("unauthorized_event", LEDGER_TOPIC)
    ]
    service.close()

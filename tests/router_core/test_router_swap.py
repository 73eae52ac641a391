"""SWAP between the router and its peers: handshake, cheques, thresholds, restart, forgeries."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import PublishOptions
from router_harness import CHAIN_ID, PRICE, REALM, Harness, chequebook_of, new_key, run

from domain.cheque import Cheque
from domain.events import ChequeReceived, ChequeRejected, HandshakeCompleted, PeerDisconnected
from router_core.client import JoinRefused, MeshSession


async def publish_n(session: MeshSession, n: int, topic: str = "com.example.ticks") -> None:
    for i in range(n):
        await session.publish(topic, i, options=PublishOptions(acknowledge=True))


async def listener(harness: Harness, router: Any, topic: str = "com.example.ticks") -> list[int]:
    got: list[int] = []
    sub = await harness.connect(router, harness.peer())
    await sub.subscribe(got.append, topic)
    return got


def test_handshake_below_the_minimum_threshold_is_refused(harness: Harness) -> None:
    async def body() -> None:
        router = await harness.start()
        key = harness.peer()
        with pytest.raises(JoinRefused) as refused:
            await harness.connect(router, key, offer=harness.offer(key, payment_threshold=PRICE))
        assert refused.value.reason == "mesh.error.swap_handshake_refused"
        assert "threshold_too_low" in (refused.value.message or "")
        with pytest.raises(JoinRefused) as refused:
            await harness.connect(router, key, offer=harness.offer(key, chain_id=1))
        assert "chain_id" in (refused.value.message or "")
        with pytest.raises(JoinRefused):
            await harness.connect(router, key, swap=False)  # no handshake at all
        session = await harness.connect(router, key)
        assert harness.sink.of_type(HandshakeCompleted)[-1].peer == key.address
        assert session.swap_terms["payment_threshold"] == 10 * PRICE
        await router.stop()

    run(body)


def test_peer_pays_several_cumulative_cheques_automatically(harness: Harness) -> None:
    async def body() -> None:
        router = await harness.start()
        got = await listener(harness, router)
        key = harness.peer()
        payer = await harness.connect(router, key, state_path=harness.tmp_path / "payer.json")
        await publish_n(payer, 35)
        await asyncio.sleep(0.3)
        assert len(got) == 35
        received = [e for e in harness.sink.of_type(ChequeReceived) if e.peer == key.address]
        assert len(received) >= 3
        cumulatives = [e.cumulative for e in received]
        assert cumulatives == sorted(set(cumulatives))
        assert sum(e.amount for e in received) == cumulatives[-1]
        assert router.swap is not None
        assert router.swap.last_cumulative(REALM, key.address) == cumulatives[-1]
        assert router.swap.debt(REALM, key.address) == 35 * PRICE - cumulatives[-1]
        assert router.swap.debt(REALM, key.address) < 10 * PRICE
        assert payer.close_reason is None
        journal_cumulative, _ = payer.journal.issued(
            payer.journal.key(CHAIN_ID, chequebook_of(key), harness.router_key.address)
        )
        assert journal_cumulative == cumulatives[-1]
        await router.stop()

    run(body)


def test_non_paying_peer_is_disconnected_past_the_threshold(harness: Harness) -> None:
    async def body() -> None:
        router = await harness.start()
        got = await listener(harness, router)
        key = harness.peer()
        deadbeat = await harness.connect(router, key, auto_pay=False)
        await publish_n(deadbeat, 20)  # debt 20 * PRICE == disconnect threshold: still served
        assert deadbeat.close_reason is None
        deadbeat.publish("com.example.ticks", 20)  # the 21st message crosses it
        await asyncio.wait_for(deadbeat.left, 5)
        assert deadbeat.close_reason == "mesh.error.payment_required"
        assert len(got) == 21
        disconnected = harness.sink.of_type(PeerDisconnected)
        assert [(e.peer, e.balance, e.reason) for e in disconnected] == [
            (key.address, 21 * PRICE, "payment_required")
        ]
        await router.stop()

    run(body)


def test_router_restart_mid_session_keeps_every_balance(harness: Harness) -> None:
    async def body() -> None:
        router = await harness.start()
        await listener(harness, router)
        keys = [harness.peer() for _ in range(3)]
        sessions = [await harness.connect(router, k, auto_pay=False) for k in keys]
        for n, session in enumerate(sessions, 1):
            await publish_n(session, 3 * n)
        paid = await sessions[2].pay(9 * PRICE - 4 * PRICE, 0)  # peer 3 pays part of its debt
        assert paid is not None and paid["cumulative"] == 5 * PRICE
        await publish_n(sessions[0], 2)
        swap = router.swap
        assert swap is not None
        before = {
            k.address: (swap.debt(REALM, k.address), swap.last_cumulative(REALM, k.address))
            for k in keys
        }
        assert before == {
            keys[0].address: (5 * PRICE, 0),
            keys[1].address: (6 * PRICE, 0),
            keys[2].address: (4 * PRICE, 5 * PRICE),
        }
        port = router.port
        await router.stop()  # sessions are still open when the router goes down
        restarted = await harness.start(port=port)
        await listener(harness, restarted)
        assert restarted.swap is not None
        after = {
            k.address: (
                restarted.swap.debt(REALM, k.address),
                restarted.swap.last_cumulative(REALM, k.address),
            )
            for k in keys
        }
        assert after == before
        again = await harness.connect(restarted, keys[1], auto_pay=False)
        assert (again.swap_terms["debt"], again.swap_terms["last_cumulative"]) == before[
            keys[1].address
        ]
        await publish_n(again, 1)
        assert restarted.swap.debt(REALM, keys[1].address) == 7 * PRICE
        await restarted.stop()

    run(body)


def test_forged_cheques_are_rejected_and_change_no_balance(harness: Harness) -> None:
    async def body() -> None:
        router = await harness.start()
        await listener(harness, router)
        key = harness.peer()
        peer = await harness.connect(router, key, auto_pay=False)
        await publish_n(peer, 8)
        good = await peer.pay(3 * PRICE, 0)
        assert good is not None and good["debt"] == 5 * PRICE
        swap = router.swap
        assert swap is not None
        router_address = harness.router_key.address
        book = chequebook_of(key)

        def claim(
            signer: bytes,
            chain_id: int,
            chequebook: str,
            beneficiary: str,
            cumulative: int,
            claimed: dict[str, Any] | None = None,
        ) -> dict[str, Any]:
            sig = Cheque(chain_id, chequebook, beneficiary, cumulative).sign(signer)
            wire = {
                "chain_id": chain_id,
                "chequebook": chequebook,
                "beneficiary": beneficiary,
                "cumulative": cumulative,
                "signature": "0x" + sig.hex(),
            }
            wire.update(claimed or {})
            return wire

        other = new_key()
        forgeries = {
            "bad_signature": claim(other.private, CHAIN_ID, book, router_address, 8 * PRICE),
            "not_increasing": claim(key.private, CHAIN_ID, book, router_address, 2 * PRICE),
            "wrong_beneficiary": claim(key.private, CHAIN_ID, book, other.address, 8 * PRICE),
            "wrong_chain_id": claim(key.private, 1, book, router_address, 8 * PRICE),
            "wrong_chequebook": claim(
                key.private, CHAIN_ID, chequebook_of(other), router_address, 8 * PRICE
            ),
        }
        # signed for another chain but presented as this chain's: the EIP-712 domain catches it
        forgeries["bad_signature_other_domain"] = claim(
            key.private, 1, book, router_address, 8 * PRICE, {"chain_id": CHAIN_ID}
        )
        forgeries["not_increasing_equal"] = claim(
            key.private, CHAIN_ID, book, router_address, 3 * PRICE
        )
        for expected, wire in forgeries.items():
            with pytest.raises(ApplicationError) as err:
                await peer.call("mesh.swap.cheque", **wire)
            assert err.value.error == "mesh.error.cheque_rejected"
            assert err.value.kwargs["reason"] == expected.removesuffix(
                "_other_domain"
            ).removesuffix("_equal")
            assert swap.debt(REALM, key.address) == 5 * PRICE
            assert swap.last_cumulative(REALM, key.address) == 3 * PRICE
        rejected = [e.reason for e in harness.sink.of_type(ChequeRejected)]
        assert sorted(rejected) == sorted(
            k.removesuffix("_other_domain").removesuffix("_equal") for k in forgeries
        )
        assert len(harness.sink.of_type(ChequeReceived)) == 1
        balance = await peer.call("mesh.swap.balance")
        assert balance == {"debt": 5 * PRICE, "last_cumulative": 3 * PRICE}
        await router.stop()

    run(body)


def test_insolvent_chequebook_is_rejected(harness: Harness) -> None:
    class Solvency:
        def covers(self, chain_id: int, chequebook: str, beneficiary: str, cumulative: int) -> bool:
            return cumulative <= 2 * PRICE

    async def body() -> None:
        router = await harness.start(solvency=Solvency())
        await listener(harness, router)
        key = harness.peer()
        peer = await harness.connect(router, key, auto_pay=False)
        await publish_n(peer, 5)
        assert (await peer.pay(2 * PRICE, 0) or {})["cumulative"] == 2 * PRICE
        with pytest.raises(ApplicationError) as err:
            await peer.pay(3 * PRICE, 2 * PRICE)
        assert err.value.kwargs["reason"] == "insolvent"
        assert router.swap is not None and router.swap.debt(REALM, key.address) == 3 * PRICE
        await router.stop()

    run(body)

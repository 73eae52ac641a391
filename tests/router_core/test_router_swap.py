"""SWAP between the router and its peers: handshake, cheques, thresholds, restart, forgeries.

Cheques are checked against real Chequebooks on anvil (`paying` harness): a cheque the contract
would refuse or could not pay never clears a debt."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import PublishOptions
from router_harness import PRICE, REALM, Harness, Key, new_key, run, until

from domain.cheque import SECP256K1_N, Cheque
from domain.events import ChequeReceived, ChequeRejected, HandshakeCompleted, PeerDisconnected
from router_core.client import JoinRefused, MeshSession
from settlement.contracts import deploy


async def publish_n(session: MeshSession, n: int, topic: str = "com.example.ticks") -> None:
    for i in range(n):
        await asyncio.wait_for(
            session.publish(topic, i, options=PublishOptions(acknowledge=True)), 10
        )


def signed_claim(
    signer: bytes,
    chain_id: int,
    chequebook: str,
    beneficiary: str,
    cumulative: int,
    claimed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A cheque as sent on the wire, signed by `signer`; `claimed` overrides fields after signing."""
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


async def refused(peer: MeshSession, wire: dict[str, Any]) -> str:
    """Send a cheque the router must refuse; returns the machine-readable reason."""
    with pytest.raises(ApplicationError) as err:
        await peer.call("mesh.swap.cheque", **wire)
    assert err.value.error == "mesh.error.cheque_rejected"
    return str(err.value.kwargs["reason"])


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


def test_peer_pays_several_cumulative_cheques_automatically(paying: Harness) -> None:
    harness = paying

    async def body() -> None:
        # room between payment and disconnect for the chain reads of each cheque
        router = await harness.start(terms=harness.terms(disconnect_threshold=1000 * PRICE))
        got = await listener(harness, router)
        key = harness.peer()
        payer = await harness.connect(router, key, state_path=harness.tmp_path / "payer.json")
        assert router.swap is not None
        swap = router.swap

        def cheques() -> list[ChequeReceived]:
            return [e for e in harness.sink.of_type(ChequeReceived) if e.peer == key.address]

        for sent in (15, 35):  # past the payment threshold twice: at least two cheques
            before = len(cheques())
            await publish_n(payer, sent - len(got))
            # charges may reach the account a moment after the delivery: wait for the cheque
            await until(
                lambda n=sent, b=before: (
                    len(got) == n
                    and len(cheques()) > b
                    and swap.debt(REALM, key.address) < 10 * PRICE
                ),
                "every message delivered, a cheque received and the debt paid down below the"
                " payment threshold",
            )
        book_key = payer.journal.key(
            harness.chain_id, harness.offer(key).chequebook, harness.router_key.address
        )

        def settled() -> bool:  # no cheque between the payer's journal and the router any more
            issued, _ = payer.journal.issued(book_key)
            events = cheques()
            return bool(events) and issued == events[-1].cumulative == swap.last_cumulative(
                REALM, key.address
            )

        await until(settled, "the last cheque the payer issued credited and recorded")
        received = cheques()
        assert len(received) >= 2
        cumulatives = [e.cumulative for e in received]
        assert cumulatives == sorted(set(cumulatives))
        assert sum(e.amount for e in received) == cumulatives[-1]
        assert router.swap is not None
        assert router.swap.last_cumulative(REALM, key.address) == cumulatives[-1]
        assert router.swap.debt(REALM, key.address) == 35 * PRICE - cumulatives[-1]
        assert router.swap.debt(REALM, key.address) < 10 * PRICE
        assert payer.close_reason is None
        journal_cumulative, _ = payer.journal.issued(book_key)
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


def test_router_restart_mid_session_keeps_every_balance(paying: Harness) -> None:
    harness = paying

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


def test_forged_cheques_are_rejected_and_change_no_balance(paying: Harness) -> None:
    harness = paying

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
        book = harness.offer(key).chequebook
        chain_id = harness.chain_id
        claim = signed_claim
        other = new_key()
        forgeries = {
            "bad_signature": claim(other.private, chain_id, book, router_address, 8 * PRICE),
            "not_increasing": claim(key.private, chain_id, book, router_address, 2 * PRICE),
            "wrong_beneficiary": claim(key.private, chain_id, book, other.address, 8 * PRICE),
            "wrong_chain_id": claim(key.private, 1, book, router_address, 8 * PRICE),
            "wrong_chequebook": claim(
                key.private, chain_id, "0x" + "5a" * 20, router_address, 8 * PRICE
            ),
        }
        # signed for another chain but presented as this chain's: the EIP-712 domain catches it
        forgeries["bad_signature_other_domain"] = claim(
            key.private, 1, book, router_address, 8 * PRICE, {"chain_id": chain_id}
        )
        forgeries["not_increasing_equal"] = claim(
            key.private, chain_id, book, router_address, 3 * PRICE
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


def with_signature(wire: dict[str, Any], signature: bytes) -> dict[str, Any]:
    return {**wire, "signature": "0x" + signature.hex()}


async def indebted(harness: Harness, router: Any, key: Key, messages: int, **kw: Any) -> Any:
    peer = await harness.connect(router, key, auto_pay=False, **kw)
    await publish_n(peer, messages)
    return peer


def test_someone_elses_funded_chequebook_pays_nothing(paying: Harness) -> None:
    """A peer announcing another issuer's funded chequebook and signing cheques itself: the
    contract would revert (`InvalidChequeSignature`), so its debt stays."""

    async def body() -> None:
        harness = paying
        assert harness.chain is not None
        router = await harness.start()
        await listener(harness, router)
        owner, thief = harness.peer(), harness.peer()
        owners_book = harness.chain.chequebook(owner)
        peer = await indebted(
            harness, router, thief, 8, offer=harness.offer(thief, chequebook=owners_book)
        )
        wire = signed_claim(
            thief.private, harness.chain_id, owners_book, harness.router_key.address, 8 * PRICE
        )
        assert await refused(peer, wire) == "not_issuer"
        # the owner's own cheque presented by the thief is not the thief's to present
        owners = signed_claim(
            owner.private, harness.chain_id, owners_book, harness.router_key.address, 8 * PRICE
        )
        assert await refused(peer, owners) == "bad_signature"
        assert router.swap is not None
        assert router.swap.debt(REALM, thief.address) == 8 * PRICE
        assert router.swap.chequebook_cumulative(harness.chain_id, owners_book) == 0
        assert not harness.sink.of_type(ChequeReceived)
        assert [e.reason for e in harness.sink.of_type(ChequeRejected)] == [
            "not_issuer",
            "bad_signature",
        ]
        await router.stop()

    run(body)


def test_signatures_the_contract_refuses_are_refused(paying: Harness) -> None:
    """OpenZeppelin 5 ECDSA: high-s (malleable) and v = 0/1 signatures revert on chain."""

    async def body() -> None:
        harness = paying
        router = await harness.start()
        await listener(harness, router)
        key = harness.peer()
        peer = await indebted(harness, router, key, 6)
        book = harness.offer(key).chequebook
        wire = signed_claim(
            key.private, harness.chain_id, book, harness.router_key.address, 6 * PRICE
        )
        sig = bytes.fromhex(wire["signature"][2:])
        r, s, v = sig[:32], int.from_bytes(sig[32:64], "big"), sig[64]
        high_s = r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])  # same signer
        v_raw = sig[:64] + bytes([v - 27])
        assert await refused(peer, with_signature(wire, high_s)) == "bad_signature"
        assert await refused(peer, with_signature(wire, v_raw)) == "bad_signature"
        assert await refused(peer, with_signature(wire, sig[:64])) == "malformed"
        assert router.swap is not None and router.swap.debt(REALM, key.address) == 6 * PRICE
        accepted = await peer.call("mesh.swap.cheque", **wire)  # the canonical form pays
        assert accepted["accepted"] is True and accepted["debt"] == 0
        await router.stop()

    run(body)


def test_insolvent_or_foreign_token_chequebook_is_refused(paying: Harness) -> None:
    async def body() -> None:
        harness = paying
        assert harness.chain is not None
        router = await harness.start()
        await listener(harness, router)
        key = harness.peer()
        thin = harness.chain.chequebook(key, funded=2 * PRICE)
        peer = await indebted(harness, router, key, 5, offer=harness.offer(key, chequebook=thin))
        assert (await peer.pay(2 * PRICE, 0) or {})["cumulative"] == 2 * PRICE
        with pytest.raises(ApplicationError) as err:
            await peer.pay(3 * PRICE, 2 * PRICE)
        assert err.value.kwargs["reason"] == "insolvent"
        assert router.swap is not None and router.swap.debt(REALM, key.address) == 3 * PRICE
        await peer.leave()
        await asyncio.wait_for(peer.left, 5)
        # a chequebook paying in another token, however funded, pays nothing agreed
        other_token = deploy(
            harness.chain.w3, "WMPToken", harness.chain.deployer, sender=harness.chain.deployer
        ).address
        foreign = harness.chain.chequebook(key, funded=0, token=other_token)
        second = await indebted(
            harness, router, harness.reserve(key), 0, offer=harness.offer(key, chequebook=foreign)
        )
        wire = signed_claim(
            key.private, harness.chain_id, foreign, harness.router_key.address, PRICE
        )
        assert await refused(second, wire) == "wrong_token"
        assert router.swap.debt(REALM, key.address) == 3 * PRICE
        await router.stop()

    run(body)


def test_switching_chequebooks_back_cannot_replay_a_cheque(paying: Harness) -> None:
    """Cumulative amounts belong to the chequebook: returning to it does not start from zero."""

    async def body() -> None:
        harness = paying
        assert harness.chain is not None
        router = await harness.start()
        await listener(harness, router)
        key = harness.peer()
        first = harness.chain.chequebook(key)
        peer = await indebted(harness, router, key, 6)
        paid = await peer.pay(6 * PRICE, 0)
        assert paid is not None and paid["debt"] == 0
        await peer.leave()
        await asyncio.wait_for(peer.left, 5)
        second = harness.chain.chequebook(key, funded=FUNDED_OTHER)
        peer = await indebted(harness, router, key, 4, offer=harness.offer(key, chequebook=second))
        await peer.leave()
        await asyncio.wait_for(peer.left, 5)
        back = await indebted(harness, router, key, 0, offer=harness.offer(key, chequebook=first))
        assert back.swap_terms["last_cumulative"] == 6 * PRICE
        replay = signed_claim(
            key.private, harness.chain_id, first, harness.router_key.address, 6 * PRICE
        )
        assert await refused(back, replay) == "not_increasing"
        assert router.swap is not None and router.swap.debt(REALM, key.address) == 4 * PRICE
        await router.stop()

    run(body)


def test_without_a_chain_no_cheque_clears_a_debt(harness: Harness) -> None:
    async def body() -> None:
        router = await harness.start()
        await listener(harness, router)
        key = harness.peer()
        peer = await indebted(harness, router, key, 5)
        with pytest.raises(ApplicationError) as err:
            await peer.pay(5 * PRICE, 0)
        assert err.value.kwargs["reason"] == "no_chain"
        assert "no chain_rpc_url" in (err.value.args[0] if err.value.args else "")
        assert router.swap is not None and router.swap.debt(REALM, key.address) == 5 * PRICE
        await router.stop()

    run(body)


FUNDED_OTHER = 10**23

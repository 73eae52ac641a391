"""Negotiation and pricing: a client and an operator agree a price in bounded rounds (the
operator's desk counters), both sign the EIP-712 quote, the router records `PriceAgreed` and
charges the client's answered calls at that price through SWAP (the operator credited, less the
router's fee). Forged, expired, wrongly signed, foreign and over-priced quotes are refused with
their reason and charge nothing. Real broker, router and projector, stock autobahn clients."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from autobahn.wamp.exception import ApplicationError
from market_world import API, MarketWorld
from router_harness import Chain, Key, chequebook_of, new_key, run, until
from test_indexer_projection import project, rows

from domain.events import ChainHead, PriceAgreed
from domain.market import Quote
from infra.broker import Broker
from ledger.projector import _check_quote, _Refused
from market.client import QuoteDesk, find_service, negotiate, serve
from market.registry import service_id
from router_core.client import SwapOffer
from router_core.config import SwapConfig

pytestmark = pytest.mark.integration

MSG = 10**12  # the realm's price per message (market_world.PARAMS)
PAYMENT_THRESHOLD = 10**18
# five calls at the agreed price pass the payment threshold: the client pays a cheque
OFFER = 45 * 10**16
FLOOR = 30 * 10**16
FEE_BPS = 1_000
CALLS = 5


def test_negotiated_price_is_charged_through_swap_and_bad_quotes_charge_nothing(
    tmp_path: Path, fresh_broker: Broker, chain: Chain
) -> None:
    world = MarketWorld(tmp_path, fresh_broker.bootstrap, prices=[OFFER, OFFER])
    operator, other = world.operators
    client = world.client

    def swap_offer(key: Key, chequebook: str) -> SwapOffer:
        return SwapOffer(chequebook, chain.chain_id, chain.token.address, PAYMENT_THRESHOLD, MSG)

    # the log's stakes and offers are at blocks up to 7: the chain is past them
    chain.w3.provider.make_request("anvil_mine", [hex(10)])  # type: ignore[arg-type]

    async def body() -> None:
        # the router reads the chain: its blocks, and the client's chequebook for its cheques
        await world.start(
            market_fee_bps=FEE_BPS, chain_rpc_url=chain.url, chain_id=chain.chain_id,
            chain_poll_ms=200,
            swap=SwapConfig(token=chain.token.address, payment_threshold=PAYMENT_THRESHOLD,
                            disconnect_threshold=2 * PAYMENT_THRESHOLD),
        )  # fmt: skip
        assert world.service is not None and world.service.router is not None
        swap = world.service.router.swap
        assert swap is not None
        realm = world.realm.realm
        try:
            op = await world.connect(operator, swap_offer(operator, chequebook_of(operator)))
            await serve(
                op, API, {"add": lambda a, b: a + b}, desk=QuoteDesk(operator.private, FLOOR)
            )
            user = await world.connect(client, swap_offer(client, chain.chequebook(client)))
            offer = await find_service(user, API, max_price=OFFER)
            assert offer.operator == operator.address
            listed = await user.call("mesh.market.offers", service=API)
            block = listed["block"]

            def quote(**changes: Any) -> Quote:
                base = Quote(listed["chain_id"], service_id(API), realm, client.address,
                             operator.address, FLOOR, block + 100)  # fmt: skip
                return dataclasses.replace(base, **changes)

            async def refused(q: Quote, client_sig: str, operator_sig: str, by: Any = None) -> str:
                with pytest.raises(ApplicationError) as err:
                    await (by or user).call(
                        "mesh.market.quote", quote=q.to_wire(), client_signature=client_sig,
                        operator_signature=operator_sig,
                    )  # fmt: skip
                assert err.value.error == "mesh.error.quote_refused"
                return str(err.value.kwargs["reason"]) + ": " + str(err.value.args[0])

            good = quote()
            forged = quote(price_per_call=FLOOR // 4)  # signed at FLOOR, presented cheaper
            reasons = [
                await refused(forged, good.sign(client.private), good.sign(operator.private)),
                await refused(q := quote(expiry_block=block - 1), q.sign(client.private),
                              q.sign(operator.private)),
                await refused(good, good.sign(client.private), good.sign(other.private)),
                await refused(q := quote(price_per_call=OFFER + 1), q.sign(client.private),
                              q.sign(operator.private)),
                await refused(good, good.sign(client.private), good.sign(operator.private), by=op),
                await refused(q := quote(operator=(stranger := new_key()).address),
                              q.sign(client.private), q.sign(stranger.private)),
            ]  # fmt: skip
            assert [r.split(":")[0] for r in reasons] == [
                "bad_signature", "expired", "bad_signature", "price_outside_offer",
                "wrong_client", "no_offer",
            ]  # fmt: skip
            assert f"expected {client.address}" in reasons[0]
            assert f"signed by {other.address}, expected {operator.address}" in reasons[2]
            assert f"> the operator's offer {OFFER}" in reasons[3]
            with pytest.raises(ApplicationError) as malformed:
                await user.call("mesh.market.quote", quote={"realm": realm})
            assert malformed.value.kwargs["reason"] == "malformed"

            # nothing agreed: a call costs its message only
            before = swap.debt(realm, client.address)
            assert await user.call(offer.procedure("add"), 1, 2) == 3
            assert swap.debt(realm, client.address) - before == MSG

            agreed = await negotiate(
                user, client.private, offer, API, target_price=FLOOR // 2, max_price=FLOOR + 1
            )
            assert (agreed.rounds, agreed.price_per_call) == (2, FLOOR)  # asked, countered, agreed
            client_before = swap.debt(realm, client.address)
            operator_before = swap.debt(realm, operator.address)
            assert swap.last_cumulative(realm, client.address) == 0  # no cheque yet
            for a in range(CALLS):
                assert await user.call(offer.procedure("add"), a, 1) == a + 1
            fee = FLOOR * FEE_BPS // 10_000
            assert swap.debt(realm, operator.address) - operator_before == CALLS * (
                MSG - (FLOOR - fee)
            )
            # past the payment threshold the client paid a cheque the router checked on chain
            await until(lambda: swap.last_cumulative(realm, client.address) > 0, "a cheque", 30)
            paid = swap.last_cumulative(realm, client.address)
            assert paid >= PAYMENT_THRESHOLD
            assert swap.debt(realm, client.address) + paid == client_before + CALLS * (FLOOR + MSG)
        finally:
            await world.stop()

    run(body)
    # the indexer's head passes the router's blocks (the anvil's), so the ledger decides them
    world.realm.publish(
        ChainHead(world.realm.realm, chain.chain_id, chain.w3.eth.block_number + 50)
    )
    service = project(fresh_broker, tmp_path / "ledger.duckdb", [world.realm.indexer.address])
    assert rows(service, "SELECT reason, records FROM rejected") == []
    realm = world.realm.realm
    assert rows(
        service, f"SELECT client, operator, price_per_call FROM quotes WHERE realm = '{realm}'"
    ) == [(client.address, operator.address, FLOOR)]
    assert rows(
        service,
        "SELECT count(*), sum(charged), count(DISTINCT quote) FILTER (WHERE charged > 0)"
        f" FROM call_assessments WHERE realm = '{realm}'",
    ) == [(CALLS + 1, CALLS * FLOOR, 1)]
    cheques = rows(
        service,
        "SELECT peer, cumulative FROM swap_events WHERE type = 'ChequeReceived'"
        f" AND realm = '{realm}'",
    )
    assert len(cheques) >= 1 and cheques[-1][0] == client.address
    assert max(int(c) for _, c in cheques) >= PAYMENT_THRESHOLD
    service.close()


def test_the_ledger_refuses_a_recorded_quote_whose_signatures_do_not_hold() -> None:
    client, operator = new_key(), new_key()
    quote = Quote(31337, service_id(API), "r", client.address, operator.address, 7, 100)
    event = PriceAgreed(
        realm="r", router=operator.address, client=client.address, operator=operator.address,
        service_id=quote.service_id, price_per_call=7, expiry_block=100, chain_id=31337,
        quote_id=quote.quote_id, client_signature=quote.sign(client.private),
        operator_signature=quote.sign(operator.private), block=5,
    )  # fmt: skip
    _check_quote(event)  # both signatures hold
    for changes, detail in (
        ({"price_per_call": 6}, "expected"),
        ({"operator_signature": quote.sign(client.private)}, f"expected {operator.address}"),
        ({"quote_id": "0x" + "00" * 32}, "is not its digest"),
    ):
        with pytest.raises(_Refused) as err:
            _check_quote(dataclasses.replace(event, **changes))
        assert err.value.reason == "bad_quote" and detail in err.value.detail

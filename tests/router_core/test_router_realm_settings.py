"""One source of truth for realm settings (issue 10 item 7): price, keeper and `stake_per_mpb`
come from the log (set on chain, brought in by the indexer); a router whose TOML disagrees refuses
to start, naming the field and both values. Real broker, real router service, stock client."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from realm_log import LoggedRealm
from router_harness import TOKEN, run

from domain.events import REALM_TARGET, ChainHead, RealmCreated, RealmParams, StakeChanged
from infra.broker import Broker
from router_core.client import SwapOffer, connect
from router_core.realm_settings import SettingsConflict
from router_core.service import RouterService

pytestmark = pytest.mark.integration

KEEPER = "0x" + "4B" * 20
PARAMS = RealmParams(stake_per_mpb=10**15, price_per_message=7 * 10**12)


def logged(tmp_path: Path, broker: Broker) -> LoggedRealm:
    realm = LoggedRealm(tmp_path, broker.bootstrap, f"realm-{uuid.uuid4().hex[:8]}")
    keeper = KEEPER.replace("4B", "4b", 19)  # any case: addresses compare case-insensitively
    realm.publish(
        RealmCreated(realm.realm, keeper, PARAMS, 3),
        StakeChanged(
            realm.realm, realm.client.address, "user", REALM_TARGET, 3 * 10**15, "0x", 4, 0
        ),
        ChainHead(realm.realm, realm.chain_id, 5),
    )
    return realm


@pytest.mark.parametrize(
    ("given", "field", "mine", "theirs"),
    [
        ({"price_per_message": 5 * 10**12}, "price_per_message", "5000000000000", "7000000000000"),
        ({"stake_per_mpb": 10**18}, "stake_per_mpb", "1000000000000000000", "1000000000000000"),
        ({"keeper": "0x" + "99" * 20}, "keeper", "0x" + "99" * 20, "0x" + "4b" * 20),
    ],
)
def test_router_refuses_to_start_when_its_toml_disagrees_with_the_log(
    tmp_path: Path, broker: Broker, given: dict[str, object], field: str, mine: str, theirs: str
) -> None:
    realm = logged(tmp_path, broker)

    async def body() -> None:
        service = RouterService(realm.config(**given))
        with pytest.raises(SettingsConflict) as err:
            await service.start()
        text = str(err.value).lower()
        assert f"{field} is {mine.lower()}" in text and theirs.lower() in text
        assert realm.realm in str(err.value)
        assert service.router is None  # it never listened

    run(body)


def test_settings_follow_the_log_when_the_toml_agrees_or_is_silent(
    tmp_path: Path, broker: Broker
) -> None:
    realm = logged(tmp_path, broker)

    async def body() -> None:
        for i, given in enumerate(({}, {"price_per_message": 7 * 10**12, "keeper": KEEPER})):
            config = realm.config(**given)
            config = type(config)(**{**config.__dict__, "data_dir": str(tmp_path / f"r{i}")})
            service = RouterService(config)
            router = await service.start()
            assert service.follower is not None and service.follower.caught_up.is_set()
            offer = SwapOffer("0x" + "22" * 20, realm.chain_id, TOKEN, 10**18, 10**13)
            session = await connect(
                f"ws://127.0.0.1:{router.port}/ws", realm.realm, realm.client.private, swap=offer
            )
            assert session.swap_terms["price_per_message"] == PARAMS.price_per_message
            # reservations in messages per block follow the log's stake_per_mpb (10**15)
            assert service.follower.stakes.reserved_mpb(realm.realm, realm.client.address, 5) == 3
            session.leave()
            await service.stop()

    run(body)

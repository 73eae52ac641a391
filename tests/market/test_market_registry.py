"""ServiceRegistry on a real anvil, through the real indexer and the real projector: services,
offers and rewards become domain events and the projector's market views equal the contract's
state; the contract refuses bad changes with its custom errors and the log gets nothing of them."""

from __future__ import annotations

from pathlib import Path

import pytest
from indexer_harness import Harness
from mesh_chain import MeshChain
from test_indexer_projection import project, rows
from web3.exceptions import ContractCustomError

from domain.events import (
    EventDecodeError,
    OfferSet,
    OfferWithdrawn,
    RewardSet,
    ServiceRegistered,
    ServiceUpdated,
    event_from_dict,
    event_to_dict,
)
from indexer.decoding import Contracts
from indexer.rpc import JsonRpc, RpcSource
from indexer.service import SyncConfig
from infra.anvil import Anvil
from infra.broker import Broker
from market.registry import Registry, deploy_registry, service_id
from settlement.contracts import revert_reason

pytestmark = pytest.mark.integration

SPEC = "0x" + "5e" * 32
WASM = "0x" + "3a" * 32


def test_registry_changes_reach_the_projection_through_the_indexer(
    fresh_anvil: Anvil, fresh_broker: Broker, tmp_path: Path
) -> None:
    mesh = MeshChain.deploy(fresh_anvil)
    a = mesh.accounts
    keeper, publisher, s1, s2, s3 = a[1], a[2], a[3], a[4], a[5]
    registry = Registry(mesh.w3, deploy_registry(mesh.w3, mesh.stack.staking.address, sender=a[0]))
    mesh.register("market.realm", keeper)
    calc = registry.register(publisher, "com.example.calc", spec_hash=SPEC)
    search = registry.register(
        publisher, "com.example.search", deterministic=True, verifier_hash=WASM, min_requests=3
    )
    registry.update(
        publisher, "com.example.calc", spec_hash=SPEC, deterministic=True, min_requests=2
    )
    registry.offer(s1, "market.realm", "com.example.calc", 5_000)
    registry.offer(s2, "market.realm", "com.example.calc", 7_000)
    registry.offer(s1, "market.realm", "com.example.calc", 4_000)  # a new price replaces it
    registry.offer(s3, "market.realm", "com.example.search", 9)
    registry.withdraw_offer(s3, "market.realm", "com.example.search")
    registry.reward(s1, "market.realm", "com.example.search")
    registry.reward(s2, "market.realm", "com.example.calc")
    registry.withdraw_reward(s2, "market.realm", "com.example.calc")

    h = Harness(mesh, fresh_broker, tmp_path, SyncConfig(confirmations=0, poll_interval_s=0.05))
    contracts = Contracts(**{**mesh.contracts.__dict__, "service_registry": registry.address})
    source = RpcSource(JsonRpc(fresh_anvil.url), contracts, 42161)
    h.sync_to(mesh.head(), source=source)
    events = h.events()
    market = [e for e in events if isinstance(e, ServiceRegistered | ServiceUpdated | OfferSet |
                                               OfferWithdrawn | RewardSet)]  # fmt: skip
    assert [type(e).__name__ for e in market] == [
        "ServiceRegistered", "ServiceRegistered", "ServiceUpdated", "OfferSet", "OfferSet",
        "OfferSet", "OfferSet", "OfferWithdrawn", "RewardSet", "RewardSet",
    ]  # fmt: skip
    registered = market[0]
    assert isinstance(registered, ServiceRegistered)
    assert (registered.realm, registered.api, registered.service_id, registered.publisher) == (
        "",
        "com.example.calc",
        calc,
        publisher,
    )
    assert market[1].deterministic is True and market[1].min_requests == 3  # type: ignore[attr-defined]
    assert market[3].realm == "market.realm" and market[3].price_per_call == 5_000  # type: ignore[attr-defined]
    assert not [e for e in events if type(e).__name__ == "LogUnmapped"]

    service = project(fresh_broker, tmp_path / "ledger.duckdb", [h.signer.address])
    assert rows(service, "SELECT reason, records FROM rejected") == []
    assert rows(
        service,
        "SELECT api, publisher, spec_hash, deterministic, verifier_hash, min_requests"
        " FROM market_services ORDER BY api",
    ) == [
        ("com.example.calc", publisher, SPEC, True, "0x" + "00" * 32, 2),
        ("com.example.search", publisher, "0x" + "00" * 32, True, WASM, 3),
    ]
    # the views equal the contract's own state
    offers = rows(
        service, "SELECT realm, api, server, price_per_call FROM market_offers ORDER BY ALL"
    )
    assert offers == sorted(
        [
            ("market.realm", "com.example.calc", s1, 4_000),
            ("market.realm", "com.example.calc", s2, 7_000),
        ]
    )
    rid = mesh.w3.keccak(text="market.realm")
    for _, api, server, price in offers:
        on_chain = registry.contract.functions.offers(
            rid, server, bytes.fromhex(service_id(api)[2:])
        ).call()
        assert tuple(on_chain) == (price, True)
    assert registry.contract.functions.offers(rid, s3, bytes.fromhex(search[2:])).call()[1] is False
    assert rows(service, "SELECT realm, api, server FROM market_rewards") == [
        ("market.realm", "com.example.search", s1)
    ]
    # every change is kept (one row per log): 3 offers of s1/s2 + s3's offer and withdrawal
    assert rows(service, "SELECT count(*) FROM offers") == [(5,)]


def _revert(exc: ContractCustomError) -> str | None:
    return revert_reason("ServiceRegistry", str(exc.data) if exc.data else None)


def test_registry_refuses_bad_changes_with_their_reasons(fresh_anvil: Anvil) -> None:
    mesh = MeshChain.deploy(fresh_anvil)
    a = mesh.accounts
    registry = Registry(mesh.w3, deploy_registry(mesh.w3, mesh.stack.staking.address, sender=a[0]))
    mesh.register("known", a[1])
    registry.register(a[2], "com.example.calc")
    cases = [
        (lambda: registry.register(a[3], "com.example.calc"), "ServiceExists("),
        (lambda: registry.register(a[3], ""), "BadPrefix(0)"),
        (lambda: registry.register(a[3], "com.x", deterministic=True, min_requests=1),
         "BadMinRequests(True, 1)"),
        (lambda: registry.register(a[3], "com.y", min_requests=2), "BadMinRequests(False, 2)"),
        (lambda: registry.update(a[3], "com.example.calc", spec_hash=SPEC, deterministic=False),
         "NotPublisher("),
        (lambda: registry.offer(a[3], "unknown.realm", "com.example.calc", 1), "UnknownRealm("),
        (lambda: registry.offer(a[3], "known", "com.example.nothing", 1), "UnknownService("),
        (lambda: registry.withdraw_offer(a[3], "known", "com.example.calc"), "NoOffer("),
        (lambda: registry.withdraw_reward(a[3], "known", "com.example.calc"), "NoReward("),
    ]  # fmt: skip
    for attempt, reason in cases:
        with pytest.raises(ContractCustomError) as err:
            attempt()
        assert (_revert(err.value) or "").startswith(reason), (reason, _revert(err.value))
    # nothing of the refused changes is on chain
    logs = registry.contract.events.ServiceRegistered().get_logs(from_block=0)
    assert [log["args"]["apiPrefix"] for log in logs] == ["com.example.calc"]


def test_a_registry_event_with_a_non_boolean_flag_is_refused_on_decoding() -> None:
    good = ServiceUpdated(
        realm="", chain_id=1, block=2, block_hash="0x" + "ab" * 32, log_index=0, tx_hash="0x",
        service_id=service_id("com.example.calc"), spec_hash=SPEC, deterministic=True,
        verifier_hash=WASM, min_requests=2,
    )  # fmt: skip
    data = event_to_dict(good)
    assert event_from_dict(data) == good
    with pytest.raises(EventDecodeError) as err:
        event_from_dict({**data, "deterministic": 1})
    assert err.value.reason == "schema" and "deterministic must be a bool" in err.value.detail


def test_a_retracted_offer_change_is_undone_in_the_projection(
    fresh_broker: Broker, tmp_path: Path
) -> None:
    """A reorg retracts the log that changed an offer's price: its row goes and the view shows
    the price before it again (the indexer's LogRetracted, through the real projector)."""
    from realm_log import publish
    from router_harness import new_key

    from domain.envelope import Signer
    from domain.events import ChainHead, LogRetracted, RealmCreated, RealmParams

    indexer = Signer(new_key().private)
    server = new_key().address
    sid = service_id("com.example.calc")

    def at(block: int) -> dict[str, object]:
        return {"chain_id": 1, "block": block, "block_hash": f"0x{block:064x}", "log_index": 0,
                "tx_hash": "0x"}  # fmt: skip

    publish(
        fresh_broker.bootstrap, tmp_path / "spool", indexer,
        RealmCreated("r", "0x" + "4b" * 20, RealmParams(), 1),
        ServiceRegistered(realm="", service_id=sid, publisher=server, api="com.example.calc",
                          spec_hash=SPEC, deterministic=False, verifier_hash="0x" + "00" * 32,
                          min_requests=0, **at(2)),
        OfferSet(realm="r", server=server, service_id=sid, price_per_call=5, **at(3)),
        OfferSet(realm="r", server=server, service_id=sid, price_per_call=7, **at(4)),
        ChainHead("r", 1, 4),
    )  # fmt: skip
    # a later chunk of the indexer: the block of the second change was reorganized away
    publish(
        fresh_broker.bootstrap, tmp_path / "spool", indexer,
        LogRetracted(realm="r", chain_id=1, block=4, block_hash=f"0x{4:064x}", log_index=0,
                     retracted="OfferSet"),
        ChainHead("r", 1, 5),
    )  # fmt: skip
    service = project(fresh_broker, tmp_path / "ledger.duckdb", [indexer.address])
    assert rows(service, "SELECT reason, records FROM rejected") == []
    assert rows(service, "SELECT server, price_per_call FROM market_offers") == [(server, 5)]
    assert rows(service, "SELECT price_per_call FROM offers") == [(5,)]
    service.close()

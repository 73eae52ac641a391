"""Assessment and reputation: the router judges every market call it routes (result, error,
timeout; latency), ranks offers by it at once, and records each as `CallAssessed`; the ledger's
`reputation` projection (and `meshledger query reputation`) says the same. Real broker, router,
projector, stock autobahn operators (one good, one failing every other call, one too slow)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import CallOptions
from click.testing import CliRunner
from market_world import API, MarketWorld
from router_harness import run
from test_indexer_projection import project, rows

from infra.broker import Broker
from ledger.cli import cli
from market.client import offers, serve
from market.registry import service_id

pytestmark = pytest.mark.integration

CALLS = 6
TIMEOUT_MS = 300


def test_outcomes_move_reputation_in_the_router_and_in_the_ledger(
    tmp_path: Path, fresh_broker: Broker
) -> None:
    world = MarketWorld(tmp_path, fresh_broker.bootstrap, prices=[3_000, 1_000, 2_000])
    good, flaky, slow = world.operators

    def flaky_add(a: int, b: int) -> int:
        if a % 2:
            raise ApplicationError("com.example.calc.error.odd", "odd")
        return a + b

    async def slow_add(a: int, b: int) -> int:
        await asyncio.sleep(5)
        return a + b

    async def body() -> None:
        await world.start()
        try:
            for key, add in ((good, lambda a, b: a + b), (flaky, flaky_add), (slow, slow_add)):
                await serve(await world.connect(key), API, {"add": add})
            user = await world.connect(world.client)
            before = await offers(user, API)
            assert before[0].operator == flaky.address  # cheapest while nobody is assessed
            by_operator = {o.operator: o for o in before}
            errors = timeouts = 0
            for a in range(CALLS):
                assert await user.call(by_operator[good.address].procedure("add"), a, 1) == a + 1
                try:
                    await user.call(by_operator[flaky.address].procedure("add"), a, 1)
                except ApplicationError as exc:
                    assert exc.error == "com.example.calc.error.odd"
                    errors += 1
            for a in range(CALLS // 2):
                with pytest.raises(ApplicationError) as late:
                    await user.call(
                        by_operator[slow.address].procedure("add"), a, 1,
                        options=CallOptions(timeout=TIMEOUT_MS),
                    )  # fmt: skip
                assert late.value.error == "wamp.error.timeout"
                timeouts += 1
            assert (errors, timeouts) == (CALLS // 2, CALLS // 2)

            after = await offers(user, API)
            # the most expensive operator now ranks first: it answered every call
            assert [o.operator for o in after] == [good.address, flaky.address, slow.address]
            ranked = {o.operator: o for o in after}
            assert ranked[good.address].success_bps == 10_000
            assert 3_000 < ranked[flaky.address].success_bps < 7_000
            assert ranked[slow.address].success_bps == 0
            assert ranked[slow.address].p50_ms >= TIMEOUT_MS
            assert [ranked[k.address].calls for k in (good, flaky, slow)] == [6, 6, 3]
        finally:
            await world.stop()

    run(body)

    db = tmp_path / "ledger.duckdb"
    service = project(fresh_broker, db, [world.realm.indexer.address])
    assert rows(service, "SELECT reason, records FROM rejected") == []
    assessed = rows(
        service,
        "SELECT operator, outcome, count(*) FROM call_assessments"
        f" WHERE realm = '{world.realm.realm}' GROUP BY ALL",
    )
    assert sorted(assessed) == sorted(
        [(good.address, "result", 6), (flaky.address, "result", 3),
         (flaky.address, "error", 3), (slow.address, "timeout", 3)]
    )  # fmt: skip
    service.close()

    out = CliRunner().invoke(
        cli, ["query", "reputation", "--db", str(db), "--realm", world.realm.realm, "--json"]
    )
    assert out.exit_code == 0, out.output
    reputation = {r["operator"]: r for r in map(json.loads, out.output.splitlines())}
    assert {r["service_id"] for r in reputation.values()} == {service_id(API)}
    assert [
        (reputation[k.address]["calls"], reputation[k.address]["errors"],
         reputation[k.address]["timeouts"], reputation[k.address]["success_bps"])
        for k in (good, flaky, slow)
    ] == [(6, 0, 0, 10_000), (6, 3, 0, 5_000), (3, 0, 3, 0)]  # fmt: skip
    assert reputation[slow.address]["p50_ms"] >= TIMEOUT_MS

"""Session meta API across router links: real `meshledger router run` processes in a line, stock
autobahn clients. A subscriber on one end learns of sessions joining and leaving the other end
(two hops away) exactly once, link sessions are never members, and a client cannot publish on
the router's own topics (a forged SWAP payment request would make other clients pay)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import PublishOptions
from link_harness import LINE, anonymous, mesh
from router_harness import until

from router_core import messages as m
from router_core.meta import NO_SUCH_SESSION, ON_JOIN, ON_LEAVE
from router_core.swap import PAYMENT_DUE_TOPIC

pytestmark = pytest.mark.integration


def test_joins_and_leaves_two_hops_away_arrive_once_and_links_are_not_members(
    tmp_path: Path,
) -> None:
    with mesh(tmp_path, 3, LINE) as net:

        async def body() -> None:
            clients = await net.converged()
            far = net.routers[2].key.address
            joins: list[dict[str, Any]] = []
            leaves: list[tuple[list[Any], dict[str, Any]]] = []
            await clients[0].subscribe(lambda d: joins.append(d), ON_JOIN)
            await clients[0].subscribe(lambda *a, **kw: leaves.append((list(a), kw)), ON_LEAVE)

            async def interest_reached_the_far_end() -> bool:
                status = await clients[2].call("mesh.link.status", topic=ON_JOIN)
                return bool(status["fanout"])

            for _ in range(600):
                if await interest_reached_the_far_end():
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("interest in on_join did not reach router 2")

            newcomer = await anonymous(net.routers[2].url)
            newcomer_id = newcomer._session_id
            await until(lambda: any(j["session"] == newcomer_id for j in joins), "the join")
            assert await clients[2].call("wamp.session.count") == 2  # its link session is not
            assert sorted(await clients[2].call("wamp.session.list")) == sorted(
                [clients[2]._session_id, newcomer_id]
            )
            got = await clients[2].call("wamp.session.get", newcomer_id)
            assert (got["authrole"], got["router"]) == ("anonymous", far)

            newcomer.leave()
            await until(lambda: any(a[0] == newcomer_id for a, _ in leaves), "the leave")
            # a join on the middle router is the end marker: anything doubled has arrived by then
            marker = await anonymous(net.routers[1].url)
            await until(lambda: any(j["session"] == marker._session_id for j in joins), "marker")

            mine = [j for j in joins if j["session"] == newcomer_id]
            assert len(mine) == 1, joins
            assert mine[0]["router"] == far and mine[0]["authrole"] == "anonymous"
            assert mine[0]["transport"]["serializer"] == "wamp.2.json"
            assert [kw["router"] for a, kw in leaves if a[0] == newcomer_id] == [far]
            assert all(j["authrole"] != m.ROUTER_ROLE for j in joins)
            assert all(a[2] != m.ROUTER_ROLE for a, _ in leaves)
            with pytest.raises(ApplicationError) as gone:
                await clients[2].call("wamp.session.get", newcomer_id)
            assert gone.value.error == NO_SUCH_SESSION

        asyncio.run(body())


def test_a_client_cannot_publish_on_the_routers_topics(tmp_path: Path) -> None:
    with mesh(tmp_path, 2, [(0, 1)]) as net:

        async def body() -> None:
            victim, attacker = await net.converged()
            notices: list[Any] = []
            await victim.subscribe(lambda *a, **kw: notices.append(("due", kw)), PAYMENT_DUE_TOPIC)
            await victim.subscribe(lambda *a, **kw: notices.append(("join", a)), ON_JOIN)
            await victim.subscribe(lambda *a, **kw: notices.append(("marker", a)), "com.marker")
            for topic in (PAYMENT_DUE_TOPIC, ON_JOIN):
                with pytest.raises(ApplicationError) as refused:
                    await attacker.publish(
                        topic,
                        {"session": 1},
                        debt=10**24,
                        last_cumulative=0,
                        options=PublishOptions(acknowledge=True),
                    )
                assert refused.value.error == m.NOT_AUTHORIZED
            # also without acknowledge (refused silently), from the victim's own router
            victim.publish(
                PAYMENT_DUE_TOPIC,
                debt=10**24,
                last_cumulative=0,
                options=PublishOptions(exclude_me=False),
            )
            victim.publish("com.marker", 1, options=PublishOptions(exclude_me=False))
            await until(lambda: ("marker", (1,)) in notices, "the marker")
            # the marker crossed the link: a forged publication from there would have too
            for _ in range(600):
                attacker.publish("com.marker", 2)
                await asyncio.sleep(0.05)
                if ("marker", (2,)) in notices:
                    break
            else:
                raise AssertionError("no marker from router 1 reached router 0")
            assert [n for n in notices if n[0] != "marker"] == []

        asyncio.run(body())

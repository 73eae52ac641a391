"""Authentication (eth-eip191 challenge-response) and authorization by reservation stake."""

from __future__ import annotations

import pytest
from autobahn.wamp.types import Challenge
from router_harness import REALM, Harness, new_key, run

from router_core import client as client_mod
from router_core.client import JoinRefused
from router_core.router import RealmOptions


def test_staked_peer_is_welcomed_with_its_address_as_authid(harness: Harness) -> None:
    async def body() -> None:
        router = await harness.start()
        key = harness.peer()
        session = await harness.connect(router, key)
        details = session._session_details
        assert details is not None
        assert details.authid == key.address
        assert details.authmethod == "eth-eip191"
        assert details.authextra["router"] == harness.router_key.address
        assert details.authextra["swap"]["beneficiary"] == harness.router_key.address
        await router.stop()

    run(body)


def test_bad_signature_is_refused(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    impostor = new_key()

    def sign_with_other_key(self: client_mod.MeshSession, challenge: Challenge) -> str:
        return client_mod.sign_challenge(impostor.private, challenge.extra)

    async def body() -> None:
        router = await harness.start()
        monkeypatch.setattr(client_mod.MeshSession, "onChallenge", sign_with_other_key)
        with pytest.raises(JoinRefused) as refused:
            await harness.connect(router, harness.peer())
        assert refused.value.reason == "wamp.error.authentication_failed"
        assert "not by authid" in (refused.value.message or "")
        assert not router.realms[REALM].sessions
        await router.stop()

    run(body)


def test_garbage_signature_is_refused(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body() -> None:
        router = await harness.start()
        monkeypatch.setattr(client_mod.MeshSession, "onChallenge", lambda self, ch: "0xdeadbeef")
        with pytest.raises(JoinRefused) as refused:
            await harness.connect(router, harness.peer())
        assert refused.value.reason == "wamp.error.authentication_failed"
        await router.stop()

    run(body)


def test_unknown_realm_is_refused(harness: Harness) -> None:
    async def body() -> None:
        router = await harness.start()
        with pytest.raises(JoinRefused) as refused:
            await harness.connect(router, harness.peer(), realm="no.such.realm")
        assert refused.value.reason == "wamp.error.no_such_realm"
        await router.stop()

    run(body)


def test_peer_without_reservation_stake_is_refused(harness: Harness) -> None:
    async def body() -> None:
        router = await harness.start()
        with pytest.raises(JoinRefused) as refused:
            await harness.connect(router, new_key())
        assert refused.value.reason == "mesh.error.no_reservation"
        assert "no reservation stake" in (refused.value.message or "")
        await router.stop()

    run(body)


def test_anonymous_is_off_unless_configured(harness: Harness) -> None:
    from autobahn.asyncio.wamp import ApplicationSession
    from autobahn.asyncio.websocket import WampWebSocketClientFactory
    from autobahn.wamp.types import ComponentConfig

    async def try_anonymous(port: int) -> tuple[str | None, str | None]:
        import asyncio

        result: asyncio.Future[tuple[str | None, str | None]] = (
            asyncio.get_running_loop().create_future()
        )

        class Anon(ApplicationSession):
            def onConnect(self) -> None:  # noqa: N802
                self.join(REALM)

            def onJoin(self, details: object) -> None:  # noqa: N802
                result.set_result(("joined", self._authid))
                self.leave()

            def onLeave(self, details: object) -> None:  # noqa: N802
                if not result.done():
                    result.set_result(("refused", getattr(details, "reason", None)))
                self.disconnect()

        factory = WampWebSocketClientFactory(
            lambda: Anon(ComponentConfig(REALM)), url=f"ws://127.0.0.1:{port}/ws"
        )
        await asyncio.get_running_loop().create_connection(factory, "127.0.0.1", port)
        return await asyncio.wait_for(result, 5)

    async def body() -> None:
        closed = await harness.start(swap=False)
        assert await try_anonymous(closed.port) == ("refused", "wamp.error.no_auth_method")
        opened = await harness.start(swap=False, realm=RealmOptions(REALM, allow_anonymous=True))
        outcome, authid = await try_anonymous(opened.port)
        assert outcome == "joined" and authid is not None and authid.startswith("anonymous-")
        await closed.stop()
        await opened.stop()

    run(body)

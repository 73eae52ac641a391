"""Verification by redundant calls of a deterministic service with three operators, one of which
answers wrongly: detected by the default verifier (exact equality of a majority) and by a
WebAssembly verifier built here from WAT, convicted after the threshold and no longer offered; a
verifier that loops or allocates too much is stopped by its limits and routing goes on; a module
whose hash is not the service's is refused. Real broker, router, projector; stock autobahn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import wasmtime
from market_world import API, MarketWorld
from router_harness import run, until
from test_indexer_projection import project, rows

from infra.broker import Broker
from market.client import find_service, offers, serve
from market.registry import ZERO_HASH, service_id
from router_core.market_verify import Verification
from router_core.verifier import VerifierError, VerifierLimits, WasmVerifier, module_hash

pytestmark = pytest.mark.integration

CONVICT_AFTER = 2

# entries at `ptr`: count, then (len, bytes) of the request and each answer; the answer whose
# byte sum differs from the two others is wrong (bit i of the result); -1: cannot decide
SUM_VERIFIER = """
(module
  (memory (export "memory") 1)
  (func (export "input") (param i32) (result i32) (i32.const 0))
  (func (export "min_requests") (result i32) (i32.const 3))
  (func $sum (param $p i32) (param $n i32) (result i32)
    (local $s i32) (local $i i32)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $s (i32.add (local.get $s)
        (i32.load8_u (i32.add (local.get $p) (local.get $i)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))
    (local.get $s))
  (func $skip (param $p i32) (result i32)
    (i32.add (local.get $p) (i32.add (i32.const 4) (i32.load (local.get $p)))))
  (func $entry (param $p i32) (result i32)
    (call $sum (i32.add (local.get $p) (i32.const 4)) (i32.load (local.get $p))))
  (func (export "verify") (param $ptr i32) (param $len i32) (result i32)
    (local $p i32) (local $a i32) (local $b i32) (local $c i32)
    (if (i32.ne (i32.load (local.get $ptr)) (i32.const 4)) (then (return (i32.const -1))))
    (local.set $p (call $skip (i32.add (local.get $ptr) (i32.const 4))))
    (local.set $a (call $entry (local.get $p)))
    (local.set $p (call $skip (local.get $p)))
    (local.set $b (call $entry (local.get $p)))
    (local.set $p (call $skip (local.get $p)))
    (local.set $c (call $entry (local.get $p)))
    (if (i32.and (i32.eq (local.get $a) (local.get $b)) (i32.eq (local.get $b) (local.get $c)))
      (then (return (i32.const 0))))
    (if (i32.eq (local.get $a) (local.get $b)) (then (return (i32.const 4))))
    (if (i32.eq (local.get $a) (local.get $c)) (then (return (i32.const 2))))
    (if (i32.eq (local.get $b) (local.get $c)) (then (return (i32.const 1))))
    (i32.const -1)))
"""
_COMMON = """
  (memory (export "memory") 1)
  (func (export "input") (param i32) (result i32) (i32.const 0))
  (func (export "min_requests") (result i32) (i32.const 3))
"""
LOOP_VERIFIER = f"""(module {_COMMON}
  (func (export "verify") (param i32 i32) (result i32) (loop $l (br $l)) (i32.const 0)))"""
# asks for 64 MiB: the store's limit refuses the growth, and the module gives up (traps)
HOG_VERIFIER = f"""(module {_COMMON}
  (func (export "verify") (param i32 i32) (result i32)
    (drop (memory.grow (i32.const 1000)))
    (if (i32.lt_u (memory.size) (i32.const 1000)) (then unreachable))
    (i32.const 0)))"""


def wasm(wat: str) -> bytes:
    return bytes(wasmtime.wat2wasm(wat))


def verified_world(
    tmp_path: Path, broker: Broker, module: bytes | None = None, stored_as: str | None = None
) -> tuple[MarketWorld, dict[str, Any]]:
    """Three operators of a deterministic service (3 answers compared), the router verifying
    every call; `module` is its verifier, stored under `stored_as` (default: its own hash)."""
    world = MarketWorld(
        tmp_path, broker.bootstrap, prices=[1_000, 1_000, 1_000], deterministic=True,
        min_requests=3, verifier_hash=module_hash(module) if module else ZERO_HASH,
    )  # fmt: skip
    config: dict[str, Any] = {
        "market_verify_every_calls": 1,
        "market_conviction_mismatches": CONVICT_AFTER,
    }
    if module is not None:
        folder = tmp_path / "verifiers"
        folder.mkdir()
        (folder / f"{(stored_as or module_hash(module))[2:]}.wasm").write_bytes(module)
        config["market_verifiers_dir"] = str(folder)
    return world, config


async def serve_all(world: MarketWorld) -> Any:
    """The first operator adds one too many; returns the client's session."""
    wrong, *_ = world.operators
    for key in world.operators:
        delta = 1 if key is wrong else 0
        await serve(await world.connect(key), API, {"add": lambda a, b, d=delta: a + b + d})
    return await world.connect(world.client)


def verification(world: MarketWorld) -> Verification:
    assert world.service is not None and world.service.router is not None
    market = world.service.router.market
    assert market is not None and market.verification is not None
    return market.verification


@pytest.mark.parametrize("verifier", ["exact", "wasm"])
def test_a_wrong_operator_is_detected_convicted_and_no_longer_offered(
    tmp_path: Path, fresh_broker: Broker, verifier: str
) -> None:
    module = wasm(SUM_VERIFIER) if verifier == "wasm" else None
    world, config = verified_world(tmp_path, fresh_broker, module)
    wrong = world.operators[0]

    async def body() -> None:
        await world.start(**config)
        try:
            user = await serve_all(world)
            checks = verification(world)
            # its own calls are answered at once (wrongly); each is also sent to the two others
            listed = {o.operator: o for o in await offers(user, API)}
            for a in range(CONVICT_AFTER):
                assert await user.call(listed[wrong.address].procedure("add"), a, 1) == a + 2
            await until(lambda: checks.decided == CONVICT_AFTER, "both checks decided")
            assert checks.undecided == {}
            assert checks.is_convicted(world.realm.realm, service_id(API), wrong.address)
            after = await offers(user, API)
            assert after[-1].operator == wrong.address and after[-1].convicted
            assert not any(o.convicted for o in after[:-1])
            best = await find_service(user, API, max_price=1_000)
            assert best.operator != wrong.address
            assert await user.call(best.procedure("add"), 2, 3) == 5
            # a convicted operator is not asked either: two answers are too few to compare
            await until(lambda: checks.undecided["too_few_operators"] == 1, "the third call seen")
            assert checks.decided == CONVICT_AFTER
        finally:
            await world.stop()

    run(body)
    service = project(fresh_broker, tmp_path / "ledger.duckdb", [world.realm.indexer.address])
    realm = world.realm.realm
    expected_verifier = module_hash(module) if module else "exact"
    assert (
        rows(service, f"SELECT operator, verifier FROM mismatches WHERE realm = '{realm}'")
        == [(wrong.address, expected_verifier)] * CONVICT_AFTER
    )
    assert rows(
        service, f"SELECT operator, mismatches FROM convictions WHERE realm = '{realm}'"
    ) == [(wrong.address, CONVICT_AFTER)]
    reputation = rows(
        service,
        f"SELECT operator, convictions, success_bps FROM reputation WHERE realm = '{realm}'"
        " AND convictions > 0",
    )
    assert reputation == [(wrong.address, 1, 0)]  # the conviction cuts its success ratio
    service.close()


@pytest.mark.parametrize(("wat", "reason"), [(LOOP_VERIFIER, "fuel"), (HOG_VERIFIER, "trap")])
def test_a_verifier_past_its_limits_is_stopped_and_routing_goes_on(
    tmp_path: Path, broker: Broker, wat: str, reason: str
) -> None:
    world, config = verified_world(tmp_path, broker, wasm(wat))

    async def body() -> None:
        await world.start(**config)
        try:
            user = await serve_all(world)
            checks = verification(world)
            best = await find_service(user, API, max_price=1_000)
            for a in range(3):
                assert await user.call(best.procedure("add"), a, 1) in (a + 1, a + 2)
                await until(lambda a=a: checks.undecided[reason] == a + 1, f"check {a} stopped")
            assert checks.decided == 0 and not checks.convicted
            assert len(await offers(user, API)) == 3
        finally:
            await world.stop()

    run(body)


def test_a_module_whose_hash_is_not_the_services_is_refused(tmp_path: Path) -> None:
    module = wasm(SUM_VERIFIER)
    other = module_hash(wasm(LOOP_VERIFIER))
    with pytest.raises(VerifierError) as err:
        WasmVerifier(module, other, VerifierLimits())
    assert err.value.reason == "hash_mismatch"
    assert module_hash(module) in err.value.detail and other in err.value.detail
    # and so from the router's verifiers directory: a file stored under another hash
    (tmp_path / f"{other[2:]}.wasm").write_bytes(module)
    with pytest.raises(VerifierError) as loaded:
        WasmVerifier.load(tmp_path, other, VerifierLimits())
    assert loaded.value.reason == "hash_mismatch"
    # the good module decides as the test's WAT says: answer 1 differs from the two others
    verifier = WasmVerifier(module, module_hash(module), VerifierLimits())
    assert verifier.min_requests() == 3
    assert verifier.verify(b'["add",[[1,2],{}]]', [b"[[3],{}]", b"[[4],{}]", b"[[3],{}]"]) == [1]
    assert verifier.verify(b"r", [b"x", b"y", b"z"]) is None

"""The whole system in one run, as `meshledger demo` runs it but smaller: the stack of `meshledger
up` (durable broker, anvil, indexer, projector, three routers, each its own process), stock
autobahn clients paying by SWAP cheques, cash-out, settle, audit of the log and the chain. The
durable broker is stopped and restarted twice in the middle of the traffic (SIGTERM, then
SIGKILL), one router goes idle early and one routes nothing at all. Every number is checked
against the plan and the chain."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from infra.procs import pid_alive
from ledger import store
from ledger.demo import DemoPlan, RealmPlan, run_demo_plan
from ledger.demo import _params as realm_params

pytestmark = pytest.mark.integration

ROUNDS = 150  # long enough that both durable-broker restarts (~20 s each on this machine) fall mid-traffic
IDLE_AFTER = 12  # u3, r2's only publishing user, stops after this round: r2 goes idle
PLAN = DemoPlan(
    routers=("r1", "r2", "r3"),
    realms=(
        RealmPlan(
            "e2e.realm",
            # r3 is staked and serves the realm (svc registers there) but routes nothing
            routers=("r1", "r2", "r3"),
            users=(("u1", "r1", 300, None), ("u2", "r1", 100, None), ("u3", "r2", 200, IDLE_AFTER)),
            services=(("svc", ("e2e.realm.api.echo",), 40),),
            apis=(("e2e.realm.api", "dev", 10),),
            router_stake=60,
            params=realm_params(10),
        ),
    ),
    rounds=ROUNDS,
    round_interval_s=0.25,
    stake_change=("u2", 100, 20),
    watermark_every_blocks=3,
    cashout_max_age_s=3.0,
)
# Messages the routers deliver, from the plan: on r1, u1 and u2 publish every round to the two
# other subscribers (u1 or u2, and svc) and call svc (invocation + result); on r2, u3 publishes
# to svc and calls it until it stops.
EXPECTED_ROUTED = ROUNDS * (2 * 2 + 2 * 2) + (IDLE_AFTER + 1) * (1 + 2)


def broker_restarts(done: list[tuple[int, int, int, int]]) -> Any:
    """A drill: stop the durable broker mid-traffic with SIGTERM, start it again, then with
    SIGKILL, start it again; notes (signal, old pid, new pid, traffic round it was stopped in)."""

    def drill(demo: Any) -> None:
        supervisor = demo.stack.supervisor
        for sig in (signal.SIGTERM, signal.SIGKILL):
            before = next(c for c in supervisor.children if c.service.name == "broker")
            assert pid_alive(before.pid), "the broker was not running when the drill began"
            stopped_in = demo.round
            after = supervisor.restart("broker", sig)
            assert pid_alive(after.pid)
            done.append((sig, before.pid, after.pid, stopped_in))

    return drill


def test_the_whole_system_with_broker_restarts_and_an_idle_router(tmp_path: Path) -> None:
    restarts: list[tuple[int, int, int, int]] = []
    drills = [(4, broker_restarts(restarts))]
    console = Console(width=120, force_terminal=False)

    audit_cli: list[subprocess.CompletedProcess[str]] = []

    def audit_through_the_cli(demo: Any) -> None:
        """`meshledger audit --chain-rpc` on the running stack, the contract from its var/."""
        stack = demo.stack
        s = stack.sources
        args = [
            sys.executable, "-m", "ledger.cli", "audit",
            "--bootstrap", stack.endpoints.bootstrap,
            "--url", stack.address_of("projector"),
            "--ledger-source", s["ledger"], "--indexer-source", s["indexer"],
            "--settlement-source", s["settle"],
            "--chain-rpc", stack.endpoints.rpc_url,
            "--var", str(stack.layout.root),
            "--journal", str(demo.journal),
            "--work-dir", str(tmp_path / "cli-audit"),
        ]  # fmt: skip
        audit_cli.append(
            subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
        )

    result = run_demo_plan(PLAN, tmp_path, console, drills, audit_through_the_cli)

    assert result.error == "", result.error
    # both stops hit a live broker in the middle of the traffic (routers, indexer and projector
    # had to spool and re-send, and reconnect), and a new broker took over each time
    assert [sig for sig, *_ in restarts] == [signal.SIGTERM, signal.SIGKILL]
    assert all(old != new for _, old, new, _ in restarts)
    assert all(4 <= stopped_in < ROUNDS - 1 for *_, stopped_in in restarts), restarts
    # metering: every routed message exactly once, across both broker restarts
    assert result.tally.failed == 0
    assert result.tally.routed == EXPECTED_ROUTED
    assert result.metered_events == EXPECTED_ROUTED
    report = result.audit
    assert report is not None and report.matches, [d.table for d in report.diffs]
    assert report.gaps == []  # nothing lost
    assert set(report.rejected) <= {"duplicate"}  # re-sent records deduplicated, nothing else
    chain = report.chain
    assert chain is not None and chain.differences == []
    # settlement: every epoch with payouts posted and pushed; the chain paid what the ledger says
    assert result.epochs_settled_onchain >= 2
    assert result.onchain_paid_total == result.ledger_payout_total > 0
    assert sum(e.pushed for e in chain.epochs) == result.onchain_paid_total
    # cheques: what each router accepted is what the chequebook paid out and the log recorded
    assert len(result.cheques) == 5  # u1, u2, svc on r1; u3, svc on r2 (svc owes r3 nothing)
    assert all(accepted == paid == cashed > 0 for *_, accepted, paid, cashed in result.cheques)
    assert result.cheques_cashed >= len(result.cheques)
    assert result.cheques_received >= result.cheques_cashed
    assert all(not failure for failure in result.checks.values()), result.checks
    # the audit CLI on the stack: the same answer, exit 0
    (cli,) = audit_cli
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "all tables match" in cli.stdout and "the chain matches the replayed log" in cli.stdout

    # idle routers: r2 metered nothing after u3 stopped and r3 nothing at all, yet later epochs
    # closed, their watermarks moving on (the projector's own tables, read after the stack
    # stopped; their watermark records were applied, none rejected)
    con = store.connect(tmp_path / "var" / "ledger.duckdb", read_only=True)
    try:
        last_closed = con.execute("SELECT max(last_block) FROM epochs").fetchone()[0]
        idle = {}
        for name in ("r2", "r3"):
            address = _key_address(tmp_path / "var" / "keys" / f"router-{name}.key")
            idle[name] = con.execute(
                "SELECT (SELECT max(block) FROM usage_blocks WHERE source = ?),"
                " (SELECT watermark FROM sources WHERE source = ?)",
                [address, address],
            ).fetchone()
    finally:
        con.close()
    (r2_last_block, r2_watermark), (r3_last_block, r3_watermark) = idle["r2"], idle["r3"]
    assert r2_last_block is not None and last_closed > r2_last_block + realm_params(10).epoch_blocks
    assert r3_last_block is None  # never metered a message
    # r2 metered in the realm, so its watermark had to pass every closed epoch; r3 never did, so
    # it holds no epoch open, but its idle watermark kept up with the chain (a watermark every
    # few blocks: within two intervals and the grace of the last close when the stack stopped)
    assert r2_watermark >= last_closed
    slack = 2 * PLAN.watermark_every_blocks + PLAN.grace_blocks
    assert last_closed - slack <= r3_watermark, (r3_watermark, last_closed)


def _key_address(path: Path) -> str:
    from ledger.keys import load_signer

    return load_signer(path).address

"""`meshledger demo`: the main job on the real stack, end to end, then an audit of log and chain.

`meshledger up`'s stack (durable broker, anvil, contracts, indexer, projector, three routers, each
its own process); keepers create realms and set parameters on chain, users, router operators,
service operators and vendors stake through RealmStaking (one stake change mid-way), clients
(stock autobahn sessions, each an Ethereum key) publish, subscribe, register and call and pay by
SWAP cheques from chequebooks the factory deployed; routers cash the cheques out in batches,
epochs close, `meshledger settle --all-due` posts and pushes, the indexer brings every
transaction back into the log, and the audit replays the log and checks the chain. This module
drives every package: it is the top of the dependency graph, nothing imports it but the CLI and
the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from domain.events import RealmParams
from ledger.audit import AuditReport
from ledger.demo_clients import ClientSpec, Tally, Traffic
from ledger.query import QueryClient
from ledger.render import format_amount, print_audit, print_query

TOKEN = 10**18
#: how long the demo waits for each stage of the pipeline (ledger, cash-out, epochs, indexer)
STAGE_TIMEOUT_S = 180.0
POLL_S = 0.5


@dataclass(frozen=True)
class RealmPlan:
    """One realm of the demo: its routers, clients, APIs and stakes (whole WMP)."""

    name: str
    routers: tuple[str, ...]
    #: (user, router, stake, last round it takes part in or None for all)
    users: tuple[tuple[str, str, int, int | None], ...]
    #: (service operator, procedures, stake); it serves on every router of the realm
    services: tuple[tuple[str, tuple[str, ...], int], ...]
    #: (API prefix, vendor, vendor's stake)
    apis: tuple[tuple[str, str, int], ...]
    router_stake: int
    params: RealmParams
    #: set by the keeper after the realm exists (from the next epoch on)
    params_change: RealmParams | None = None

    @property
    def topic(self) -> str:
        return f"{self.name}.room"


@dataclass(frozen=True)
class DemoPlan:
    realms: tuple[RealmPlan, ...]
    routers: tuple[str, ...]
    rounds: int = 100
    round_interval_s: float = 0.3
    block_time_s: float = 0.5
    #: (user, extra stake in WMP, round): the stake change mid-way
    stake_change: tuple[str, int, int] | None = None
    grace_blocks: int = 3
    watermark_every_blocks: int = 4
    payment_threshold: int = 2 * 10**16
    disconnect_threshold: int = 10**17
    deposit: int = 50 * TOKEN
    realm_funding: int = 1_000 * TOKEN
    cashout_max_age_s: float = 6.0
    #: a durable broker (Tansu over SeaweedFS) unless False
    durable: bool = True
    #: the marketplace scene after the traffic (market/demo_scene.py; needs its realm and actors)
    market_scene: bool = False


def _params(epoch_blocks: int, **kw: int) -> RealmParams:
    base: dict[str, Any] = {"epoch_blocks": epoch_blocks, "funding_period_blocks": epoch_blocks}
    return RealmParams(stake_per_mpb=TOKEN, price_per_message=10**15, **{**base, **kw})


DEMO_PLAN = DemoPlan(
    routers=("r1", "r2", "r3"),
    realms=(
        RealmPlan(
            "com.example.chat",
            routers=("r1", "r2"),
            users=(
                ("alice", "r1", 300, None),
                ("bob", "r1", 100, None),
                ("carol", "r2", 200, None),
            ),
            services=(("chat-svc", ("com.example.chat.api.echo",), 40),),
            apis=(("com.example.chat.api", "chat-dev", 10),),
            router_stake=60,
            params=_params(20),
        ),
        RealmPlan(
            "io.crossbar.market",
            routers=("r2", "r3"),
            users=(
                ("dave", "r2", 500, None),
                ("erin", "r3", 150, None),
                ("frank", "r3", 150, None),
            ),
            services=(
                ("quotes-svc", ("io.crossbar.market.quotes.get",), 50),
                ("orders-svc", ("io.crossbar.market.orders.place",), 30),
            ),
            apis=(
                ("io.crossbar.market.quotes", "quotes-dev", 10),
                ("io.crossbar.market.orders", "orders-dev", 10),
            ),
            router_stake=60,
            params=_params(20),
            params_change=_params(20, rfr_bps=300),
        ),
    ),
    rounds=100,
    stake_change=("bob", 200, 50),
    market_scene=True,
)


@dataclass
class DemoResult:
    """What the demo measured; `summary()` is the JSON object `--json` prints last."""

    tally: Tally
    metered_events: int = 0
    routers: int = 0
    epochs_closed: int = 0
    epochs_settled_onchain: int = 0
    ledger_payout_total: int = 0
    onchain_paid_total: int = 0
    cheques_received: int = 0
    cheques_cashed: int = 0
    #: (client, router, chequebook, accepted cumulative, paidOut on chain, cashed per the log)
    cheques: list[tuple[str, str, str, int, int, int]] = field(default_factory=list)
    audit: AuditReport | None = None
    #: check name -> failure text ("" when it holds)
    checks: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    #: why the run stopped before its audit ("" when it did not)
    error: str = ""
    #: the marketplace scene, from the ledger: market calls assessed, quotes agreed, convictions
    market_calls: int = 0
    quotes_agreed: int = 0
    convictions: int = 0

    @property
    def ok(self) -> bool:
        return (
            not self.error
            and self.audit is not None
            and self.audit.matches
            and not any(self.checks.values())
        )

    def summary(self) -> dict[str, Any]:
        return {
            "wamp_messages_routed": self.tally.routed,
            "metered_events": self.metered_events,
            "routers": self.routers,
            "epochs_closed": self.epochs_closed,
            "epochs_settled_onchain": self.epochs_settled_onchain,
            "ledger_payout_total": format_amount(self.ledger_payout_total),
            "onchain_paid_total": format_amount(self.onchain_paid_total),
            "cheques_cashed": self.cheques_cashed,
            "market_calls": self.market_calls,
            "quotes_agreed": self.quotes_agreed,
            "convictions": self.convictions,
            "audit": "match" if self.audit is not None and self.audit.matches else "mismatch",
            **({"error": self.error} if self.error else {}),
        }


#: a fault drill run beside the traffic from round `at_round` on, after the drills before it
#: finished (the end-to-end test restarts the broker with it); it gets the running demo
Drill = tuple[int, Callable[["RealDemo"], None]]


def stack_config(plan: DemoPlan, keepers: dict[str, str], ports: dict[str, int]) -> Any:
    """The `meshledger up` configuration of the plan (infra.stack.StackConfig)."""
    from infra.stack import parse_stack_config

    routers = []
    for name in plan.routers:
        realms = [
            {
                "name": r.name,
                "keeper": keepers[r.name],
                "price_per_message": r.params.price_per_message,
                "stake_per_mpb": r.params.stake_per_mpb,
            }
            for r in plan.realms
            if name in r.routers
        ]
        routers.append(
            {
                "name": name,
                "listen": f"127.0.0.1:{ports[name]}",
                "watermark_every_blocks": plan.watermark_every_blocks,
                # the marketplace scene: every call of a deterministic service verified
                "market_verify_every_calls": 1,
                "market_conviction_mismatches": 2,
                "swap": {
                    "payment_threshold": plan.payment_threshold,
                    "disconnect_threshold": plan.disconnect_threshold,
                },
                # cheques go out in batches by age: every cheque waits at most max_age_s
                "cashout": {
                    "min_batch_value": 10**30,
                    "max_age_s": plan.cashout_max_age_s,
                    "interval_s": 1.0,
                    "confirmations": 1,
                },
                "realms": realms,
            }
        )
    return parse_stack_config(
        {
            "broker": {"memory": not plan.durable},
            "chain": {"chain_id": 31337, "block_time_s": plan.block_time_s},
            "indexer": {"confirmations": 2, "poll_interval_s": 0.25},
            "projector": {"grace_blocks": plan.grace_blocks},
            "routers": routers,
        }
    )


class RealDemo:
    """One run of the plan in `work` (the stack's var/ is `work/var`)."""

    def __init__(self, plan: DemoPlan, work: Path, console: Console) -> None:
        from infra.devchain import Actor

        self.plan = plan
        self.work = work
        self.console = console
        self.keys = work / "keys"
        self.actors: dict[str, Actor] = {}
        for realm in plan.realms:
            names = [f"keeper-{realm.name}", *(u for u, *_ in realm.users)]
            names += [s for s, *_ in realm.services] + [v for _, v, _ in realm.apis]
            for name in names:
                if name not in self.actors:
                    self.actors[name] = Actor.new(name, self.keys)
        self.chequebooks: dict[str, str] = {}
        self.stack: Any = None
        #: the traffic round under way (drills read it)
        self.round = -1
        self.result = DemoResult(Tally(), routers=len(plan.routers))

    # -- the stack ---------------------------------------------------------------------------
    def start(self) -> None:
        from infra.procs import stable_port
        from infra.stack import Layout, claim_var, start_stack
        from infra.supervisor import Supervisor

        keepers = {r.name: self.actors[f"keeper-{r.name}"].address for r in self.plan.realms}
        ports = {name: stable_port() for name in self.plan.routers}
        config = stack_config(self.plan, keepers, ports)
        layout = Layout(self.work / "var")
        claim_var(layout, self.console)
        supervisor = Supervisor(layout.pid_file, layout.logs, self.console)
        try:
            self.stack = start_stack(
                config, layout, supervisor, self.console, before_routers=self._setup_chain
            )
        except BaseException:
            supervisor.stop_all()
            raise

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.supervisor.stop_all()

    @property
    def query(self) -> QueryClient:
        return QueryClient(self.stack.address_of("projector"))

    def _chain(self) -> Any:
        from infra.devchain import DevChain

        return DevChain(self.stack.endpoints.rpc_url, self.stack.contracts)

    def _setup_chain(self, stack: Any) -> None:
        """Keepers create the realms and set parameters; everyone stakes; clients get a
        chequebook from the factory and fund it; keepers fund their realms' payouts. Before the
        routers start, so their first records are authorized by their stakes."""
        from infra.devchain import Actor, Call

        self.stack = stack
        chain = self._chain()
        plan = self.plan
        routers = {
            name: Actor.from_key_file(name, stack.layout.key(f"router-{name}"))
            for name in plan.routers
        }
        clients = {
            name
            for r in plan.realms
            for name in [*(u for u, *_ in r.users), *(s for s, *_ in r.services)]
        }
        stakes: dict[str, int] = defaultdict(int)
        for r in plan.realms:
            for name in r.routers:
                stakes[name] += r.router_stake * TOKEN
            for name, _, amount, _ in r.users:
                stakes[name] += amount * TOKEN
            for name, _, amount in r.services:
                stakes[name] += amount * TOKEN
            for _, name, amount in r.apis:
                stakes[name] += amount * TOKEN
            stakes[f"keeper-{r.name}"] += plan.realm_funding
        if plan.stake_change is not None:
            stakes[plan.stake_change[0]] += plan.stake_change[1] * TOKEN
        for name in clients:
            stakes[name] += plan.deposit
        everyone = {**self.actors, **routers}
        with self.console.status("keepers create the realms; stakes, chequebooks, funding…"):
            chain.fund({everyone[n].address: v for n, v in stakes.items()})
            first: list[Call] = []
            for r in plan.realms:
                keeper = self.actors[f"keeper-{r.name}"]
                first.append(chain.register_realm(keeper, r.name, r.params))
                first += [
                    chain.enable_api(keeper, r.name, prefix, self.actors[v].address)
                    for prefix, v, _ in r.apis
                ]
                if r.params_change is not None:
                    first.append(chain.set_params(keeper, r.name, r.params_change))
                first.append(chain.approve(keeper, chain.settlement.address))
                first.append(chain.fund_realm(keeper, r.name, plan.realm_funding))
            ordered = sorted(clients)
            first += [chain.create_chequebook(self.actors[n]) for n in ordered]
            receipts = chain.submit(first)
            for name, receipt in zip(ordered, receipts[-len(ordered) :], strict=True):
                self.chequebooks[name] = chain.chequebook_of(receipt).address
            second: list[Call] = []
            for actor in everyone.values():
                second.append(chain.approve(actor, chain.staking.address))
            for r in plan.realms:
                for name in r.routers:
                    second.append(
                        chain.stake(
                            routers[name], r.name, "router_operator", r.router_stake * TOKEN
                        )
                    )
                for name, _, amount, _ in r.users:
                    second.append(chain.stake(self.actors[name], r.name, "user", amount * TOKEN))
                for name, _, amount in r.services:
                    second.append(
                        chain.stake(self.actors[name], r.name, "service_operator", amount * TOKEN)
                    )
                for _, name, amount in r.apis:
                    second.append(
                        chain.stake(self.actors[name], r.name, "developer", amount * TOKEN)
                    )
            for name in ordered:
                book = self.chequebooks[name]
                second.append(chain.approve(self.actors[name], book))
                second.append(chain.deposit(self.actors[name], book, plan.deposit))
            chain.submit(second)
        self.console.print(
            f"on chain: {len(plan.realms)} realms, {len(second) // 2} stakes and deposits, "
            f"{len(self.chequebooks)} chequebooks through the factory (block {chain.head()})"
        )

    # -- traffic -----------------------------------------------------------------------------
    def client_specs(self) -> list[ClientSpec]:
        specs = []
        urls = {name: self.stack.address_of(f"router-{name}") for name in self.plan.routers}
        for r in self.plan.realms:
            for name, router, _, last in r.users:
                specs.append(self._spec(name, r, router, urls[router], last_round=last))
            for name, procedures, _ in r.services:
                for router in r.routers:
                    specs.append(self._spec(name, r, router, urls[router], procedures=procedures))
        return specs

    def _spec(self, name: str, realm: RealmPlan, router: str, url: str, **kw: Any) -> ClientSpec:
        actor = self.actors[name]
        return ClientSpec(
            name,
            actor.private_key,
            self.chequebooks[name],
            realm.name,
            router,
            url,
            realm.topic,
            **kw,
        )

    def traffic(self, drills: list[Drill]) -> Traffic:
        from router_core.client import SwapOffer

        plan = self.plan
        prices = {r.name: r.params.price_per_message for r in plan.realms}
        token = self.stack.contracts["token"]

        def offer(spec: ClientSpec) -> SwapOffer:
            return SwapOffer(
                chequebook=spec.chequebook,
                chain_id=31337,
                token=token,
                payment_threshold=plan.payment_threshold,
                price_per_message=prices[spec.realm],
            )

        traffic = Traffic()
        threads: list[threading.Thread] = []
        errors: list[BaseException] = []

        async def on_round(n: int) -> None:
            self.round = n
            change = plan.stake_change
            if change is not None and n == change[2]:
                user, extra, _ = change
                realm = next(r.name for r in plan.realms if any(u == user for u, *_ in r.users))
                chain = self._chain()
                call = chain.stake(self.actors[user], realm, "user", extra * TOKEN)
                await asyncio.to_thread(chain.submit, [call])
                self.console.print(f"round {n}: {user} stakes {extra} WMP more in {realm}")
            for at_round, drill in drills:
                if n == at_round:
                    after = threads[-1] if threads else None
                    thread = threading.Thread(target=_guarded(drill, self, errors, after))
                    thread.start()
                    threads.append(thread)

        async def body() -> None:
            await traffic.start(self.client_specs(), offer, self.work / "clients")
            self.console.print(f"{len(traffic.clients)} client sessions joined their routers")
            await traffic.run(plan.rounds, plan.round_interval_s, on_round)
            for thread in threads:
                await asyncio.to_thread(thread.join)
            await traffic.stop()

        with self.console.status(f"{plan.rounds} rounds of publish/subscribe and calls…"):
            asyncio.run(body())
        if errors:
            import traceback

            detail = "".join(traceback.format_exception(errors[0]))
            raise RuntimeError(f"a drill failed: {errors[0]!r}\n{detail}") from errors[0]
        self.result.tally = traffic.tally()
        self.traffic_clients = traffic.clients
        return traffic

    def market(self) -> None:
        """The marketplace scene (market/demo_scene.py), after the traffic: its sessions'
        deliveries count in the tally and their cheques in the cheque checks."""
        from market import demo_scene

        with self.console.status("marketplace: a service on chain, its offers indexed…"):
            demo_scene.register_on_chain(self)

        async def body() -> tuple[Any, list[Any]]:
            scene, clients = await demo_scene.run_scene(self, demo_scene.swap_offer_of(self))
            await demo_scene.leave(clients)
            return scene, clients

        with self.console.status("marketplace: discovery, negotiation, verified calls…"):
            scene, clients = asyncio.run(body())
        tally = self.result.tally
        for client in clients:
            for name in ("events", "invocations", "results", "published", "calls", "failed"):
                setattr(tally, name, getattr(tally, name) + getattr(client.tally, name))
        self.traffic_clients = [*self.traffic_clients, *clients]
        c = self.console
        first, second = scene.first, scene.second
        c.print(
            f"discovery: {demo_scene.CLIENT} found {first.operator[:10]}… (the cheapest, "
            f"{format_amount(first.price_per_call)} per call); agreed "
            f"{format_amount(scene.first_quote.price_per_call)} in {scene.first_quote.rounds} "
            f"rounds (quote {scene.first_quote.quote_id[:10]}…)"
        )
        c.print(
            f"verification: every call also asked of the other operators; "
            f"{first.operator[:10]}… answered wrongly and was convicted"
        )
        c.print(
            f"discovery again: {second.operator[:10]}…; agreed "
            f"{format_amount(scene.second_quote.price_per_call)} per call in "
            f"{scene.second_quote.rounds} rounds; {scene.invocations} invocations in the scene"
        )

    # -- the ledger, the chain --------------------------------------------------------------
    def wait(
        self, what: str, check: Callable[[], bool], timeout_s: float = STAGE_TIMEOUT_S
    ) -> None:
        deadline = time.monotonic() + timeout_s
        with self.console.status(f"waiting: {what}…"):
            while not check():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"demo: {what} not reached within {timeout_s:.0f}s")
                time.sleep(POLL_S)

    def metered(self) -> int:
        return sum(int(r["used_mpb"]) for r in self.query.rows("bandwidth"))

    def settle_pipeline(self) -> None:
        """Metering in the ledger, cheques cashed on chain, epochs of the traffic closed."""
        routed = self.result.tally.routed
        self.wait(
            f"{routed:,} routed messages metered in the ledger", lambda: self.metered() >= routed
        )
        self.result.metered_events = self.metered()
        chain = self._chain()
        pairs = self._cheque_pairs()
        self.wait(
            f"{len(pairs)} client/router cheque balances cashed on chain",
            lambda: all(chain.paid_out(book, router) >= c for _, router, book, c in pairs),
        )
        last: dict[str, int] = defaultdict(int)
        for row in self.query.rows("bandwidth"):
            if int(row["used_mpb"]) > 0:
                last[row["realm"]] = max(last[row["realm"]], int(row["block"]))

        def closed() -> bool:
            epochs = self.query.rows("epochs")
            done = {
                realm: any(e["realm"] == realm and int(e["last_block"]) >= block for e in epochs)
                for realm, block in last.items()
            }
            confirmed = all(e["confirmed_digest"] == e["digest"] for e in epochs)
            return all(done.values()) and confirmed

        self.wait("every epoch with traffic closed, its payouts on the log", closed)

    def _cheque_pairs(self) -> list[tuple[str, str, str, int]]:
        """(client, router address, chequebook, highest cumulative the router accepted)."""
        best: dict[tuple[str, str, str], int] = {}
        for client in self.traffic_clients:
            for router, cumulative in client.accepted.items():
                key = (client.spec.name, router, client.spec.chequebook)
                best[key] = max(best.get(key, 0), cumulative)
        return [(c, r, b, v) for (c, r, b), v in sorted(best.items())]

    def settle(self) -> None:
        from infra.stack import meshledger_command

        stack = self.stack
        args = [
            *meshledger_command(), "settle", "--all-due",
            "--rpc-url", stack.endpoints.rpc_url,
            "--chain-id", str(stack.config.chain.chain_id),
            "--contract", stack.contracts["settlement"],
            "--key-file", str(stack.layout.key("settle")),
            "--journal", str(self.journal),
            "--spool-dir", str(self.work / "settle-spool"),
            "--bootstrap", stack.endpoints.bootstrap,
            "--ledger-source", stack.sources["ledger"],
            "--query-url", stack.address_of("projector"),
            "--confirmations", "1",
        ]  # fmt: skip
        self.console.rule("[bold]meshledger settle --all-due")
        with self.console.status("posting roots and pushing payouts on EpochSettlement…"):
            done = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
        self.print_settled(done.stdout)
        if done.returncode != 0:
            raise RuntimeError(f"meshledger settle exited {done.returncode}: {done.stderr.strip()}")
        head = self._chain().head()
        indexer = stack.sources["indexer"]

        def indexed() -> bool:
            rows = self.query.rows("sources")
            return any(r["source"] == indexer and int(r["watermark"]) >= head for r in rows)

        self.wait(f"the indexer and the projector through block {head}", indexed)

    @property
    def journal(self) -> Path:
        return self.work / "settle-journal.sqlite"

    def audit(self) -> AuditReport:
        from ledger.audit import LiveSide, ReplayedPayouts, run_audit
        from ledger.service import trust_from
        from settlement.audit import chain_check

        stack = self.stack
        s = stack.sources
        trust = trust_from([s["ledger"]], [s["indexer"]], [s["settle"]])
        check = chain_check(
            stack.endpoints.rpc_url, stack.contracts["settlement"], ReplayedPayouts, self.journal
        )
        live = LiveSide(url=stack.address_of("projector"))
        self.console.rule("[bold]audit: replay the log from offset 0, then check the chain")
        with self.console.status("replaying the log into a fresh DuckDB, checking the chain…"):
            report = run_audit(
                stack.endpoints.bootstrap, trust, live, self.work / "audit", chain_check=check
            )
        live.close()
        self.result.audit = report
        return report

    # -- numbers -----------------------------------------------------------------------------
    def measure(self) -> None:
        """The result's numbers, from the live ledger (the audit showed it equals the replay)
        and the chain, and the cross-checks between them."""
        result = self.result
        live = self.query
        epochs = live.rows("epochs")
        result.epochs_closed = len(epochs)
        report = result.audit
        chain = getattr(report, "chain", None)
        if chain is not None:
            result.epochs_settled_onchain = len(chain.epochs)
            result.ledger_payout_total = chain.ledger_total
            result.onchain_paid_total = chain.paid_onchain
        logs = live.get("table/chain_logs")
        columns = logs["columns"]
        cashed: dict[tuple[str, str], int] = defaultdict(int)
        for row in logs["rows"]:
            entry = dict(zip(columns, row, strict=True))
            if entry["type"] == "ChequeCashed" and entry["retracted_seq"] is None:
                body = json.loads(entry["body"])
                cashed[(body["chequebook"].lower(), body["beneficiary"].lower())] += int(
                    body["paid"]
                )
                result.cheques_cashed += 1
        swaps = live.get("table/swap_events")
        result.cheques_received = sum(
            1
            for row in swaps["rows"]
            if dict(zip(swaps["columns"], row, strict=True))["type"] == "ChequeReceived"
        )
        chain_view = self._chain()
        for client, router, book, accepted in self._cheque_pairs():
            paid = chain_view.paid_out(book, router)
            logged = cashed.get((book.lower(), router.lower()), 0)
            result.cheques.append((client, router, book, accepted, paid, logged))
        result.market_calls = len(live.get("table/call_assessments")["rows"])
        result.quotes_agreed = len(live.get("table/quotes")["rows"])
        result.convictions = len(live.get("table/convictions")["rows"])
        metered = result.metered_events
        result.checks = {
            "metered = routed": ""
            if metered == result.tally.routed
            else f"{metered} metered, {result.tally.routed} routed",
            "on-chain paid = ledger payouts": ""
            if result.onchain_paid_total == result.ledger_payout_total
            else f"{result.onchain_paid_total} paid on chain, {result.ledger_payout_total} in the ledger",
            "every epoch with payouts settled": ""
            if result.epochs_settled_onchain == sum(1 for e in epochs if int(e["payees"]) > 0)
            else f"{result.epochs_settled_onchain} settled of "
            f"{sum(1 for e in epochs if int(e['payees']) > 0)} with payouts",
            "cheques cashed = cheques received": ""
            if result.cheques and all(a == p == c for *_, a, p, c in result.cheques)
            else "accepted / paid out on chain / cashed per the log differ: "
            + "; ".join(
                f"{c}->{r[:10]}: {a}/{p}/{lg}"
                for c, r, _, a, p, lg in result.cheques
                if not a == p == lg
            ),
            "no seq gaps": "" if report is not None and not report.gaps else "seq gaps in the log",
        }

    # -- output ------------------------------------------------------------------------------
    def print_tables(self) -> None:
        console, live = self.console, self.query
        console.rule("[bold]the ledger")
        print_query(
            console,
            "realms, as their keepers set them on chain",
            [
                {
                    "realm": r["realm"],
                    "keeper": r["keeper"],
                    "rfr bps": r["rfr_bps"],
                    "epoch blocks": r["epoch_blocks"],
                    "price/msg": r["price_per_message"],
                    "stake/mpb": r["stake_per_mpb"],
                }
                for r in live.rows("realms")
            ],  # fmt: skip
            amounts=("price/msg", "stake/mpb"),
        )
        epochs = [e for e in live.rows("epochs") if int(e["payees"]) > 0]
        print_query(
            console,
            "epochs with payouts (closed by the projector, funding from the stakes)",
            [
                {
                    "realm": e["realm"],
                    "epoch": e["epoch"],
                    "blocks": f"{e['first_block']}-{e['last_block']}",
                    "funding": e["funding"],
                    "paid out": e["total"],
                    "carried": e["remainder"],
                    "payees": e["payees"],
                }
                for e in epochs
            ],  # fmt: skip
            amounts=("funding", "paid out", "carried"),
        )
        per_payee: dict[tuple[str, str, str], list[int]] = defaultdict(list)
        for row in live.rows("payouts"):
            per_payee[(row["realm"], row["payee_class"], row["account"])].append(int(row["amount"]))
        print_query(
            console,
            "payouts per payee over those epochs",
            [
                {
                    "realm": realm,
                    "class": cls,
                    "account": account,
                    "epochs": len(amounts),
                    "total": sum(amounts),
                }
                for (realm, cls, account), amounts in sorted(per_payee.items())
            ],  # fmt: skip
            amounts=("total",),
        )
        console.rule("[bold]the chain")
        chain: Any = self.result.audit.chain if self.result.audit is not None else None
        if chain is not None:
            print_query(
                console,
                "EpochSettlement: posted epochs, equal to the replayed log's plan",
                [
                    {
                        "realm": e.realm,
                        "epoch": e.epoch,
                        "root": e.root,
                        "total": e.total,
                        "batches": e.batches,
                        "pushed": e.pushed,
                    }
                    for e in chain.epochs
                ],  # fmt: skip
                amounts=("total", "pushed"),
            )
        names = {self.stack.sources[f"router-{n}"].lower(): n for n in self.plan.routers}
        print_query(
            console,
            "SWAP cheques: received by the router, paid out by the chequebook, cashed per the log",
            [
                {
                    "client": c,
                    "router": names.get(r.lower(), r),
                    "chequebook": b,
                    "received": a,
                    "paid out": p,
                    "cashed": lg,
                }
                for c, r, b, a, p, lg in self.result.cheques
            ],  # fmt: skip
            amounts=("received", "paid out", "cashed"),
        )

    def print_settled(self, stdout: str) -> None:
        """`settle`'s lines (one per epoch, `key=value`) as a table."""
        rows = []
        for line in stdout.splitlines():
            status, _, rest = line.partition(" ")
            fields = dict(f.split("=", 1) for f in rest.split() if "=" in f)
            if "realm" in fields:
                rows.append(
                    {"realm": fields["realm"], "epoch": int(fields["epoch"]), "status": status,
                     "total": fields.get("total", "0"), "root": fields.get("root", ""),
                     "post tx": fields.get("post_tx", "")}
                )  # fmt: skip
            elif line.strip():
                self.console.print(f"  {line}", highlight=False)
        print_query(self.console, "settle --all-due", rows, amounts=("total",))

    def print_summary(self) -> None:
        result, console = self.result, self.console
        if result.audit is not None:
            print_audit(console, result.audit)
        for name, failure in result.checks.items():
            mark = "[green]✓[/]" if not failure else "[red]✗[/]"
            console.print(f"{mark} {name}" + (f": {failure}" if failure else ""))
        s = result.summary()
        console.print(
            f"{s['wamp_messages_routed']:,} messages routed by {result.routers} routers, "
            f"{s['metered_events']:,} metered; {s['epochs_closed']} epochs closed, "
            f"{s['epochs_settled_onchain']} settled on chain: {s['ledger_payout_total']} in the "
            f"ledger, {s['onchain_paid_total']} paid on chain; {result.cheques_received} cheques "
            f"received, {s['cheques_cashed']} cashed on chain; {result.seconds:.0f}s"
        )
        verdict = "[bold green]the audit matches the log and the chain[/]"
        if not result.ok:
            verdict = "[bold red]the audit or a check does NOT match[/]"
        console.print(verdict)


def _guarded(
    drill: Callable[[RealDemo], None],
    demo: RealDemo,
    errors: list[BaseException],
    after: threading.Thread | None,
) -> Callable[[], None]:
    def run() -> None:
        if after is not None:
            after.join()
        try:
            drill(demo)
        except BaseException as exc:  # reported by the traffic's caller
            errors.append(exc)

    return run


def run_demo_plan(
    plan: DemoPlan,
    work: Path,
    console: Console,
    drills: list[Drill] | None = None,
    before_stop: Callable[[RealDemo], None] | None = None,
) -> DemoResult:
    """Run the plan in `work`; the stack is stopped afterwards, whatever happened (after
    `before_stop`, which the end-to-end test uses to run the audit CLI on the stack)."""
    started = time.monotonic()
    demo = RealDemo(plan, work, console)
    console.rule("[bold]meshledger demo: the stack (`meshledger up`)")
    try:
        demo.start()
        demo.stack.supervisor.print_status()
        console.rule("[bold]traffic: stock autobahn clients, SWAP cheques")
        demo.traffic(drills or [])
        if plan.market_scene:
            console.rule("[bold]the marketplace: discovery, a negotiated price, a conviction")
            demo.market()
        t = demo.result.tally
        console.print(
            f"clients: {t.published:,} publications, {t.calls:,} calls; delivered to them: "
            f"{t.events:,} events, {t.invocations:,} invocations, {t.results:,} results "
            f"({t.failed} failed)"
        )
        demo.settle_pipeline()
        demo.settle()
        demo.audit()
        demo.measure()
        demo.print_tables()
        demo.result.seconds = time.monotonic() - started
        demo.print_summary()
        if before_stop is not None:
            before_stop(demo)
    except Exception as exc:  # reported, the stack stopped, the exit code says it
        demo.result.error = f"{type(exc).__name__}: {exc}"
        demo.result.seconds = time.monotonic() - started
        console.print(f"[bold red]the demo stopped:[/] {demo.result.error}")
        console.print(f"logs of every service: {work / 'var' / 'logs'}")
    finally:
        demo.stop()
    return demo.result


def run_demo(data_dir: Path | None = None, as_json: bool = False) -> int:
    """`meshledger demo`: exit 0 only when the audit matches the log and the chain (and the
    demo's own cross-checks hold)."""
    console = Console()
    work = data_dir or Path(tempfile.mkdtemp(prefix="meshledger-demo-"))
    if data_dir is not None and (work / "var").exists():
        shutil.rmtree(work / "var")  # a demo starts from a fresh chain and log
    work.mkdir(parents=True, exist_ok=True)
    console.print(f"files of this run: {work}")
    result = run_demo_plan(replace(DEMO_PLAN), work, console)
    if as_json:
        print(json.dumps(result.summary()))
    return 0 if result.ok else 1

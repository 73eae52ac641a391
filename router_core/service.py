"""Assembles a running router from a `RouterConfig`: key, emitter, clock, stakes, SWAP, cash-out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domain.envelope import Signer
from domain.swap import RouterTerms
from infra.metrics import (
    HealthCheck,
    MetricsServer,
    parse_listen,
    registry_of,
    router_metrics,
    rpc_check,
    tcp_check,
)
from router_core.cashout import CashoutPolicy, CashoutQueue, CashoutSink, open_chequebook_sink
from router_core.chain_clock import ChainClock, HeadEventClock, ManualClock, Web3HeadPoller
from router_core.chequebooks import ChequebookReader, NoChain, Web3Chequebooks
from router_core.client import ChequeJournal, SwapOffer
from router_core.config import RouterConfig
from router_core.discovery import RealmEndpoints
from router_core.handoff import LedgerHandoff
from router_core.ledger_follower import LedgerFollower
from router_core.links import LinkPeer
from router_core.market import MarketBook, MarketService
from router_core.market_verify import Verification
from router_core.meter_child import ChildDrain, ChildSpec
from router_core.metering import NullSink, UsageSink
from router_core.prices import PriceBook
from router_core.realm_settings import (
    LedgerRealms,
    RealmSettings,
    RealmTerms,
    SettingsConflict,
    StaticRealm,
)
from router_core.router import Limits, RealmOptions, Router
from router_core.stakes import LedgerStakes, StakeView, StaticStakes
from router_core.swap import SwapService

log = logging.getLogger("router_core.service")


class CombinedStakes:
    """Static reservations (dev) plus those read from the ledger."""

    def __init__(self, *views: StakeView) -> None:
        self.views = views

    def reserved_mpb(self, realm: str, address: str, block: int) -> int:
        return max((v.reserved_mpb(realm, address, block) for v in self.views), default=0)

    def has_reservation(self, realm: str, address: str, block: int) -> bool:
        return self.reserved_mpb(realm, address, block) > 0


@dataclass
class RouterService:
    config: RouterConfig
    router: Router | None = None
    drain: ChildDrain | None = None
    handoff: LedgerHandoff | None = None
    follower: LedgerFollower | None = None
    cashout: CashoutQueue | None = None
    cashout_sink: CashoutSink | None = None
    clock: ChainClock | None = None
    #: the metering child's spool (its size is a metric)
    spool_dir: Path | None = None
    metrics: Any = None
    _opened_sink: Any = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    #: the one thread that opens, uses and closes the cash-out sink
    _cashout_thread: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="cashout")
    )

    async def start(self) -> Router:
        cfg = self.config
        loop = asyncio.get_running_loop()
        key = cfg.private_key()
        signer = Signer(key)
        data = Path(cfg.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        sink: UsageSink
        if cfg.broker:
            # sealing, signing and producing run in a supervised child that owns the spool
            self.spool_dir = data / "spool"
            self.drain = ChildDrain(
                ChildSpec(bootstrap=cfg.broker, spool_dir=str(self.spool_dir), state_dir=str(data)),
                key,
                loop,
            )
            self.handoff = LedgerHandoff(self.drain, loop)
            await self.drain.start()
            sink = self.handoff
        else:
            log.warning("no broker configured: metering and SWAP events are not published")
            sink = NullSink()
        clock: ChainClock
        if cfg.chain_rpc_url:
            poller = Web3HeadPoller(cfg.chain_rpc_url, cfg.chain_poll_ms)
            poller.start()
            clock = poller
        elif cfg.broker and cfg.ledger_sources:
            clock = HeadEventClock(loop, cfg.chain_id)
        else:
            clock = ManualClock()
        self.clock = clock
        static = StaticStakes({r.name: r.reservations for r in cfg.realms})
        stakes: StakeView = static
        ledger_realms: LedgerRealms | None = None
        prices = PriceBook()
        if cfg.broker and cfg.ledger_sources:
            ledger_realms = LedgerRealms()
        settings = RealmSettings(
            [
                StaticRealm(r.name, r.keeper, r.price_per_message, r.stake_per_mpb)
                for r in cfg.realms
            ],
            ledger_realms,
        )
        market_book = MarketBook()
        discovering = {r.name: r.link_peers() for r in cfg.realms if r.discover}

        def changed(realm: str) -> None:  # on the follower's thread
            if realm in discovering:
                loop.call_soon_threadsafe(self._rediscover, realm)

        self.endpoints = RealmEndpoints(changed)
        self._discovering = discovering
        if cfg.broker and cfg.ledger_sources:
            ledger = LedgerStakes(settings.stake_per_mpb)
            self.follower = LedgerFollower(
                cfg.broker,
                cfg.ledger_sources,
                ledger,
                clock if isinstance(clock, HeadEventClock) else None,
                realms=ledger_realms,
                prices=prices,
                market=market_book,
                endpoints=self.endpoints,
            )
            self.follower.start()
            stakes = CombinedStakes(static, ledger)
            # realm settings come from the log: read it to its end before serving
            caught_up = await asyncio.to_thread(
                self.follower.caught_up.wait, cfg.ledger_catchup_timeout_s
            )
            if not caught_up:
                await self.stop()
                raise RuntimeError(
                    f"mesh.ledger not read to its end within {cfg.ledger_catchup_timeout_s:g}s "
                    f"(broker {cfg.broker}): realm settings unknown, not serving"
                )
            try:
                settings.check()
            except SettingsConflict:
                await self.stop()
                raise
        swap = None
        if cfg.swap.enabled:
            self.cashout = CashoutQueue(
                data / "cashout.sqlite",
                CashoutPolicy(
                    cfg.cashout.min_batch_value,
                    cfg.cashout.max_age_s,
                    cfg.cashout.max_batch_cheques,
                    cfg.cashout.max_pending_cheques,
                ),
            )
            if self.cashout_sink is None:
                self._opened_sink = await self._on_cashout_thread(open_chequebook_sink, cfg, data)
                self.cashout_sink = self._opened_sink
            chequebooks: ChequebookReader = (
                Web3Chequebooks(cfg.chain_rpc_url, cfg.chain_id) if cfg.chain_rpc_url else NoChain()
            )
            base = RouterTerms(
                payment_threshold=cfg.swap.payment_threshold,
                disconnect_threshold=cfg.swap.disconnect_threshold,
                price_per_message=0,
                token=cfg.swap.token,
                chain_id=cfg.chain_id,
                min_payment_threshold=cfg.swap.min_payment_threshold,
            )
            terms = RealmTerms(
                settings,
                prices,
                clock,
                base,
                [r.name for r in cfg.realms],
                cfg.swap.token_decimals,
            )
            swap = SwapService(
                signer.address,
                terms,
                sink,
                clock,
                data / "swap.sqlite",
                cfg.swap.flush_interval_ms,
                chequebooks,
                self.cashout,
            )
        realms = [
            RealmOptions(r.name, r.allow_anonymous, r.enforce_bandwidth, r.burst_messages)
            for r in cfg.realms
        ]
        limits = Limits(max_frame_bytes=cfg.max_frame_bytes, call_timeout_ms=cfg.call_timeout_ms)
        self.router = Router(
            signer.address,
            realms,
            stakes,
            clock,
            sink if cfg.broker else None,
            swap,
            limits,
            chain_id=cfg.chain_id,
            watermark_every_blocks=cfg.watermark_every_blocks,
            peers={r.name: r.link_peers() for r in cfg.realms},
            discovering=discovering,
            link_key=key,
            link_limits=cfg.links,
            link_swap=self._link_offer(),
            link_journal=ChequeJournal(data / "link-cheques.json"),
            market=MarketService(
                market_book,
                signer.address,
                sink,
                clock,
                chain_id=cfg.chain_id,
                swap=swap,
                fee_bps=cfg.market_fee_bps,
                verification=Verification(
                    signer.address,
                    sink,
                    clock,
                    every_calls=cfg.market_verify_every_calls,
                    conviction_mismatches=cfg.market_conviction_mismatches,
                    call_timeout_ms=cfg.call_timeout_ms,
                    verifiers_dir=(
                        Path(cfg.market_verifiers_dir) if cfg.market_verifiers_dir else None
                    ),
                ),
            ),
        )
        if self.handoff is not None:
            self.handoff.on_full = self.router.pause_reading
            self.handoff.on_space = self.router.resume_reading
        host, port = cfg.host_port
        await self.router.start(host, port)
        for realm in discovering:
            self._rediscover(realm)
        if self.cashout is not None and self.cashout_sink is not None:
            self._tasks.append(loop.create_task(self._cashout_loop()))
        if cfg.metrics_listen:
            self.metrics = self.serve_metrics(*parse_listen(cfg.metrics_listen))
        return self.router

    def _rediscover(self, realm: str) -> None:
        """Link to the routers the realm has on chain now (besides its configured peers)."""
        router = self.router
        federation = router.federations.get(realm) if router is not None else None
        if federation is None:
            return  # not serving yet: the start links to the list as it is then
        found = [LinkPeer(e.url, e.operator) for e in self.endpoints.endpoints(realm)]
        federation.set_peers([*self._discovering[realm], *found])

    def _link_offer(self) -> SwapOffer | None:
        cfg = self.config
        if not cfg.link_swap.chequebook:
            return None
        return SwapOffer(
            chequebook=cfg.link_swap.chequebook,
            chain_id=cfg.chain_id,
            token=cfg.swap.token,
            payment_threshold=cfg.link_swap.payment_threshold,
            price_per_message=cfg.link_swap.max_price_per_message,
        )

    def serve_metrics(self, host: str = "127.0.0.1", port: int = 0) -> MetricsServer:
        """/metrics (read at scrape time, nothing on the loop) and /health: the broker and the
        chain the router depends on."""
        cfg = self.config
        checks: dict[str, HealthCheck] = {}
        if cfg.broker:
            checks["broker"] = tcp_check(cfg.broker)
        if cfg.chain_rpc_url:
            checks["chain"] = rpc_check(cfg.chain_rpc_url)
        return MetricsServer(registry_of(lambda: router_metrics(self)), checks, host, port)

    async def _on_cashout_thread(self, fn: Any, *args: Any) -> Any:
        """Run on the one thread that owns the cash-out sink: its journal is an SQLite
        connection, usable only from the thread that opened it (a shared pool's threads vary)."""
        return await asyncio.get_running_loop().run_in_executor(self._cashout_thread, fn, *args)

    async def _cashout_loop(self) -> None:
        assert self.cashout is not None and self.cashout_sink is not None
        while True:
            await asyncio.sleep(self.config.cashout.interval_s)
            try:
                cashed = await self._on_cashout_thread(self.cashout.run_once, self.cashout_sink)
                if cashed:
                    log.info("cashed out cheques worth %d", cashed)
            except Exception:  # the batch stays queued; retried on the next round
                log.exception("cash-out failed")

    async def stop(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.router is not None:
            await self.router.stop()
            market = self.router.market
            if market is not None and market.verification is not None:
                market.verification.close()
        if isinstance(self.clock, Web3HeadPoller):
            await self.clock.stop()
        if self.follower is not None:
            self.follower.stop()
        if self.handoff is not None:
            await asyncio.to_thread(self.handoff.close)
        if self.cashout is not None:
            self.cashout.close()
        if self._opened_sink is not None:
            await self._on_cashout_thread(self._opened_sink.close)
        self._cashout_thread.shutdown(wait=True)

"""A short scenario for the dashboard's tests, on a real broker with the real projector: two
realms, stakes, metered traffic over three 20-block epochs (closed, payouts computed), a cheque
received by a router, and one epoch's settlement posted and confirmed."""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domain.envelope import Signer
from domain.events import (
    ChequeReceived,
    PriceObserved,
    RealmParams,
    SettlementConfirmed,
    SettlementSubmitted,
)
from ledger.emitter import Emitter
from ledger.service import LedgerService, ServiceConfig, trust_from
from ledger.simulate import (
    TOKEN,
    IndexerSim,
    RealmSetup,
    emitter,
    heartbeat,
    new_signer,
    skewed_traffic,
)

EPOCH_BLOCKS = 20
CHAIN_ID = 31337
SETTLE_TX = "0x" + "5e" * 32
FEED = "0x" + "fe" * 20


@dataclass
class Scenario:
    bootstrap: str
    tmp: Path
    indexer: IndexerSim
    routers: dict[str, Signer]
    router_emitters: dict[str, Emitter]
    settler: Emitter
    users: list[str]
    services: list[str]
    service: LedgerService
    thread: threading.Thread
    #: metered messages each realm's router sent
    metered: dict[str, int] = field(default_factory=dict)

    @property
    def query_url(self) -> str:
        return f"http://127.0.0.1:{self.service.query_server.server_address[1]}"

    def traffic(self, realm: str, blocks: range, per_block: int, seed: int) -> None:
        """Metered messages of the realm's router in `blocks`, then its watermark past them."""
        em = self.router_emitters[realm]
        services = self.services if realm == "alpha" else []
        self.metered[realm] = self.metered.get(realm, 0) + skewed_traffic(
            em, realm, self.users, services, ["t"], blocks, per_block, random.Random(seed)
        )
        heartbeat(em, realm, blocks.stop + 5)
        em.flush()

    def head(self, block: int) -> None:
        self.indexer.head(block)
        self.indexer.em.flush()

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of the live projection (a cursor of the projector's connection)."""
        cur = self.service.con.cursor()
        try:
            return [tuple(r) for r in cur.execute(sql, list(params)).fetchall()]
        finally:
            cur.close()

    def closed(self, realm: str, epochs: int) -> bool:
        """Epochs 0..epochs-1 of `realm` closed, with their PayoutsComputed back from the log."""
        sql = "SELECT epoch FROM epochs WHERE realm = ? AND coalesce(confirmed_digest, '') != ''"
        return len(self.rows(sql, realm)) >= epochs

    def wait(self, check: object, what: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():  # type: ignore[operator]
            if not self.thread.is_alive():
                raise RuntimeError("the projector stopped")
            if time.monotonic() > deadline:
                raise TimeoutError(what)
            time.sleep(0.1)

    def close(self) -> None:
        self.service.stop()
        self.thread.join(timeout=30)
        for em in (*self.router_emitters.values(), self.settler, self.indexer.em):
            em.close(timeout_s=5)
        self.service.close()


def start(bootstrap: str, tmp: Path) -> Scenario:
    """Realms alpha (two routers' stakes, one metering) and beta, a projector with its query
    endpoint running in a thread, epochs 0-2 of alpha closed."""
    indexer_key, ledger_key, settle_key = new_signer(), new_signer(), new_signer()
    routers = {"alpha": new_signer(), "beta": new_signer()}
    users = [new_signer().address for _ in range(3)]
    services = [new_signer().address]  # alpha's service operator: invocations and results
    params = RealmParams(
        epoch_blocks=EPOCH_BLOCKS, funding_period_blocks=EPOCH_BLOCKS, stake_per_mpb=TOKEN
    )
    realms = [
        RealmSetup(
            "alpha",
            params=params,
            users=[(users[0], 40 * TOKEN), (users[1], 25 * TOKEN)],
            routers=[(routers["alpha"], 60 * TOKEN), (new_signer(), 15 * TOKEN)],
            services=[(services[0], 30 * TOKEN)],
        ),
        RealmSetup(
            "beta",
            params=params,
            users=[(users[2], 10 * TOKEN)],
            routers=[(routers["beta"], 20 * TOKEN)],
        ),
    ]
    indexer = IndexerSim(indexer_key, emitter(indexer_key, bootstrap, tmp / "spool"))
    for realm in realms:
        indexer.create_realm(realm, 0)
    indexer.stake(realms[0], users[0], "user", 55 * TOKEN, 30)  # the reservation grows
    indexer.em.flush()
    service = LedgerService(
        ServiceConfig(
            bootstrap=bootstrap,
            db_path=tmp / "ledger.duckdb",
            trust=trust_from([ledger_key.address], [indexer_key.address], [settle_key.address]),
            grace_blocks=2,
            query_port=0,
        ),
        emitter=emitter(ledger_key, bootstrap, tmp / "spool"),
    )
    scenario = Scenario(
        bootstrap,
        tmp,
        indexer,
        routers,
        {name: emitter(key, bootstrap, tmp / "spool") for name, key in routers.items()},
        emitter(settle_key, bootstrap, tmp / "spool"),
        users,
        services,
        service,
        threading.Thread(target=service.run, name="projector", daemon=True),
    )
    scenario.traffic("alpha", range(1, 60), 4, seed=1)
    scenario.traffic("beta", range(1, 40), 1, seed=2)
    alpha = scenario.router_emitters["alpha"]
    alpha.emit(
        ChequeReceived(
            realm="alpha",
            peer=users[0],
            beneficiary=routers["alpha"].address,
            chain_id=CHAIN_ID,
            chequebook="0x" + os.urandom(20).hex(),
            cumulative=3 * TOKEN // 1000,
            amount=3 * TOKEN // 1000,
            signature="0x" + "00" * 65,
            block=12,
        )
    )
    alpha.flush()
    for block, answer, status in ((10, 2 * 10**8, "valid"), (45, 2 * 10**8, "stale")):
        indexer.em.emit(  # a WMP/USD feed: $2.00, valid until block 45
            PriceObserved(
                realm="", chain_id=CHAIN_ID, feed=FEED, round_id=block, answer=answer,
                decimals=8, updated_at=block, status=status, block=block,
                block_hash="0x" + os.urandom(32).hex(),
            )
        )  # fmt: skip
    scenario.head(70)  # the chain past alpha's epochs 0-2 (blocks 0..59) and beta's 0-1
    service.start_query_server()
    scenario.thread.start()
    scenario.wait(lambda: scenario.closed("alpha", 3), "epochs 0-2 of alpha closed")
    for event in (
        SettlementSubmitted(
            realm="alpha", epoch=0, chain_id=CHAIN_ID, contract="0x" + "e5" * 20,
            root="0x" + "ab" * 32, total=0, tx_hash=SETTLE_TX,
        ),
        SettlementConfirmed(
            realm="alpha", epoch=0, chain_id=CHAIN_ID, contract="0x" + "e5" * 20,
            tx_hash=SETTLE_TX, block=70, block_hash="0x" + "cd" * 32,
        ),
    ):  # fmt: skip
        scenario.settler.emit(event)
    scenario.settler.flush()
    scenario.wait(lambda: len(scenario.rows("SELECT * FROM settlements")) == 2, "settlement")
    return scenario

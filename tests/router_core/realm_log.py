"""Puts realm settings and prices into mesh.ledger as a trusted indexer source would, and runs a
`RouterService` that follows them (the router tests of issue 10 item 7 and issue 7)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from router_harness import TOKEN, Key, new_key

from domain.envelope import Signer
from domain.events import Event
from ledger.emitter import Emitter, EmitterConfig
from router_core.config import RealmConfig, RouterConfig, SwapConfig


def publish(bootstrap: str, spool: Path, signer: Signer, *events: Event) -> None:
    """Emit `events` as `signer` and wait until the broker has them."""
    emitter = Emitter(signer, EmitterConfig(bootstrap=bootstrap, spool_dir=spool, fsync=False))
    try:
        emitter.emit_many(events)
        emitter.flush(timeout_s=30)
    finally:
        emitter.close()


@dataclass
class LoggedRealm:
    """A router configuration for one realm whose settings an indexer key puts in the log."""

    tmp: Path
    bootstrap: str
    realm: str
    chain_id: int = 31337
    indexer: Signer = field(default_factory=lambda: Signer(new_key().private))
    client: Key = field(default_factory=new_key)

    def config(self, **realm_values: object) -> RouterConfig:
        key_file = self.tmp / "router.key"
        if not key_file.exists():
            key_file.write_text("0x" + new_key().private.hex())
            key_file.chmod(0o600)
        return RouterConfig(
            key_file=str(key_file),
            realms=[
                RealmConfig(
                    self.realm,
                    reservations={self.client.address: 1_000_000},
                    **realm_values,  # type: ignore[arg-type]
                )
            ],
            listen="127.0.0.1:0",
            data_dir=str(self.tmp / "router"),
            broker=self.bootstrap,
            chain_id=self.chain_id,
            ledger_sources=[self.indexer.address],
            ledger_catchup_timeout_s=30,
            swap=SwapConfig(token=TOKEN, payment_threshold=10**18, disconnect_threshold=2 * 10**18),
        )

    def publish(self, *events: Event) -> None:
        publish(self.bootstrap, self.tmp / "indexer-spool", self.indexer, *events)

"""Configuration parsing and the ledger follower's trust rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from router_harness import new_key

from domain.envelope import Signer, seal
from domain.events import REALM_TARGET, StakeChanged
from router_core.config import load_config
from router_core.ledger_follower import LedgerFollower
from router_core.stakes import LedgerStakes

CONFIG = """
listen = "127.0.0.1:9123"
key_file = "{key_file}"
data_dir = "{data}"

[swap]
token = "0x1111111111111111111111111111111111111111"
payment_threshold = 1000
disconnect_threshold = 2000

[[realms]]
name = "realm1"
keeper = "0x2222222222222222222222222222222222222222"
price_per_message = 10
reservations = {{ "0x3333333333333333333333333333333333333333" = 5 }}
"""


def test_config_loads_with_key_from_file(tmp_path: Path) -> None:
    key = new_key()
    (tmp_path / "router.key").write_text("0x" + key.private.hex())
    (tmp_path / "router.key").chmod(0o600)  # loose key files are refused (ledger.keys)
    path = tmp_path / "router.toml"
    path.write_text(CONFIG.format(key_file=tmp_path / "router.key", data=tmp_path / "data"))
    config = load_config(path)
    assert config.host_port == ("127.0.0.1", 9123)
    assert config.private_key() == key.private
    assert config.realms[0].reservations == {"0x3333333333333333333333333333333333333333": 5}
    assert config.swap.payment_threshold == 1000


def test_config_rejects_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "router.toml"
    path.write_text('listne = "x"\n[[realms]]\nname = "r"\n')
    with pytest.raises(ValueError, match="unknown keys"):
        load_config(path)


def test_ledger_follower_trusts_only_configured_indexers() -> None:
    user = new_key()
    indexer, stranger = Signer(new_key().private), Signer(new_key().private)
    stakes = LedgerStakes({"realm1": 10})
    follower = LedgerFollower("unused:1", [indexer.address], stakes, None)

    def stake(amount: int, block: int, role: str = "user") -> StakeChanged:
        return StakeChanged("realm1", user.address, role, REALM_TARGET, amount, "0x", block, 0)

    follower.handle(seal(stranger, 1, "0x" + "00" * 32, "realm1", [stake(10**6, 1)])[0])
    assert not stakes.has_reservation("realm1", user.address, 10)
    follower.handle(seal(indexer, 1, "0x" + "00" * 32, "realm1", [stake(50, 5), stake(0, 9)])[0])
    assert stakes.reserved_mpb("realm1", user.address, 4) == 0
    assert stakes.reserved_mpb("realm1", user.address, 5) == 5
    assert not stakes.has_reservation("realm1", user.address, 9)
    follower.handle(
        seal(indexer, 3, "0x" + "00" * 32, "realm1", [stake(10**6, 12, role="developer")])[0]
    )
    assert not stakes.has_reservation("realm1", user.address, 12)

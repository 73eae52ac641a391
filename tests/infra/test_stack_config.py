"""The stack configuration of `meshledger up`: each invalid input is refused with its reason
before anything starts; generated router configurations read back as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from infra.stack import (
    Layout,
    RouterEntry,
    StackConfigError,
    load_stack_config,
    parse_stack_config,
    router_settings,
    to_toml,
)
from router_core.config import load_config

REPO = Path(__file__).resolve().parents[2]
ROUTER = {"name": "r1", "listen": "127.0.0.1:18080", "realms": [{"name": "realm1"}]}


def config(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"routers": [dict(ROUTER)]}
    data.update(overrides)
    return data


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (config(chain={"chain_id": 5, "blocktime": 1}), "unknown keys in [chain]: ['blocktime']"),
        (config(chain={"chain_id": "5"}), "[chain] chain_id = '5': expected int"),
        (config(broker={"memory": 1}), "[broker] memory = 1: expected bool"),
        (config(chain={"block_time_s": -1}), "block_time_s must be >= 0"),
        (config(extra=1), "unknown top-level keys: ['extra']"),
        (config(indexer={"confirmations": -1}), "[indexer] confirmations and start_block"),
        (config(indexer={"lag": 1}), "unknown keys in [indexer]: ['lag']"),
        ({"routers": []}, "the stack defines no [[routers]]"),
        (config(routers=[{**ROUTER, "key_file": "k"}]), "['key_file'] are set by `meshledger up`"),
        (config(routers=[{**ROUTER, "name": "R 1"}]), "`name` must be 1-32 of a-z"),
        (config(routers=[{**ROUTER, "listen": "0.0.0.0:80"}]), "listen on 127.0.0.1"),
        (config(routers=[ROUTER, {**ROUTER, "name": "r2"}]), "two routers have the same listen"),
        (config(routers=[{**ROUTER, "realms": []}]), "defines no [[realms]]"),
        (config(routers=[{**ROUTER, "colour": "red"}]), "unknown keys in top level: ['colour']"),
        (
            config(
                contracts={
                    "token": "0x1",
                    "staking": "x",
                    "settlement": "x",
                    "chequebook": "x",
                    "chequebook_factory": "x",
                }
            ),
            "is not an address",
        ),
        (config(contracts={"token": "0x" + "11" * 20}), "[contracts] needs exactly"),
    ],
)
def test_invalid_stack_config_is_refused_with_its_reason(data: dict[str, Any], reason: str) -> None:
    with pytest.raises(StackConfigError) as err:
        parse_stack_config(data)
    assert reason in str(err.value)


def test_the_example_config_is_valid() -> None:
    stack = load_stack_config(REPO / "infra" / "stack.example.toml")
    assert [r.name for r in stack.routers] == ["r1"]
    assert stack.chain.chain_id == 31337 and not stack.broker.memory


def test_generated_router_config_reads_back_as_written(tmp_path: Path) -> None:
    entry = RouterEntry(
        "r1",
        {
            "listen": "127.0.0.1:18080",
            "swap": {"payment_threshold": 10**20, "disconnect_threshold": 2 * 10**20},
            "realms": [
                {
                    "name": 'realm "one"',
                    "price_per_message": 1000,
                    "reservations": {"0x" + "ab" * 20: 7},
                }
            ],
        },
    )
    settings = router_settings(
        entry, tmp_path / "r.key", tmp_path / "d", "127.0.0.1:1", 4242, "http://x", ["0xI"], "0xT"
    )
    path = tmp_path / "router.toml"
    path.write_text(to_toml(settings))
    loaded = load_config(path)
    assert loaded.swap.payment_threshold == 10**20  # beyond 64 bits, exact
    assert loaded.swap.token == "0xT" and loaded.ledger_sources == ["0xI"]
    assert loaded.key_file == str(tmp_path / "r.key") and loaded.chain_id == 4242
    assert loaded.realms[0].name == 'realm "one"'
    assert loaded.realms[0].reservations == {"0x" + "ab" * 20: 7}


def test_up_with_a_bad_config_exits_with_the_reason_and_starts_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "stack.toml"
    bad.write_text('[chain]\nchain_id = 5\nblocktime = 1\n[[routers]]\nname = "r1"\n')
    var = tmp_path / "var"
    result = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "up", "--config", str(bad), "--var", str(var)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "unknown keys in [chain]: ['blocktime']" in result.stderr
    assert not var.exists() and not Layout(var).pid_file.exists()


def test_generated_indexer_config_reads_back_with_the_factory(tmp_path: Path) -> None:
    from indexer.config import load as load_indexer_config
    from infra.stack import Deployment, Endpoints, indexer_settings

    addresses = {
        name: "0x" + f"{i + 1:02x}" * 20
        for i, name in enumerate(
            ("token", "staking", "settlement", "chequebook", "chequebook_factory")
        )
    }
    stack = parse_stack_config(config(indexer={"confirmations": 3}))
    layout = Layout(tmp_path / "var")
    settings = indexer_settings(
        stack, layout, Endpoints("127.0.0.1:9", "http://127.0.0.1:8"), Deployment(addresses, 7)
    )
    path = tmp_path / "indexer.toml"
    path.write_text(to_toml(settings))
    loaded = load_indexer_config(path)
    assert loaded.contracts.chequebook_factory.lower() == addresses["chequebook_factory"]
    assert [c.lower() for c in loaded.contracts.chequebooks] == [addresses["chequebook"]]
    assert loaded.sync.confirmations == 3 and loaded.sync.start_block == 7
    assert loaded.key_file == layout.key("indexer") and loaded.data_dir == layout.indexer_dir

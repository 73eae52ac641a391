"""The stack deploys and indexes the marketplace's registry: `[contracts]` may name it, and the
indexer's generated configuration watches it."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.config import load as load_indexer_config
from infra.stack import (
    CONTRACT_NAMES,
    Deployment,
    Endpoints,
    Layout,
    StackConfigError,
    indexer_settings,
    parse_stack_config,
    to_toml,
)

ROUTER = {"name": "r1", "listen": "127.0.0.1:9001", "realms": [{"name": "realm1"}]}


def _addresses(*names: str) -> dict[str, str]:
    return {name: "0x" + f"{i + 1:02x}" * 20 for i, name in enumerate(names)}


def test_the_indexer_of_the_stack_watches_the_registry(tmp_path: Path) -> None:
    addresses = _addresses(*CONTRACT_NAMES, "service_registry")
    stack = parse_stack_config({"routers": [ROUTER], "contracts": addresses})
    assert stack.contracts is not None and "service_registry" in stack.contracts
    settings = indexer_settings(
        stack, Layout(tmp_path / "var"), Endpoints("127.0.0.1:9", "http://127.0.0.1:8"),
        Deployment(stack.contracts, 1),
    )  # fmt: skip
    path = tmp_path / "indexer.toml"
    path.write_text(to_toml(settings))
    loaded = load_indexer_config(path)
    assert loaded.contracts.service_registry.lower() == addresses["service_registry"]
    assert loaded.contracts.service_registry in loaded.contracts.watched()


def test_contracts_naming_an_unknown_one_are_refused() -> None:
    with pytest.raises(StackConfigError) as err:
        parse_stack_config(
            {"routers": [ROUTER], "contracts": _addresses(*CONTRACT_NAMES, "mystery")}
        )
    assert "may name ['service_registry', 'router_registry']" in str(err.value)

"""Marketplace tests reuse the indexer's and the router's harnesses (real anvil, broker, routers)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from infra.anvil import Anvil

_TESTS = Path(__file__).resolve().parent.parent
for folder in ("indexer", "router_core"):
    if str(_TESTS / folder) not in sys.path:
        sys.path.insert(0, str(_TESTS / folder))

from router_harness import Chain  # noqa: E402


@pytest.fixture(scope="session")
def chain(anvil_l2: Anvil) -> Chain:
    """The WMP token on the session's anvil; chequebooks are deployed per test peer."""
    return Chain(anvil_l2.url, anvil_l2.chain_id)

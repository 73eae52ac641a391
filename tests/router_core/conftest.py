"""Fixtures of the router tests (helpers live in router_harness.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# the discovery tests run the real indexer: its harness lives with the indexer's tests
_INDEXER_TESTS = str(Path(__file__).resolve().parent.parent / "indexer")
if _INDEXER_TESTS not in sys.path:
    sys.path.append(_INDEXER_TESTS)

from router_harness import Chain, Harness  # noqa: E402

from infra.anvil import Anvil  # noqa: E402


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    yield Harness(tmp_path)


@pytest.fixture(scope="session")
def chain(anvil_l2: Anvil) -> Chain:
    """The WMP token on the session's anvil; chequebooks are deployed per test peer."""
    return Chain(anvil_l2.url, anvil_l2.chain_id)


@pytest.fixture
def paying(tmp_path: Path, chain: Chain) -> Iterator[Harness]:
    """A harness whose router reads chequebooks from the real chain."""
    yield Harness(tmp_path, chain=chain)

"""Shared fixtures: a real Tansu broker and real anvil chains, each on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infra.anvil import Anvil, start_anvil
from infra.broker import Broker, start_broker


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    """One broker for the session; tests isolate themselves by topic or realm names."""
    node = start_broker()
    yield node
    node.stop()


@pytest.fixture
def fresh_broker() -> Iterator[Broker]:
    """A broker of the test's own, for tests that stop, restart or fill it."""
    node = start_broker()
    yield node
    node.stop()


@pytest.fixture(scope="session")
def anvil_l2() -> Iterator[Anvil]:
    node = start_anvil(chain_id=42161)
    yield node
    node.stop()


@pytest.fixture
def fresh_anvil() -> Iterator[Anvil]:
    node = start_anvil(chain_id=42161)
    yield node
    node.stop()

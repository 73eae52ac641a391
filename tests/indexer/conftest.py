"""Indexer test fixtures: a mesh on a fresh anvil and a restartable indexer harness on the
session broker (helpers in indexer_harness.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from indexer_harness import Harness  # noqa: E402
from mesh_chain import MeshChain  # noqa: E402

from indexer.service import SyncConfig  # noqa: E402
from infra.anvil import Anvil  # noqa: E402
from infra.broker import Broker  # noqa: E402


@pytest.fixture
def mesh(fresh_anvil: Anvil) -> MeshChain:
    return MeshChain.deploy(fresh_anvil)


@pytest.fixture
def harness(mesh: MeshChain, broker: Broker, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(mesh, broker, tmp_path, SyncConfig(confirmations=0, poll_interval_s=0.05))
    yield h
    h.close()

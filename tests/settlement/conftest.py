"""Fixtures of the submitter, job and failure tests: an interval-mining anvil and funded keys."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from infra.anvil import Anvil, start_anvil

# the `_submitter_*` helper modules sit next to this file (there is no tests/__init__.py)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _submitter_chain import SETTLE_CHAIN_ID, fund_eth  # noqa: E402


@pytest.fixture(scope="module")
def mining_anvil() -> Iterator[Anvil]:
    """anvil mining a block every 0.1 s, so confirmations come without sending anything."""
    node = start_anvil(chain_id=SETTLE_CHAIN_ID, block_time_s=0.1)
    yield node
    node.stop()


@pytest.fixture
def w3(mining_anvil: Anvil) -> Web3:
    return Web3(Web3.HTTPProvider(mining_anvil.url, request_kwargs={"timeout": 10}))


@pytest.fixture
def sender(w3: Web3) -> LocalAccount:
    """A fresh key of the test's own (no nonce shared with other tests), funded with ETH."""
    account: LocalAccount = Account.create()
    fund_eth(w3, account.address)
    return account

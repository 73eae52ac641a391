"""Marketplace tests reuse the indexer's and the router's harnesses (real anvil, broker, routers)."""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent.parent
for folder in ("indexer", "router_core"):
    if str(_TESTS / folder) not in sys.path:
        sys.path.insert(0, str(_TESTS / folder))

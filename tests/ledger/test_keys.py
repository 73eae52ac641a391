"""Issue 9 item 11 (keys): one loader for every key file; a file others may read is refused with the
chmod to run; router and settle load through it."""

from __future__ import annotations

import os
from pathlib import Path

import click
import pytest

from ledger.keys import KeyError_, load_signer, write_new_key
from router_core.config import RouterConfig
from settlement.cli import load_key


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_a_key_file_others_may_read_is_refused_everywhere(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "k.key"
    signer = write_new_key(path)
    os.chmod(path, mode)
    expected = f"accessible by group/others \\(mode {mode:o}\\): run `chmod 600 {path}`"
    with pytest.raises(KeyError_, match=expected):
        load_signer(path)
    with pytest.raises(KeyError_, match=expected):
        RouterConfig(realms=[], key_file=str(path)).private_key()
    with pytest.raises(click.UsageError, match=expected):
        load_key(path)
    os.chmod(path, 0o600)
    assert load_signer(path).address == signer.address
    assert RouterConfig(realms=[], key_file=str(path)).private_key() == signer.private_key
    assert load_key(path).address == signer.address


def test_a_missing_or_malformed_key_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(KeyError_, match="does not exist"):
        load_signer(tmp_path / "nope.key")
    bad = tmp_path / "bad.key"
    bad.write_text("0x1234\n")
    bad.chmod(0o600)
    with pytest.raises(KeyError_, match="bad.key: a private key is 32 bytes, got 2"):
        load_signer(bad)

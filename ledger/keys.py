"""The one loader of source keys (projector, router, settle): from a file that only its owner can
read, or from the environment; never from the repository or a command line."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from domain.envelope import Signer


class KeyError_(ValueError):
    pass


def parse_private_key(text: str) -> bytes:
    value = text.strip()
    if value.startswith("0x"):
        value = value[2:]
    try:
        key = bytes.fromhex(value)
    except ValueError as exc:
        raise KeyError_("a key file holds 64 hex digits (optionally 0x-prefixed)") from exc
    if len(key) != 32:
        raise KeyError_(f"a private key is 32 bytes, got {len(key)}")
    return key


def read_key_file(path: str | Path) -> bytes:
    """The 32-byte key in `path`; refuses a file that group or others may read or write."""
    p = Path(path).expanduser()
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise KeyError_(f"key file {p} does not exist") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyError_(
            f"key file {p} is accessible by group/others (mode {stat.S_IMODE(mode):o}): "
            f"run `chmod 600 {p}`"
        )
    try:
        return parse_private_key(p.read_text())
    except KeyError_ as exc:
        raise KeyError_(f"key file {p}: {exc}") from None


def load_private_key(key_file: str | Path | None = None, env: str = "MESHLEDGER_KEY") -> bytes:
    """The key from `key_file`, else from `$<env>_FILE` (a path), else `$<env>` (hex)."""
    path = key_file or os.environ.get(f"{env}_FILE")
    if path:
        return read_key_file(path)
    if os.environ.get(env):
        return parse_private_key(os.environ[env])
    raise KeyError_(f"no key: pass a key file or set {env}_FILE / {env}")


def load_signer(key_file: str | Path | None = None, env: str = "MESHLEDGER_KEY") -> Signer:
    return Signer(load_private_key(key_file, env))


def write_new_key(path: Path) -> Signer:
    """Create a fresh key file (mode 0600) and return its signer; for dev stacks and tests."""
    key = os.urandom(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("0x" + key.hex() + "\n")
    return Signer(key)

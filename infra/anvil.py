"""Local EVM chain: Foundry anvil from npm, on a free loopback port with a given chain id."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from infra.procs import free_port, stop_pid, stop_process, wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
ANVIL_BIN = REPO_ROOT / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
# anvil's deterministic dev mnemonic; its keys are public test keys, never used for value.
DEV_MNEMONIC = "test test test test test test test test test test test junk"


@dataclass
class Anvil:
    host: str
    port: int
    chain_id: int
    pid: int
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc)
        else:
            stop_pid(self.pid)


def anvil_binary() -> Path:
    if not ANVIL_BIN.exists():
        raise FileNotFoundError(f"anvil missing at {ANVIL_BIN}: run `make setup`")
    if not os.access(ANVIL_BIN, os.X_OK):
        ANVIL_BIN.chmod(0o755)
    return ANVIL_BIN


def rpc_chain_id(url: str, timeout_s: float = 2.0) -> int:
    """The chain id a JSON-RPC node at `url` answers with (raises when it does not answer)."""
    import json
    import urllib.request

    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        return int(json.loads(resp.read())["result"], 16)


def anvil_command(
    chain_id: int,
    host: str,
    port: int,
    block_time_s: float | None = None,
    extra_args: tuple[str, ...] = (),
) -> list[str]:
    """The anvil command line: loopback, quiet, auto-mining unless `block_time_s`."""
    args = [
        str(anvil_binary()),
        "--host",
        host,
        "--port",
        str(port),
        "--chain-id",
        str(chain_id),
        "--silent",
    ]
    if block_time_s is not None:
        args += ["--block-time", str(block_time_s)]
    return args + list(extra_args)


def start_anvil(
    chain_id: int = 31337,
    host: str = "127.0.0.1",
    port: int | None = None,
    block_time_s: float | None = None,
    extra_args: tuple[str, ...] = (),
    timeout_s: float = 30.0,
) -> Anvil:
    """Start anvil (auto-mining unless `block_time_s`), wait until it answers eth_chainId."""
    port = port or free_port(host)
    args = anvil_command(chain_id, host, port, block_time_s, extra_args)
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    )
    node = Anvil(host=host, port=port, chain_id=chain_id, pid=proc.pid, _proc=proc)
    try:
        wait_until(lambda: rpc_chain_id(node.url) == chain_id, timeout_s, "anvil", proc)
    except BaseException:
        node.stop()
        raise
    return node

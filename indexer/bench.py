"""`meshledger bench indexer`: one chain on anvil (>= 100k contract events over >= 1000 blocks),
indexed end to end into Kafka by the indexer and, in the same run, by a naive web3.py loop,
Ponder and SQD (npm, installed on first run into var/bench-indexer, not the project's
package.json). Figures are events/s from start to the last event acknowledged (or stored)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from web3 import Web3

from domain.envelope import Signer
from domain.events import ROLES, RealmParams, StakeChanged, TokenTransferred
from indexer.decoding import Contracts, params_tuple
from indexer.rpc import JsonRpc, RpcSource
from indexer.service import Indexer, SyncConfig
from infra.anvil import Anvil, start_anvil
from infra.broker import start_broker
from ledger.emitter import Emitter, EmitterConfig
from settlement.contracts import deploy, deploy_stack, load_artifact, transact

REPO_ROOT = Path(__file__).resolve().parent.parent
PEERS_DIR = REPO_ROOT / "var" / "bench-indexer"
REALM = "bench.realm"
#: the peers, pinned (ponder 1.0.0 is Ponder 0.10, offline with PGlite)
PEER_PACKAGES = {
    "ponder": "1.0.0",
    "viem": "2.23.2",
    "hono": "4.7.2",
    "@subsquid/evm-processor": "1.27.1",
    "@subsquid/evm-abi": "0.3.1",
    "@subsquid/evm-codec": "0.3.0",
}
PEER_TIMEOUT_S = 900


def _say(console: Console | None, text: str) -> None:
    if console is not None:
        console.print(text)


# -- the chain ----------------------------------------------------------------------------------


def build_chain(anvil: Anvil, blocks: int, stakes_per_block: int) -> tuple[Contracts, int]:
    """Contracts, then `blocks` blocks of `stakes_per_block` stakes each (Staked + Transfer)."""
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    owner = Web3.to_checksum_address(w3.eth.accounts[0])
    stack = deploy_stack(w3, owner)
    transact(
        w3, stack.staking.functions.registerRealm(REALM, owner, params_tuple(RealmParams())), owner
    )
    burst = deploy(w3, "StakeBurst", stack.staking.address, stack.token.address, sender=owner)
    transact(w3, stack.token.functions.mint(burst.address, 10**30), owner)
    call = burst.functions.burst(
        Web3.keccak(text=REALM), ROLES.index("user"), "0x" + "00" * 20, 1, stakes_per_block
    )
    data = call._encode_transaction_data()
    rpc = JsonRpc(anvil.url, timeout_s=120)
    rpc.call("evm_setAutomine", [False])
    tx = {"from": owner, "to": burst.address, "data": data, "gas": hex(stakes_per_block * 60_000)}
    for _ in range(blocks):
        rpc.call("eth_sendTransaction", [tx])
        rpc.call("anvil_mine", ["0x1"])
    contracts = Contracts(
        staking=stack.staking.address,
        settlement=stack.settlement.address,
        token=stack.token.address,
        chequebooks=(stack.chequebook.address,),
    )
    return contracts, int(rpc.call("eth_blockNumber"), 16)


def _emitter(bootstrap: str, spool: Path, **overrides: Any) -> Emitter:
    import os

    # as `meshledger indexer run` configures it (gzip batches); the naive loop gets the same
    cfg = EmitterConfig(
        bootstrap=bootstrap,
        spool_dir=spool,
        fsync=False,
        producer_options={"compression_type": "gzip"},
        **overrides,
    )
    return Emitter(Signer(os.urandom(32)), cfg)


# -- (a) the indexer ------------------------------------------------------------------------------


def time_indexer(
    url: str, contracts: Contracts, head: int, bootstrap: str, work: Path
) -> tuple[float, int]:
    started = time.perf_counter()
    emitter = _emitter(bootstrap, work / "indexer-spool")
    source = RpcSource(JsonRpc(url, timeout_s=120), contracts, 31337)
    ix = Indexer(source, emitter, work / "checkpoint.json", SyncConfig(confirmations=0))
    ix.run(threading.Event(), until_block=head)
    emitter.flush(timeout_s=600)
    elapsed = time.perf_counter() - started
    emitter.close()
    return elapsed, ix.checkpoint.events_emitted


# -- (b) the naive loop ---------------------------------------------------------------------------


def time_naive(
    url: str, contracts: Contracts, head: int, bootstrap: str, work: Path
) -> tuple[float, int]:
    """web3.py `get_logs` per block, `process_log` decoding, one emitted record per event."""
    started = time.perf_counter()
    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 120}))
    staking_address = Web3.to_checksum_address(contracts.staking)
    token_address = Web3.to_checksum_address(contracts.token)
    staking = w3.eth.contract(address=staking_address, abi=load_artifact("RealmStaking")["abi"])
    token = w3.eth.contract(address=token_address, abi=load_artifact("WMPToken")["abi"])
    by_topic = {
        event.topic: event
        for event in (
            getattr(staking.events, item["name"])()
            for item in staking.abi
            if item["type"] == "event"
        )
    }
    transfer_event = token.events.Transfer()
    transfer_topic = "0x" + Web3.keccak(
        text="Transfer(address,address,uint256)"
    ).hex().removeprefix("0x")
    to_staking = "0x" + "00" * 12 + contracts.staking[2:].lower()
    emitter = _emitter(bootstrap, work / "naive-spool", batch_max_events=1)
    count = 0
    for block in range(head + 1):
        for raw in w3.eth.get_logs(
            {"fromBlock": block, "toBlock": block, "address": staking_address}
        ):
            log = by_topic[raw["topics"][0].to_0x_hex()].process_log(raw)
            count += 1
            if log["event"] != "Staked":
                continue  # the realm's registration: decoded and counted, no stake to emit
            a = log["args"]
            emitter.emit(
                StakeChanged(
                    realm=REALM,
                    staker=a["staker"],
                    role=ROLES[a["role"]],
                    target=a["target"],
                    amount=a["staked"],
                    tx_hash=log["transactionHash"].to_0x_hex(),
                    block=log["blockNumber"],
                    log_index=log["logIndex"],
                    chain_id=31337,
                    block_hash=log["blockHash"].to_0x_hex(),
                )
            )
        for raw in w3.eth.get_logs(
            {
                "fromBlock": block,
                "toBlock": block,
                "address": token_address,
                "topics": [transfer_topic, None, to_staking],
            }
        ):
            log = transfer_event.process_log(raw)
            a = log["args"]
            emitter.emit(
                TokenTransferred(
                    realm="",
                    chain_id=31337,
                    token=contracts.token,
                    sender=a["from"],
                    recipient=a["to"],
                    amount=a["value"],
                    block=log["blockNumber"],
                    block_hash=log["blockHash"].to_0x_hex(),
                    log_index=log["logIndex"],
                    tx_hash=log["transactionHash"].to_0x_hex(),
                )
            )
            count += 1
    emitter.flush(timeout_s=600)
    elapsed = time.perf_counter() - started
    emitter.close()
    return elapsed, count


# -- (c) Ponder, (d) SQD --------------------------------------------------------------------------


def install_peers(console: Console | None) -> Path:
    """npm-install the pinned peers into var/bench-indexer (once)."""
    marker = PEERS_DIR / "node_modules" / ".meshledger-peers"
    wanted = " ".join(f"{name}@{version}" for name, version in sorted(PEER_PACKAGES.items()))
    if marker.exists() and marker.read_text() == wanted:
        return PEERS_DIR
    _say(console, f"installing benchmark peers into {PEERS_DIR} (first run only)")
    PEERS_DIR.mkdir(parents=True, exist_ok=True)
    (PEERS_DIR / "package.json").write_text(
        '{"name": "meshledger-bench-indexer-peers", "private": true, "type": "module"}\n'
    )
    subprocess.run(
        [
            "npm",
            "install",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "typescript@5.7.3",
            *wanted.split(),
        ],
        cwd=PEERS_DIR,
        check=True,
        timeout=PEER_TIMEOUT_S,
    )
    marker.write_text(wanted)
    return PEERS_DIR


def _abi_json(name: str, events: tuple[str, ...]) -> str:
    import json

    abi = [i for i in load_artifact(name)["abi"] if i["type"] == "event" and i["name"] in events]
    return json.dumps(abi)


PONDER_CONFIG = """
import {{ createConfig }} from "ponder";
import {{ http }} from "viem";
export default createConfig({{
  database: {{ kind: "pglite", directory: "{data}" }},
  networks: {{ anvil: {{ chainId: 31337, transport: http("{url}"), maxRequestsPerSecond: 1000, disableCache: true }} }},
  contracts: {{
    RealmStaking: {{ network: "anvil", abi: {staking_abi}, address: "{staking}", startBlock: 0, endBlock: {head} }},
    WMPToken: {{ network: "anvil", abi: {token_abi}, address: "{token}", startBlock: 0, endBlock: {head},
                 filter: {{ event: "Transfer", args: {{ to: "{staking}" }} }} }},
  }},
}});
"""
PONDER_SCHEMA = """
import { onchainTable } from "ponder";
export const chainEvent = onchainTable("chain_event", (t) => ({
  id: t.text().primaryKey(),
  kind: t.text().notNull(),
  block: t.bigint().notNull(),
  amount: t.bigint().notNull(),
}));
"""
PONDER_INDEX = """
import { ponder } from "ponder:registry";
import { chainEvent } from "ponder:schema";
const id = (e) => `${e.block.hash}-${e.log.logIndex}`;
ponder.on("RealmStaking:Staked", async ({ event, context }) => {
  await context.db.insert(chainEvent).values({ id: id(event), kind: "stake", block: event.block.number, amount: event.args.staked });
});
ponder.on("RealmStaking:RealmRegistered", async ({ event, context }) => {
  await context.db.insert(chainEvent).values({ id: id(event), kind: "realm", block: event.block.number, amount: 0n });
});
ponder.on("WMPToken:Transfer", async ({ event, context }) => {
  await context.db.insert(chainEvent).values({ id: id(event), kind: "transfer", block: event.block.number, amount: event.args.value });
});
"""
PONDER_API = """
import { Hono } from "hono";
const app = new Hono();
export default app;
"""


def time_ponder(url: str, contracts: Contracts, head: int, work: Path, peers: Path) -> float:
    """Ponder indexing the same events into its own store (PGlite), timed to `/ready`."""
    import urllib.request

    from infra.procs import free_port

    project = work / "ponder"
    (project / "src").mkdir(parents=True)
    (project / "ponder.config.ts").write_text(
        PONDER_CONFIG.format(
            data=project / "pglite",
            url=url,
            staking=contracts.staking,
            token=contracts.token,
            head=head,
            staking_abi=_abi_json("RealmStaking", ("Staked", "RealmRegistered")),
            token_abi=_abi_json("WMPToken", ("Transfer",)),
        )
    )
    (project / "ponder.schema.ts").write_text(PONDER_SCHEMA)
    (project / "src" / "index.ts").write_text(PONDER_INDEX)
    (project / "src" / "api").mkdir()
    (project / "src" / "api" / "index.ts").write_text(PONDER_API)
    (project / "package.json").write_text('{"name": "bench", "private": true, "type": "module"}\n')
    (project / "node_modules").symlink_to(peers / "node_modules")
    port = free_port()
    log_path = work / "ponder.log"
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            str(peers / "node_modules" / ".bin" / "ponder"),
            "start",
            "--root",
            str(project),
            "--port",
            str(port),
            "--schema",
            "bench",
        ],
        cwd=project,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ponder exited: {log_path.read_text()[-2000:]}")
            if time.perf_counter() - started > PEER_TIMEOUT_S:
                raise TimeoutError("ponder not ready")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return time.perf_counter() - started
            except OSError:
                pass
            time.sleep(0.1)
    finally:
        from infra.procs import stop_pid

        stop_pid(proc.pid)
        proc.wait(timeout=30)


SQD_SCRIPT = """
const {{ EvmBatchProcessor }} = require("@subsquid/evm-processor");
const {{ event, indexed }} = require("@subsquid/evm-abi");
const p = require("@subsquid/evm-codec");
const Staked = event("{staked_topic}", "Staked(bytes32,address,uint8,address,uint256,uint256)", {{
  realm: indexed(p.bytes32), staker: indexed(p.address), role: p.uint8, target: indexed(p.address),
  amount: p.uint256, staked: p.uint256 }});
const Transfer = event("{transfer_topic}", "Transfer(address,address,uint256)", {{
  from: indexed(p.address), to: indexed(p.address), value: p.uint256 }});
const head = {head};
const processor = new EvmBatchProcessor()
  .setRpcEndpoint({{ url: "{url}", rateLimit: 1000 }})
  .setFinalityConfirmation(0)
  .setBlockRange({{ from: 0, to: head }})
  .setFields({{ log: {{ transactionHash: true }} }})
  .addLog({{ address: ["{staking}"], range: {{ from: 0, to: head }} }})
  .addLog({{ address: ["{token}"], topic0: [Transfer.topic], topic2: ["{staking_word}"], range: {{ from: 0, to: head }} }});
const rows = [];
const db = {{
  supportsHotBlocks: false,
  async connect() {{ return {{ height: -1, hash: "0x" }}; }},
  async transact(info, cb) {{ await cb(rows); }},
}};
processor.run(db, async (ctx) => {{
  for (const block of ctx.blocks) {{
    for (const log of block.logs) {{
      if (log.topics[0] === Staked.topic) {{
        const e = Staked.decode(log);
        ctx.store.push({{ id: `${{block.header.hash}}-${{log.logIndex}}`, amount: e.staked }});
      }} else if (log.topics[0] === Transfer.topic) {{
        const e = Transfer.decode(log);
        ctx.store.push({{ id: `${{block.header.hash}}-${{log.logIndex}}`, amount: e.value }});
      }} else {{
        ctx.store.push({{ id: `${{block.header.hash}}-${{log.logIndex}}`, amount: 0n }});
      }}
    }}
  }}
  if (ctx.blocks.length && ctx.blocks[ctx.blocks.length - 1].header.height >= head) {{
    process.stdout.write(JSON.stringify({{ events: rows.length }}) + "\\n");
  }}
}});
"""


def time_sqd(
    url: str, contracts: Contracts, head: int, work: Path, peers: Path
) -> tuple[float, int]:
    """SQD's EvmBatchProcessor over RPC only, into an in-memory store."""
    import json

    from indexer.decoding import TRANSFER_TOPIC, contract_events

    staked_topic = next(t for t, e in contract_events("RealmStaking").items() if e.name == "Staked")
    script = peers / "sqd-bench.cjs"
    script.write_text(
        SQD_SCRIPT.format(
            staked_topic=staked_topic,
            transfer_topic=TRANSFER_TOPIC,
            url=url,
            head=head,
            staking=contracts.staking.lower(),
            token=contracts.token.lower(),
            staking_word="0x" + "00" * 12 + contracts.staking[2:].lower(),
        )
    )
    started = time.perf_counter()
    proc = subprocess.run(
        ["node", str(script)], cwd=peers, capture_output=True, timeout=PEER_TIMEOUT_S, check=False
    )
    elapsed = time.perf_counter() - started
    lines = [ln for ln in proc.stdout.decode().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"sqd failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    return elapsed, int(json.loads(lines[-1])["events"])


def count_events(url: str, contracts: Contracts, head: int) -> int:
    """Contract events the indexer reads on this chain (what every contender indexes)."""
    from indexer.decoding import RealmNames

    source = RpcSource(JsonRpc(url, timeout_s=120), contracts, 31337, span_blocks=head + 1)
    names = RealmNames()
    return sum(1 for log in source._logs(0, head) if source.decoder.decode(log, names) is not None)


def run_bench(
    blocks: int, events_per_block: int, peers: bool, console: Console | None
) -> dict[str, Any]:
    if blocks < 1 or events_per_block < 2:
        raise ValueError("need at least one block and two events per block")
    peers_dir = install_peers(console) if peers else None
    work = Path(tempfile.mkdtemp(prefix="meshledger-bench-indexer-"))
    anvil = start_anvil(chain_id=31337, extra_args=("--gas-limit", "1000000000"))
    broker = start_broker()
    try:
        _say(console, f"building a chain of {blocks} blocks x {events_per_block} events on anvil")
        contracts, head = build_chain(anvil, blocks, events_per_block // 2)
        events = count_events(anvil.url, contracts, head)
        _say(console, f"{events} events up to block {head}")
        result: dict[str, Any] = {}
        elapsed, _ = time_indexer(anvil.url, contracts, head, broker.bootstrap, work)
        result["indexed_per_s"] = round(events / elapsed)
        _say(console, f"indexer: {elapsed:.1f}s")
        elapsed, naive_events = time_naive(anvil.url, contracts, head, broker.bootstrap, work)
        result["naive_per_s"] = round(naive_events / elapsed)
        _say(console, f"naive web3 loop: {elapsed:.1f}s")
        if peers_dir is not None:
            elapsed = time_ponder(anvil.url, contracts, head, work, peers_dir)
            result["ponder_per_s"] = round(events / elapsed)
            _say(console, f"ponder: {elapsed:.1f}s")
            elapsed, sqd_events = time_sqd(anvil.url, contracts, head, work, peers_dir)
            result["sqd_per_s"] = round(sqd_events / elapsed)
            _say(console, f"sqd: {elapsed:.1f}s ({sqd_events} events)")
        result["events"] = events
        return result
    finally:
        broker.stop()
        anvil.stop()
        shutil.rmtree(work, ignore_errors=True)

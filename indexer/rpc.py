"""The RPC log source: batched JSON-RPC (HTTP or WebSocket) straight to orjson, adaptive
`eth_getLogs` ranges, headers for every block with their parent links verified.

web3.py's request/response formatters are left out of this path on purpose: they cost more than
the node's work (see the benchmark). Errors are sorted into what the caller does about them:
`RpcUnavailable` (wait and retry), `RangeTooWide` (split the range), `NodeBehind` (wait),
`Inconsistent` (logs and headers of different branches: fetch again), `RpcError` (a bug: stop).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import requests

from domain.events import Event
from indexer.decoding import (
    TRANSFER_TOPIC,
    Contracts,
    FollowedChequebooks,
    LogDecoder,
    RealmNames,
    created_chequebooks,
)

#: logs per chunk the range adapts to: big enough to amortise a request, small enough that the
#: next chunk's fetch overlaps this one's decoding and emission
CHUNK_TARGET_LOGS = 10_000
#: JSON-RPC calls per HTTP/WebSocket batch
BATCH_MAX_CALLS = 500
#: a node's answer to one request, at most (a wider log range is split instead)
RESPONSE_MAX_BYTES = 256 << 20
# Phrases nodes use when an eth_getLogs range returns too much (geth, erigon, alchemy,
# infura, quicknode, ...): all mean "ask for a narrower range".
_TOO_WIDE = (
    "too many",
    "more than",
    "limit exceeded",
    "response size",
    "range too large",
    "block range",
    "exceed",
)


class RpcError(RuntimeError):
    """The node answered with a JSON-RPC error that retrying will not fix."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"JSON-RPC error {code}: {message}")
        self.code = code
        self.message = message


class RangeTooWide(RpcError):
    """An `eth_getLogs` range returned too many results or too large a response."""


class RpcUnavailable(RuntimeError):
    """No usable answer: connection refused, timeout, HTTP 429/5xx, a torn response."""


class NodeBehind(RuntimeError):
    """The node does not have a block the indexer asked for (yet)."""


class Inconsistent(RuntimeError):
    """Logs or headers of one fetch belong to different branches (a reorg during the fetch)."""


class _Http:
    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._session = requests.Session()

    def post(self, body: bytes) -> bytes:
        try:
            resp = self._session.post(
                self.url,
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=self.timeout_s,
            )
        except requests.RequestException as exc:
            raise RpcUnavailable(f"{self.url}: {type(exc).__name__}: {exc}") from exc
        if resp.status_code == 429 or resp.status_code >= 500:
            raise RpcUnavailable(f"{self.url}: HTTP {resp.status_code}")
        if len(resp.content) > RESPONSE_MAX_BYTES:
            raise RangeTooWide(-32005, f"response of {len(resp.content)} bytes")
        return resp.content

    def close(self) -> None:
        self._session.close()


class _Ws:
    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._conn: Any = None

    def _connect(self) -> Any:
        from websockets.sync.client import connect

        if self._conn is None:
            try:
                self._conn = connect(
                    self.url, open_timeout=self.timeout_s, max_size=RESPONSE_MAX_BYTES
                )
            except (OSError, TimeoutError) as exc:
                raise RpcUnavailable(f"{self.url}: {exc}") from exc
        return self._conn

    def post(self, body: bytes) -> bytes:
        from websockets.exceptions import WebSocketException

        conn = self._connect()
        try:
            conn.send(body.decode())
            reply = conn.recv(timeout=self.timeout_s)
        except (OSError, TimeoutError, WebSocketException) as exc:
            self.close()
            raise RpcUnavailable(f"{self.url}: {type(exc).__name__}: {exc}") from exc
        return reply.encode() if isinstance(reply, str) else bytes(reply)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class JsonRpc:
    """A JSON-RPC client for one node; one connection per thread (fetches run in a pool)."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._ids = itertools.count(1)

    def _transport(self) -> _Http | _Ws:
        transport = getattr(self._local, "transport", None)
        if transport is None:
            ws = self.url.startswith(("ws://", "wss://"))
            transport = (_Ws if ws else _Http)(self.url, self.timeout_s)
            self._local.transport = transport
        return transport

    def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        return self.batch([(method, params)])[0]

    def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Results in call order; raises the first error (RangeTooWide for a too-wide range)."""
        out: list[Any] = []
        for start in range(0, len(calls), BATCH_MAX_CALLS):
            part = calls[start : start + BATCH_MAX_CALLS]
            ids = [next(self._ids) for _ in part]
            body = orjson.dumps(
                [
                    {"jsonrpc": "2.0", "id": i, "method": m, "params": list(p)}
                    for i, (m, p) in zip(ids, part, strict=True)
                ]
            )
            raw = self._transport().post(body)
            try:
                replies = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise RpcUnavailable(f"{self.url}: unreadable answer ({exc})") from exc
            if isinstance(replies, dict):  # a node may answer a whole batch with one error
                replies = [replies]
            by_id = {r.get("id"): r for r in replies if isinstance(r, dict)}
            for i in ids:
                reply = by_id.get(i)
                if reply is None:
                    single = replies[0] if len(replies) == 1 else {}
                    error = single.get("error") if isinstance(single, dict) else None
                    if error:
                        raise _error(error)
                    raise RpcUnavailable(f"{self.url}: no answer to request {i}")
                if reply.get("error"):
                    raise _error(reply["error"])
                out.append(reply.get("result"))
        return out

    def close(self) -> None:
        transport = getattr(self._local, "transport", None)
        if transport is not None:
            transport.close()
            self._local.transport = None


def _error(error: Any) -> Exception:
    code = int(error.get("code", 0)) if isinstance(error, dict) else 0
    message = str(error.get("message", error)) if isinstance(error, dict) else str(error)
    lowered = message.lower()
    if "rate limit" in lowered or code == 429:
        return RpcUnavailable(message)
    if code == -32005 or any(phrase in lowered for phrase in _TOO_WIDE):
        return RangeTooWide(code, message)
    return RpcError(code, message)


@dataclass(frozen=True, slots=True)
class Header:
    number: int
    hash: str
    parent_hash: str
    timestamp: int

    @classmethod
    def from_rpc(cls, block: dict[str, Any]) -> Header:
        return cls(
            int(block["number"], 16),
            block["hash"],
            block["parentHash"],
            int(block["timestamp"], 16),
        )


@dataclass
class Chunk:
    """Blocks `first..last` of one branch: every header (parents linked), every wanted log.

    `items` are source-specific raw records in (block, log_index) order, turned into domain
    events by the source's `decode` in the sync's own thread (it learns realm names in order).
    `followed`: the factory-created chequebooks (lowercase) whose logs `items` include.
    """

    first: int
    last: int
    parent_hash: str
    hashes: dict[int, str]
    tip: Header
    items: list[Any] = field(default_factory=list)
    followed: frozenset[str] = frozenset()


class RpcSource:
    """Reads the mesh's contracts over JSON-RPC; see the module docstring for its errors."""

    kind = "rpc"

    def __init__(
        self,
        rpc: JsonRpc,
        contracts: Contracts,
        chain_id: int,
        span_blocks: int = 200,
        span_max_blocks: int = 5000,
    ) -> None:
        self.rpc = rpc
        self.contracts = contracts
        self.chain_id = chain_id
        #: chequebooks the factory created: learnt by fetches, seeded from the checkpoint
        self.followed = FollowedChequebooks()
        self.decoder = LogDecoder(chain_id, contracts, self.followed)
        #: current eth_getLogs range: doubles on success, halves on RangeTooWide
        self.span_blocks = span_blocks
        self.span_max_blocks = span_max_blocks
        self._lock = threading.Lock()

    # -- chain position -------------------------------------------------------------------------
    def head(self) -> int:
        return int(self.rpc.call("eth_blockNumber"), 16)

    def finalized(self) -> int | None:
        """The node's `finalized` block, or None where the chain has no such tag."""
        try:
            block = self.rpc.call("eth_getBlockByNumber", ["finalized", False])
        except RpcError:
            return None
        return int(block["number"], 16) if block else None

    def block_hashes(self, numbers: Iterable[int]) -> dict[int, str | None]:
        numbers = list(numbers)
        blocks = self.rpc.batch([("eth_getBlockByNumber", [hex(n), False]) for n in numbers])
        return {n: (b["hash"] if b else None) for n, b in zip(numbers, blocks, strict=True)}

    def header(self, number: int) -> Header | None:
        block = self.rpc.call("eth_getBlockByNumber", [hex(number), False])
        return Header.from_rpc(block) if block else None

    # -- fetching ---------------------------------------------------------------------------------
    def follow(self, chequebooks: Mapping[str, int]) -> None:
        """Read these factory-created chequebooks' logs from now on (address -> creation block)."""
        self.followed.add(chequebooks)

    def fetch(self, first: int, last: int) -> Chunk:
        """Headers and logs of `first..last`, checked to be one branch (else `Inconsistent`).

        The logs include those of every chequebook followed so far and of every chequebook the
        factory creates in the range (found in the factory's logs of the range, then read too).
        A chequebook created in an earlier chunk that was still being fetched is not in
        `Chunk.followed`: the sync loop adds its logs with `complete`."""
        headers = self._headers(first, last)
        hashes = {h.number: h.hash for h in headers}
        followed = self.followed.addresses()
        logs = self._logs(first, last, followed)
        created = {
            address: block
            for address, block in created_chequebooks(
                self.contracts.chequebook_factory, logs
            ).items()
            if address not in followed
        }
        if created:
            self.followed.add(created)
            logs = _merged(logs, self._logs(first, last, frozenset(created), configured=False))
        _check_hashes(hashes, logs)
        chunk = Chunk(first, last, headers[0].parent_hash, hashes, headers[-1], logs)
        chunk.followed = followed | frozenset(created)
        return chunk

    def complete(self, chunk: Chunk, chequebooks: frozenset[str]) -> Chunk:
        """`chunk` with the logs of `chequebooks` (followed, but not when it was fetched) added,
        checked against the chunk's block hashes (a reorg since: `Inconsistent`)."""
        extra = self._logs(chunk.first, chunk.last, chequebooks, configured=False)
        _check_hashes(chunk.hashes, extra)
        self.followed.add({a: chunk.first for a in chequebooks})
        return Chunk(
            chunk.first,
            chunk.last,
            chunk.parent_hash,
            chunk.hashes,
            chunk.tip,
            _merged(chunk.items, extra),
            chunk.followed | chequebooks,
        )

    def decode(self, chunk: Chunk, names: RealmNames) -> list[Event]:
        events = []
        for log in chunk.items:
            event = self.decoder.decode(log, names)
            if event is not None:
                events.append(event)
        return events

    def _headers(self, first: int, last: int) -> list[Header]:
        blocks = self.rpc.batch(
            [("eth_getBlockByNumber", [hex(n), False]) for n in range(first, last + 1)]
        )
        headers: list[Header] = []
        for n, block in zip(range(first, last + 1), blocks, strict=True):
            if not block:
                raise NodeBehind(f"the node has no block {n} yet")
            header = Header.from_rpc(block)
            if headers and header.parent_hash != headers[-1].hash:
                raise Inconsistent(f"block {n}'s parent is not the block {n - 1} fetched with it")
            headers.append(header)
        return headers

    def _logs(
        self,
        first: int,
        last: int,
        chequebooks: frozenset[str] = frozenset(),
        configured: bool = True,
    ) -> list[dict[str, Any]]:
        """Logs of the configured contracts (unless not `configured`) and of `chequebooks`, and
        token transfers to or from any of them, in (block, log index) order."""
        try:
            logs = self._logs_once(first, last, chequebooks, configured)
        except RangeTooWide:
            if first == last:
                raise
            mid = (first + last) // 2
            with self._lock:
                self.span_blocks = max(1, min(self.span_blocks, (last - first + 1) // 2))
            return self._logs(first, mid, chequebooks, configured) + self._logs(
                mid + 1, last, chequebooks, configured
            )
        with self._lock:
            width = last - first + 1
            if len(logs) > CHUNK_TARGET_LOGS:
                self.span_blocks = max(1, width * CHUNK_TARGET_LOGS // len(logs))
            elif width >= self.span_blocks and len(logs) * 2 <= CHUNK_TARGET_LOGS:
                self.span_blocks = min(self.span_blocks * 2, self.span_max_blocks)
        return logs

    def _logs_once(
        self, first: int, last: int, chequebooks: frozenset[str], configured: bool
    ) -> list[dict[str, Any]]:
        c = self.contracts
        followed = sorted(chequebooks)
        own_addresses = [*c.watched(), *followed] if configured else followed
        holders = [*c.mesh(), *followed] if configured else followed
        if not own_addresses:
            return []
        mesh = ["0x" + "00" * 12 + a[2:].lower() for a in holders]
        span = {"fromBlock": hex(first), "toBlock": hex(last)}
        own, transfers_from, transfers_to = self.rpc.batch(
            [
                ("eth_getLogs", [{**span, "address": own_addresses}]),
                ("eth_getLogs", [{**span, "address": c.token, "topics": [TRANSFER_TOPIC, mesh]}]),
                (
                    "eth_getLogs",
                    [{**span, "address": c.token, "topics": [TRANSFER_TOPIC, None, mesh]}],
                ),
            ]
        )
        return _merged(own, transfers_from, transfers_to)


def _merged(*parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Logs of several queries, each once, in (block, log index) order."""
    seen: set[tuple[str, str]] = set()
    logs = []
    for log in itertools.chain(*parts):
        key = (log["blockHash"], log["logIndex"])
        if key in seen or log.get("removed"):
            continue
        seen.add(key)
        logs.append(log)
    logs.sort(key=lambda lg: (int(lg["blockNumber"], 16), int(lg["logIndex"], 16)))
    return logs


def _check_hashes(hashes: Mapping[int, str], logs: list[dict[str, Any]]) -> None:
    """Every log belongs to the fetched headers' branch, else `Inconsistent`."""
    for log in logs:
        number = int(log["blockNumber"], 16)
        if hashes.get(number) != log["blockHash"]:
            raise Inconsistent(
                f"log of block {number} has hash {log['blockHash']}, the header {hashes.get(number)}"
            )


#: how often a wait for a new head looks at its stop event
STOP_CHECK_S = 0.5


class HeadWaiter:
    """Waits for the next block: a `newHeads` subscription over WebSocket, polling over HTTP."""

    def __init__(self, url: str, poll_interval_s: float = 1.0) -> None:
        self.url = url
        self.poll_interval_s = poll_interval_s
        self._conn: Any = None

    def wait(self, stop: threading.Event) -> None:
        """Return after a new head was announced or `poll_interval_s` passed (or on `stop`)."""
        if not self.url.startswith(("ws://", "wss://")):
            stop.wait(self.poll_interval_s)
            return
        try:
            if self._conn is None:
                from websockets.sync.client import connect

                self._conn = connect(self.url, open_timeout=self.poll_interval_s * 5)
                self._conn.send(
                    orjson.dumps(
                        {
                            "jsonrpc": "2.0",
                            "id": 1,
                            "method": "eth_subscribe",
                            "params": ["newHeads"],
                        }
                    ).decode()
                )
            # in short slices, so a stop is seen within STOP_CHECK_S, not after a whole interval
            deadline = time.monotonic() + self.poll_interval_s
            while not stop.is_set():
                try:
                    self._conn.recv(timeout=min(STOP_CHECK_S, deadline - time.monotonic()))
                    return
                except TimeoutError:
                    if time.monotonic() >= deadline:
                        return
        except Exception:  # the subscription broke: poll this round, resubscribe next
            self.close()
            stop.wait(self.poll_interval_s)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

"""The router's ledger emitter in a supervised child process: sealing, signing, spooling and
producing never run in the router's process.

`ChildDrain` (the router's side, in its event loop) writes shipped chunks of the hand-off
(`router_core.handoff`) to the child over a pipe, marshalled, and reads back which chunks the
child sealed into its spool. It keeps every chunk until then, so when the child dies (noticed by
the end of its pipe) a new child is started and given the same chunks again: nothing handed
over is lost. The child (`python -m router_core.meter_child`) owns the spool directory: it
takes an exclusive lock on its state directory before it opens the emitter, for its whole life,
so no two children (an orphan of a killed router and its successor's) ever write one spool.

Exactly once across a child's death: the child seals in *rounds* (the chunks received since the
last round). Before a round it writes an intent (first and last chunk, the seq its first item
will get); it then seals the round realm by realm, each realm's items in their order, a seal
after every run of one realm and kind, so the spool always holds a prefix of the round in a
known order. A successor child that is given the same chunks again reads the intent and the
spool's tip seq, skips exactly the items already sealed and seals the rest.

If the router itself dies, the child sees the end of the pipe, seals what it has read, flushes
the emitter to the broker (bounded by `close_timeout_s`) and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import marshal
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from domain.events import event_from_dict, event_to_dict
from router_core.handoff import EVENT, ROUTED_KINDS, SLOTS, WATERMARK, Chunk, LedgerHandoff

log = logging.getLogger("router_core.meter_child")

# frames: u32 payload length | u8 type | u64 chunk id | payload
_HEAD = struct.Struct("<IBQ")
HELLO, CHUNK = 1, 2  # router -> child
READY, ACK, FATAL = 1, 2, 3  # child -> router
#: test seam: names a file holding N; a child that finds it deletes it and exits after its N-th
#: seal, mid-round (the crash-recovery tests); unset in production
CRASH_FILE_ENV = "MESH_TEST_METER_CHILD_CRASH_FILE"
LOCK_FILE = "meter-child.lock"
INTENT_FILE = "meter-intent.json"
#: pipe capacity asked of the kernel (fewer wake-ups per chunk); the default is 64 KiB
PIPE_BYTES = 1 << 20


@dataclass(frozen=True)
class ChildSpec:
    """What the child needs; the key travels in the HELLO frame on the private pipe, never on a
    command line or in the environment."""

    bootstrap: str
    spool_dir: str
    #: the lock and the round intent live here (the router's data directory)
    state_dir: str
    fsync: bool = True
    linger_ms: int = 50
    #: a round is sealed once the pipe is drained and its first chunk is this old, or ...
    round_linger_ms: int = 20
    #: ... once it holds this many items
    round_max_items: int = 16_384
    #: how long a starting child waits for the lock held by a predecessor that is still flushing
    lock_wait_s: float = 60.0
    #: on the end of the pipe: how long the emitter may take to hand its spool to the broker
    close_timeout_s: float = 30.0


class ChildFailed(RuntimeError):
    """The child exited before it was ready (its error is in the message)."""


def _encode_chunk(chunk: Chunk) -> bytes:
    items = chunk.items
    if chunk.events:
        items = list(items)
        for index in chunk.events:
            items[index] = orjson.dumps(event_to_dict(items[index]))
    return marshal.dumps(items)


def _frame(kind: int, ident: int, payload: bytes = b"") -> bytes:
    return _HEAD.pack(len(payload), kind, ident) + payload


def _frames(buffer: bytearray) -> list[tuple[int, int, bytes]]:
    """Complete frames at the start of `buffer` (consumed from it)."""
    out = []
    pos = 0
    size = _HEAD.size
    while len(buffer) - pos >= size:
        length, kind, ident = _HEAD.unpack_from(buffer, pos)
        if len(buffer) - pos - size < length:
            break
        start = pos + size
        out.append((kind, ident, bytes(buffer[start : start + length])))
        pos = start + length
    del buffer[:pos]
    return out


# -- the router's side ----------------------------------------------------------------------------


class ChildDrain:
    """Supervises the emitter child; a `router_core.handoff.Drain` (used from the router's loop)."""

    def __init__(
        self,
        spec: ChildSpec,
        key: bytes,
        loop: asyncio.AbstractEventLoop,
        restart_backoff_max_s: float = 5.0,
    ) -> None:
        self.spec = spec
        self._key = key
        self._loop = loop
        self._backoff_max_s = restart_backoff_max_s
        self._backoff_s = 0.1
        self._handoff: LedgerHandoff | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._out_fd = -1
        self._in_fd = -1
        #: frames not yet written to the child's pipe (all of them belong to unacked chunks)
        self._out: deque[memoryview] = deque()
        self._in = bytearray()
        self._writing = False
        self._close_when_written = False
        #: names this router run in the child's intent: chunk ids start at 1 in every run
        self.run_id = os.urandom(8).hex()
        self._ready: asyncio.Future[int] | None = None
        self._started_at = 0.0
        self._closing = False
        self._restart: asyncio.TimerHandle | None = None
        self._progress = threading.Condition()
        self.acked_id = 0
        self.shipped_id = 0
        self.starts = 0
        self.deaths = 0
        self.last_error = ""

    # -- Drain -------------------------------------------------------------------------------------
    def attach(self, handoff: LedgerHandoff) -> None:
        self._handoff = handoff

    def ship(self, chunk: Chunk) -> None:
        self.shipped_id = chunk.id
        if self.proc is not None and self._out_fd >= 0:
            self._send(_frame(CHUNK, chunk.id, _encode_chunk(chunk)))

    def flush(self, timeout_s: float) -> None:
        target = self.shipped_id
        with self._progress:
            if not self._progress.wait_for(lambda: self.acked_id >= target, timeout=timeout_s):
                raise TimeoutError(
                    f"the emitter child sealed chunks up to {self.acked_id}, not {target}, "
                    f"within {timeout_s}s ({self.last_error or 'no error reported'})"
                )

    def close(self, timeout_s: float) -> None:
        try:
            self.flush(timeout_s)
        except TimeoutError as exc:  # said loudly: these items never reach the log
            waiting = self._handoff.waiting() if self._handoff is not None else 0
            log.error("stopping with %d metered items not sealed: %s", waiting, exc)
        done = threading.Event()

        def end() -> None:
            self._closing = True
            if self._restart is not None:
                self._restart.cancel()
            self._close_out()
            done.set()

        if not self._loop.is_running() or self._loop.is_closed():
            end()
        else:
            try:
                self._loop.call_soon_threadsafe(end)
                done.wait(timeout=10)
            except RuntimeError:  # the loop is gone
                end()
        proc = self.proc
        if proc is not None:
            try:
                proc.wait(timeout=self.spec.close_timeout_s + 10)
            except subprocess.TimeoutExpired:
                log.error("the emitter child did not exit; killing it")
                proc.kill()
                proc.wait()

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self, timeout_s: float = 120.0) -> int:
        """Start the child and wait until it holds the spool; returns its tip seq."""
        self._spawn()
        assert self._ready is not None
        return await asyncio.wait_for(asyncio.shield(self._ready), timeout_s)

    def _spawn(self) -> None:
        data_r, data_w = os.pipe()
        ack_r, ack_w = os.pipe()
        for fd in (data_w, ack_w):
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, 1031, PIPE_BYTES)  # F_SETPIPE_SZ
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router_core.meter_child", str(data_r), str(ack_w)],
            pass_fds=(data_r, ack_w),
            stdin=subprocess.DEVNULL,
            cwd=str(Path(__file__).resolve().parent.parent),
        )
        os.close(data_r)
        os.close(ack_w)
        os.set_blocking(data_w, False)
        os.set_blocking(ack_r, False)
        self._out_fd, self._in_fd = data_w, ack_r
        self._out.clear()
        self._in.clear()
        self._writing = False
        self._ready = self._loop.create_future()
        self._started_at = time.monotonic()
        self.starts += 1
        self._loop.add_reader(ack_r, self._readable)
        handoff = self._handoff
        unacked = list(handoff.unacked) if handoff is not None else []
        first = unacked[0].id if unacked else self.shipped_id + 1
        hello = {
            "spec": asdict(self.spec),
            "key": self._key.hex(),
            "first_chunk": first,
            "run": self.run_id,
        }
        self._send(_frame(HELLO, 0, orjson.dumps(hello)))
        for chunk in unacked:  # a restart: the new child gets every chunk not known sealed
            self._send(_frame(CHUNK, chunk.id, _encode_chunk(chunk)))

    def _send(self, data: bytes) -> None:
        self._out.append(memoryview(data))
        if not self._writing:
            self._write()

    def _write(self) -> None:
        out = self._out
        while out:
            try:
                written = os.write(self._out_fd, out[0])
            except BlockingIOError:
                break
            except OSError:  # the child is gone: its pipe's end is noticed by the reader
                out.clear()
                break
            if written == len(out[0]):
                out.popleft()
            else:
                out[0] = out[0][written:]
        if out and not self._writing:
            self._writing = True
            self._loop.add_writer(self._out_fd, self._write)
        elif not out and self._writing:
            self._writing = False
            self._loop.remove_writer(self._out_fd)
        if not out and self._close_when_written:
            self._close_out()

    def _close_out(self) -> None:
        """Close the pipe to the child (it then seals what it read and exits), once the bytes
        still buffered for it are written."""
        if self._out_fd < 0:
            return
        if self._out:
            self._close_when_written = True
            return
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._out_fd)
        os.close(self._out_fd)
        self._out_fd = -1

    def _readable(self) -> None:
        try:
            data = os.read(self._in_fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._died()
            return
        self._in += data
        for kind, ident, payload in _frames(self._in):
            if kind == ACK:
                with self._progress:
                    self.acked_id = max(self.acked_id, ident)
                    self._progress.notify_all()
                if self._handoff is not None:
                    self._handoff.acked(ident)
                    if payload:
                        self._handoff.count_routed(orjson.loads(payload))
                if time.monotonic() - self._started_at > 30:
                    self._backoff_s = 0.1
            elif kind == READY:
                if self._ready is not None and not self._ready.done():
                    self._ready.set_result(int(orjson.loads(payload)["tip"]))
                log.info("emitter child %d ready", self.proc.pid if self.proc else 0)
            elif kind == FATAL:
                self.last_error = payload.decode(errors="replace")
                log.error("emitter child: %s", self.last_error)

    def _died(self) -> None:
        self._loop.remove_reader(self._in_fd)
        os.close(self._in_fd)
        self._in_fd = -1
        if self._writing:
            self._loop.remove_writer(self._out_fd)
            self._writing = False
        if self._out_fd >= 0:
            os.close(self._out_fd)
            self._out_fd = -1
        self._out.clear()
        proc = self.proc
        code = proc.wait() if proc is not None else None
        if self._closing:
            return
        self.deaths += 1
        reason = f"exit code {code}" + (f": {self.last_error}" if self.last_error else "")
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(ChildFailed(f"the emitter child failed to start ({reason})"))
            return
        waiting = self._handoff.waiting() if self._handoff is not None else 0
        log.error(
            "the emitter child died (%s); %d metered items wait for it; restarting in %.1fs",
            reason,
            waiting,
            self._backoff_s,
        )
        self._restart = self._loop.call_later(self._backoff_s, self._respawn)
        self._backoff_s = min(self._backoff_s * 2, self._backoff_max_s)

    def _respawn(self) -> None:
        self._restart = None
        if self._closing:
            return
        try:
            self._spawn()
        except OSError as exc:
            log.error("cannot start the emitter child: %s", exc)
            self._restart = self._loop.call_later(self._backoff_s, self._respawn)
            return
        assert self._ready is not None
        self._ready.add_done_callback(_quiet)


def _quiet(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # a failed restart is logged by _died; no "never retrieved" warning


# -- the child ------------------------------------------------------------------------------------


class _Lock:
    """An exclusive flock on the state directory's lock file, held for the process's life."""

    def __init__(self, path: Path, wait_s: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip()
                    raise RuntimeError(
                        f"{path} is held by another emitter child (pid {holder or '?'}) for "
                        f"more than {wait_s:g}s: one spool, one writer"
                    ) from None
                time.sleep(0.1)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)


def sealed_order(items: list[Any]) -> list[list[int]]:
    """Runs of item indices in the order they are sealed. Between watermarks, realm by realm
    (first appearance), each realm's items in their order, a new run wherever the kind (metered /
    event) changes; a watermark is a run of its own after everything before it and before
    everything after it (the emitter's order rule: no seq across a watermark)."""
    runs: list[list[int]] = []
    by_realm: dict[str, list[int]] = {}

    def close_segment() -> None:
        for indices in by_realm.values():
            run: list[int] = []
            is_event = None
            for index in indices:
                kind = items[index + 1] == EVENT
                if run and kind != is_event:
                    runs.append(run)
                    run = []
                run.append(index)
                is_event = kind
            runs.append(run)
        by_realm.clear()

    for index in range(0, len(items), SLOTS):
        if items[index + 1] == EVENT and items[index + 3] == WATERMARK:
            close_segment()
            runs.append([index])
        else:
            by_realm.setdefault(items[index], []).append(index)
    close_segment()
    return runs


class _Child:
    def __init__(self, data_fd: int, ack_fd: int) -> None:
        self.data_fd = data_fd
        self.ack_fd = ack_fd
        self.buffer = bytearray()
        self.eof = False
        self.emitter: Any = None
        self.spec: ChildSpec | None = None
        self.intent_path = Path()
        self.run_id = ""
        self.router_gone = False
        self.seals = 0
        self.crash_after = 0
        crash_file = os.environ.get(CRASH_FILE_ENV, "")
        if crash_file and os.path.exists(crash_file):
            self.crash_after = int(Path(crash_file).read_text())
            os.unlink(crash_file)

    def send(self, kind: int, ident: int, payload: bytes = b"") -> None:
        if self.router_gone:
            return
        data = _frame(kind, ident, payload)
        try:
            while data:
                written = os.write(self.ack_fd, data)
                data = data[written:]
        except BrokenPipeError:
            # the router died: nobody to tell, but what is still in the pipe is sealed all the same
            self.router_gone = True

    def read(self, timeout_s: float | None) -> list[tuple[int, int, bytes]]:
        if self.eof:
            return []
        ready, _, _ = select.select([self.data_fd], [], [], timeout_s)
        if ready:
            data = os.read(self.data_fd, 1 << 20)
            if not data:
                self.eof = True
            self.buffer += data
        return _frames(self.buffer)

    def run(self) -> None:
        from domain.envelope import Signer
        from ledger.emitter import Emitter, EmitterConfig

        frames: list[tuple[int, int, bytes]] = []
        while not frames and not self.eof:
            frames = self.read(None)
        if not frames or frames[0][0] != HELLO:
            raise RuntimeError("the router sent no HELLO")
        hello = orjson.loads(frames.pop(0)[2])
        spec = self.spec = ChildSpec(**hello["spec"])
        state = Path(spec.state_dir)
        _Lock(state / LOCK_FILE, spec.lock_wait_s)  # before the spool is touched
        self.intent_path = state / INTENT_FILE
        self.emitter = Emitter(
            Signer(bytes.fromhex(hello["key"])),
            EmitterConfig(
                bootstrap=spec.bootstrap,
                spool_dir=Path(spec.spool_dir),
                linger_ms=spec.linger_ms,
                fsync=spec.fsync,
            ),
        )
        self.send(READY, 0, orjson.dumps({"tip": self._tip()}))
        pending: list[tuple[int, list[Any]]] = []
        self.run_id = str(hello["run"])
        recovery = self._recovery(int(hello["first_chunk"]))
        opened = 0.0
        while True:
            for kind, ident, payload in frames:
                if kind == CHUNK:
                    if not pending:
                        opened = time.monotonic()
                    pending.append((ident, marshal.loads(payload)))
            frames = []
            if recovery is not None:
                first, last, start_seq = recovery
                if pending and pending[-1][0] >= last:
                    round_ = [c for c in pending if c[0] <= last]
                    pending = [c for c in pending if c[0] > last]
                    skip = max(0, self._tip() - start_seq + 1)
                    log.warning(
                        "resuming round of chunks %d..%d: %d items were sealed already",
                        first,
                        last,
                        skip,
                    )
                    self._seal(round_, skip, write_intent=False)
                    recovery = None
                elif self.eof:
                    raise RuntimeError(f"the router ended before resending chunk {last}")
            elif pending:
                items = sum(len(c[1]) for c in pending) // SLOTS
                old = time.monotonic() - opened >= spec.round_linger_ms / 1000
                if self.eof or items >= spec.round_max_items or (old and not self._more()):
                    self._seal(pending, 0, write_intent=True)
                    pending = []
            if self.eof and not pending:
                return
            frames = self.read(spec.round_linger_ms / 1000)

    def _more(self) -> bool:
        ready, _, _ = select.select([self.data_fd], [], [], 0)
        return bool(ready)

    def _tip(self) -> int:
        return int(self.emitter.stats()["last_seq"])

    def _recovery(self, first_chunk: int) -> tuple[int, int, int] | None:
        """The interrupted round to resume, if the router resends it."""
        try:
            intent = orjson.loads(self.intent_path.read_bytes())
        except FileNotFoundError:
            return None
        if intent.get("run") != self.run_id or intent["first_chunk"] != first_chunk:
            return None  # another router run's, or acknowledged: the router no longer holds it
        return intent["first_chunk"], intent["last_chunk"], intent["start_seq"]

    def _write_intent(self, first: int, last: int, start_seq: int, count: int) -> None:
        tmp = self.intent_path.with_suffix(".tmp")
        body = {
            "run": self.run_id,
            "first_chunk": first,
            "last_chunk": last,
            "start_seq": start_seq,
            "items": count,
        }
        with open(tmp, "wb") as fh:
            fh.write(orjson.dumps(body))
            fh.flush()
            if self.spec is not None and self.spec.fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, self.intent_path)

    def _seal(self, chunks: list[tuple[int, list[Any]]], skip: int, write_intent: bool) -> None:
        items: list[Any] = []
        for _, chunk_items in chunks:
            items.extend(chunk_items)
        count = len(items) // SLOTS
        start_seq = self._tip() + 1
        if write_intent:
            self._write_intent(chunks[0][0], chunks[-1][0], start_seq, count)
        emitter = self.emitter
        meter, emit, seal_all = emitter.meter, emitter.emit, emitter.seal_all
        position = 0
        refused = 0
        for run in sealed_order(items):
            fed = False
            for index in run:
                position += 1
                if position <= skip:
                    continue
                fed = True
                realm, from_peer, to_peer, kind, uri, nbytes, block = items[index : index + SLOTS]
                try:
                    if from_peer == EVENT:
                        emit(event_from_dict(orjson.loads(to_peer)))
                    else:
                        meter(realm, from_peer, to_peer, kind, uri, nbytes, block)
                except Exception as exc:  # a bug in the router, not input: say it loudly
                    refused += 1
                    log.error("the emitter refused a routed item of %s: %s", realm, exc)
            if fed:
                seal_all()
                self.seals += 1
                if self.seals == self.crash_after:
                    os._exit(70)
        if refused:
            self.send(FATAL, 0, f"{refused} items refused by the emitter (see the log)".encode())
        # the acknowledged chunks' metered messages by kind, for the router's /metrics: counted
        # here, off the router's loop (a chunk is acknowledged, so counted, once)
        kinds = items[3::SLOTS]
        self.send(ACK, chunks[-1][0], orjson.dumps({k: kinds.count(k) for k in ROUTED_KINDS}))


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(
        level=os.environ.get("MESH_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s meter-child[%(process)d] %(name)s: %(message)s",
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)  # its connection chatter, not ours
    # Ctrl-C reaches the whole process group: the router closes the pipe, the child follows
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    child = _Child(int(args[0]), int(args[1]))

    def on_term(signum: int, frame: Any) -> None:
        child.eof = True  # seal what was read, hand the spool to the broker, exit

    signal.signal(signal.SIGTERM, on_term)
    try:
        child.run()
    except Exception as exc:
        log.exception("emitter child failed")
        with contextlib.suppress(OSError):
            child.send(FATAL, 0, str(exc).encode())
        sys.exit(1)
    finally:
        if child.emitter is not None:
            child.emitter.close(child.spec.close_timeout_s if child.spec else 30.0)


if __name__ == "__main__":
    main()

"""A TCP proxy between Kafka clients and a real broker that can drop or stall traffic (or only the
produce requests), and refuse produce requests larger than a stock Kafka's ``message.max.bytes``
the way such a broker does (MESSAGE_TOO_LARGE per partition). Test double: lives in tests/, binds 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

from kafka.protocol.producer import ProduceRequest, ProduceResponse

from infra.procs import free_port

MESSAGE_TOO_LARGE = 10


def _read_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


class KafkaProxy:
    """Listens on 127.0.0.1:port, forwards to `upstream`. Modes: "pass", "drop" (close every
    connection and refuse new ones), "stall" (hold bytes, forward nothing)."""

    def __init__(self, upstream: str, max_message_bytes: int | None = None) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.port = free_port()
        self.mode = "pass"
        self.max_message_bytes = max_message_bytes
        self.refused = 0
        #: hold produce requests (only them: fetches and metadata pass) while true
        self.stall_produce = False
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        if mode == "drop":
            self._close_all()

    def _close_all(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.close()
        self._close_all()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.mode == "drop":
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def _hold(self) -> bool:
        while self.mode == "stall" and not self._stop.is_set():
            time.sleep(0.05)
        return self.mode == "drop" or self._stop.is_set()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = src.recv(1 << 16)
                if not data or self._hold():
                    break
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.close()

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        """Client to broker, one framed request at a time (so an oversized produce can be answered
        here; the response goes back on the same socket, in order with the broker's ones)."""
        with contextlib.suppress(OSError, ConnectionError):
            while True:
                head = _read_exact(client, 4)
                (size,) = struct.unpack(">i", head)
                payload = _read_exact(client, size)
                if self._hold():
                    break
                api_key, version, correlation = struct.unpack_from(">hhi", payload, 0)
                while api_key == 0 and self.stall_produce and not self._stop.is_set():
                    time.sleep(0.05)
                limit = self.max_message_bytes
                if api_key == 0 and limit is not None and size > limit:
                    self.refused += 1
                    client.sendall(self._too_large(payload, version, correlation))
                    continue
                upstream.sendall(head + payload)
        for s in (client, upstream):
            with contextlib.suppress(OSError):
                s.close()

    @staticmethod
    def _too_large(payload: bytes, version: int, correlation: int) -> bytes:
        request: Any = ProduceRequest.decode(payload, version=version, header=True)
        topic_cls: Any = ProduceResponse.TopicProduceResponse
        part_cls: Any = topic_cls.PartitionProduceResponse
        topics = [
            topic_cls(
                name=t.name,
                partition_responses=[
                    part_cls(index=p.index, error_code=MESSAGE_TOO_LARGE, base_offset=-1)
                    for p in t.partition_data
                ],
            )
            for t in request.topic_data
        ]
        body = bytes(ProduceResponse(responses=topics, throttle_time_ms=0).encode(version=version))
        # response header: correlation id, plus an empty tagged-field set in flexible versions
        header = struct.pack(">i", correlation) + (b"\x00" if version >= 9 else b"")
        return struct.pack(">i", len(header) + len(body)) + header + body


@dataclass
class ProxiedBroker:
    """A broker that clients reach only through `proxy` (the conftest's `proxied_broker`)."""

    proxy: KafkaProxy
    pid: int

    @property
    def bootstrap(self) -> str:
        return self.proxy.bootstrap

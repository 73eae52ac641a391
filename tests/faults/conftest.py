"""Fault-suite fixtures: a real Tansu broker that clients reach only through a KafkaProxy (it
advertises the proxy's address), so the proxy can drop, stall or refuse what the emitter sends."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from kafka_proxy import KafkaProxy, ProxiedBroker  # noqa: E402

from infra.broker import _serves_metadata, create_topics, tansu_binary  # noqa: E402
from infra.procs import free_port, stop_pid, wait_until  # noqa: E402


@pytest.fixture
def proxied_broker() -> Iterator[ProxiedBroker]:
    port = free_port()
    proxy = KafkaProxy(f"127.0.0.1:{port}", max_message_bytes=None)
    proc = subprocess.Popen(
        [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{proxy.port}",
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(lambda: _serves_metadata(proxy.bootstrap), 30, "tansu behind the proxy", proc)
        create_topics(proxy.bootstrap)
        yield ProxiedBroker(proxy, proc.pid)
    finally:
        proxy.close()
        stop_pid(proc.pid)
        proc.wait(timeout=10)

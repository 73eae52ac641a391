"""Runs declared services as child processes: start in order until healthy, watch, stop together.

A service is one declarative entry (name, command, health probe, address). Nothing is restarted:
a child that exits is reported and the whole stack is stopped. Pids are recorded for `down`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from infra.procs import exit_status, pid_alive, wait_until

#: how long a child gets after SIGTERM to its process group before SIGKILL
STOP_TIMEOUT_S = 20.0
#: how often children are checked for having exited
POLL_INTERVAL_S = 0.5
#: how often each running child's health probe runs
PROBE_INTERVAL_S = 5.0
#: default time a service has to become healthy after it was started
START_TIMEOUT_S = 90.0

Probe = Callable[[], bool]


@dataclass(frozen=True)
class Service:
    """One child of the stack: how to run it, how to tell it is healthy, where clients reach it."""

    name: str
    command: Sequence[str]
    probe: Probe
    address: str
    env: Mapping[str, str] = field(default_factory=dict)
    start_timeout_s: float = START_TIMEOUT_S


class ServiceFailed(RuntimeError):
    """A child exited, or did not become healthy in time."""


class Interrupted(BaseException):  # not an Exception: wait_until's probe loop must not eat it
    """SIGINT, SIGTERM or SIGHUP arrived while the stack was starting."""


@dataclass
class Child:
    service: Service
    proc: subprocess.Popen
    log_path: Path
    health: str = "starting"

    @property
    def pid(self) -> int:
        return self.proc.pid


def _probe(probe: Probe) -> bool:
    try:
        return bool(probe())
    except Exception:
        return False


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot): tells a recorded process from a later
    one that got the same pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def same_process(pid: int, started: int | None) -> bool:
    """True while `pid` is alive and is the process that was recorded with `started`."""
    return pid_alive(pid) and (started is None or start_time(pid) == started)


def group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(
    pgid: int, timeout_s: float = STOP_TIMEOUT_S, proc: subprocess.Popen | None = None
) -> None:
    """SIGTERM a process group, SIGKILL what is left of it once its leader exited or outlived
    `timeout_s`. With `proc` (the leader, our child) the leader stays unreaped until then, so
    the group id cannot have passed to anyone else; a leader already reaped is left alone."""
    if proc is not None and proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and exit_status(proc) is not None:
            break
        if proc is None and not pid_alive(pgid):
            break
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


class Supervisor:
    """Starts services one after another (each healthy before the next), records their pids in
    `pid_file`, watches them, and stops them all in reverse order."""

    def __init__(
        self, pid_file: Path, log_dir: Path, console: Console | None = None, cwd: Path | None = None
    ) -> None:
        self.pid_file = pid_file
        self.log_dir = log_dir
        self.console = console or Console()
        self.cwd = cwd
        self.children: list[Child] = []
        self.state = "starting"
        self._last_probe = 0.0
        # set from a signal handler: startup and watching end at their next check
        self.interrupted = threading.Event()

    # -- records -----------------------------------------------------------------------------

    def record(self) -> None:
        """Write the pid file atomically: the supervisor and every child, for `down`."""
        data = {
            "supervisor": os.getpid(),
            "supervisor_start": start_time(os.getpid()),
            "state": self.state,
            "services": [
                {
                    "name": c.service.name,
                    "pid": c.pid,
                    "start": start_time(c.pid),
                    "address": c.service.address,
                    "log": str(c.log_path),
                    "health": c.health,
                }
                for c in self.children
            ],
        }
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.pid_file)

    def status_table(self) -> Table:
        table = Table(title="meshledger stack", title_justify="left")
        for column in ("service", "pid", "address", "health"):
            table.add_column(column)
        for c in self.children:
            style = {"healthy": "green", "starting": "yellow"}.get(c.health, "red")
            table.add_row(c.service.name, str(c.pid), c.service.address, f"[{style}]{c.health}[/]")
        return table

    def print_status(self) -> None:
        self.console.print(self.status_table())

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, service: Service) -> Child:
        """Start `service` in its own process group and wait until its probe passes."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{service.name}.log"
        env = {**os.environ, **service.env}
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                list(service.command),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.cwd,
                start_new_session=True,
            )
        child = Child(service, proc, log_path)
        self.children.append(child)
        self.record()
        self.console.print(f"[dim]starting[/] {service.name} (pid {proc.pid}) …")
        try:
            wait_until(lambda: self._ready(service), service.start_timeout_s, service.name, proc)
        except (RuntimeError, TimeoutError) as exc:
            child.health = self._exit_text(child) or "unhealthy"
            self.record()
            raise ServiceFailed(f"{exc}; log: {log_path}\n{_tail(log_path)}") from exc
        child.health = "healthy"
        self.record()
        return child

    def _ready(self, service: Service) -> bool:
        if self.interrupted.is_set():
            raise Interrupted(f"stopped while {service.name} was starting")
        return _probe(service.probe)

    @staticmethod
    def _exit_text(child: Child) -> str:
        code = exit_status(child.proc)
        if code is None:
            return ""
        return f"exited (signal {-code})" if code < 0 else f"exited (code {code})"

    def check(self) -> Child | None:
        """One round of watching: the first child found exited, else None; probes every
        PROBE_INTERVAL_S and reprints the table when a health changes."""
        dead = self._first_exited()
        if dead is not None:
            return dead
        now = time.monotonic()
        if now - self._last_probe < PROBE_INTERVAL_S:
            return None
        self._last_probe = now
        healths = [
            "healthy" if _probe(c.service.probe) else "unhealthy (probe failing)"
            for c in self.children
        ]
        dead = self._first_exited()  # a probe that failed because its child died says less
        if dead is not None:
            return dead
        if healths != [c.health for c in self.children]:
            for c, health in zip(self.children, healths, strict=True):
                c.health = health
            self.record()
            self.print_status()
        return None

    def _first_exited(self) -> Child | None:
        for c in self.children:
            text = self._exit_text(c)
            if text:
                c.health = text
                self.record()
                return c
        return None

    def watch(self) -> Child | None:
        """Watch until interrupted (None) or a child exits (that child)."""
        self.state = "up"
        self.record()
        while not self.interrupted.is_set():
            dead = self.check()
            if dead is not None:
                return dead
            self.interrupted.wait(POLL_INTERVAL_S)
        return None

    def restart(self, name: str, sig: int, timeout_s: float = STOP_TIMEOUT_S) -> Child:
        """Fault drill: send `sig` to the process group of the running child `name`, wait for it
        to exit (SIGKILL after `timeout_s`), then start its service again in its place. Only on
        request: `watch` never restarts anything."""
        index, child = next(
            (i, c)
            for i, c in enumerate(self.children)
            if c.service.name == name and exit_status(c.proc) is None
        )
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, sig)
        deadline = time.monotonic() + timeout_s
        while exit_status(child.proc) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        # the leader is gone (or goes now) and is not reaped yet, so the group id is still
        # ours: whatever it left in its group goes with it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(timeout=5)
        self.console.print(f"[yellow]{name} (pid {child.pid}) stopped by signal {sig}: restarting")
        self.children.remove(child)
        restarted = self.start(child.service)
        self.children.remove(restarted)
        self.children.insert(index, restarted)
        self.record()
        return restarted

    def stop_all(self) -> None:
        """Stop every child, the last started first; the pid file goes when all are gone."""
        self.state = "stopping"
        self.record()
        for c in reversed(self.children):
            if exit_status(c.proc) is None:
                self.console.print(f"[dim]stopping[/] {c.service.name} (pid {c.pid})")
            stop_group(c.pid, proc=c.proc)
            c.health = self._exit_text(c) or "stopped"
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()


def _tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def read_pid_file(pid_file: Path) -> dict | None:
    with contextlib.suppress(FileNotFoundError, ValueError):
        data: dict = json.loads(pid_file.read_text())
        return data
    return None


def down(pid_file: Path, console: Console, timeout_s: float = 60.0) -> int:
    """Stop the stack recorded in `pid_file`: ask its supervisor (SIGTERM), then make sure every
    recorded child's process group is gone; remove the pid file. Returns how many were running."""
    data = read_pid_file(pid_file)
    if data is None:
        console.print(f"no stack recorded in {pid_file}: nothing to stop")
        return 0
    running = 0
    supervisor = int(data.get("supervisor", 0))
    if supervisor and same_process(supervisor, data.get("supervisor_start")):
        running += 1
        console.print(f"stopping supervisor (pid {supervisor})")
        with contextlib.suppress(ProcessLookupError):
            os.kill(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while pid_alive(supervisor) and time.monotonic() < deadline:
            time.sleep(0.2)
    for entry in reversed(data.get("services", [])):
        pid = int(entry["pid"])
        if same_process(pid, entry.get("start")):
            running += 1
            console.print(f"stopping {entry['name']} (pid {pid})")
            stop_group(pid)
        elif not pid_alive(pid) and group_exists(pid):
            # the leader is gone but processes it started in its group are not (a pid stays
            # unused while its number is still a live group's id, so these are ours)
            console.print(f"stopping what is left of {entry['name']} (process group {pid})")
            stop_group(pid)
    if supervisor and same_process(supervisor, data.get("supervisor_start")):
        with contextlib.suppress(ProcessLookupError):
            os.kill(supervisor, signal.SIGKILL)
    with contextlib.suppress(FileNotFoundError):
        pid_file.unlink()
    return running

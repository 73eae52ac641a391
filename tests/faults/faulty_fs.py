"""Seeded storage faults for the spool, behind its FileSystem seam (test double, tests/ only).

At the `crash_at`-th file operation the process "dies" (that operation and every later one raise
`Crash`): a write may leave a torn prefix, and afterwards `after_crash` can lose everything written
since the last fsync (files truncated back, renames not yet made durable undone) or flip a bit at
rest. `enospc` instead fails a run of writes with ENOSPC and lets the process live on."""

from __future__ import annotations

import errno
import random
from pathlib import Path
from typing import IO, Any

from ledger.spool import FileSystem


class Crash(BaseException):
    """The simulated process death (not an OSError: nothing in the emitter may handle it)."""


class _File:
    def __init__(self, fs: FaultyFS, fh: IO[bytes], path: Path) -> None:
        self._fs, self._fh, self.path = fs, fh, path

    def write(self, data: bytes) -> int:
        self._fs.tick("write", self, data)
        return self._fh.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __enter__(self) -> _File:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


class FaultyFS(FileSystem):
    def __init__(
        self, rng: random.Random, fault: str, crash_at: int, enospc_writes: int = 3
    ) -> None:
        self.rng = rng
        self.fault = fault
        self.crash_at = crash_at
        self.enospc_left = enospc_writes
        self.ops = 0
        self.crashed = False
        self.synced: dict[Path, int] = {}
        self.renames: dict[
            Path, bytes | None
        ] = {}  # dst -> content before a not yet durable rename
        self.events: list[str] = []

    def tick(self, op: str, fh: _File | None = None, data: bytes = b"") -> None:
        if self.crashed:
            raise Crash(op)
        self.ops += 1
        if self.ops < self.crash_at:
            return
        if self.fault == "enospc":
            if op == "write" and self.enospc_left > 0:
                self.enospc_left -= 1
                self.events.append(f"ENOSPC on write #{self.ops}")
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
            return
        self.crashed = True
        if op == "write" and fh is not None and data and self.fault == "torn":
            cut = self.rng.randrange(len(data))
            fh._fh.write(data[:cut])
            fh._fh.flush()
            self.events.append(f"torn write: {cut} of {len(data)} bytes of {fh.path.name}")
        self.events.append(f"crash at {op} #{self.ops}")
        raise Crash(op)

    # -- the seam --------------------------------------------------------------------------------
    def open(self, path: Path, mode: str) -> Any:
        self.tick("open")
        return _File(self, open(path, mode), path)  # noqa: SIM115

    def fsync(self, fh: Any) -> None:
        self.tick("fsync")
        super().fsync(fh._fh)
        self.synced[Path(fh.path)] = Path(fh.path).stat().st_size

    def fsync_dir(self, path: Path) -> None:
        self.tick("fsync_dir")
        super().fsync_dir(path)
        self.renames = {d: old for d, old in self.renames.items() if d.parent != path}

    def replace(self, src: Path, dst: Path) -> None:
        self.tick("replace")
        old = dst.read_bytes() if dst.exists() else None
        super().replace(src, dst)
        self.renames.setdefault(dst, old)
        self.synced[dst] = self.synced.pop(src, dst.stat().st_size)

    def unlink(self, path: Path) -> None:
        self.tick("unlink")
        super().unlink(path)

    def truncate(self, path: Path, size: int) -> None:
        self.tick("truncate")
        super().truncate(path, size)
        self.synced[path] = size

    # -- after the crash ----------------------------------------------------------------------------
    def after_crash(self, directory: Path) -> None:
        if self.fault == "lost_fsync":
            for dst, old in self.renames.items():  # the rename never reached the disk
                if old is None:
                    dst.unlink(missing_ok=True)
                else:
                    dst.write_bytes(old)
                self.events.append(f"rename to {dst.name} lost")
            for path in directory.glob("spool-*.log"):
                size = self.synced.get(path, 0)
                if path.stat().st_size > size:
                    with open(path, "r+b") as fh:
                        fh.truncate(size)
                    self.events.append(f"{path.name} back to its last fsync ({size} bytes)")
        elif self.fault == "bitflip":
            files = [p for p in directory.iterdir() if p.is_file() and p.name != "lock"]
            files = [p for p in files if p.stat().st_size > 0]
            if files:
                path = self.rng.choice(sorted(files))
                data = bytearray(path.read_bytes())
                at = self.rng.randrange(len(data))
                data[at] ^= 1 << self.rng.randrange(8)
                path.write_bytes(bytes(data))
                self.events.append(f"bit flipped in {path.name} at {at}")

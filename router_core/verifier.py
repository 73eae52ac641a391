"""A service's custom verifier: a WebAssembly module, identified by the keccak256 of its bytes,
run with wasmtime under fuel and memory limits, so a verifier that loops or allocates too much
is stopped and never disturbs routing.

The module exports `memory`, `input(len: i32) -> i32` (where the router writes its input of
`len` bytes), `min_requests() -> i32` and `verify(ptr: i32, len: i32) -> i32`. The input is
`count: u32` then `count` entries of `len: u32, bytes` (little endian): the request first, then
each answer (canonical JSON). `verify` returns the bitmask of the answers it judges wrong (bit i:
answer i; 0: all agree), or a negative number when it cannot decide.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import wasmtime
from eth_hash.auto import keccak

#: the answers one verification compares at most (bits of verify's i32 result)
MAX_ANSWERS = 16


class VerifierError(ValueError):
    """A verifier that cannot be used or did not decide; `reason` is machine-readable."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class VerifierLimits:
    #: wasmtime fuel per call (about one unit per instruction)
    fuel: int = 10_000_000
    #: the module's linear memory may not grow beyond this
    memory_bytes: int = 16 << 20
    #: the input (request and answers) written into its memory at most
    input_max_bytes: int = 1 << 20


def module_hash(module: bytes) -> str:
    return "0x" + keccak(module).hex()


class WasmVerifier:
    """One verifier module, compiled once; every call runs in a fresh store with its limits."""

    def __init__(self, module: bytes, expected_hash: str, limits: VerifierLimits) -> None:
        actual = module_hash(module)
        if actual.lower() != expected_hash.lower():
            raise VerifierError(
                "hash_mismatch",
                f"the verifier module hashes to {actual}, the service names {expected_hash}",
            )
        self.hash = actual
        self.limits = limits
        config = wasmtime.Config()
        config.consume_fuel = True
        self._engine = wasmtime.Engine(config)
        try:
            self._module = wasmtime.Module(self._engine, module)
        except wasmtime.WasmtimeError as exc:
            raise VerifierError("invalid_module", str(exc).splitlines()[0]) from exc
        names = {e.name for e in self._module.exports}
        missing = {"memory", "input", "min_requests", "verify"} - names
        if missing:
            raise VerifierError("invalid_module", f"missing exports {sorted(missing)}")

    @classmethod
    def load(cls, directory: Path, expected_hash: str, limits: VerifierLimits) -> WasmVerifier:
        """The module `<directory>/<hash without 0x>.wasm`."""
        path = directory / f"{expected_hash.lower().removeprefix('0x')}.wasm"
        try:
            module = path.read_bytes()
        except OSError as exc:
            raise VerifierError("no_module", f"{path}: {exc.strerror}") from exc
        return cls(module, expected_hash, limits)

    def _instance(self) -> tuple[wasmtime.Store, wasmtime.Instance]:
        store = wasmtime.Store(self._engine)
        store.set_fuel(self.limits.fuel)
        store.set_limits(memory_size=self.limits.memory_bytes)
        try:
            return store, wasmtime.Instance(store, self._module, [])
        except wasmtime.WasmtimeError as exc:
            raise VerifierError("invalid_module", str(exc).splitlines()[0]) from exc

    def min_requests(self) -> int:
        store, instance = self._instance()
        return int(self._run(store, instance, "min_requests"))

    def verify(self, request: bytes, answers: list[bytes]) -> list[int] | None:
        """Indices of the answers judged wrong; None when the module cannot decide. Raises
        VerifierError when it breaks a limit, traps or answers nonsense."""
        if not 0 < len(answers) <= MAX_ANSWERS:
            raise VerifierError("bad_input", f"{len(answers)} answers (1..{MAX_ANSWERS})")
        entries = [request, *answers]
        data = struct.pack("<I", len(entries)) + b"".join(
            struct.pack("<I", len(e)) + e for e in entries
        )
        if len(data) > self.limits.input_max_bytes:
            raise VerifierError(
                "input_too_large", f"{len(data)} bytes > {self.limits.input_max_bytes}"
            )
        store, instance = self._instance()
        exports = instance.exports(store)
        memory = exports["memory"]
        assert isinstance(memory, wasmtime.Memory)
        offset = int(self._run(store, instance, "input", len(data)))
        short = offset + len(data) - memory.data_len(store)
        if offset < 0:
            raise VerifierError("bad_answer", f"input() returned {offset}")
        if short > 0:
            try:
                memory.grow(store, (short + 65_535) // 65_536)
            except wasmtime.WasmtimeError as exc:
                raise VerifierError(
                    "memory", f"input does not fit its memory limit: {exc}"
                ) from exc
        memory.write(store, data, offset)
        mask = int(self._run(store, instance, "verify", offset, len(data)))
        if mask < 0:
            return None
        if mask >> len(answers):
            raise VerifierError(
                "bad_answer", f"bitmask {mask:#x} names answers beyond {len(answers)}"
            )
        return [i for i in range(len(answers)) if mask >> i & 1]

    @staticmethod
    def _run(store: wasmtime.Store, instance: wasmtime.Instance, name: str, *args: int) -> int:
        func = instance.exports(store)[name]
        assert isinstance(func, wasmtime.Func)
        try:
            result = func(store, *args)
        except wasmtime.Trap as exc:
            text = str(exc)
            reason = "fuel" if "fuel" in text else "trap"
            raise VerifierError(reason, text.splitlines()[-1].strip()) from exc
        except wasmtime.WasmtimeError as exc:
            raise VerifierError("trap", str(exc).splitlines()[0]) from exc
        if not isinstance(result, int):
            raise VerifierError("bad_answer", f"{name} returned {result!r}")
        return result

"""Reservation enforcement: a peer may send its reserved messages per block; a burst beyond that
is held until the next block (throttled), and anything past the burst is refused."""

from __future__ import annotations

from router_core.chain_clock import ChainClock

ADMIT = 0
HOLD = 1
REFUSE = 2


class BandwidthGate:
    """Counts one peer's PUBLISH and CALL messages per block against its reservation."""

    __slots__ = ("mpb", "burst", "_clock", "_block", "_used")

    def __init__(self, mpb: int, burst: int, clock: ChainClock) -> None:
        if mpb < 0 or burst < 0:
            raise ValueError("mpb and burst must be non-negative")
        self.mpb = mpb
        self.burst = burst
        self._clock = clock
        self._block = -1
        self._used = 0

    def admit(self) -> int:
        block = self._clock.block
        if block != self._block:
            self._block = block
            self._used = 0
        self._used += 1
        used = self._used
        if used <= self.mpb:
            return ADMIT
        if used <= self.mpb + self.burst:
            return HOLD
        return REFUSE

"""FastLoop: a fixed-rate tick with deadline accounting and a safe stop on SIGINT/SIGTERM.

Tick k is scheduled at ``t0 + k * period`` (no drift); its jitter is how late it started, an
overrun is a tick that ended after the next one was due (the next starts at once; missed slots
are skipped, not bunched). The clock and the sleep are injected: the service uses the monotonic
clock with a sleep-then-spin wait, tests a stepped clock that never sleeps.
"""

from __future__ import annotations

import gc
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


class Ring:
    """The last ``capacity`` floats, in a buffer allocated once: a service that runs for days
    keeps the same memory after its first ``capacity`` samples as before them."""

    def __init__(self, capacity: int):
        self.buf = np.full(capacity, 0.0)  # written now: np.zeros maps pages lazily, and RSS
        # would grow as the ring fills
        self.count = 0  # samples ever appended

    def append(self, value: float) -> None:
        self.buf[self.count % len(self.buf)] = value
        self.count += 1

    def values(self) -> np.ndarray:
        """The samples held, oldest first (a copy)."""
        n, cap = self.count, len(self.buf)
        if n <= cap:
            return self.buf[:n].copy()
        i = n % cap
        return np.concatenate([self.buf[i:], self.buf[:i]])

    def last(self, k: int) -> np.ndarray:
        """The newest ``k`` samples (fewer if fewer were appended), in no particular order."""
        n, cap = self.count, len(self.buf)
        k = min(k, n, cap)
        idx = (np.arange(n - k, n)) % cap
        return self.buf[idx]

    def __len__(self) -> int:
        return min(self.count, len(self.buf))

    def __iter__(self):
        return iter(self.values().tolist())


@dataclass
class LoopStats:
    ticks: int = 0
    overruns: int = 0
    skipped: int = 0  # slots dropped after overruns
    jitter_s: Ring = field(default_factory=lambda: Ring(100_000))
    tick_s: Ring = field(default_factory=lambda: Ring(100_000))

    def summary(self, recent: int | None = None) -> dict:
        """Counts since the start; percentiles over the whole ring, or over the ``recent`` last
        ticks (a status reply asked for in a tick must not sort 100,000 samples)."""

        def samples(ring: Ring) -> np.ndarray:
            if not len(ring):
                return np.zeros(1)
            return (ring.last(recent) if recent else ring.values()) * 1e6

        j, d = samples(self.jitter_s), samples(self.tick_s)
        return {
            "ticks": self.ticks,
            "overruns": self.overruns,
            "skipped": self.skipped,
            "jitter_us_p50": float(np.percentile(j, 50)),
            "jitter_us_p99": float(np.percentile(j, 99)),
            "jitter_us_max": float(j.max()),
            "tick_us_p50": float(np.percentile(d, 50)),
            "tick_us_p99": float(np.percentile(d, 99)),
        }


class SteppedClock:
    """A clock for tests and lockstep runs: time moves only when told to."""

    def __init__(self, start: float = 0.0):
        self.t = start

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)

    def advance(self, seconds: float) -> None:
        self.t += seconds


def precise_sleep(clock: Callable[[], float], spin_s: float = 0.0003) -> Callable[[float], None]:
    """Sleeps until ``spin_s`` before the deadline, then spins: sub-100 µs wake-ups without
    burning a core between ticks."""

    def sleep(seconds: float) -> None:
        deadline = clock() + seconds
        if seconds > spin_s:
            time.sleep(seconds - spin_s)
        while clock() < deadline:
            pass

    return sleep


class FastLoop:
    def __init__(
        self,
        rate_hz: float,
        tick: Callable[[int, float], None],
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
    ):
        if not 1 <= rate_hz <= 1000:
            raise ValueError(f"rate_hz must be within 1..1000, got {rate_hz}")
        self.period = 1.0 / rate_hz
        self.tick = tick
        self.clock = clock
        self.sleep = sleep or (
            clock.sleep if isinstance(clock, SteppedClock) else precise_sleep(clock)
        )
        self.stats = LoopStats()
        self.stop_event = threading.Event()
        self.stop_reason: str | None = None

    def stop(self, reason: str = "stopped") -> None:
        self.stop_reason = self.stop_reason or reason
        self.stop_event.set()

    def run(self, max_ticks: int | None = None, duration_s: float | None = None) -> LoopStats:
        """Ticks until stopped, ``max_ticks`` or ``duration_s``. Exceptions from a tick stop the
        loop and propagate (the caller's ``finally`` makes the arm safe)."""
        # Everything alive now (modules, models, sockets) goes to the collector's permanent
        # generation: in the runtime process (torch and the grasp model loaded, ~180k objects)
        # a full collection takes ~30 ms on this CPU, a tick and a half at 50 Hz; frozen, ~0.
        gc.collect()
        gc.freeze()
        try:
            return self._run(max_ticks, duration_s)
        finally:
            gc.unfreeze()

    def _run(self, max_ticks: int | None, duration_s: float | None) -> LoopStats:
        stats, period = self.stats, self.period
        t0 = self.clock()
        k = 0
        while not self.stop_event.is_set():
            if max_ticks is not None and stats.ticks >= max_ticks:
                break
            scheduled = t0 + k * period
            if duration_s is not None and k * period >= duration_s - 1e-9:
                break
            now = self.clock()
            if now < scheduled:
                self.sleep(scheduled - now)
                now = self.clock()
            stats.jitter_s.append(now - scheduled)
            self.tick(k, scheduled)
            stats.ticks += 1
            end = self.clock()
            stats.tick_s.append(end - now)
            k += 1
            if end > t0 + k * period:  # past the next slot's start
                stats.overruns += 1
                late_slots = int((end - t0) / period) - k
                if late_slots > 0:
                    stats.skipped += late_slots
                    k += late_slots
        return stats


class StopOnSignals:
    """``with StopOnSignals(loop):`` turns SIGINT/SIGTERM into ``loop.stop()`` (a second SIGINT
    interrupts for real), restoring the previous handlers after."""

    def __init__(self, loop: FastLoop):
        self.loop = loop
        self._previous: dict = {}

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.loop.stop_event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.loop.stop(signal.Signals(signum).name)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

"""Counters of a servo bus (MotorBus.stats): for telemetry and status, as plain JSON."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import BusError

SERVO_COUNTERS = ("timeouts", "corrupt", "failures")
LATENCY_SAMPLES = 20000


class LatencyRing:
    """The last ``capacity`` latencies in seconds, in one array allocated up front: a bus that
    runs for days holds the same memory after its first samples as before them."""

    def __init__(self, capacity: int = LATENCY_SAMPLES):
        self.buf = np.full(capacity, 0.0)  # written now: np.zeros maps pages lazily, and RSS
        # would grow as the ring fills
        self.count = 0

    def append(self, value: float) -> None:
        self.buf[self.count % len(self.buf)] = value
        self.count += 1

    def values(self) -> np.ndarray:
        return self.buf[: min(self.count, len(self.buf))]

    def __len__(self) -> int:
        return min(self.count, len(self.buf))


@dataclass
class BusStats:
    """Counters since the bus was made. ``per_servo`` holds, for each id the bus has addressed,
    the timeouts, corrupt replies and failed transactions that could be pinned on that servo
    (a whole-bus failure, or a damaged FAST_SYNC_READ packet, counts only in the totals)."""

    cycles: int = 0  # transactions attempted
    retries: int = 0
    timeouts: int = 0
    corrupt: int = 0  # checksum, framing, id, length or value-range errors
    servo_errors: int = 0
    failures: int = 0  # transactions that failed after all retries
    consecutive_failures: int = 0  # failed transactions in a row; a success resets it
    last_error: str = ""
    per_servo: dict[int, dict[str, int]] = field(default_factory=dict)
    latency_s: LatencyRing = field(default_factory=LatencyRing)

    def track(self, ids) -> None:
        """Makes room for ``ids`` (the servos addressed): the dict stays bounded by the bus."""
        for servo_id in ids:
            if servo_id not in self.per_servo:
                self.per_servo[servo_id] = dict.fromkeys(SERVO_COUNTERS, 0)

    def count(self, counter: str, servo_id: int | None) -> None:
        setattr(self, counter, getattr(self, counter) + 1)
        if servo_id in self.per_servo:
            self.per_servo[servo_id][counter] += 1

    def failed(self, error: BusError) -> None:
        self.count("failures", error.servo_id)
        self.consecutive_failures += 1
        self.last_error = str(error)[:300]

    def succeeded(self, latency_s: float) -> None:
        self.latency_s.append(latency_s)
        self.consecutive_failures = 0

    def summary(self) -> dict:
        """Plain JSON types only (str keys, ints, finite floats)."""
        lat = self.latency_s.values() * 1e6 if len(self.latency_s) else np.zeros(1)
        return {
            "cycles": self.cycles,
            "retries": self.retries,
            "timeouts": self.timeouts,
            "corrupt": self.corrupt,
            "servo_errors": self.servo_errors,
            "failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
            "latency_us_p50": float(np.percentile(lat, 50)),
            "latency_us_p99": float(np.percentile(lat, 99)),
            "per_servo": {str(i): dict(c) for i, c in sorted(self.per_servo.items())},
        }

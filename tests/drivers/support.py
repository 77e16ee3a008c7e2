"""Helpers shared by the driver tests."""

from __future__ import annotations

import time

from drivers.bus import BusSettings

# Where a timeout is the point of a test: short, so that waiting it out (and retrying) is cheap.
FAST = BusSettings(timeout_s=0.01, retries=2)
# Where servos should answer: a pty answers in well under a millisecond, but a loaded two-core
# machine can starve the emulator's thread for tens of milliseconds.
PATIENT = BusSettings(timeout_s=0.5, retries=2)


def wait_until(predicate, timeout_s: float = 3.0, period_s: float = 0.005):
    """Polls ``predicate`` until it returns something truthy; returns its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(period_s)

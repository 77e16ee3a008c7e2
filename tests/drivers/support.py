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


class ScriptedPort:
    """A serial-like object for MotorBus: each request written gets the next scripted reply
    (bytes, b"" for none, or a function of the request giving bytes). Reads never wait, so a
    short reply is a timeout at once."""

    port = "scripted"

    def __init__(self, replies=()):
        self.replies = list(replies)
        self.pending = bytearray()
        self.requests: list[bytes] = []

    def reset_input_buffer(self) -> None:
        self.pending.clear()

    def write(self, data: bytes) -> int:
        self.requests.append(bytes(data))
        if self.replies:
            scripted = self.replies.pop(0)
            self.pending += scripted(bytes(data)) if callable(scripted) else scripted
        return len(data)

    def read(self, n: int) -> bytes:
        out = bytes(self.pending[:n])
        del self.pending[:n]
        return out

    @property
    def in_waiting(self) -> int:
        return len(self.pending)

    def close(self) -> None:
        pass

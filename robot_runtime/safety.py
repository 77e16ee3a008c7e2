"""The last step before a command reaches a motor: pure functions and a watchdog state machine.

- ``clamp_limits``: targets inside the joint limits;
- ``clamp_step``: no joint moves more than ``max_step`` per tick (a velocity limit);
- ``Watchdog``: no observation for ``slow_after_s`` -> slow down (smaller steps); for
  ``hold_after_s`` -> hold the last commanded position. Fresh observations bring it back.

No clocks inside: callers pass the time, so tests step it.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

NORMAL, SLOW, HOLD = "normal", "slow", "hold"


def clamp_limits(targets: np.ndarray, limits: np.ndarray) -> np.ndarray:
    """``limits`` is ``[n, 2]`` (low, high) in the targets' units."""
    return np.clip(targets, limits[:, 0], limits[:, 1])


def clamp_step(
    targets: np.ndarray, previous: np.ndarray, max_step: np.ndarray | float
) -> np.ndarray:
    return previous + np.clip(targets - previous, -max_step, max_step)


class SafetyConfig(Protocol):
    """What the watchdog and the step limit read: the config's ``safety`` section
    (``config.SafetySection``, which holds the one set of defaults and their checks)."""

    @property
    def max_step_deg(self) -> float: ...  # per tick

    @property
    def slow_after_s(self) -> float: ...

    @property
    def hold_after_s(self) -> float: ...

    @property
    def slow_factor(self) -> float: ...  # step limit while observations are late


class Watchdog:
    """Tracks how long since the last observation; ``mode(now)`` is normal, slow or hold."""

    def __init__(self, config: SafetyConfig, start_time: float):
        self.config = config
        self.last_observation = start_time
        self._mode = NORMAL

    def observed(self, now: float) -> None:
        self.last_observation = now

    def mode(self, now: float) -> str:
        age = now - self.last_observation
        if age >= self.config.hold_after_s:
            return HOLD
        if age >= self.config.slow_after_s:
            return SLOW
        return NORMAL

    def update(self, now: float) -> tuple[str, str | None]:
        """(mode, the previous mode if it just changed else None)."""
        mode = self.mode(now)
        changed = None if mode == self._mode else self._mode
        self._mode = mode
        return mode, changed


def safe_targets(
    targets: np.ndarray, previous: np.ndarray, limits: np.ndarray, mode: str, config: SafetyConfig
) -> np.ndarray:
    """What actually goes to the motors: held, or clamped to limits and to a step per tick.
    A joint whose target is not finite (NaN from a diverged model) holds its previous position."""
    if mode == HOLD:
        return previous.copy()
    targets = np.where(np.isfinite(targets), targets, previous)
    step = config.max_step_deg * (config.slow_factor if mode == SLOW else 1.0)
    return clamp_limits(clamp_step(clamp_limits(targets, limits), previous, step), limits)


class BusHealth:
    """Counts failed bus cycles (a read or a write that failed after the bus's own retries) and
    says when the arm must stop: ``max_consecutive`` failures in a row, or more than
    ``max_rate`` of the last ``window`` cycles. Below those bounds a failure is absorbed: the
    tick holds the last good joints. Bounded memory: a ring of ``window`` flags."""

    def __init__(self, max_consecutive: int, max_rate: float, window: int):
        self.max_consecutive, self.max_rate, self.window = max_consecutive, max_rate, window
        self._ring = np.zeros(window, bool)  # True: that cycle failed
        self._n = 0
        self.cycles = 0
        self.failed = 0
        self.consecutive = 0
        self.worst_consecutive = 0
        self.last_error = ""

    def record(self, ok: bool, error: str = "") -> str | None:
        """Adds one cycle; returns why the arm must stop, or None."""
        self._ring[self._n % self.window] = not ok
        self._n += 1
        self.cycles += 1
        if ok:
            self.consecutive = 0
            return None
        self.failed += 1
        self.consecutive += 1
        self.worst_consecutive = max(self.worst_consecutive, self.consecutive)
        self.last_error = error
        if self.consecutive >= self.max_consecutive:
            return f"{self.consecutive} bus cycles failed in a row (last: {error})"
        if self._n >= self.window:
            rate = float(self._ring.mean())
            if rate > self.max_rate:
                return (
                    f"{rate:.0%} of the last {self.window} bus cycles failed (over "
                    f"{self.max_rate:.0%}; last: {error})"
                )
        return None

    def summary(self) -> dict:
        return {
            "cycles": self.cycles,
            "failed": self.failed,
            "consecutive": self.consecutive,
            "worst_consecutive": self.worst_consecutive,
            "last_error": self.last_error,
        }

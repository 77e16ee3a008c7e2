"""One status line for people, rewritten in place and cut to the terminal's width.

``fit_fields`` is pure: fields in display order, each with a priority (0 = always shown), and a
width; it drops the lowest-priority fields until the line fits, then truncates. ``LiveLine``
writes it (carriage return, the line, clear to the end of the line) only when it changed, so a
line that says what the run waits for is said once, not once per refresh. The fields of
`kiwi sim` (from the Recorder) and `kiwi run` (from ``Runtime.status()``) are built here too.
"""

from __future__ import annotations

import math
import shutil
import sys
from collections.abc import Sequence
from typing import TextIO

SEPARATOR = "  "
CLEAR_TO_EOL = "\x1b[K"
MIN_WIDTH = 20

Field = tuple[int, str]  # (priority: 0 is kept longest, higher numbers are dropped first, text)


def fit_fields(fields: Sequence[Field], width: int) -> str:
    """The fields joined in their order, without those of the lowest priority (the largest
    number) while the line is wider than ``width``; the line is then cut to ``width`` with an
    ellipsis if even the priority-0 fields do not fit."""
    kept = [(p, text) for p, text in fields if text]
    line = SEPARATOR.join(text for _, text in kept)
    while len(line) > width and len({p for p, _ in kept}) > 1:
        worst = max(p for p, _ in kept)
        kept = [(p, text) for p, text in kept if p != worst]
        line = SEPARATOR.join(text for _, text in kept)
    if len(line) > width:
        line = line[: max(0, width - 1)] + "…"
    return line


def terminal_width(stream: TextIO = sys.stdout) -> int:
    """Columns the line may use: one less than the terminal's, so that the cursor never wraps."""
    return max(MIN_WIDTH, shutil.get_terminal_size((100, 24)).columns - 1)


class LiveLine:
    """``show(fields)`` rewrites the line when its text changed; ``say(text)`` prints a line
    of its own above it; ``end()`` leaves the line and moves to the next one."""

    def __init__(self, stream: TextIO = sys.stdout, width=None):
        self.stream = stream
        self.width = width or (lambda: terminal_width(stream))
        self.text = ""

    def show(self, fields: Sequence[Field]) -> None:
        text = fit_fields(fields, self.width())
        if text != self.text:
            self.stream.write("\r" + text + CLEAR_TO_EOL)
            self.stream.flush()
            self.text = text

    def say(self, text: str) -> None:
        prefix = "\r" + CLEAR_TO_EOL if self.text else ""
        self.stream.write(prefix + text + "\n")
        if self.text:
            self.stream.write(self.text)
        self.stream.flush()

    def end(self) -> None:
        if self.text:
            self.stream.write("\n")
            self.stream.flush()
            self.text = ""


def _num(v, spec: str, none: str = "-") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return none
    return format(v, spec)


def sim_fields(
    attempt: int,
    attempts: int,
    last: dict,
    error: tuple[float, float] | None,
    gate: tuple[float, str] | None,
) -> list[Field]:
    """`kiwi sim`'s line: ``last`` is the runtime's newest telemetry record (its meta),
    ``error`` the latent's recent median error (mm, deg), ``gate`` the last decision."""
    est = last.get("estimator", {})
    phase = last.get("phase", "?")
    fields: list[Field] = [
        (0, f"attempt {attempt}/{attempts}"),
        (0, "waiting for its first observation" if phase == "wait" else phase),
        (1, f"P={gate[0]:.2f} {gate[1]}" if gate else ""),
        (1, f"obs {est.get('applied', 0)} age {_num(est.get('last_age_ms'), '.0f')} ms"),
        (2, f"err {error[0]:.0f} mm {error[1]:.0f}°" if error else ""),
        (3, f"watchdog {last.get('watchdog', '?')}"),
        (4, f"jitter p99 {last.get('jitter_us_p99', 0):.0f} µs"),
        (5, f"overruns {last.get('overruns', 0)}"),
    ]
    return fields


def run_fields(status: dict, silent_s: float | None, obs_addr: str) -> list[Field]:
    """`kiwi run`'s line from ``Runtime.status()``; ``silent_s``: seconds without a new
    observation (None while they arrive)."""
    loop, est, bus = status.get("loop", {}), status.get("estimator", {}), status.get("bus", {})
    health = bus.get("health", {})
    silent = silent_s is not None  # then the hint goes first and is what is kept longest
    fields: list[Field] = [
        (1 if silent else 0, f"{status.get('phase', '?')}"),
        (1, f"watchdog {status.get('watchdog') or '?'}"),
    ]
    if silent:
        hint = f"no observation for {silent_s:.0f} s: is a slow process posting to {obs_addr}?"
        fields.insert(0, (0, hint))
    else:
        fields.append(
            (1, f"obs {est.get('applied', 0)} age {_num(est.get('last_age_ms'), '.0f')} ms")
        )
    fields += [
        (
            2,
            f"bus retries {bus.get('retries', 0)} timeouts {bus.get('timeouts', 0)} "
            f"corrupt {bus.get('corrupt', 0)} held {health.get('failed', 0)}",
        ),
        (3, f"rejected {status.get('rejected', 0)}" if status.get("rejected") else ""),
        (4, f"jitter p99 {_num(loop.get('jitter_us_p99'), '.0f')} µs"),
        (5, f"overruns {loop.get('overruns', 0)}"),
        (6, f"ticks {loop.get('ticks', 0)}"),
    ]
    return fields


class SilenceTimer:
    """Seconds since the count of applied observations last changed, or since the last call
    told of something ``fresh`` (the watchdog content: a VLA's chunks count too); None while
    under ``after_s``. The clock is passed in."""

    def __init__(self, after_s: float, t0: float):
        self.after_s, self.t_changed, self.count = after_s, t0, 0

    def __call__(self, count: int, t: float, fresh: bool = False) -> float | None:
        if count != self.count or fresh:
            self.count, self.t_changed = count, t
        silent = t - self.t_changed
        return silent if silent >= self.after_s else None


class RunStatusThread:
    """`kiwi run`'s status, read from ``status()`` (``Runtime.status``) every ``interval_s`` on
    a thread of its own, never in the tick. Live, it rewrites the line; otherwise (stdout not a
    terminal, ``--no-live``) it only says, once per silence, when no observation arrives."""

    def __init__(
        self,
        status,
        obs_addr: str,
        live: LiveLine | None,
        say=print,
        interval_s: float = 0.5,
        silence_after_s: float = 3.0,
        clock=None,
    ):
        import threading
        import time

        self.status, self.obs_addr, self.live, self.say = status, obs_addr, live, say
        self.interval_s, self.clock = interval_s, clock or time.monotonic
        self.silence = SilenceTimer(silence_after_s, self.clock())
        self.said_silent = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kiwi-status", daemon=True)

    def start(self) -> RunStatusThread:
        self._thread.start()
        return self

    def refresh(self) -> None:
        """One look at the runtime (the thread calls this every interval)."""
        try:
            status = self.status()
        except RuntimeError:  # a counter's dict changed while being read: next time
            return
        applied = int(status.get("estimator", {}).get("applied", 0))
        fresh = status.get("watchdog") == "normal"  # something arrived within slow_after_s
        silent_s = self.silence(applied, self.clock(), fresh)
        if self.live is not None:
            self.live.show(run_fields(status, silent_s, self.obs_addr))
        elif silent_s is not None and not self.said_silent:
            self.say(
                f"no observation for {silent_s:.0f} s: is a slow process posting to "
                f"{self.obs_addr}?"
            )
        self.said_silent = silent_s is not None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        if self.live is not None:
            self.live.end()

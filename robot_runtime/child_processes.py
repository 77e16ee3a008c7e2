"""The child processes of `kiwi sim`: started with a log file each, watched, stopped in order.

A child that ends without being asked is a ``ChildExit``: which one, when (seconds into the
run), how (exit code or signal) and the last lines of its log. Stopping asks first (SIGTERM:
the runtime holds the arm and publishes its last events) and insists after a grace period
(SIGKILL). Clock and sleep are passed in, and a child is anything with Popen's ``pid``,
``poll()``, ``send_signal()`` and ``kill()``, so tests drive this with a stepped clock and
fake children.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

LOG_TAIL_LINES = 20
LOG_TAIL_BYTES = 16 * 1024
POLL_S = 0.02


def describe_returncode(returncode: int) -> str:
    """``exit code 1`` or ``killed by SIGKILL`` (Popen reports a signal as its negative)."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


def log_tail(path: Path | None, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of a log file (at most its last 16 KiB); [] if unreadable."""
    if path is None:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [line.rstrip() for line in text.splitlines()[-lines:]]


@dataclass(frozen=True)
class ChildExit:
    name: str
    t_s: float  # seconds into the run
    returncode: int
    log_tail: tuple[str, ...]

    @property
    def how(self) -> str:
        return describe_returncode(self.returncode)

    @property
    def last_words(self) -> str:
        """The last non-empty line of its log (usually the exception of a traceback)."""
        return next((line.strip() for line in reversed(self.log_tail) if line.strip()), "")

    def as_dict(self) -> dict:
        return {
            "process": self.name,
            "t_s": round(self.t_s, 3),
            "returncode": self.returncode,
            "how": self.how,
            "log_tail": list(self.log_tail),
        }


class Children:
    """Named child processes of one run; ``t0`` (the clock when made) is the run's start."""

    def __init__(
        self,
        grace_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.grace_s, self.clock, self.sleep = grace_s, clock, sleep
        self.t0 = clock()
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path | None] = {}
        self.reported: set[str] = set()  # exits already returned by exited() or stopped
        self.stopped: dict[str, dict] = {}  # how each child ended when stop() asked it to

    def start(self, name: str, module_args: list[str], log: Path) -> None:
        """Starts ``python -m <module_args>``, its stdout and stderr going to ``log``."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(log, "w") as f:
            proc = subprocess.Popen(
                [sys.executable, "-m", *module_args], stdout=f, stderr=subprocess.STDOUT, env=env
            )
        self.add(name, proc, log)

    def add(self, name: str, proc, log: Path | None = None) -> None:
        self.procs[name], self.logs[name] = proc, log

    def elapsed_s(self) -> float:
        return self.clock() - self.t0

    def exited(self) -> list[ChildExit]:
        """Children that ended since the last call, without stop() asking them to."""
        out = []
        for name, proc in self.procs.items():
            if name in self.reported:
                continue
            code = proc.poll()
            if code is not None:
                self.reported.add(name)
                out.append(
                    ChildExit(name, self.elapsed_s(), code, tuple(log_tail(self.logs[name])))
                )
        return out

    def stop(self, names: list[str], on_wait: Callable[[], None] | None = None) -> dict[str, dict]:
        """Stops the named children one after another, in that order: SIGTERM, then SIGKILL if
        one is still running ``grace_s`` later. ``on_wait`` runs while waiting (to keep reading
        the telemetry). Returns, per child asked, the signals it took and its exit."""
        for name in names:
            proc = self.procs.get(name)
            if proc is None or name in self.stopped or proc.poll() is not None:
                continue
            self.reported.add(name)
            t_asked = self.clock()
            proc.send_signal(signal.SIGTERM)
            signals = ["SIGTERM"]
            if not self._wait(proc, self.grace_s, on_wait):
                proc.kill()
                signals.append("SIGKILL")
                self._wait(proc, self.grace_s, on_wait)
            code = proc.poll()
            self.stopped[name] = {
                "signals": signals,
                "returncode": code,
                "how": "still running" if code is None else describe_returncode(code),
                "took_s": round(self.clock() - t_asked, 3),
            }
        return {n: self.stopped[n] for n in names if n in self.stopped}

    def kill_all(self) -> None:
        """SIGKILL for every child still running (asked twice to stop: no more waiting)."""
        for name, proc in self.procs.items():
            if proc.poll() is None:
                proc.kill()
                self.reported.add(name)
                self.stopped.setdefault(name, {"signals": []})["signals"].append("SIGKILL")
        for proc in self.procs.values():
            self._wait(proc, self.grace_s, None)

    def _wait(self, proc, timeout_s: float, on_wait: Callable[[], None] | None) -> bool:
        deadline = self.clock() + timeout_s
        while proc.poll() is None:
            if self.clock() >= deadline:
                return False
            if on_wait is not None:
                on_wait()
            self.sleep(POLL_S)
        return True

    def summary(self) -> dict[str, dict]:
        """Per child: pid, log file and how it ended (by itself, or as stop() asked)."""
        out = {}
        for name, proc in self.procs.items():
            code = proc.poll()
            entry = {
                "pid": proc.pid,
                "log": str(self.logs[name]) if self.logs[name] else None,
                "returncode": code,
                "how": "still running" if code is None else describe_returncode(code),
            }
            if name in self.stopped:
                entry["stopped_with"] = self.stopped[name]["signals"]
            out[name] = entry
        return out

"""A fake child process for the tests of `kiwi sim`'s supervision (named fake on purpose)."""

import signal

from robot_runtime.loop import SteppedClock


class FakeChild:
    """Popen's surface, on a stepped clock: exits ``exits_after_s`` after SIGTERM (never, if
    None), at once on SIGKILL."""

    def __init__(self, clock: SteppedClock, exits_after_s: float | None = 0.1, pid: int = 100):
        self.clock, self.exits_after_s, self.pid = clock, exits_after_s, pid
        self.returncode = None
        self.signals: list[str] = []
        self.t_exit: float | None = None

    def poll(self):
        if self.returncode is None and self.t_exit is not None and self.clock() >= self.t_exit:
            self.returncode = 0
        return self.returncode

    def send_signal(self, sig) -> None:
        self.signals.append(signal.Signals(sig).name)
        if self.exits_after_s is not None:
            self.t_exit = self.clock() + self.exits_after_s

    def kill(self) -> None:
        self.signals.append("SIGKILL")
        self.returncode = -signal.SIGKILL

    def die(self, returncode: int) -> None:
        self.returncode = returncode

"""`kiwi sim`: the dry run. Starts the simulated world, the slow process and the runtime as
separate processes on loopback, shows live status, and ends with a summary and a run folder:
``config.yaml``, ``telemetry.jsonl``, ``truth.jsonl``, ``summary.json`` and
``estimate_vs_truth.png`` (the latent's cube estimate and the raw perception against the
simulator's truth; sim_plot.py), and with ``--rerun FILE`` a Rerun recording (recording.py).
The endpoints are printed first, so that `kiwi grasp-check --connect` can ask the runtime.

The ground truth (``truth`` messages of the simulated world) feeds only this display and the
summary; the runtime never sees it.

When a child process dies the run ends without a traceback: the others are stopped (SIGTERM,
the runtime first so that it can hold the arm while the world still runs; SIGKILL after a grace
period), and summary.json says what died, when, how and the last lines of its log, with the
attempt in progress marked ``aborted``. The slow process is the exception that proves the
safety net: when it dies the runtime is left running until its staleness watchdog holds the arm
(as it would on a robot whose perception crashed), the hold is reported, and only then does the
run stop, since every later attempt would be blind. Ctrl-C (or SIGTERM) ends the run the same
way with the attempt marked ``interrupted``.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import jsonout, link
from .child_processes import POLL_S, ChildExit, Children
from .config import GraspJob, dump_config
from .liveline import LiveLine, sim_fields
from .sim_plot import plot_estimate
from .sim_report import (
    Estimate,
    Observation,
    Truth,
    estimate_errors,
    print_summary,
    summarize,
)

LINK_KEYS = ("obs", "query", "telemetry", "camera", "command", "sim_state")
STOP_ORDER = ("runtime", "sim world", "slow")  # the runtime holds the arm while the world runs
STOP_GRACE_S = 5.0  # SIGTERM, then this long before SIGKILL
HOLD_MARGIN_S = 2.0  # the slow process died: wait this long past safety.hold_after_s for a hold
LAST_EVENTS_S = 1.0  # the runtime exited: its last events may still be in flight


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Recorder:
    """Subscribes to the runtime's telemetry and the world's truth (and, for a Rerun
    recording, its camera); keeps what the summary, the plot and the live line need."""

    def __init__(self, ctx: link.Context, job: GraspJob, out: Path, recording=None):
        import zmq

        self.tele = ctx.connect(zmq.SUB, job.link.telemetry, hwm=1000)
        self.truth = ctx.connect(zmq.SUB, job.link.sim_state, hwm=1000)
        self.camera = None
        if recording is not None:  # the recording shows what the slow process saw
            self.camera = ctx.connect(zmq.SUB, job.link.camera, hwm=4)
        for s in (self.tele, self.truth, self.camera):
            if s is not None:
                s.setsockopt(zmq.SUBSCRIBE, b"")
        self.recording = recording
        self.tele_log = open(out / "telemetry.jsonl", "w")
        self.truth_log = open(out / "truth.jsonl", "w")
        self.estimates: list[Estimate] = []
        self.truths: list[Truth] = []
        self.observations: list[Observation] = []
        self.events: list[dict] = []
        self.holds: list[float] = []  # times of telemetry with the watchdog holding
        self.last: dict = {}
        self.world: dict = {}  # the last truth message's meta (episode, rejected commands)
        self.world_joints: np.ndarray | None = None  # the last sim_state's joints
        self.counter: dict = {}

    def poll(self) -> None:
        for msg in link.drain(self.tele, self.counter, 1000):
            self._runtime_message(msg)
            if self.recording is not None:
                self.recording.message(msg)
        for msg in link.drain(self.truth, self.counter, 1000):
            if msg.kind == "sim_state":
                self.world_joints = np.array(msg.arrays["state"], float)
            elif msg.kind == "truth":
                self._truth(msg)
                if self.recording is not None:
                    self.recording.message(msg)
        if self.camera is not None:
            for msg in link.drain(self.camera, self.counter, 100):
                self.recording.message(msg)

    def _runtime_message(self, msg: link.Message) -> None:
        rec = {
            "t": msg.header.t_capture,
            "kind": msg.kind,
            **msg.header.meta,
            **{k: v.tolist() for k, v in msg.arrays.items()},
        }
        self.tele_log.write(jsonout.dumps(rec) + "\n")
        if msg.kind == "telemetry":
            if "object_estimate" in msg.arrays:
                joints = msg.arrays.get("joints")
                self.estimates.append(
                    Estimate(
                        msg.header.t_capture,
                        np.array(msg.arrays["object_estimate"], float),
                        None if joints is None else np.array(joints, float),
                        int(msg.header.meta.get("estimator", {}).get("applied", 1)),
                    )
                )
            self.last = rec
            if rec.get("watchdog") == "hold":
                self.holds.append(rec["t"])
        elif msg.kind == "event":
            self.events.append(rec)
        elif msg.kind == "observation" and "object" in msg.arrays and "state" in msg.arrays:
            self.observations.append(
                Observation(
                    msg.header.t_capture,
                    np.array(msg.arrays["object"], float),
                    np.array(msg.arrays["state"], float),
                    str(msg.header.meta.get("result", "applied")),
                    msg.header.meta.get("t_received"),
                )
            )

    def _truth(self, msg: link.Message) -> None:
        t = msg.header.t_capture
        self.world = msg.header.meta
        joints = msg.arrays.get("state")
        self.truths.append(
            Truth(
                t,
                np.array(msg.arrays["object_true"], float),
                bool(msg.header.meta.get("is_success")),
                int(msg.header.meta.get("episode", -1)),
                self.world_joints if joints is None else np.array(joints, float),
            )
        )
        if len(self.truths) % 5 == 1:
            line = {"t": t, **msg.header.meta, "object_true": msg.arrays["object_true"].tolist()}
            self.truth_log.write(jsonout.dumps(line) + "\n")

    def attempts_ended(self) -> int:
        return sum(1 for e in self.events if e.get("event") == "attempt_end")

    def held_since(self, t: float) -> float | None:
        """The first time at or after ``t`` the runtime's watchdog reported holding the arm."""
        return next((h for h in self.holds if h >= t), None)

    def close(self) -> None:
        self.tele_log.close()
        self.truth_log.close()
        for s in (self.tele, self.truth, self.camera):
            if s is not None:
                s.close(0)


def status_fields(rec: Recorder, attempts: int) -> list:
    """The live line's fields (liveline.fit_fields cuts them to the terminal)."""
    if not rec.last:
        return [(0, "waiting for the runtime to load its model and start the first attempt...")]
    started = sum(1 for e in rec.events if e.get("event") == "attempt_start")
    errs = estimate_errors(rec.estimates[-20:], rec.truths[-200:])
    err = (float(np.median(errs[:, 0])), float(np.median(errs[:, 1]))) if len(errs) else None
    decisions = [e for e in rec.events if e.get("phase") == "decision"]
    gate = (decisions[-1]["p_success"], decisions[-1]["verdict"]) if decisions else None
    return sim_fields(max(started, 1), attempts, rec.last, err, gate)


def endpoints_line(job: GraspJob) -> str:
    """Where a person (or `kiwi grasp-check --connect`) reaches the runtime."""
    lk = job.link
    return (
        f"endpoints: observations {lk.obs}, queries {lk.query} "
        f"(kiwi grasp-check --connect {lk.query}), telemetry {lk.telemetry}"
    )


@dataclass
class RunEnd:
    """How a run ended: ``completed``, ``aborted`` (a child died) or ``interrupted``."""

    outcome: str
    t_s: float  # seconds into the run
    faults: list[ChildExit] = field(default_factory=list)  # the first one ended the run
    signal: str | None = None  # interrupted by
    watchdog_hold_after_s: float | None = None  # the slow process died: the runtime held after

    def message(self, out: Path) -> str:
        """One line for a person: what died, when, how."""
        if not self.faults:
            return f"kiwi sim {self.outcome} {self.t_s:.1f} s into the run"
        f = self.faults[0]
        verb = "ended" if f.returncode == 0 else "died"
        line = f"the {f.name} process {verb} ({f.how}) {f.t_s:.1f} s into the run"
        if f.name == "slow":
            held = self.watchdog_hold_after_s
            line += (
                f"; the runtime's watchdog held the arm {held:.1f} s later"
                if held is not None
                else "; the runtime's watchdog did NOT report holding the arm"
            )
        if f.returncode > 0 and f.last_words:  # a crash: usually the exception's line
            line += f"; its log ends: {f.last_words[:160]}"
        return line + f" (summary: {out / 'summary.json'})"


class StopRequest:
    """``with StopRequest() as stop:`` turns SIGINT and SIGTERM into ``stop.signal`` (the run
    ends and still writes its summary); a second SIGINT raises KeyboardInterrupt."""

    def __init__(self):
        self.signal: str | None = None
        self._previous: dict = {}

    def __call__(self) -> str | None:
        return self.signal

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _wait_for_last_events(rec, attempts: int, children: Children, sleep) -> bool:
    deadline = children.clock() + LAST_EVENTS_S
    while rec.attempts_ended() < attempts and children.clock() < deadline:
        sleep(POLL_S)
        rec.poll()
    return rec.attempts_ended() >= attempts


def watch_run(
    children: Children,
    rec,
    attempts: int,
    hold_wait_s: float,
    stop_signal: Callable[[], str | None],
    sleep: Callable[[float], None] = time.sleep,
    on_idle: Callable[[], None] | None = None,
) -> RunEnd:
    """Watches the children until the run ends: the runtime finished its ``attempts``, a child
    died, or ``stop_signal()`` names a signal. When the slow process dies, the run goes on
    until the runtime's watchdog reports holding the arm (or ``hold_wait_s`` passes)."""
    faults: list[ChildExit] = []
    slow_died_at = None
    while True:
        rec.poll()
        for ex in children.exited():
            if stop_signal():
                break  # the same Ctrl-C reached the children: not a fault
            if ex.name == "runtime" and ex.returncode == 0 and not faults:
                if _wait_for_last_events(rec, attempts, children, sleep):
                    return RunEnd("completed", children.elapsed_s())
            faults.append(ex)
            if ex.name == "slow" and len(faults) == 1:
                slow_died_at = children.clock()
                continue
            return RunEnd("aborted", children.elapsed_s(), faults)
        if stop_signal():
            return RunEnd("interrupted", children.elapsed_s(), faults, stop_signal())
        if slow_died_at is not None:
            held = rec.held_since(slow_died_at)
            if held is not None or children.clock() - slow_died_at > hold_wait_s:
                hold_s = None if held is None else held - slow_died_at
                return RunEnd("aborted", children.elapsed_s(), faults, None, hold_s)
        if on_idle is not None:
            on_idle()
        sleep(POLL_S)


def run_sim(
    job: GraspJob,
    out: Path,
    live: bool = True,
    rerun: Path | None = None,
    record: Path | None = None,
    vla: str | None = None,
) -> dict:
    """Runs `kiwi sim` into ``out`` and returns the summary; ``rerun``: also write a Rerun
    recording there; ``record``: the runtime writes each attempt into this LeRobot dataset
    folder (attempt_recording.py); ``vla``: a policy (``module:factory``, or ``scripted``) the
    slow process runs, whose chunks the runtime follows instead of the grasp state machine. A
    run that did not complete still writes its summary and plot, prints the summary, and then
    raises: ChildProcessError (one line: what died) or KeyboardInterrupt (Ctrl-C or SIGTERM)."""
    out.mkdir(parents=True, exist_ok=True)
    ports = free_ports(len(LINK_KEYS))
    addresses = {k: f"tcp://127.0.0.1:{p}" for k, p in zip(LINK_KEYS, ports)}
    job = job.model_copy(update={"link": job.link.model_copy(update=addresses)})
    config = out / "config.yaml"
    config.write_text(dump_config(job))
    recording = None
    if rerun is not None:
        from .recording import open_recording

        recording = open_recording(rerun, "kiwi sim", t0=time.monotonic())
    ctx = link.Context()
    rec = Recorder(ctx, job, out, recording)
    children = Children(grace_s=STOP_GRACE_S)
    print(endpoints_line(job), flush=True)
    line = LiveLine()
    last_print = [0.0]

    def show_status() -> None:
        now = time.monotonic()
        if live and now - last_print[0] > 0.25:
            line.show(status_fields(rec, job.sim.attempts))
            last_print[0] = now

    end = None
    try:
        with StopRequest() as stop:
            try:
                children.start(
                    "sim world",
                    ["robot_runtime.sim_world", "--config", str(config)],
                    out / "sim_world.log",
                )
                vla_args = [] if not vla else ["--vla"] if vla == "scripted" else ["--policy", vla]
                children.start(
                    "slow",
                    ["robot_runtime.cli", "slow", "--config", str(config), *vla_args],
                    out / "slow.log",
                )
                time.sleep(0.5)
                record_args = ["--record", str(Path(record).resolve())] if record else []
                children.start(
                    "runtime",
                    [
                        "robot_runtime.runtime_process",
                        "--config",
                        str(config),
                        *record_args,
                        *(["--controller", "chunk"] if vla else []),
                    ],
                    out / "runtime.log",
                )
                hold_wait_s = job.safety.hold_after_s + HOLD_MARGIN_S
                end = watch_run(
                    children, rec, job.sim.attempts, hold_wait_s, stop, on_idle=show_status
                )
            finally:
                try:
                    children.stop(list(STOP_ORDER), on_wait=rec.poll)
                except KeyboardInterrupt:  # asked twice: no more waiting
                    children.kill_all()
    except KeyboardInterrupt:
        children.kill_all()
        end = end or RunEnd("interrupted", children.elapsed_s(), signal="SIGINT")
    line.end()
    rec.poll()
    summary = summarize(rec, job, children.elapsed_s(), end)
    summary["processes"] = children.summary()
    rec.close()
    ctx.close()
    if recording is not None:
        recording.close()
        summary["rerun"] = str(rerun)
    if record is not None:
        summary["record"] = str(record)
    jsonout.write_json(out / "summary.json", summary, indent=2)
    plot_estimate(rec, out / "estimate_vs_truth.png", summary["per_attempt"])
    if end.outcome == "completed":
        return summary
    print_summary(summary, out)
    if end.outcome == "interrupted":
        raise KeyboardInterrupt
    raise ChildProcessError(end.message(out))

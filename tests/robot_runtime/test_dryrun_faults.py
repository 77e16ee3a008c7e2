"""`kiwi sim` when a child process dies or the run is interrupted: what it decides (fakes on a
stepped clock), what it writes (summary records), and end to end with real processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robot_runtime import jsonout
from robot_runtime.child_processes import ChildExit, Children
from robot_runtime.dryrun import RunEnd, watch_run
from robot_runtime.loop import SteppedClock
from robot_runtime.sim_report import attempt_records, summarize

from .fake_children import FakeChild
from .runtime_helpers import grasp_job, tiny_checkpoint

NAMES = ("runtime", "sim world", "slow")


class FakeRecorder:
    """The Recorder's surface for watch_run; ``script`` maps a time to an action run by the
    first poll at or after it (a child dying, a hold reported, an attempt ending)."""

    def __init__(self, clock: SteppedClock, script: dict):
        self.clock, self.script = clock, dict(sorted(script.items()))
        self.holds: list[float] = []
        self.ended = 0

    def poll(self) -> None:
        for t in [t for t in self.script if t <= self.clock()]:
            self.script.pop(t)(self)

    def attempts_ended(self) -> int:
        return self.ended

    def held_since(self, t: float):
        return next((h for h in self.holds if h >= t), None)


def setup(script: dict):
    clock = SteppedClock()
    kids = Children(grace_s=5.0, clock=clock, sleep=clock.sleep)
    fakes = {name: FakeChild(clock) for name in NAMES}
    for name, fake in fakes.items():
        kids.add(name, fake)
    return clock, kids, fakes, FakeRecorder(clock, {t: a(fakes) for t, a in script.items()})


def watch(clock, kids, rec, stop=lambda: None, hold_wait_s=3.5, attempts=1) -> RunEnd:
    return watch_run(kids, rec, attempts, hold_wait_s, stop, sleep=clock.sleep)


def dies(name: str, code: int):
    return lambda fakes: lambda rec: fakes[name].die(code)


def hold(fakes):
    return lambda rec: rec.holds.append(rec.clock())


def test_slow_death_keeps_the_runtime_until_its_watchdog_holds():
    clock, kids, fakes, rec = setup({2.0: dies("slow", -9), 3.5: hold})
    end = watch(clock, kids, rec)
    assert end.outcome == "aborted" and [f.name for f in end.faults] == ["slow"]
    assert end.faults[0].how == "killed by SIGKILL" and abs(end.faults[0].t_s - 2.0) < 0.03
    assert abs(end.watchdog_hold_after_s - 1.5) < 0.03
    assert abs(clock() - 3.5) < 0.03, "the run went on until the hold"
    for name in ("runtime", "sim world"):
        assert fakes[name].returncode is None and fakes[name].signals == [], "left running"
    message = end.message(Path("run"))
    assert "\n" not in message
    assert message.startswith("the slow process died (killed by SIGKILL) 2.0 s into the run")
    assert "watchdog held the arm 1.5 s later" in message


def test_slow_death_without_a_hold_ends_after_the_wait_and_says_so():
    clock, kids, fakes, rec = setup({2.0: dies("slow", 1)})
    end = watch(clock, kids, rec, hold_wait_s=3.5)
    assert end.watchdog_hold_after_s is None and abs(clock() - 5.5) < 0.05
    assert "did NOT report holding" in end.message(Path("run"))


@pytest.mark.parametrize("name", ["sim world", "runtime"])
def test_world_or_runtime_death_ends_the_run_at_once(name):
    clock, kids, fakes, rec = setup({1.0: dies(name, -9)})
    end = watch(clock, kids, rec)
    assert end.outcome == "aborted" and [f.name for f in end.faults] == [name]
    assert abs(clock() - 1.0) < 0.03


def test_a_second_death_while_waiting_for_the_hold_ends_the_run():
    clock, kids, fakes, rec = setup({1.0: dies("slow", -9), 1.5: dies("sim world", 1)})
    end = watch(clock, kids, rec)
    assert [f.name for f in end.faults] == ["slow", "sim world"] and abs(clock() - 1.5) < 0.03


def test_the_runtime_finishing_its_attempts_completes_the_run():
    def finish(fakes):
        def act(rec):
            rec.ended = 2
            fakes["runtime"].die(0)

        return act

    clock, kids, fakes, rec = setup({4.0: finish})
    assert watch(clock, kids, rec, attempts=2).outcome == "completed"


def test_the_runtime_ending_early_without_a_crash_is_still_a_fault():
    clock, kids, fakes, rec = setup({4.0: dies("runtime", 0)})  # e.g. SIGTERM from someone else
    end = watch(clock, kids, rec, attempts=2)
    assert end.outcome == "aborted" and end.faults[0].how == "exit code 0"
    assert end.message(Path("run")).startswith("the runtime process ended (exit code 0)")


def test_an_interrupt_ends_the_run_and_children_stopping_with_it_are_not_faults():
    asked = {}
    clock, kids, fakes, rec = setup(
        {1.0: lambda fakes: lambda rec: asked.update(signal="SIGINT"), 1.0001: dies("slow", 0)}
    )
    end = watch(clock, kids, rec, stop=lambda: asked.get("signal"))
    assert (end.outcome, end.signal, end.faults) == ("interrupted", "SIGINT", [])


class RecordedEvents:
    """What the Recorder keeps, written by hand."""

    def __init__(self, events, truths, last=None):
        self.events, self.truths, self.last = events, truths, last or {}
        self.estimates: list = []
        self.world = {"rejected": 4}


def attempt(t_start, seed, t_end=None, phase="lift"):
    events = [{"t": t_start, "event": "attempt_start", "seed": seed}]
    if t_end is not None:
        loop = {"ticks": 10, "overruns": 0, "jitter_us_p50": 1.0, "jitter_us_p99": 2.0}
        est = {"applied": 3, "last_age_ms": 100.0}
        events.append({"t": t_end, "event": "attempt_end", "seed": seed, "phase": phase,
                       "loop": loop, "estimator": est})  # fmt: skip
    return events


def test_attempts_cut_short_carry_the_runs_outcome():
    events = (
        attempt(0.0, 1, 4.0, "done")  # finished
        + attempt(5.0, 2, 21.0, "descend")  # ran out of time (episode_s 16)
        + attempt(22.0, 3, 25.0, "approach")  # stopped by SIGTERM: no final phase, not timed out
        + attempt(26.0, 4)  # the runtime died: no end at all
    )
    truths = [(3.9, None, True, 0), (20.0, None, False, 1), (24.0, None, False, 2)]
    rec = RecordedEvents(events, truths, {"phase": "look"})
    records = attempt_records(rec, episode_s=16.0, stopped="aborted")
    assert [r["outcome"] for r in records] == ["success", "timeout", "aborted", "aborted"]
    assert [r["seed"] for r in records] == [1, 2, 3, 4]
    assert records[3]["phase"] == "look" and records[3]["loop"] is None
    interrupted = attempt_records(rec, episode_s=16.0, stopped="interrupted")
    assert interrupted[2]["outcome"] == "interrupted"


def test_the_summary_of_a_run_cut_before_any_observation():
    events = attempt(0.0, 1, 2.0, "approach")
    events[1]["estimator"]["last_age_ms"] = None  # NaN on the wire arrives as null
    rec = RecordedEvents(events, [(1.0, None, False, 0)])
    ex = ChildExit("sim world", 2.0, -9, ())
    summary = summarize(rec, grasp_job(), 2.5, RunEnd("aborted", 2.0, [ex]))
    assert summary["observation_age_ms"] is None and summary["estimate_error_mm_median"] is None
    assert summary["died"]["process"] == "sim world" and summary["outcome"] == "aborted"
    assert (summary["attempts"], summary["attempts_finished"], summary["successes"]) == (1, 0, 0)
    assert summary["world_rejected_commands"] == 4
    assert "NaN" not in jsonout.dumps(summary)


def test_a_fault_is_described_with_its_log():
    ex = ChildExit("sim world", 3.0, 1, ("x", "RuntimeError: MuJoCo blew up", ""))
    end = RunEnd("aborted", 3.1, [ex])
    assert end.message(Path("r")) == (
        "the sim world process died (exit code 1) 3.0 s into the run; its log ends: "
        "RuntimeError: MuJoCo blew up (summary: r/summary.json)"
    )


# --- end to end ---------------------------------------------------------------------------


def child_pids(pid: int) -> dict[str, int]:
    """The children of ``pid`` by role, from /proc (Linux)."""
    roles = {
        "robot_runtime.sim_world": "sim world",
        "slow": "slow",
        "robot_runtime.runtime_process": "runtime",
    }
    out = {}
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for child in children:
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for arg, role in roles.items():
            if arg.encode() in argv:
                out[role] = int(child)
    return out


def start_kiwi_sim(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    ckpt = tiny_checkpoint(tmp_path / "wm.safetensors")
    out = tmp_path / "run"
    argv = ["sim", "--quick", "--no-live", "--out", str(out), "--set", f"runtime.checkpoint={ckpt}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "robot_runtime.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's Ctrl-C would reach
    )
    deadline = time.monotonic() + 60
    runtime_log = out / "runtime.log"
    while not (runtime_log.exists() and "runtime ready" in runtime_log.read_text()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the runtime did not start"
        time.sleep(0.05)
    time.sleep(1.0)  # into the first attempt
    return proc, out


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["slow", "sim world", "runtime"])
def test_kiwi_sim_survives_a_child_killed_mid_run(tmp_path, victim):
    proc, out = start_kiwi_sim(tmp_path)
    try:
        os.kill(child_pids(proc.pid)[victim], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 2, (stdout, stderr)
    assert "Traceback" not in stdout + stderr
    (line,) = stderr.strip().splitlines()
    assert f"the {victim} process died (killed by SIGKILL)" in line
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outcome"] == "aborted" and summary["died"]["process"] == victim
    assert summary["died"]["how"] == "killed by SIGKILL" and summary["died"]["t_s"] > 1.0
    assert [a["outcome"] for a in summary["per_attempt"]] == ["aborted"]
    assert all(p["returncode"] is not None for p in summary["processes"].values())
    if victim == "slow":
        assert summary["died"]["watchdog_hold_after_s"] is not None, "the runtime held the arm"
        assert summary["processes"]["runtime"]["stopped_with"] == ["SIGTERM"]
        assert summary["processes"]["runtime"]["returncode"] == 0, "a clean stop"
    assert (out / "estimate_vs_truth.png").exists()
    assert "aborted" in stdout, "the summary table is printed"


@pytest.mark.slow
def test_ctrl_c_ends_kiwi_sim_with_the_attempt_marked_interrupted(tmp_path):
    proc, out = start_kiwi_sim(tmp_path)
    try:
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends: every process of the group
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stdout + stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outcome"] == "interrupted" and summary["interrupted"]
    assert summary["died"] is None
    assert [a["outcome"] for a in summary["per_attempt"]] == ["interrupted"]

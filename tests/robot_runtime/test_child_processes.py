"""Children of `kiwi sim`: exits noticed once with their log, stopping asks then insists."""

import subprocess
import sys

from robot_runtime.child_processes import Children, describe_returncode, log_tail
from robot_runtime.loop import SteppedClock

from .fake_children import FakeChild


def children_on(clock: SteppedClock, **fakes: FakeChild) -> Children:
    kids = Children(grace_s=5.0, clock=clock, sleep=clock.sleep)
    for name, child in fakes.items():
        kids.add(name, child)
    return kids


def test_describe_returncode_names_the_signal():
    assert describe_returncode(0) == "exit code 0"
    assert describe_returncode(1) == "exit code 1"
    assert describe_returncode(-9) == "killed by SIGKILL"
    assert describe_returncode(-15) == "killed by SIGTERM"
    assert describe_returncode(-200) == "killed by signal 200"


def test_log_tail_reads_the_last_lines_and_survives_a_missing_file(tmp_path):
    log = tmp_path / "x.log"
    log.write_bytes(b"".join(b"line %d\n" % i for i in range(5000)) + b"\xff bad utf-8\n")
    tail = log_tail(log, lines=3)
    assert tail == ["line 4998", "line 4999", "\ufffd bad utf-8"]
    assert log_tail(tmp_path / "missing.log") == []


def test_a_dead_child_is_reported_once_with_when_how_and_its_log(tmp_path):
    clock = SteppedClock(100.0)
    slow, world = FakeChild(clock), FakeChild(clock)
    kids = children_on(clock, slow=slow)
    (tmp_path / "world.log").write_text(
        "sim world ready\nTraceback (most recent call last):\nValueError: boom\n"
    )
    kids.add("sim world", world, tmp_path / "world.log")
    assert kids.exited() == []
    clock.advance(3.25)
    world.die(1)
    (ex,) = kids.exited()
    assert (ex.name, ex.t_s, ex.returncode, ex.how) == ("sim world", 3.25, 1, "exit code 1")
    assert ex.last_words == "ValueError: boom"
    assert ex.as_dict()["log_tail"][-1] == "ValueError: boom"
    assert kids.exited() == [], "reported once"
    slow.die(-9)
    (ex,) = kids.exited()
    assert ex.how == "killed by SIGKILL" and ex.log_tail == ()


def test_stop_asks_in_order_and_kills_a_child_that_ignores_sigterm():
    clock = SteppedClock()
    runtime = FakeChild(clock, exits_after_s=0.3)
    world = FakeChild(clock, exits_after_s=None)  # ignores SIGTERM
    slow = FakeChild(clock)
    kids = children_on(clock, runtime=runtime, **{"sim world": world}, slow=slow)
    slow.die(-9)  # already gone: nothing to ask
    waited = []
    report = kids.stop(["runtime", "sim world", "slow"], on_wait=lambda: waited.append(clock()))
    assert runtime.signals == ["SIGTERM"] and report["runtime"]["returncode"] == 0
    assert abs(report["runtime"]["took_s"] - 0.3) < 0.03
    assert world.signals == ["SIGTERM", "SIGKILL"]
    assert report["sim world"]["how"] == "killed by SIGKILL"
    assert abs(report["sim world"]["took_s"] - 5.0) < 0.03, "SIGKILL after the grace period"
    assert slow.signals == [] and "slow" not in report
    assert waited, "the caller keeps reading telemetry while it waits"
    assert [ex.name for ex in kids.exited()] == ["slow"], "stopped on request: not faults"
    summary = kids.summary()
    assert summary["sim world"]["stopped_with"] == ["SIGTERM", "SIGKILL"]
    assert summary["slow"]["how"] == "killed by SIGKILL" and "stopped_with" not in summary["slow"]


def test_kill_all_leaves_nothing_running():
    clock = SteppedClock()
    a, b = FakeChild(clock, exits_after_s=None), FakeChild(clock)
    kids = children_on(clock, a=a, b=b)
    b.die(0)
    kids.kill_all()
    assert a.returncode == -9 and b.signals == []
    assert kids.summary()["a"]["stopped_with"] == ["SIGKILL"]


def test_real_children_stop_on_sigterm_or_are_killed(tmp_path):
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ignoring SIGTERM', flush=True); time.sleep(60)"
    )
    kids = Children(grace_s=0.5)
    procs = {}
    for name, code in (("polite", "import time; time.sleep(60)"), ("stubborn", stubborn)):
        procs[name] = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
        )
        kids.add(name, procs[name])
    assert procs["stubborn"].stdout.readline().strip() == "ignoring SIGTERM"
    report = kids.stop(["polite", "stubborn"])
    assert report["polite"] == {
        "signals": ["SIGTERM"],
        "returncode": -15,
        "how": "killed by SIGTERM",
        "took_s": report["polite"]["took_s"],
    }
    assert report["stubborn"]["signals"] == ["SIGTERM", "SIGKILL"]
    assert report["stubborn"]["how"] == "killed by SIGKILL"
    assert report["stubborn"]["took_s"] >= 0.5
    procs["stubborn"].stdout.close()

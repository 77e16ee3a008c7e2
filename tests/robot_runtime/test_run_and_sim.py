"""End to end: `kiwi run` on the servo emulator, `kiwi sim --quick` with all its processes."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from drivers.virtual_bus import VirtualBus
from robot_runtime import link
from robot_runtime.cli import main
from robot_runtime.dryrun import free_ports
from world_model.datasets import LeRobotReader

from .runtime_helpers import tiny_checkpoint

CAL = {
    "shoulder_pan": [1, 1000, 3000],
    "shoulder_lift": [2, 1000, 3000],
    "elbow_flex": [3, 1000, 3000],
    "wrist_flex": [4, 1000, 3000],
    "wrist_roll": [5, 0, 4095],
    "gripper": [6, 1500, 2500],
}


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_kiwi_run_on_the_emulator_follows_holds_and_turns_torque_off(tmp_path):
    cal = {
        name: {"id": i, "drive_mode": 0, "homing_offset": 0, "range_min": lo, "range_max": hi}
        for name, (i, lo, hi) in CAL.items()
    }
    (tmp_path / "so100.json").write_text(json.dumps(cal))
    ckpt = tiny_checkpoint(tmp_path / "wm.safetensors")
    obs_port, query_port, tele_port = free_ports(3)
    with VirtualBus("feetech", {i: "sts3215" for i in range(1, 7)}) as bus:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "robot_runtime.cli",
                "run",
                "--robot",
                "so100",
                "--port",
                bus.port,
                "--calibration",
                str(tmp_path / "so100.json"),
                "--controller",
                "chunk",
                "--out",
                str(tmp_path / "run"),
                "--set",
                f"runtime.checkpoint={ckpt}",
                "--set",
                f"link.obs=tcp://127.0.0.1:{obs_port}",
                "--set",
                f"link.query=tcp://127.0.0.1:{query_port}",
                "--set",
                f"link.telemetry=tcp://127.0.0.1:{tele_port}",
                "--set",
                "safety.slow_after_s=0.3",
                "--set",
                "safety.hold_after_s=0.6",
                "--live",  # the status line, though stdout is a pipe
                "--rerun",
                str(tmp_path / "run.rrd"),
                "--record",
                str(tmp_path / "recorded"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "COLUMNS": "160"},  # the width the live line fits (a pipe has none)
        )
        try:
            started = []
            for line in proc.stdout:
                started.append(line)
                if line.strip() == "ready":
                    break
            else:
                raise AssertionError("kiwi run did not start:\n" + "".join(started))
            assert all(bus.servo(i).torque for i in range(1, 7)), "torque on after connect"
            ctx = link.Context()
            push = ctx.connect(zmq.PUSH, f"tcp://127.0.0.1:{obs_port}")
            sub = ctx.connect(zmq.SUB, f"tcp://127.0.0.1:{tele_port}")
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            # A VLA's chunks: pan to +20 degrees (2000 + 20 * 4095/360 ticks = 2227).
            target = np.array([20.0, 0, 0, 0, 0, 50.0])
            for _ in range(15):
                chunk = np.repeat(target[None], 25, 0).astype(np.float32)
                push.send_multipart(
                    link.encode(
                        "obs",
                        {"actions": chunk},
                        t_capture=time.monotonic(),
                        meta={"t_first": time.monotonic(), "dt": 0.02},
                    )
                )
                time.sleep(0.1)
            wait_for(
                lambda: abs(bus.servo(1).get("Present_Position") - 2227) < 5,
                5,
                "the pan joint to follow the chunks",
            )
            assert abs(bus.servo(6).get("Goal_Position") - 2000) < 3  # gripper 50 %
            # Observations stop: the watchdog slows, then holds.
            events = []
            wait_for(
                lambda: any(
                    m.header.meta.get("mode") == "hold"
                    for m in link.drain(sub, None, 500)
                    if events.append(m) or 1
                ),
                5,
                "the watchdog to hold",
            )
            held = bus.servo(1).get("Goal_Position")
            time.sleep(0.3)
            assert bus.servo(1).get("Goal_Position") == held
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
        assert "stopped after" in out
        assert not any(bus.servo(i).torque for i in range(1, 7)), "torque off after exit"
        ctx.close()
    status = [line for line in out.split("\r") if "bus retries" in line]
    assert status and "watchdog " in status[-1], "the live line, with the bus and the watchdog"
    assert (tmp_path / "run.rrd").stat().st_size > 1000, "the recording"
    with LeRobotReader(tmp_path / "recorded") as ds:  # the run, ended by SIGTERM, as an episode
        assert ds.num_episodes == 1 and ds.robot_type == "so100_follower"
        ep = ds.read_episode(0, ["observation.state", "action", "next.done"])
        pan = ep["observation.state"][:, 0]
        assert pan.max() > 15 and ep["action"][:, 0].max() == pytest.approx(20, abs=0.5)
        assert ep["next.done"][-1]


@pytest.mark.slow
def test_kiwi_sim_quick_runs_end_to_end(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "wm.safetensors")
    out = tmp_path / "run"
    argv = ["sim", "--quick", "--no-live", "--out", str(out), "--set", f"runtime.checkpoint={ckpt}"]
    code = main([*argv, "--rerun", str(out / "run.rrd"), "--record", str(tmp_path / "rec")])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["attempts"] == 1 and summary["ticks"] > 100
    assert summary["outcome"] == "completed" and summary["died"] is None
    outcome = summary["per_attempt"][0]["outcome"]
    assert outcome in ("success", "failure", "timeout", "lost", "gave_up")
    assert summary["outcomes"][outcome] == 1 and sum(summary["outcomes"].values()) == 1
    for key in ("estimate_error_mm_median", "estimate_error_deg_median"):
        assert summary[key] is not None, key
    assert summary["observations_recorded"] > 0, "the runtime's observation telemetry"
    assert summary["perception_error_mm_median"] is not None
    assert (out / "run.rrd").stat().st_size > 10_000
    assert all(p["returncode"] is not None for p in summary["processes"].values()), "none left"
    assert summary["observations_applied"] > 0, "the slow process's observations reached the loop"
    assert summary["estimate_error_mm_median"] is not None
    lines = (out / "telemetry.jsonl").read_text().splitlines()
    kinds = {json.loads(line)["kind"] for line in lines}
    assert {"telemetry", "event"} <= kinds
    assert (out / "estimate_vs_truth.png").stat().st_size > 10_000
    # --record: the attempt as a LeRobot episode, labelled by the world's truth
    with LeRobotReader(tmp_path / "rec") as ds:
        assert ds.num_episodes == 1 and ds.fps == 50
        ep = ds.read_episode(0)
        assert ep["seed"][0] == summary["per_attempt"][0]["seed"]
        assert bool(ep["next.success"][-1]) == summary["per_attempt"][0]["success"]
        assert ep.length > 100 and ep["observation.images.wrist"].shape[1:] == (128, 128, 3)
        p = ep["gate.p_success"]  # the tiny model has no success head: no decision
        assert len(p) == ep.length and np.isnan(p).all()
    assert summary["record"] == str(tmp_path / "rec")


@pytest.mark.slow
def test_kiwi_sim_vla_runs_the_learned_policy_and_follows_its_chunks(tmp_path):
    """`kiwi sim --vla`: the slow process runs the shipped learned chunk policy on the camera
    frames, the runtime follows its chunks (the grasp state machine is off) and the summary
    counts them."""
    ckpt = tiny_checkpoint(tmp_path / "wm.safetensors")
    out = tmp_path / "run"
    argv = ["sim", "--quick", "--no-live", "--vla", "--out", str(out)]
    argv += ["--set", f"runtime.checkpoint={ckpt}", "--set", "sim.episode_s=8"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outcome"] == "completed" and summary["died"] is None
    chunks = summary["chunks"]
    assert chunks["received"] > 0 and chunks["taken"] > 0, chunks
    assert "policy robot_runtime.bc_policy:load" in (out / "slow.log").read_text()

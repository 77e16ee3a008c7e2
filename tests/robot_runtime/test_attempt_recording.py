"""`--record DIR`: the runtime's attempts as LeRobot episodes (robot_runtime/attempt_recording.py),
written by the project's writer into real folders, camera frames over a real ZeroMQ socket."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import zmq

from robot_runtime import link
from robot_runtime.attempt_recording import (
    Attempt,
    AttemptRecorder,
    episode_frames,
    gripper_holds,
    record_features,
)
from robot_runtime.cli import main
from robot_runtime.controllers import GraspEvent
from robot_runtime.dryrun import free_ports
from world_model.datasets import DatasetError, LeRobotReader

FPS = 50
SIZE = 32


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def run_attempt(rec, seed, t0, ticks, success, decisions=()):
    rec.begin(seed, t0)
    for k in range(ticks):
        t = t0 + k / FPS
        rec.tick(t, np.full(6, seed + k, float), np.full(6, -(seed + k), float))
    events = [
        GraspEvent(t0 + k / FPS, "decision", {"p_success": p, "verdict": v})
        for k, p, v in decisions
    ]
    rec.end(success, events)


def test_episode_frames_put_the_gate_at_its_tick_and_hold_camera_frames():
    a = Attempt(7, 0.0, [0.0, 0.02, 0.04, 0.06, 0.08], [np.arange(6.0)] * 5, [np.ones(6)] * 5)
    shots = [(0.01, np.full((2, 2, 3), 10, np.uint8)), (0.05, np.full((2, 2, 3), 20, np.uint8))]
    features = record_features(6, {"wrist": (2, 2)}, seed=True)
    f = episode_frames(a, True, [(0.041, 0.8, True)], {"wrist": shots}, features)
    assert np.isnan(f["gate.p_success"][[0, 1, 3, 4]]).all()
    assert f["gate.p_success"][2] == np.float32(0.8) and f["gate.commit"][2] == 1
    # before the first frame: the first; then the newest captured at or before the tick
    assert f["observation.images.wrist"][:, 0, 0, 0].tolist() == [10, 10, 10, 20, 20]
    assert f["next.done"].tolist() == [False] * 4 + [True]
    assert f["next.success"].tolist() == [False] * 4 + [True]
    assert f["seed"].tolist() == [7] * 5
    failed = episode_frames(a, False, [], {"wrist": shots}, features)
    assert not failed["next.success"].any() and np.isnan(failed["gate.commit"]).all()


def test_gripper_holds_when_closed_on_something():
    joints, command = np.zeros(6), np.zeros(6)
    joints[-1] = 22.0  # commanded shut, blocked open by a cube
    assert gripper_holds(joints, command)
    joints[-1] = 1.0  # closed on nothing
    assert not gripper_holds(joints, command)
    command[-1] = joints[-1] = 100.0  # open: nothing grasped
    assert not gripper_holds(joints, command)


def test_attempts_with_camera_frames_from_a_socket_become_a_dataset(tmp_path):
    (port,) = free_ports(1)
    address = f"tcp://127.0.0.1:{port}"
    ctx = link.Context()
    pub = ctx.bind(zmq.PUB, address, hwm=100)
    out = tmp_path / "ds"
    rec = AttemptRecorder(
        out, FPS, 6, cameras={"wrist": (SIZE, SIZE)}, camera_address=address, ctx=ctx, seed=True
    )
    try:

        def publish(t, value, dtype=np.uint8):
            image = np.full((SIZE, SIZE, 3), value, dtype)
            state = np.zeros(6, np.float32)
            pub.send_multipart(link.encode("camera", {"wrist": image, "state": state}, t_capture=t))

        # the subscription is in place once a frame gets through
        wait_for(lambda: publish(0.0, 0) or rec.tap.frames["wrist"], 5, "the camera tap")
        publish(1.0, 0, np.float32)  # a frame of the wrong dtype: counted, not kept
        for t, value in ((10.0, 40), (10.1, 200)):
            publish(t, value)
        wait_for(lambda: len(rec.tap.frames["wrist"]) >= 3, 5, "frames")
        run_attempt(rec, 5, 10.0, 10, True, [(6, 0.9, "commit")])
        for t, value in ((20.0, 120),):
            publish(t, value)
        wait_for(lambda: any(s[0] == 20.0 for s in rec.tap.frames["wrist"]), 5, "frames")
        run_attempt(rec, 6, 20.0, 8, False, [(2, 0.2, "back_off"), (5, 0.7, "commit")])
        rec.begin(7, 30.0)  # cut short by the end of the run: not an episode
        rec.tick(30.0, np.zeros(6), np.zeros(6))
        summary = rec.close()
    finally:
        pub.close(0)
        ctx.close()
    assert summary["episodes_written"] == 2 and summary["error"] is None, summary
    assert summary["camera_rejected"] == 1 and len(summary["skipped"]) == 1
    with LeRobotReader(out) as ds:
        assert ds.num_episodes == 2 and ds.fps == FPS and ds.robot_type == "so101_follower"
        assert "pick up the red cube" in ds.tasks
        ep = ds.read_episode(0)
        assert ep["observation.state"][3].tolist() == [8.0] * 6
        assert ep["action"][3].tolist() == [-8.0] * 6
        assert ep["next.success"][-1] and not ep["next.success"][:-1].any()
        assert np.nanmax(ep["gate.p_success"]) == np.float32(0.9) and ep["gate.commit"][6] == 1
        wrist = ep["observation.images.wrist"].astype(int).mean(axis=(1, 2, 3))
        assert np.all(np.abs(wrist[:5] - 40) < 8) and np.all(np.abs(wrist[5:] - 200) < 8), wrist
        second = ds.read_episode(1)
        assert second["seed"].tolist() == [6] * 8 and not second["next.success"].any()
        assert second["gate.commit"][[2, 5]].tolist() == [0, 1]
        features = ds.info["features"]
        assert "NaN elsewhere" in features["gate.p_success"]["description"]
    stats = json.loads((out / "meta" / "stats.json").read_text())
    assert stats["gate.p_success"]["count"] == [3]  # the decisions, not the NaN frames
    assert abs(stats["gate.p_success"]["mean"][0] - 0.6) < 1e-6


def test_a_second_run_appends_and_another_dataset_is_refused(tmp_path):
    out = tmp_path / "ds"
    rec = AttemptRecorder(out, FPS, 6)
    run_attempt(rec, 0, 0.0, 5, False)  # no decision at all: the gate's columns are NaN
    rec.close()
    rec = AttemptRecorder(out, FPS, 6)
    assert rec.first_index == 1
    run_attempt(rec, 1, 0.0, 6, True, [(3, 0.55, "commit")])
    assert rec.close()["episodes"][0]["episode_index"] == 1
    with LeRobotReader(out) as ds:
        assert ds.num_episodes == 2 and ds.num_frames == 11
    with pytest.raises(DatasetError, match="other features"):
        AttemptRecorder(out, FPS, 6, seed=True)
    assert main(["dataset", "info", str(out)]) == 0


def test_a_killed_recording_leaves_a_folder_that_loads_and_continues(tmp_path):
    out = tmp_path / "ds"
    script = textwrap.dedent(
        f"""
        import numpy as np
        from robot_runtime.attempt_recording import AttemptRecorder
        rec = AttemptRecorder({str(out)!r}, 50, 6)
        seed = 0
        while True:
            rec.begin(seed, 0.0)
            for k in range(200):
                rec.tick(k / 50, np.full(6, seed, float), np.zeros(6))
            rec.end(seed % 2 == 0)
            seed += 1
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ})
    try:
        info = out / "meta" / "info.json"
        wait_for(
            lambda: info.is_file() and json.loads(info.read_text())["total_episodes"] >= 3,
            60,
            "three episodes",
        )
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with LeRobotReader(out) as ds:
        n = ds.num_episodes
        assert n >= 3
        assert ds.read_episode(n - 1)["observation.state"][0, 0] == n - 1
    rec = AttemptRecorder(out, FPS, 6)
    assert rec.first_index == n
    run_attempt(rec, 99, 0.0, 4, True)
    rec.close()
    with LeRobotReader(out) as ds:
        assert ds.num_episodes == n + 1
        assert ds.read_episode(n)["observation.state"][0, 0] == 99

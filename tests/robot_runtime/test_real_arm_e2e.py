"""`kiwi run` is `kiwi sim` on hardware (issue 11), end to end on the servo emulator:

    kiwi emulate-bus --robot so101 --link L --sweep        (a hand moves the limp joints)
    kiwi calibrate --robot so101 --port L --out cal.json --yes < /dev/null
    kiwi slow ...                                          (perception on the camera socket)
    kiwi run --robot so101 --port L --calibration cal.json --camera wrist=clip.mp4 --json

The camera is a video file of a red cube played at its own rate; `kiwi run` publishes its frames
with the joints read at capture, `kiwi slow` finds the cube and posts observations, the runtime
runs the grasp with the shipped model and its commit gate to a decision, and the arm ends
torque-off. Every process is a real one; the serial port is a pseudo-terminal.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from robot_runtime.dryrun import free_ports

pytestmark = pytest.mark.slow

KIWI = [sys.executable, "-m", "robot_runtime.cli"]


def write_cube_clip(path, side: int = 128, frames: int = 40) -> None:
    """A red cube (28 px) in the middle of a grey table, as the wrist camera would see it."""
    import imageio_ffmpeg

    writer = imageio_ffmpeg.write_frames(
        str(path), (side, side), fps=20, macro_block_size=16, ffmpeg_log_level="error"
    )
    writer.send(None)
    for _ in range(frames):
        frame = np.full((side, side, 3), 90, np.uint8)
        edge = 28
        top = (side - edge) // 2
        frame[top : top + edge, top : top + edge] = (230, 20, 20)
        writer.send(frame.tobytes())
    writer.close()


def wait_for_link(link, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not link.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert link.exists(), "the emulator made no link"


def test_calibrate_slow_and_run_with_a_camera_reach_a_gate_decision(tmp_path):
    clip, cal, link = tmp_path / "clip.mp4", tmp_path / "cal.json", tmp_path / "so101"
    write_cube_clip(clip)
    ports = free_ports(4)
    sets = []
    for key, port in zip(("obs", "query", "telemetry", "camera"), ports):
        sets += ["--set", f"link.{key}=tcp://127.0.0.1:{port}"]
    hand = subprocess.Popen(
        [*KIWI, "emulate-bus", "--robot", "so101", "--link", str(link), "--sweep",
         "--sweep-s", "2.4"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for_link(link)
        done = subprocess.run(
            [*KIWI, "calibrate", "--robot", "so101", "--port", str(link), "--out", str(cal),
             "--yes"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        hand.terminate()  # the emulator removes its link on SIGTERM
        hand.wait(timeout=20)
    assert not link.exists()
    layout = json.loads(cal.read_text())
    assert sorted(layout) == sorted(
        ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
    )
    # The arm at rest where the hand left it (a fresh emulator: servos mid-range, still);
    # `kiwi run` writes the calibration to the servos as it connects.
    bus = subprocess.Popen(
        [*KIWI, "emulate-bus", "--robot", "so101", "--link", str(link)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    slow = None
    try:
        wait_for_link(link)
        slow = subprocess.Popen(
            [*KIWI, "slow", "--config", "sim_grasp", *sets, "--duration", "60"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        run = subprocess.run(
            [*KIWI, "run", "--robot", "so101", "--port", str(link), "--calibration", str(cal),
             "--camera", f"wrist={clip}", "--duration", "18", "--json",
             "--out", str(tmp_path / "run"), *sets],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        out = run.stdout + run.stderr
        assert run.returncode == 0, out
        assert "Traceback" not in out and "so100" not in out
        result = json.loads(run.stdout.strip().splitlines()[-1])
        assert result["estimator"]["applied"] >= 10, out
        assert result["decisions"], f"no gate decision: {out}"
        assert {"p_success", "verdict"} <= set(result["decisions"][0])
        assert result["camera"]["published"] > 100 and not result["camera"]["error"]
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert summary["decisions"] == result["decisions"]
        torque = subprocess.run(
            [*KIWI, "read", "--port", str(link), "--protocol", "feetech", "--ids",
             "1,2,3,4,5,6", "--register", "Torque_Enable", "--json"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert torque.returncode == 0, torque.stdout + torque.stderr
        assert set(json.loads(torque.stdout.strip().splitlines()[-1]).values()) == {0}
    finally:
        if slow is not None:
            slow.terminate()
            slow.wait(timeout=20)
        bus.terminate()  # the emulator removes its link on SIGTERM
        bus.wait(timeout=20)
    assert not link.exists()

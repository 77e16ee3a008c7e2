"""The slow process validates camera messages: hostile ones are counted, never fatal."""

import time

import numpy as np
import pytest
import zmq

from robot_runtime import link
from robot_runtime.dryrun import free_ports
from robot_runtime.slow import FrameError, SlowProcess, parse_frame

from .runtime_helpers import grasp_job

SIDE = 128  # slow.image_size in sim_grasp.yaml
IMAGE = np.zeros((SIDE, SIDE, 3), np.uint8)
STATE = np.zeros(6, np.float32)
NOW = 1000.0

HOSTILE = {
    "float image": ("camera", {"wrist": IMAGE.astype(np.float32), "state": STATE}, NOW),
    "grey image": ("camera", {"wrist": IMAGE[..., 0], "state": STATE}, NOW),
    "RGBA image": ("camera", {"wrist": np.zeros((SIDE, SIDE, 4), np.uint8), "state": STATE}, NOW),
    "too large": ("camera", {"wrist": np.zeros((SIDE + 1, 8, 3), np.uint8), "state": STATE}, NOW),
    "empty image": ("camera", {"wrist": np.zeros((0, SIDE, 3), np.uint8), "state": STATE}, NOW),
    "short state": ("camera", {"wrist": IMAGE, "state": np.zeros(5, np.float32)}, NOW),
    "NaN state": ("camera", {"wrist": IMAGE, "state": np.full(6, np.nan, np.float32)}, NOW),
    "int state": ("camera", {"wrist": IMAGE, "state": np.zeros(6, np.int32)}, NOW),
    "no state": ("camera", {"wrist": IMAGE}, NOW),
    "wrong kind": ("obs", {"wrist": IMAGE, "state": STATE}, NOW),
    "from the future": ("camera", {"wrist": IMAGE, "state": STATE}, NOW + 3600.0),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_camera_messages_are_refused(name):
    kind, arrays, t = HOSTILE[name]
    with pytest.raises(FrameError):
        parse_frame(link.decode(link.encode(kind, arrays, t_capture=t)), SIDE, NOW)


def test_a_valid_frame_parses():
    msg = link.decode(link.encode("camera", {"wrist": IMAGE, "state": STATE.astype(float)}))
    image, state = parse_frame(msg, SIDE, NOW)
    assert image.shape == (SIDE, SIDE, 3) and state.dtype == np.float32


def test_the_slow_process_counts_hostile_frames_and_keeps_working(capsys):
    camera, obs = (f"tcp://127.0.0.1:{p}" for p in free_ports(2))
    job = grasp_job(f"link.camera={camera}", f"link.obs={obs}", "slow.latency_ms=0")
    ctx = link.Context()
    pub = ctx.bind(zmq.PUB, camera, hwm=100)
    slow = SlowProcess(job)

    def publish(kind, arrays, t_capture) -> None:
        pub.send_multipart(link.encode(kind, arrays, t_capture=t_capture))

    def step_until(done, what: str) -> None:
        deadline = time.monotonic() + 5.0
        while not done():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            slow.step()
            time.sleep(0.005)

    try:
        # The subscription takes a moment to reach the publisher: offer frames until one lands.
        def offered() -> bool:
            publish("camera", {"wrist": IMAGE, "state": STATE}, time.monotonic())
            return slow.stats.frames > 0

        step_until(offered, "the first frame")
        for i, (kind, arrays, t) in enumerate(HOSTILE.values(), 1):
            publish(kind, arrays, time.monotonic() + (t - NOW))
            step_until(lambda i=i: slow.stats.rejected == i, f"rejection {i}")
        pub.send_multipart([b"\xff not a header"])
        step_until(lambda: slow.stats.rejected == len(HOSTILE) + 1, "the undecodable one")
        assert "header" in slow.stats.last_rejection
        # A valid frame followed by a newer hostile one: the valid one is used.
        frames = slow.stats.frames
        now = time.monotonic()
        publish("camera", {"wrist": IMAGE, "state": STATE}, now)
        publish("camera", {"wrist": IMAGE[..., 0], "state": STATE}, now + 0.01)
        step_until(lambda: slow.stats.frames == frames + 1, "the valid frame")
        assert slow.stats.rejected == len(HOSTILE) + 2
    finally:
        slow.close()
        ctx.close()
    assert "rejected camera message (1 so far): wrist: dtype float32 is not uint8" in (
        capsys.readouterr().out
    )

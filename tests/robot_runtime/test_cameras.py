"""Real cameras (issue 11 item 4): video files and OpenCV sources, the publisher that sends each
frame with the joints at its capture on the camera socket, and `kiwi slow` reading it unchanged.

The videos are written at test time: 20 frames of 64x64 with a red square moving right."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from robot_runtime import link
from robot_runtime.camera_publisher import (
    CameraPublisher,
    JointHistory,
    TelemetryJoints,
    fixed_joints,
    start_camera_thread,
)
from robot_runtime.cameras import (
    CameraError,
    EndOfStream,
    FrameReadError,
    OpenCVCamera,
    VideoFileCamera,
    fit_to_size,
    open_camera,
    parse_camera_spec,
)
from robot_runtime.dryrun import free_ports
from robot_runtime.slow import SlowProcess, parse_frame

from .camera_clips import write_gif, write_mp4
from .runtime_helpers import grasp_job

FRAMES, SIDE, FPS = 20, 64, 20.0
# a pose whose wrist camera looks down at the table: the perception finds the square there
LOOKING_DOWN = np.array([0.0, -30.0, 60.0, 60.0, 0.0, 50.0], np.float32)


def square_x(frame: np.ndarray) -> float:
    """The red square's centre column (pixels), in any frame size."""
    r, g = frame[..., 0].astype(int), frame[..., 1].astype(int)
    _, xs = np.nonzero((r > 120) & (r > 2 * g))
    return float(xs.mean())


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    return {
        "mp4": write_mp4(folder / "clip.mp4", FRAMES, SIDE, FPS),
        "gif": write_gif(folder / "clip.gif", FRAMES, SIDE, FPS),
    }


class SteppedClock:
    """Time that moves only when the code under test sleeps (or the test says so)."""

    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.t += max(0.0, dt)


def read_all(camera) -> list[tuple[np.ndarray, float]]:
    out = []
    while True:
        try:
            out.append(camera.read())
        except EndOfStream:
            return out


# --- the NAME=SOURCE syntax -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, kind, device",
    [
        ("wrist=0", "device", 0),
        ("wrist=/dev/video0", "device", "/dev/video0"),
        ("top=rtsp://10.0.0.5/stream", "device", "rtsp://10.0.0.5/stream"),
        ("wrist=clip.mp4", "file", "clip.mp4"),
        ("wrist=runs/a b/clip.gif", "file", "runs/a b/clip.gif"),
    ],
)
def test_camera_specs_name_a_device_or_a_file(text, kind, device):
    spec = parse_camera_spec(text)
    assert (spec.name, spec.kind, spec.device) == (text.split("=")[0], kind, device)


@pytest.mark.parametrize("text", ["wrist", "=0", "wrist=", "state=0", "1st=0", "wr ist=0"])
def test_a_malformed_camera_spec_is_a_one_line_error(text):
    with pytest.raises(CameraError) as e:
        parse_camera_spec(text)
    assert "\n" not in str(e.value)


# --- video files ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["mp4", "gif"])
def test_a_video_file_plays_every_frame_at_its_own_rate(videos, fmt):
    clock = SteppedClock()
    camera = VideoFileCamera(videos[fmt], clock=clock, sleep=clock.sleep)
    assert camera.fps == pytest.approx(FPS) and camera.size == (SIDE, SIDE)
    frames = read_all(camera)
    camera.close()
    assert len(frames) == FRAMES
    assert all(f.shape == (SIDE, SIDE, 3) and f.dtype == np.uint8 for f, _ in frames)
    times = np.array([t for _, t in frames])
    np.testing.assert_allclose(np.diff(times), 1 / FPS, atol=1e-9)
    xs = [square_x(f) for f, _ in frames]
    assert np.all(np.diff(xs) > 1.0)  # the square moves right, frame by frame
    assert abs(xs[0] - 7.5) < 1.5  # and the first frame is the first one written


def test_a_video_file_at_a_given_rate_and_size_loops(videos):
    clock = SteppedClock()
    camera = VideoFileCamera(
        videos["mp4"], fps=40.0, size=(32, 32), loop=True, clock=clock, sleep=clock.sleep
    )
    frames = [camera.read() for _ in range(2 * FRAMES + 5)]
    assert camera.plays == 3
    assert all(f.shape == (32, 32, 3) for f, _ in frames)
    np.testing.assert_allclose(np.diff([t for _, t in frames]), 1 / 40.0, atol=1e-9)
    assert square_x(frames[FRAMES][0]) < square_x(frames[FRAMES - 1][0])  # back to the start


def test_a_reader_that_falls_behind_skips_to_the_frame_due_now(videos):
    clock = SteppedClock()
    camera = VideoFileCamera(videos["mp4"], clock=clock, sleep=clock.sleep)
    first, t0 = camera.read()
    clock.t += 4.2 / FPS  # the reader was busy for four frames and a bit
    late, t1 = camera.read()
    assert camera.index == 5  # frames 1..3 skipped; frame 4 was due, returned at once
    assert t1 - t0 == pytest.approx(4.2 / FPS)
    assert square_x(late) - square_x(first) == pytest.approx(2 * 4, abs=1.0)


def test_frames_are_centre_cropped_to_the_aspect_then_resized():
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, 20:60] = (200, 0, 0)  # the centre square red; the sides (cropped away) black
    out = fit_to_size(image, (10, 10))
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8
    assert out[..., 0].min() > 150
    tall = fit_to_size(np.zeros((90, 30, 3), np.uint8), (16, 8))
    assert tall.shape == (8, 16, 3)


# --- hostile sources: one-line errors ---------------------------------------------------------


def one_line_error(make) -> str:
    with pytest.raises(CameraError) as e:
        make()
    message = str(e.value)
    assert "\n" not in message and len(message) < 300, message
    return message


def test_a_missing_file_is_a_one_line_error(tmp_path):
    missing = tmp_path / "nothing.mp4"
    message = one_line_error(lambda: open_camera(parse_camera_spec(f"wrist={missing}")))
    assert str(missing) in message and "does not exist" in message


@pytest.mark.parametrize("suffix", [".mp4", ".gif", ".avi"])
def test_an_unreadable_file_is_a_one_line_error(tmp_path, suffix):
    bad = tmp_path / f"garbage{suffix}"
    bad.write_bytes(b"not a video at all " * 50)
    message = one_line_error(lambda: VideoFileCamera(bad))
    assert str(bad) in message


def test_an_empty_file_is_a_one_line_error(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    one_line_error(lambda: VideoFileCamera(empty))


def test_a_device_that_does_not_exist_is_a_one_line_error():
    message = one_line_error(lambda: open_camera(parse_camera_spec("wrist=/dev/video987")))
    assert "/dev/video987" in message or "OpenCV" in message


def test_a_camera_index_with_no_camera_is_a_one_line_error():
    pytest.importorskip("cv2", reason="OpenCV is not installed (pip install '.[camera]')")
    message = one_line_error(lambda: OpenCVCamera(987))
    assert "987" in message


# --- OpenCV -----------------------------------------------------------------------------------


def test_opencv_reads_a_video_file_as_rgb_at_the_configured_size(videos):
    pytest.importorskip("cv2", reason="OpenCV is not installed (pip install '.[camera]')")
    camera = OpenCVCamera(str(videos["mp4"]), size=(32, 32))
    assert camera.fps == pytest.approx(FPS)
    frames = read_all(camera)
    camera.close()
    assert len(frames) == FRAMES
    for frame, _ in frames:
        assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8
        red = frame[..., 0] > 120
        assert red.any() and frame[red][:, 2].max() < 100  # red stays red: BGR -> RGB done
    assert np.all(np.diff([t for _, t in frames]) >= 0)


# --- the publisher ----------------------------------------------------------------------------


class FakeSocket:
    def __init__(self):
        self.sent: list[link.Message] = []

    def send_multipart(self, frames, flags=0, copy=True):
        self.sent.append(link.decode(frames))


class ScriptedSource:
    """A fake camera: each entry is a capture time, or an exception to raise."""

    fps, size = 10.0, (8, 8)

    def __init__(self, script):
        self.script = list(script)

    def read(self):
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return np.zeros((8, 8, 3), np.uint8), item

    def close(self):
        pass


def test_the_publisher_counts_late_failed_and_jointless_frames():
    source = ScriptedSource(
        [0.0, 0.1, FrameReadError("no frame"), 0.2, 0.5, 0.6, 0.7, EndOfStream("end")]
    )

    def joints_at_fake(t: float):
        return None if t == pytest.approx(0.6) else LOOKING_DOWN + t

    sock, clock = FakeSocket(), SteppedClock()
    publisher = CameraPublisher(source, sock, joints_at_fake, "wrist", clock, clock.sleep)
    stats = publisher.run()
    assert stats.stopped == "end of video"
    assert (stats.read, stats.published) == (6, 5)
    assert (stats.late, stats.read_failures, stats.no_joints) == (2, 1, 1)  # 0.3, 0.4 missed
    assert stats.dropped == 4
    assert [m.header.seq for m in sock.sent] == [1, 2, 3, 4, 6]  # 5 had no joints
    for msg in sock.sent:
        np.testing.assert_allclose(msg.arrays["state"], LOOKING_DOWN + msg.header.t_capture)
        assert msg.header.meta["camera"] == "wrist"
        assert parse_frame(msg, 128, now=1.0)[0].shape == (8, 8, 3)


def test_a_camera_that_keeps_failing_stops_with_its_error():
    source = ScriptedSource([FrameReadError("unplugged?")] * 5)
    clock = SteppedClock()
    publisher = CameraPublisher(
        source, FakeSocket(), fixed_joints(LOOKING_DOWN), "wrist", clock, clock.sleep, 3
    )
    with pytest.raises(CameraError, match="3 reads failed in a row; last: unplugged"):
        publisher.run()


def test_joint_history_answers_the_reading_nearest_the_capture():
    history = JointHistory(max_gap_s=0.015, capacity=50)
    for k in range(100):
        history.add(k * 0.02, np.full(6, k, np.float32))
    assert history(1.031)[0] == 52  # 1.04 is nearer than 1.02
    assert history(1.019)[0] == 51
    assert history(0.5) is None  # older than the 50 readings kept
    assert history(5.0) is None  # nothing near
    with pytest.raises(ValueError):
        fixed_joints([0.0, 1.0])


def receive(sock, n: int, timeout_s: float = 10.0) -> list[link.Message]:
    out, deadline = [], time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        if sock.poll(100):
            out.append(link.decode(sock.recv_multipart()))
    assert len(out) >= n, f"received {len(out)} of {n} messages"
    return out


def test_the_camera_thread_publishes_what_kiwi_slow_accepts_and_perceives(videos):
    """End to end on loopback: a video file through `start_camera_thread` (the call `kiwi run
    --camera` makes), the slow process's own check on every message, and its perception
    finding the square and posting observations stamped with the frames' capture times."""
    camera, obs = (f"tcp://127.0.0.1:{p}" for p in free_ports(2))
    job = grasp_job(f"link.camera={camera}", f"link.obs={obs}", "slow.latency_ms=0")

    def joints_at_fake(t: float) -> np.ndarray:  # stands in for the runtime's JointHistory
        return LOOKING_DOWN + np.float32(t % 1.0)

    stop = threading.Event()
    thread = start_camera_thread(
        "wrist=" + str(videos["mp4"]), camera, joints_at_fake, stop, image_size=128, fps=50.0
    )
    ctx = link.Context()
    slow = SlowProcess(job)
    try:
        listener = ctx.connect(zmq.SUB, camera, hwm=100)
        listener.setsockopt(zmq.SUBSCRIBE, b"")
        pull = ctx.bind(zmq.PULL, obs, hwm=100)
        messages = receive(listener, 10)
        for msg in messages:
            image, state = parse_frame(msg, job.slow.image_size, time.monotonic())
            assert image.shape == (128, 128, 3)
            np.testing.assert_allclose(state, joints_at_fake(msg.header.t_capture), rtol=1e-6)
        seqs = [m.header.seq for m in messages]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        deadline = time.monotonic() + 10.0
        while slow.stats.posted < 3 and time.monotonic() < deadline:
            slow.step()
            time.sleep(0.01)
        posted = receive(pull, 3)
    finally:
        stats = thread.stop()
        slow.close()
        ctx.close()
    assert not thread.is_alive() and thread.error is None
    assert slow.stats.rejected == 0, slow.stats.last_rejection
    assert slow.stats.posted >= 3
    assert all(m.kind == "obs" and m.arrays["object"].shape == (4,) for m in posted)
    assert stats.published >= 10 and stats.no_joints == 0 and stats.stopped == "stopped"
    assert thread.stats.summary()["fps_measured"] > 0


def test_telemetry_joints_follow_the_runtime_telemetry():
    (port,) = free_ports(1)
    address = f"tcp://127.0.0.1:{port}"
    ctx = link.Context()
    try:
        pub = ctx.bind(zmq.PUB, address, hwm=64)
        joints_at = TelemetryJoints(ctx, address, max_gap_s=0.15)
        found, deadline, k = None, time.monotonic() + 10.0, 0
        while found is None and time.monotonic() < deadline:
            k += 1
            t = time.monotonic()
            arrays = {"joints": LOOKING_DOWN + k, "command": LOOKING_DOWN}
            pub.send_multipart(link.encode("telemetry", arrays, seq=k, t_capture=t))
            pub.send_multipart(link.encode("event", {"joints": np.zeros(6)}, t_capture=t))
            time.sleep(0.02)
            found = joints_at(t)
        assert found is not None and found[0] == LOOKING_DOWN[0] + k  # the newest, at t
        assert 1 <= joints_at.received <= k  # events ignored; early ones lost to the join
        assert joints_at(time.monotonic() + 5.0) is None  # nothing that near
        joints_at.close()
    finally:
        ctx.close()


def test_a_taken_camera_address_is_a_one_line_error(videos):
    (port,) = free_ports(1)
    address = f"tcp://127.0.0.1:{port}"
    ctx = link.Context()
    try:
        taken = ctx.bind(zmq.PUB, address)  # held: a dropped socket closes
        message = one_line_error(
            lambda: start_camera_thread(
                f"wrist={videos['gif']}",
                address,
                fixed_joints(LOOKING_DOWN),
                threading.Event(),
                image_size=64,
            )
        )
        assert address in message
        taken.close(0)
    finally:
        ctx.close()


# --- kiwi camera --------------------------------------------------------------------------------


def test_kiwi_camera_publishes_a_gif_with_fixed_joints(videos, capsys):
    from robot_runtime.cli import main

    (port,) = free_ports(1)
    code = main(
        [
            "camera",
            f"wrist={videos['gif']}",
            "--fixed-joints",
            ",".join(str(v) for v in LOOKING_DOWN),
            "--fps",
            "200",
            "--frames",
            "5",
            "--set",
            f"link.camera=tcp://127.0.0.1:{port}",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "5 frames published of 5 read (max_frames)" in out


@pytest.mark.parametrize(
    "camera, expected",
    [("wrist", "is not NAME=SOURCE"), ("wrist=/no/such/clip.mp4", "does not exist")],
)
def test_kiwi_camera_user_errors_are_one_line(camera, expected, capsys):
    from robot_runtime.cli import main

    assert main(["camera", camera, "--fixed-joints", "0,0,0,0,0,0"]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err and "Traceback" not in err

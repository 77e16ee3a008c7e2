"""Publishes a camera's frames, each with the joint state read at its capture, on the camera
socket the simulated world uses, so ``kiwi slow`` runs unchanged against a real arm.

Per frame: the source's ``read()`` (frame and ``t_capture`` on the runtime's clock), then
``joints_at(t_capture)`` (the arm's joints nearest that time, or None), then one message, the
same the simulated world sends::

    header: kind "camera", seq (frames read so far: a gap is a dropped frame),
            t_capture (seconds, time.monotonic), meta {"camera": NAME, "dropped": N}
    arrays: NAME (``wrist``) uint8 [H, W, 3] RGB,
            ``state`` float32 [6] (the joints in degrees, the gripper 0..100)

``kiwi slow`` reads the ``wrist`` field. Dropped frames are counted (``CameraStats``): a schedule
slot missed (a gap between captures of more than 1.5 frame periods), a failed read, a frame with
no joints (never published: the slow process needs the joints the frame was seen from).

Where the joints come from:

- in the runtime's process (``kiwi run --camera wrist=...``): a ``JointHistory`` the control loop
  adds each reading to; the camera thread asks it for the reading nearest the capture time.
- standalone (``kiwi camera``): ``TelemetryJoints`` subscribes to the runtime's telemetry socket
  (``telemetry`` messages carry ``joints`` and their t_capture); at 10 Hz telemetry the joints can
  be up to 1.5 telemetry periods from the capture, so a moving arm is better served in-process.
  With no runtime running there are no joints and nothing is published (``--fixed-joints``
  publishes given joints as if read at capture, for a still arm or a bench test).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from . import link
from .cameras import CameraError, CameraSource, EndOfStream, FrameReadError, open_camera, square

N_JOINTS = 6  # the five arm joints (degrees) and the gripper (0..100)
LATE_FACTOR = 1.5  # a capture gap above this many periods means a slot was missed
MAX_CONSECUTIVE_FAILURES = 30  # then the camera is gone: stop with its last error
CAMERA_HWM = 2  # keep-newest, as the simulated world's camera socket

JointsAt = Callable[[float], "np.ndarray | None"]


def checked_joints(joints) -> np.ndarray | None:
    """``joints`` as float32 [6] when it is six finite numbers, else None."""
    if joints is None:
        return None
    a = np.asarray(joints)
    if a.dtype.kind not in "fiu" or a.shape != (N_JOINTS,) or not np.all(np.isfinite(a)):
        return None
    return a.astype(np.float32)


class JointHistory:
    """Recent joint readings, as ``joints_at``: the control loop ``add``s each reading, a camera
    thread asks for the one nearest a capture time (thread-safe; bounded)."""

    def __init__(self, max_gap_s: float = 0.1, capacity: int = 256):
        self.max_gap_s = max_gap_s
        self._readings: deque[tuple[float, np.ndarray]] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def add(self, t: float, joints: np.ndarray) -> None:
        with self._lock:
            self._readings.append((t, np.array(joints, np.float32)))

    def nearest(self, t: float) -> np.ndarray | None:
        """The reading nearest ``t`` if one is within ``max_gap_s`` of it, else None."""
        best, best_gap = None, self.max_gap_s
        with self._lock:
            for t_reading, joints in reversed(self._readings):
                gap = abs(t_reading - t)
                if gap <= best_gap:
                    best, best_gap = joints, gap
                elif t_reading < t - self.max_gap_s:
                    break  # older readings are farther still
        return None if best is None else best.copy()

    __call__ = nearest


class TelemetryJoints:
    """``joints_at`` from the runtime's telemetry socket (standalone ``kiwi camera``): each call
    drains the ``telemetry`` messages waiting and answers from their ``joints``."""

    def __init__(self, ctx: link.Context, address: str, max_gap_s: float, **curve):
        import zmq

        self.sock = ctx.connect(zmq.SUB, address, hwm=64, **curve)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.history = JointHistory(max_gap_s)
        self.counter: dict = {}
        self.received = 0

    def __call__(self, t: float) -> np.ndarray | None:
        for msg in link.drain(self.sock, self.counter):
            joints = checked_joints(msg.arrays.get("joints")) if msg.kind == "telemetry" else None
            if joints is not None:
                self.history.add(msg.header.t_capture, joints)
                self.received += 1
        return self.history.nearest(t)

    def close(self) -> None:
        self.sock.close(0)


def fixed_joints(joints) -> JointsAt:
    """``joints_at`` that answers the same joints at every time: a still arm, or a bench test."""
    value = checked_joints(joints)
    if value is None:
        raise ValueError(f"fixed joints {joints!r} are not {N_JOINTS} finite numbers")
    return lambda t: value.copy()


@dataclass
class CameraStats:
    read: int = 0  # frames the source returned
    published: int = 0
    late: int = 0  # schedule slots missed (gaps in capture time)
    read_failures: int = 0
    no_joints: int = 0  # frames not published: no joint reading near their capture
    first_t: float | None = None  # capture times of the first and last frame read
    last_t: float | None = None
    stopped: str | None = None  # why run() ended
    last_error: str | None = None

    @property
    def dropped(self) -> int:
        return self.late + self.read_failures + self.no_joints

    def summary(self) -> dict:
        span = (self.last_t - self.first_t) if self.first_t is not None else 0.0
        fps = (self.read - 1) / span if span > 0 else 0.0  # frames the source delivered
        out = asdict(self)
        del out["first_t"], out["last_t"]
        return {**out, "dropped": self.dropped, "span_s": span, "fps_measured": fps}


class CameraPublisher:
    """One camera's frames, with the joints at capture, on a bound PUB socket."""

    def __init__(
        self,
        source: CameraSource,
        sock,
        joints_at: JointsAt,
        name: str = "wrist",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        max_consecutive_failures: int = MAX_CONSECUTIVE_FAILURES,
    ):
        self.source, self.sock, self.joints_at, self.name = source, sock, joints_at, name
        self.clock, self.sleep = clock, sleep
        self.max_failures = max_consecutive_failures
        self.stats = CameraStats()
        self.failures = 0  # consecutive
        self.seq = 0

    def publish_one(self) -> bool:
        """Reads one frame and publishes it; False when it was dropped. Raises EndOfStream at
        the end of a non-looping file, CameraError when reads keep failing."""
        import zmq

        s = self.stats
        try:
            image, t_capture = self.source.read()
        except FrameReadError as e:
            s.read_failures += 1
            s.last_error = str(e)
            self.failures += 1
            if self.failures >= self.max_failures:
                raise CameraError(f"{self.failures} reads failed in a row; last: {e}") from None
            self.sleep(1.0 / self.source.fps)  # an unplugged camera must not spin a core
            return False
        self.failures = 0
        self.seq += 1
        s.read += 1
        if s.last_t is not None:
            gap_periods = (t_capture - s.last_t) * self.source.fps
            if gap_periods > LATE_FACTOR:
                s.late += int(round(gap_periods)) - 1
        else:
            s.first_t = t_capture
        s.last_t = t_capture
        joints = checked_joints(self.joints_at(t_capture))
        if joints is None:
            s.no_joints += 1
            return False
        frames = link.encode(
            "camera",
            {self.name: image, "state": joints},
            seq=self.seq,
            t_capture=t_capture,
            meta={"camera": self.name, "dropped": s.dropped},
        )
        try:
            self.sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:  # PUB drops rather than blocks; kept for other socket types
            return False
        s.published += 1
        return True

    def run(
        self,
        stop: threading.Event | None = None,
        duration_s: float | None = None,
        max_frames: int | None = None,
    ) -> CameraStats:
        """Publishes until ``stop`` is set, ``duration_s`` passed, ``max_frames`` were read or
        the file ended (``stats.stopped`` says which); CameraError when the camera is gone."""
        start = self.clock()
        while True:
            if stop is not None and stop.is_set():
                self.stats.stopped = "stopped"
                break
            if duration_s is not None and self.clock() - start >= duration_s:
                self.stats.stopped = "duration"
                break
            if max_frames is not None and self.stats.read >= max_frames:
                self.stats.stopped = "max_frames"
                break
            try:
                self.publish_one()
            except EndOfStream:
                self.stats.stopped = "end of video"
                break
        return self.stats


class CameraThread(threading.Thread):
    """A camera publishing beside the runtime; owns its source, context and socket. ``error``
    holds the one-line reason when the camera failed; ``stats`` its figures."""

    def __init__(self, publisher: CameraPublisher, ctx: link.Context, stop: threading.Event):
        super().__init__(name=f"camera-{publisher.name}", daemon=True)
        self.publisher, self.ctx, self.stop_event = publisher, ctx, stop
        self.error: str | None = None

    @property
    def stats(self) -> CameraStats:
        return self.publisher.stats

    def run(self) -> None:
        try:
            self.publisher.run(self.stop_event)
        except CameraError as e:
            self.error = str(e)
            self.publisher.stats.stopped = "error"
            self.publisher.stats.last_error = str(e)
        finally:
            self.publisher.source.close()
            self.publisher.sock.close(0)
            self.ctx.close()

    def stop(self, timeout_s: float = 2.0) -> CameraStats:
        self.stop_event.set()
        self.join(timeout_s)
        return self.stats


def start_camera_thread(
    spec: str,
    address: str,
    joints_at: JointsAt,
    stop_event: threading.Event,
    *,
    image_size: int,
    fps: float | None = None,
    loop: bool = True,
    curve: link.CurveKeys | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> CameraThread:
    """Opens the camera ``spec`` names (``wrist=/dev/video0``, ``wrist=0``, ``wrist=clip.mp4``)
    and binds ``address`` here, so a missing file, a device that is not there or a taken
    address is a CameraError / MessageError now; then publishes from a started thread until
    ``stop_event`` is set (or a non-looping file ends). Frames are ``image_size`` square."""
    import zmq

    from .cameras import parse_camera_spec

    parsed = parse_camera_spec(spec)
    source = open_camera(parsed, square(image_size), fps, loop, clock=clock)
    ctx = link.Context()
    try:
        sock = ctx.bind(zmq.PUB, address, curve, hwm=CAMERA_HWM)
    except zmq.ZMQError as e:
        source.close()
        ctx.close()
        raise CameraError(f"cannot bind the camera socket {address}: {e}") from None
    except Exception:
        source.close()
        ctx.close()
        raise
    publisher = CameraPublisher(source, sock, joints_at, parsed.name, clock)
    thread = CameraThread(publisher, ctx, stop_event)
    thread.start()
    return thread

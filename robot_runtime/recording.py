"""A Rerun recording of a run (`kiwi sim --rerun run.rrd`, `kiwi run --rerun run.rrd`).

Written by whoever reads the runtime's telemetry (the dry run's Recorder, or a thread beside
``kiwi run``'s loop), never from the tick: ``RunRecording.message`` takes the same decoded link
messages the Recorder sees and logs them on one ``time`` timeline (seconds since the first
message, on the runtime's clock):

- ``camera/wrist``: the wrist camera (JPEG, at most CAMERA_HZ frames per second)
- ``joints/<name>``, ``command/<name>``: measured joints and the safe targets sent
- ``cube/camera/<x|y|z|yaw>/<latent|perception|truth>``: the cube in the wrist-camera frame
- ``cube/world/<...>`` and ``world/cube/<latent|perception|truth>`` (3-D points): world frame
- ``phase`` and ``events`` (text), ``gate/p_success``, ``gate/decision``, ``gate/spread``
- ``loop/jitter_us_p99``, ``loop/overruns``, ``estimator/applied``, ``estimator/last_age_ms``

rerun-sdk is optional (``pip install 'kiwi-runtime[rerun]'``); ``open_recording`` says so when
it is missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from drivers.arm import LEROBOT_JOINTS

from .link import Message

CAMERA_HZ = 5.0  # wrist frames logged per second (a 128 px JPEG each)
TRUTH_HZ = 10.0  # the world publishes truth at 50 Hz
AXES = ("x", "y", "z", "yaw")
COLORS = {"latent": (220, 40, 40), "perception": (40, 100, 220), "truth": (20, 20, 20)}


def open_recording(
    path: Path, application_id: str = "kiwi", t0: float | None = None
) -> RunRecording:
    """A recording written to ``path``; a clear error when rerun-sdk is not installed."""
    try:
        import rerun  # noqa: F401
    except ImportError as e:
        raise OSError(
            "--rerun needs rerun-sdk: pip install 'kiwi-runtime[rerun]' (or pip install rerun-sdk)"
        ) from e
    return RunRecording(path, application_id, t0)


class RunRecording:
    def __init__(self, path: Path, application_id: str = "kiwi", t0: float | None = None):
        import rerun as rr

        self.rr = rr
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.stream = rr.RecordingStream(application_id)
        self.stream.save(str(self.path))
        self.t0 = t0  # the timeline's zero (the first message's time when None)
        self._last_t = 0.0
        self._t_camera = self._t_truth = -np.inf
        self.phase = None
        self.logged = 0

    # --- one decoded link message --------------------------------------------------------
    def message(self, msg: Message) -> None:
        """Logs a telemetry/event/observation (runtime), truth/camera (sim world) message;
        other kinds are ignored."""
        handler = getattr(self, f"_on_{msg.kind}", None)
        if handler is not None:
            self._at(msg.header.t_capture)
            handler(msg.header.meta, msg.arrays)

    def _at(self, t: float) -> None:
        if self.t0 is None:
            self.t0 = t
        self._last_t = t
        self.stream.set_time("time", duration=max(0.0, t - self.t0))

    def _scalar(self, path: str, value) -> None:
        if value is None or not np.isfinite(value):
            return
        self.stream.log(path, self.rr.Scalars(float(value)))
        self.logged += 1

    def _cube(self, source: str, object_cam, joints) -> None:
        from .sim_report import world_pose

        obj = np.asarray(object_cam, float)
        for axis, v in zip(AXES, obj[:4]):
            self._scalar(f"cube/camera/{axis}/{source}", v)
        if joints is None:
            return
        world = world_pose(obj, joints)
        for axis, v in zip(AXES, world):
            self._scalar(f"cube/world/{axis}/{source}", v)
        self.stream.log(
            f"world/cube/{source}",
            self.rr.Points3D([world[:3]], colors=[COLORS[source]], radii=[0.008]),
        )

    # --- the runtime's telemetry ---------------------------------------------------------
    def _on_telemetry(self, meta: dict, arrays: dict) -> None:
        joints = arrays.get("joints")
        for name, key in (("joints", "joints"), ("command", "command")):
            if key in arrays:
                for joint, v in zip(LEROBOT_JOINTS, arrays[key]):
                    self._scalar(f"{name}/{joint}", v)
        est = meta.get("estimator", {})
        if "object_estimate" in arrays and est.get("applied", 1) > 0:
            self._cube("latent", arrays["object_estimate"], joints)
        self._scalar("loop/jitter_us_p99", meta.get("jitter_us_p99"))
        self._scalar("loop/overruns", meta.get("overruns"))
        self._scalar("estimator/applied", est.get("applied"))
        self._scalar("estimator/last_age_ms", est.get("last_age_ms"))
        phase = meta.get("phase")
        if phase != self.phase:
            self.stream.log("phase", self.rr.TextLog(str(phase)))
            self.phase = phase

    def _on_event(self, meta: dict, arrays: dict) -> None:
        kind = meta.get("event")
        if kind == "phase" and meta.get("phase") == "decision":
            p, verdict = meta.get("p_success"), meta.get("verdict")
            self._scalar("gate/p_success", p)
            self._scalar("gate/spread", meta.get("spread"))
            self._scalar("gate/forecast_ms", meta.get("ms"))
            text = f"P={p:.2f} {verdict}" if isinstance(p, (int, float)) else str(verdict)
            self.stream.log("gate/decision", self.rr.TextLog(text))
            return
        if kind == "phase":
            return  # phase changes come with the telemetry
        detail = ", ".join(f"{k}={v}" for k, v in meta.items() if k != "event" and
                           not isinstance(v, dict))  # fmt: skip
        level = "WARN" if kind in ("fault", "watchdog") else "INFO"
        self.stream.log("events", self.rr.TextLog(f"{kind}: {detail}", level=level))

    def _on_observation(self, meta: dict, arrays: dict) -> None:
        if "object" in arrays:
            self._cube("perception", arrays["object"], arrays.get("state"))

    # --- the simulated world ---------------------------------------------------------------
    def _on_truth(self, meta: dict, arrays: dict) -> None:
        now = self._last_t
        if now - self._t_truth < 1.0 / TRUTH_HZ:
            return
        self._t_truth = now
        self._cube("truth", arrays["object_true"], arrays.get("state"))
        self._scalar("world/lifted_m", meta.get("lifted_m"))

    def _on_camera(self, meta: dict, arrays: dict) -> None:
        now = self._last_t
        if "wrist" not in arrays or now - self._t_camera < 1.0 / CAMERA_HZ:
            return
        self._t_camera = now
        image = self.rr.Image(np.ascontiguousarray(arrays["wrist"]), color_model="RGB")
        self.stream.log("camera/wrist", image.compress(jpeg_quality=80))

    def close(self) -> None:
        self.stream.flush()
        self.stream.disconnect()


class TelemetryRecordingThread:
    """`kiwi run --rerun`: a thread that subscribes to the runtime's telemetry (and a camera
    stream, if one publishes on ``camera``) and logs it; the loop only publishes, as always."""

    def __init__(self, recording: RunRecording, telemetry: str, camera: str | None = None):
        import threading

        import zmq

        from .link import Context

        self.recording = recording
        self.ctx = Context()
        self.socks = [self.ctx.connect(zmq.SUB, telemetry, hwm=1000)]
        if camera:
            self.socks.append(self.ctx.connect(zmq.SUB, camera, hwm=4))
        for s in self.socks:
            s.setsockopt(zmq.SUBSCRIBE, b"")
        self.counter: dict = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kiwi-rerun", daemon=True)

    def start(self) -> TelemetryRecordingThread:
        self._thread.start()
        return self

    def _run(self) -> None:
        import zmq

        from .link import drain

        poller = zmq.Poller()
        for s in self.socks:
            poller.register(s, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(100):
                continue
            for s in self.socks:
                for msg in drain(s, self.counter, 200):
                    self.recording.message(msg)

    def stop(self) -> None:
        """Stops after what is waiting now, and closes the recording."""
        from .link import drain

        self._stop.set()
        self._thread.join(timeout=5.0)
        for s in self.socks:
            if not self._thread.is_alive():
                for msg in drain(s, self.counter, 1000):  # the runtime's last events
                    self.recording.message(msg)
            s.close(0)
        self.ctx.close()
        self.recording.close()

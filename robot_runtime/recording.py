"""A Rerun recording of a run (`kiwi sim --rerun run.rrd`, `kiwi run --rerun run.rrd`).

Written by whoever reads the runtime's telemetry, never from the tick: in `kiwi sim` the dry
run's Recorder (the parent process), in `kiwi run` a recorder process of its own
(``python -m robot_runtime.recording``, started by ``RecorderProcess``), so that logging (about
1 ms of Python per telemetry message) never takes the GIL from the loop. ``RunRecording.message``
takes decoded link messages and logs them on one ``time`` timeline (seconds on the runtime's
clock since ``t0``):

- ``camera/wrist``: the wrist camera (JPEG, at most CAMERA_HZ frames per second)
- ``joints``, ``command``: measured joints and the safe targets sent (one series per joint)
- ``cube/<camera|world>/<position|yaw>/<latent|perception|truth>``: the cube as the latent
  decodes it, as the slow perception saw it and (sim) as it is; ``world/cube/<source>``: 3-D
- ``phase``, ``events``, ``gate/decision`` (text); ``gate/p_success``, ``gate/spread``
- ``loop/jitter_us_p99``, ``loop/overruns``, ``estimator/applied``, ``estimator/last_age_ms``

rerun-sdk is optional (``pip install 'kiwi-runtime[rerun]'``); ``open_recording`` says so when
it is missing.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from drivers.arm import LEROBOT_JOINTS

from .link import Message

CAMERA_HZ = 5.0  # wrist frames logged per second (a 128 px JPEG each)
TRUTH_HZ = 10.0  # the world publishes truth at 50 Hz
SOURCES = ("latent", "perception", "truth")
COLORS = {"latent": (220, 40, 40), "perception": (40, 100, 220), "truth": (20, 20, 20)}
STOP_WAIT_S = 10.0


def require_rerun() -> None:
    """OSError (one line for `kiwi`) when rerun-sdk is not installed."""
    try:
        import rerun  # noqa: F401
    except ImportError as e:
        raise OSError(
            "--rerun needs rerun-sdk: pip install 'kiwi-runtime[rerun]' (or pip install rerun-sdk)"
        ) from e


def open_recording(
    path: Path, application_id: str = "kiwi", t0: float | None = None
) -> RunRecording:
    """A recording written to ``path``; a clear error when rerun-sdk is not installed."""
    require_rerun()
    return RunRecording(path, application_id, t0)


class RunRecording:
    def __init__(self, path: Path, application_id: str = "kiwi", t0: float | None = None):
        import rerun as rr

        self.rr = rr
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.stream = rr.RecordingStream(application_id)
        self.stream.save(str(self.path), default_blueprint=layout())
        self.t0 = t0  # the timeline's zero (the first message's time when None)
        self._last_t = 0.0
        self._t_camera = self._t_truth = -np.inf
        self.phase = None
        self._series_names()

    def _series_names(self) -> None:
        rr, log = self.rr, self.stream.log
        for name in ("joints", "command"):
            log(name, rr.SeriesLines(names=list(LEROBOT_JOINTS)), static=True)
        for frame in ("camera", "world"):
            for source in SOURCES:
                base = f"cube/{frame}"
                color = COLORS[source]
                log(f"{base}/position/{source}",
                    rr.SeriesLines(names=[f"{a} {source}" for a in "xyz"], colors=[color] * 3),
                    static=True)  # fmt: skip
                log(f"{base}/yaw/{source}", rr.SeriesLines(names=[f"yaw {source}"],
                    colors=[color]), static=True)  # fmt: skip

    # --- one decoded link message --------------------------------------------------------
    def message(self, msg: Message) -> None:
        """Logs a telemetry/event/observation (runtime) or truth/camera (sim world) message;
        other kinds are ignored."""
        handler = getattr(self, f"_on_{msg.kind}", None)
        if handler is not None:
            t = msg.header.t_capture
            if self.t0 is None:
                self.t0 = t
            self._last_t = t
            self.stream.set_time("time", duration=max(0.0, t - self.t0))
            handler(msg.header.meta, msg.arrays)

    def _scalars(self, path: str, values) -> None:
        values = np.atleast_1d(np.asarray(values, float))
        if np.all(np.isfinite(values)):
            self.stream.log(path, self.rr.Scalars(values))

    def _number(self, path: str, value) -> None:
        if isinstance(value, (int, float)) and np.isfinite(value):
            self.stream.log(path, self.rr.Scalars(float(value)))

    def _cube(self, source: str, object_cam, joints) -> None:
        from .sim_report import world_pose

        obj = np.asarray(object_cam, float)[:4]
        self._scalars(f"cube/camera/position/{source}", obj[:3])
        self._scalars(f"cube/camera/yaw/{source}", obj[3])
        if joints is None:
            return
        world = world_pose(obj, joints)
        self._scalars(f"cube/world/position/{source}", world[:3])
        self._scalars(f"cube/world/yaw/{source}", world[3])
        self.stream.log(
            f"world/cube/{source}",
            self.rr.Points3D([world[:3]], colors=[COLORS[source]], radii=[0.008]),
        )

    # --- the runtime's telemetry ---------------------------------------------------------
    def _on_telemetry(self, meta: dict, arrays: dict) -> None:
        for name in ("joints", "command"):
            if name in arrays:
                self._scalars(name, arrays[name])
        est = meta.get("estimator", {})
        if "object_estimate" in arrays and est.get("applied", 1) > 0:
            self._cube("latent", arrays["object_estimate"], arrays.get("joints"))
        self._number("loop/jitter_us_p99", meta.get("jitter_us_p99"))
        self._number("loop/overruns", meta.get("overruns"))
        self._number("estimator/applied", est.get("applied"))
        self._number("estimator/last_age_ms", est.get("last_age_ms"))
        self._phase(meta.get("phase"))

    def _phase(self, phase) -> None:
        if phase is not None and phase != self.phase:
            self.stream.log("phase", self.rr.TextLog(str(phase)))
            self.phase = phase

    def _on_event(self, meta: dict, arrays: dict) -> None:
        kind = meta.get("event")
        if kind == "phase" and meta.get("phase") == "decision":
            p, verdict = meta.get("p_success"), meta.get("verdict")
            self._number("gate/p_success", p)
            self._number("gate/spread", meta.get("spread"))
            self._number("gate/forecast_ms", meta.get("ms"))
            text = f"P={p:.2f} {verdict}" if isinstance(p, (int, float)) else str(verdict)
            self.stream.log("gate/decision", self.rr.TextLog(text))
            return
        if kind == "phase":  # at the tick it happened (telemetry samples the phase at 10 Hz)
            self._phase(meta.get("phase"))
            return
        detail = ", ".join(
            f"{k}={v}" for k, v in meta.items() if k != "event" and not isinstance(v, dict)
        )
        level = "WARN" if kind in ("fault", "watchdog") else "INFO"
        self.stream.log("events", self.rr.TextLog(f"{kind}: {detail}", level=level))

    def _on_observation(self, meta: dict, arrays: dict) -> None:
        if "object" in arrays:
            self._cube("perception", arrays["object"], arrays.get("state"))

    # --- the simulated world ---------------------------------------------------------------
    def _on_truth(self, meta: dict, arrays: dict) -> None:
        if self._last_t - self._t_truth < 1.0 / TRUTH_HZ:
            return
        self._t_truth = self._last_t
        self._cube("truth", arrays["object_true"], arrays.get("state"))
        self._number("world/lifted_m", meta.get("lifted_m"))

    def _on_camera(self, meta: dict, arrays: dict) -> None:
        if "wrist" not in arrays or self._last_t - self._t_camera < 1.0 / CAMERA_HZ:
            return
        self._t_camera = self._last_t
        image = self.rr.Image(np.ascontiguousarray(arrays["wrist"]), color_model="RGB")
        self.stream.log("camera/wrist", image.compress(jpeg_quality=80))

    def close(self) -> None:
        self.stream.flush()
        self.stream.disconnect()


def layout():
    """The viewer's opening layout: camera and world on the left; the cube's position and yaw
    (latent, perception, truth) in both frames, the gate and the loop on the right."""
    import rerun.blueprint as rrb

    def series(origin: str, name: str):
        return rrb.TimeSeriesView(origin=origin, name=name)

    return rrb.Blueprint(
        rrb.Horizontal(
            rrb.Vertical(
                rrb.Spatial2DView(origin="camera", name="wrist camera"),
                rrb.Spatial3DView(origin="world", name="the cube (world frame)"),
                rrb.TextLogView(origin="/", name="phases, gate, events"),
            ),
            rrb.Vertical(
                rrb.Tabs(
                    series("cube/world/position", "cube position, world (m)"),
                    series("cube/camera/position", "cube position, camera (m)"),
                ),
                rrb.Tabs(
                    series("cube/world/yaw", "cube yaw, world (deg)"),
                    series("cube/camera/yaw", "cube yaw, camera (deg)"),
                ),
                rrb.Tabs(
                    series("joints", "joints"),
                    series("command", "commands"),
                    series("gate", "gate"),
                    series("loop", "loop"),
                    series("estimator", "estimator"),
                ),
            ),
            column_shares=[1, 2],
        ),
        collapse_panels=True,
    )


# --- `kiwi run --rerun`: the recorder as a process of its own --------------------------------
class RecorderProcess:
    """Starts ``python -m robot_runtime.recording`` (before the model loads, so that it listens
    when the loop starts); ``stop()`` asks it to write what it has and waits."""

    def __init__(self, path: Path, telemetry: str, camera: str | None = None):
        require_rerun()
        args = [sys.executable, "-m", "robot_runtime.recording", "--out", str(path)]
        args += ["--telemetry", telemetry] + (["--camera", camera] if camera else [])
        self.proc = subprocess.Popen(args)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def record(path: Path, telemetry: str, camera: str | None, stop) -> None:
    """Subscribes to ``telemetry`` (and ``camera``) and logs every message until ``stop()``."""
    import zmq

    from .link import Context, drain

    recording = open_recording(path, "kiwi run")
    ctx = Context()
    socks = [ctx.connect(zmq.SUB, telemetry, hwm=1000)]
    if camera:
        socks.append(ctx.connect(zmq.SUB, camera, hwm=4))
    poller, counter = zmq.Poller(), {}
    for s in socks:
        s.setsockopt(zmq.SUBSCRIBE, b"")
        poller.register(s, zmq.POLLIN)
    try:
        while not stop():
            poller.poll(100)
            for s in socks:
                for msg in drain(s, counter, 200):
                    recording.message(msg)
        for s in socks:  # the runtime's last events
            for msg in drain(s, counter, 1000):
                recording.message(msg)
    finally:
        for s in socks:
            s.close(0)
        ctx.close()
        recording.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="`kiwi run --rerun`'s recorder process")
    parser.add_argument("--out", required=True)
    parser.add_argument("--telemetry", required=True)
    parser.add_argument("--camera")
    args = parser.parse_args(argv)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group: kiwi run stops us
    record(Path(args.out), args.telemetry, args.camera, lambda: bool(stopping))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`--record DIR` of `kiwi sim` and `kiwi run`: each grasp attempt as a LeRobotDataset v3.0
episode, so the runtime's own runs become training data.

(``recording.py`` is the other recording: a Rerun file for a person to look at.)

One frame per control tick (the dataset's fps is the loop's rate), in LeRobot's layout:

- ``observation.state``: the joints the tick read (degrees, gripper 0..100: what the runtime
  uses, LeRobot's units for an SO arm, as `kiwi collect --format lerobot` writes them);
- ``action``: the targets the tick commanded (after safety);
- ``observation.images.<camera>``: the newest camera frame captured at or before the tick (the
  camera runs slower than the loop, so a frame repeats until the next; ticks before the first
  frame take the first); recorded only where the process can hear the camera socket;
- ``next.done``: true on the last frame; ``next.success``: the attempt's outcome on the last
  frame, false elsewhere (in `kiwi sim` the simulated world's truth; on a real arm
  ``gripper_holds``);
- ``gate.p_success``, ``gate.commit``: at a frame where the commit gate decided, its forecast
  P(success) and 1 (commit) or 0 (back off); NaN at every other frame;
- ``seed`` (`kiwi sim`): the simulated world's seed of the attempt.

The tick pays only for appending two small arrays; when the attempt ends a thread hands it to a
writer process of lower priority (attempt_writer.py) that assembles the frames, encodes them and
commits the episode atomically with ``LeRobotWriter`` (a crash or Ctrl-C loses at most the
episodes not yet written, and the folder loads). A folder that already
holds a dataset of the same features is appended to, its episode index continued.
"""

from __future__ import annotations

import math
import queue
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from world_model.datasets.lerobot_format import SO_JOINT_NAMES, DatasetError, image_feature

GRASP_TASK = "pick up the red cube"  # the task string of `kiwi collect --format lerobot`
MAX_EPISODE_S = 300.0  # a longer attempt (a chunk controller never finishes) is cut here
GRIPPER_HOLD_MIN = 3.0  # gripper 0..100: closed on nothing reads within this of its command
GATE_FEATURES = {
    "gate.p_success": {
        "dtype": "float32",
        "shape": [1],
        "names": ["p_success"],
        "description": "the commit gate's forecast P(success) at a frame where it decided; "
        "NaN elsewhere",
    },
    "gate.commit": {
        "dtype": "float32",
        "shape": [1],
        "names": ["commit"],
        "description": "the gate's verdict at a frame where it decided: 1 commit, 0 back off; "
        "NaN elsewhere",
    },
}


def record_features(
    n_joints: int, cameras: dict[str, tuple[int, int]], seed: bool, camera_dtype: str = "video"
) -> dict:
    names = list(SO_JOINT_NAMES) if n_joints == len(SO_JOINT_NAMES) else None
    features: dict = {
        "observation.state": {"dtype": "float32", "shape": [n_joints], "names": names},
        "action": {"dtype": "float32", "shape": [n_joints], "names": names},
    }
    for name, (h, w) in cameras.items():
        features[f"observation.images.{name}"] = {**image_feature(h, w), "dtype": camera_dtype}
    features["next.done"] = {"dtype": "bool", "shape": [1], "names": None}
    features["next.success"] = {"dtype": "bool", "shape": [1], "names": None}
    features.update({k: dict(v) for k, v in GATE_FEATURES.items()})
    if seed:
        features["seed"] = {"dtype": "int64", "shape": [1], "names": None}
    return features


def gripper_holds(
    joints: np.ndarray, command: np.ndarray, min_gap: float = GRIPPER_HOLD_MIN
) -> bool:
    """A real arm's outcome without ground truth: the gripper was commanded (nearly) shut and
    reads open by more than ``min_gap`` (0..100): something between the fingers stops them."""
    return bool(command[-1] < 50.0 and joints[-1] - command[-1] > min_gap)


@dataclass
class Attempt:
    """What the ticks of one attempt appended (the tick's only cost)."""

    seed: int
    t_begin: float
    t: list[float] = field(default_factory=list)
    joints: list[np.ndarray] = field(default_factory=list)
    command: list[np.ndarray] = field(default_factory=list)


def frames_at(ticks_t: np.ndarray, frames: Sequence[tuple[float, np.ndarray]]) -> np.ndarray:
    """``[T, H, W, 3]``: per tick the newest frame captured at or before it (the first frame
    for ticks before it). ``frames``: (t_capture, image) in capture order, not empty."""
    times = np.array([t for t, _ in frames])
    index = np.clip(np.searchsorted(times, ticks_t, side="right") - 1, 0, len(frames) - 1)
    return np.stack([frames[i][1] for i in index])


def episode_frames(
    attempt: Attempt,
    success: bool,
    decisions: Sequence[tuple[float, float, bool]],
    camera_frames: Mapping[str, Sequence[tuple[float, np.ndarray]]],
    features: dict,
) -> dict[str, np.ndarray]:
    """One attempt as LeRobot frames (see the module's docstring). ``decisions``: (t of the
    tick, P(success), committed)."""
    ticks_t = np.asarray(attempt.t, float)
    length = len(ticks_t)
    frames: dict[str, np.ndarray] = {
        "observation.state": np.asarray(attempt.joints, np.float32),
        "action": np.asarray(attempt.command, np.float32),
        "next.done": np.arange(length) == length - 1,
        "next.success": (np.arange(length) == length - 1) & bool(success),
        "gate.p_success": np.full(length, np.nan, np.float32),
        "gate.commit": np.full(length, np.nan, np.float32),
    }
    for t, p, commit in decisions:
        k = int(np.argmin(np.abs(ticks_t - t)))
        frames["gate.p_success"][k] = p
        frames["gate.commit"][k] = float(commit)
    for name, shots in camera_frames.items():
        frames[f"observation.images.{name}"] = frames_at(ticks_t, shots)
    if "seed" in features:
        frames["seed"] = np.full(length, attempt.seed, np.int64)
    return frames


def decisions_of(events) -> list[tuple[float, float, bool]]:
    """(t, P, committed) of the policy's gate decisions (controllers.GraspEvent records)."""
    return [
        (e.t, float(e.detail["p_success"]), e.detail.get("verdict") == "commit")
        for e in events
        if e.kind == "decision"
    ]


class CameraTap:
    """Listens to the camera socket on a thread of its own and keeps the frames of the attempt
    under way (``(t_capture, image)`` per camera, at most ``max_frames``). Every message is
    checked: kind ``camera``, the camera's array uint8 of the recorded size; others are counted
    in ``rejected``."""

    def __init__(self, ctx, address: str, sizes: dict[str, tuple[int, int]], max_frames: int):
        import zmq

        self.sizes = sizes
        self.sock = ctx.connect(zmq.SUB, address, hwm=16)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.frames: dict[str, deque] = {k: deque(maxlen=max_frames) for k in sizes}
        self.rejected = 0
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="record-camera", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from . import link

        counter: dict = {}
        while not self._stop.is_set():
            if not self.sock.poll(50):
                continue
            for msg in link.drain(self.sock, counter, 16):
                self._keep(msg)
        self.sock.close(0)

    def _keep(self, msg) -> None:
        t = msg.header.t_capture
        if msg.kind != "camera" or not math.isfinite(t):
            self.rejected += 1
            return
        for name, (h, w) in self.sizes.items():
            image = msg.arrays.get(name)
            if image is None:
                continue
            if image.dtype != np.uint8 or image.shape != (h, w, 3):
                self.rejected += 1
                continue
            with self.lock:
                self.frames[name].append((t, image.copy()))

    def take(self, t_from: float) -> dict[str, list[tuple[float, np.ndarray]]]:
        """The frames captured from ``t_from`` on, and forgets everything before."""
        with self.lock:
            out = {}
            for name, shots in self.frames.items():
                out[name] = sorted((s for s in shots if s[0] >= t_from), key=lambda s: s[0])
                shots.clear()
        return out

    def drop_before(self, t: float) -> None:
        with self.lock:
            for shots in self.frames.values():
                while shots and shots[0][0] < t:
                    shots.popleft()

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=2.0)


def check_record_dir(root: Path, fps: int, features: dict) -> bool:
    """True when ``root`` holds a dataset these frames can be appended to, False when there is
    none yet; DatasetError (one line) for a folder of another dataset or of other files."""
    from world_model.datasets import LeRobotReader

    root = Path(root)
    if not (root / "meta" / "info.json").is_file():
        if root.is_dir() and any(root.iterdir()):
            raise DatasetError(f"{root} is not empty and holds no dataset: record elsewhere")
        return False
    with LeRobotReader(root) as ds:
        have = {k: (f["dtype"], list(f["shape"])) for k, f in ds.features.items()}
        fps_there = ds.fps
    want = {k: (f["dtype"], list(f["shape"])) for k, f in features.items()}
    if any(have.get(k) != v for k, v in want.items()) or fps_there != fps:
        raise DatasetError(
            f"{root} holds a dataset of other features or rate ({sorted(have)} at {fps_there} "
            f"fps); this run records {sorted(want)} at {fps} fps: record into another folder"
        )
    return True


def open_writer(root: Path, fps: int, features: dict, robot_type: str | None):
    """A ``LeRobotWriter`` on ``root``: a new dataset, or the one there when its features and fps
    are these (its episode index continues); another dataset is refused."""
    from world_model.datasets import LeRobotWriter

    if check_record_dir(root, fps, features):
        return LeRobotWriter.resume(Path(root))
    return LeRobotWriter.create(Path(root), fps, features, robot_type)


class AttemptRecorder:
    """``begin(seed, t)`` at an attempt's start, ``tick(t, joints, command)`` every tick (cheap),
    ``end(success, events)`` when it is over (a thread hands the episode to the writer process,
    attempt_writer.py) or ``discard()``; ``close()`` writes what is queued and returns the
    figures."""

    def __init__(
        self,
        root: Path,
        fps: int,
        n_joints: int,
        task: str = GRASP_TASK,
        robot_type: str | None = "so101_follower",
        cameras: dict[str, tuple[int, int]] | None = None,
        camera_address: str | None = None,
        ctx=None,
        seed: bool = False,
        max_episode_s: float = MAX_EPISODE_S,
        log: Callable[[str], None] = print,
    ):
        import multiprocessing
        import tempfile
        from concurrent.futures import ProcessPoolExecutor

        from . import attempt_writer

        cameras = dict(cameras or {}) if camera_address else {}
        self.root, self.fps, self.task, self.log = Path(root), int(fps), task, log
        self.features = record_features(n_joints, cameras, seed)
        check_record_dir(self.root, self.fps, self.features)  # a clear error, here and now
        self._tmp = tempfile.TemporaryDirectory(prefix="kiwi-record-")
        self._pool = ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=attempt_writer.init_writer,
            initargs=(str(self.root), self.fps, self.features, robot_type, task),
        )
        # started from this thread (the writer process dies with it), and ready before the loop
        self.first_index = self._pool.submit(attempt_writer.ready).result()
        self.max_ticks = max(2, int(max_episode_s * fps))
        self.tap = None
        if cameras and camera_address:
            self.tap = CameraTap(ctx, camera_address, cameras, max_frames=self.max_ticks)
        self.attempt: Attempt | None = None
        self.written: list[dict] = []
        self.skipped: list[str] = []
        self.error: str | None = None
        self._queue: queue.Queue = queue.Queue()
        self._handed = 0
        self._thread = threading.Thread(target=self._write_loop, name="record-write", daemon=True)
        self._thread.start()

    @property
    def recording(self) -> bool:
        return self.attempt is not None

    def begin(self, seed: int, t: float) -> None:
        self.attempt = Attempt(seed, t)
        if self.tap is not None:
            self.tap.drop_before(t)  # frames of the time between attempts are not this one's

    def tick(self, t: float, joints: np.ndarray, command: np.ndarray) -> None:
        a = self.attempt
        if a is None:
            return
        a.t.append(t)
        a.joints.append(np.array(joints, np.float32))
        a.command.append(np.array(command, np.float32))
        if len(a.t) >= self.max_ticks:  # too long for one episode: cut here, go on in a new one
            self.end(False, [], why="cut at the longest episode")
            self.begin(a.seed, t)

    def end(self, success: bool, events=(), why: str = "") -> None:
        a, self.attempt = self.attempt, None
        if a is None:
            return
        if len(a.t) < 2:
            self.skipped.append(f"seed {a.seed}: {len(a.t)} ticks")
            return
        shots = self.tap.take(a.t_begin) if self.tap is not None else {}
        self._queue.put((a, bool(success), decisions_of(events), shots, why))

    def discard(self, reason: str) -> None:
        if self.attempt is not None:
            self.skipped.append(f"seed {self.attempt.seed}: {reason}")
        self.attempt = None

    def _write_loop(self) -> None:
        """Hands each finished attempt to the writer process, one at a time."""
        from .attempt_writer import save_attempt, write_attempt

        while True:
            job = self._queue.get()
            if job is None:
                return
            a, success, decisions, shots, why = job
            try:
                missing = [k for k, s in shots.items() if not s]
                if self.tap is not None and missing:
                    self.skipped.append(f"seed {a.seed}: no camera frames from {missing}")
                    continue
                self._handed += 1
                path = Path(self._tmp.name) / f"attempt-{self._handed}.npz"
                save_attempt(path, a, shots)
                job = (str(path), a.seed, success, decisions, why)
                self.written.append(self._pool.submit(write_attempt, *job).result())
            except Exception as e:  # a full disk must not take the robot's loop down with it
                self.error = f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]
                self.log(f"record: episode of seed {a.seed} not written ({self.error})")

    def close(self) -> dict:
        """Writes what is queued (the attempt under way, if any, is dropped) and returns what
        was written."""
        self.discard("the run stopped during it")
        self._queue.put(None)
        self._thread.join()
        self._pool.shutdown(wait=True)
        self._tmp.cleanup()
        if self.tap is not None:
            self.tap.close()
        return self.summary()

    def summary(self) -> dict:
        return {
            "dir": str(self.root),
            "episodes_written": len(self.written),
            "first_episode_index": self.first_index,
            "successes": sum(w["success"] for w in self.written),
            "episodes": list(self.written),
            "skipped": list(self.skipped),
            "camera_rejected": self.tap.rejected if self.tap is not None else 0,
            "error": self.error,
        }

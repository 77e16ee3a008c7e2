"""The process that writes `--record` episodes (attempt_recording.py), beside the runtime's.

Assembling an episode and encoding its video take a second or more of CPU; on a thread of the
runtime's process they held the interpreter lock and the loop's core: with 500 frames of
128x128 in flight, the tick's lateness went from 0.03 ms (p50) to 4-8 ms, with 17-29 overruns
in 400 ticks, on the shared 2-core machine. So a process of its own writes them, at a lower
priority (``WRITER_NICE``), and dies with the runtime (Linux ``PR_SET_PDEATHSIG``: an episode
cut short is lost, the folder still loads). An attempt travels as a plain ``.npz`` of arrays in
a private temporary folder (read back with ``allow_pickle=False``); the call itself carries
only the path, the seed, the outcome and the gate's decisions.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np

WRITER_NICE = 10
PR_SET_PDEATHSIG = 1

_writer: dict = {}  # in the writer process: its LeRobotWriter, features and task


def die_with_parent() -> None:
    """Linux: SIGKILL when the parent exits (elsewhere nothing)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def init_writer(root: str, fps: int, features: dict, robot_type: str | None, task: str) -> None:
    from .attempt_recording import open_writer

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group: the runtime decides
    die_with_parent()
    try:
        os.nice(WRITER_NICE)
    except OSError:
        pass
    _writer.update(
        writer=open_writer(Path(root), fps, features, robot_type), features=features, task=task
    )


def ready() -> int:
    """A first call, made from the thread that owns the pool (see ``AttemptRecorder``)."""
    return int(_writer["writer"].info["total_episodes"])


def save_attempt(path: Path, attempt, shots: dict[str, list]) -> None:
    """An attempt and its camera frames as plain arrays."""
    arrays = {
        "t": np.asarray(attempt.t, np.float64),
        "joints": np.asarray(attempt.joints, np.float32),
        "command": np.asarray(attempt.command, np.float32),
    }
    for name, frames in shots.items():
        arrays[f"camera/{name}/t"] = np.array([t for t, _ in frames], np.float64)
        arrays[f"camera/{name}/images"] = np.stack([image for _, image in frames])
    np.savez(path, **arrays)  # type: ignore[arg-type]


def write_attempt(
    path: str, seed: int, success: bool, decisions: list[tuple[float, float, bool]], why: str
) -> dict:
    """In the writer process: the attempt saved at ``path`` as the dataset's next episode."""
    from .attempt_recording import Attempt, episode_frames

    t0 = time.perf_counter()
    shots: dict[str, list[tuple[float, np.ndarray]]] = {}
    with np.load(path, allow_pickle=False) as data:
        ticks = data["t"]
        attempt = Attempt(
            seed, float(ticks[0]), list(ticks), list(data["joints"]), list(data["command"])
        )
        for name in data.files:
            if name.startswith("camera/") and name.endswith("/t"):
                camera = name.split("/")[1]
                images = data[f"camera/{camera}/images"]
                shots[camera] = list(zip(data[name].tolist(), images))
    Path(path).unlink()
    frames = episode_frames(attempt, success, decisions, shots, _writer["features"])
    index = _writer["writer"].add_episode(frames, _writer["task"])
    return {
        "episode_index": index,
        "seed": seed,
        "frames": len(ticks),
        "success": success,
        "decisions": [round(p, 3) for _, p, _ in decisions],
        "write_s": round(time.perf_counter() - t0, 3),
        **({"note": why} if why else {}),
    }

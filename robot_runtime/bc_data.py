"""Demonstrations for `kiwi train policy`: a LeRobot v3.0 folder decoded once into memory.

Every episode's video is decoded a single time (world_model/datasets/lerobot_reader.py) and kept
as uint8 arrays, so training epochs never decode again. Only every ``frame_stride``-th frame's
images are kept (neighbouring frames at 50 Hz look alike; this halves the memory at stride 2);
joint states and actions are kept for every frame, so a chunk's targets are the episode's next
``chunk`` actions at the dataset's full rate, the last action repeated past the episode's end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from world_model.datasets import DatasetError, LeRobotReader

STATE_KEY = "observation.state"
ACTION_KEY = "action"
SUCCESS_KEY = "next.success"
IMAGE_PREFIX = "observation.images."


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> [size, size, 3]: area averaging when H and W are whole multiples of
    ``size`` (128 -> 64: what the wrist camera of `kiwi sim` sends), bilinear otherwise."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    if h % size == 0 and w % size == 0:
        fh, fw = h // size, w // size
        blocks = image.reshape(size, fh, size, fw, 3).astype(np.float32)
        return (blocks.mean(axis=(1, 3)) + 0.5).astype(np.uint8)
    from PIL import Image

    return np.array(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


@dataclass
class Demonstrations:
    """Frames of the chosen episodes, concatenated. ``images[cam]`` is [M, S, S, 3] uint8 for
    the frames ``sample_rows`` (indices into ``state``/``action``, [N, 6] float32)."""

    fps: int
    cameras: tuple[str, ...]
    state: np.ndarray
    action: np.ndarray
    episode_end: np.ndarray  # [N] exclusive end row of each frame's episode
    sample_rows: np.ndarray  # [M]
    sample_episode: np.ndarray  # [M] position of the sample's episode in ``episodes``
    images: dict[str, np.ndarray]
    episodes: list[int]  # dataset episode indices
    tasks: list[str]

    def chunk_rows(self, rows: np.ndarray, chunk: int) -> np.ndarray:
        """[B, chunk] rows of the actions a chunk from each of ``rows`` holds: the next
        ``chunk`` frames of its episode, the episode's last frame repeated past its end."""
        idx = rows[:, None] + np.arange(chunk)[None, :]
        return np.minimum(idx, self.episode_end[rows][:, None] - 1)


def required_keys(features: dict, cameras: tuple[str, ...], root: Path) -> list[str]:
    """The feature keys training reads; a one-line DatasetError naming what is missing."""
    missing = [k for k in (STATE_KEY, ACTION_KEY) if k not in features]
    if missing:
        raise DatasetError(f"{root} has no {missing} (features: {sorted(features)})")
    for key in (STATE_KEY, ACTION_KEY):
        if list(features[key]["shape"]) != [6]:
            raise DatasetError(
                f"{root}: {key} has shape {features[key]['shape']}, not [6] (five arm joints "
                "and the gripper)"
            )
    have = sorted(k[len(IMAGE_PREFIX) :] for k in features if k.startswith(IMAGE_PREFIX))
    absent = [c for c in cameras if f"{IMAGE_PREFIX}{c}" not in features]
    if absent:
        raise DatasetError(
            f"{root} has no camera {absent} (it has {have or 'none'}); set "
            f"policy.cameras to some of those"
        )
    return [STATE_KEY, ACTION_KEY, *(f"{IMAGE_PREFIX}{c}" for c in cameras)]


def successful(reader: LeRobotReader) -> list[bool]:
    """Each episode's outcome: its last frame's ``next.success``."""
    if SUCCESS_KEY not in reader.features:
        raise DatasetError(
            f"{reader.root} has no {SUCCESS_KEY} labels to pick successful episodes by; "
            "pass --all-episodes to learn from every episode"
        )
    return [
        bool(reader.read_episode(i, [SUCCESS_KEY])[SUCCESS_KEY][-1])
        for i in range(reader.num_episodes)
    ]


def load_demonstrations(
    root: Path,
    cameras: tuple[str, ...],
    image_size: int,
    successful_only: bool = True,
    max_episodes: int | None = None,
    frame_stride: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> Demonstrations:
    """Reads (and decodes, once) the episodes of ``root`` to learn from: the successful ones,
    or all with ``successful_only=False``; the first ``max_episodes`` of them if given."""
    root = Path(root)
    with LeRobotReader(root) as reader:
        keys = required_keys(reader.features, cameras, root)
        if reader.num_episodes == 0:
            raise DatasetError(f"{root} holds no episodes yet")
        if successful_only:
            outcome = successful(reader)
            chosen = [i for i, ok in enumerate(outcome) if ok]
            if not chosen:
                raise DatasetError(
                    f"{root}: none of its {reader.num_episodes} episodes succeeded "
                    f"({SUCCESS_KEY} is never true at an episode's end); pass --all-episodes "
                    "to learn from them anyway"
                )
        else:
            chosen = list(range(reader.num_episodes))
        chosen = chosen[:max_episodes] if max_episodes else chosen
        states, actions, ends, rows, sample_ep = [], [], [], [], []
        images: dict[str, list[np.ndarray]] = {c: [] for c in cameras}
        tasks: set[str] = set()
        start = 0
        for n, index in enumerate(chosen):
            ep = reader.read_episode(index, keys)
            state = np.asarray(ep[STATE_KEY], np.float32).reshape(ep.length, 6)
            action = np.asarray(ep[ACTION_KEY], np.float32).reshape(ep.length, 6)
            if not (np.isfinite(state).all() and np.isfinite(action).all()):
                raise DatasetError(f"{root}: episode {index} has non-finite state or action")
            keep = np.arange(0, ep.length, frame_stride)
            for c in cameras:
                frames = ep[f"{IMAGE_PREFIX}{c}"][keep]
                images[c].append(np.stack([resize_image(f, image_size) for f in frames]))
            states.append(state)
            actions.append(action)
            ends.append(np.full(ep.length, start + ep.length, np.int64))
            rows.append(start + keep)
            sample_ep.append(np.full(len(keep), n, np.int64))
            tasks.add(ep.task)
            start += ep.length
            if progress:
                progress(n + 1, len(chosen))
        fps = reader.fps
    return Demonstrations(
        fps=fps,
        cameras=tuple(cameras),
        state=np.concatenate(states),
        action=np.concatenate(actions),
        episode_end=np.concatenate(ends),
        sample_rows=np.concatenate(rows),
        sample_episode=np.concatenate(sample_ep),
        images={c: np.concatenate(v) for c, v in images.items()},
        episodes=chosen,
        tasks=sorted(tasks),
    )


def normalization(root: Path, demos: Demonstrations) -> dict[str, np.ndarray]:
    """Mean and std of state and action from the folder's stats.json (what LeRobot's own
    normalisers use); computed from the loaded frames when the file lacks them. A std below
    1e-3 (a joint that never moves) counts as 1."""
    with LeRobotReader(root) as reader:
        stats = reader.stats
    out = {}
    for name, key, values in (
        ("state", STATE_KEY, demos.state),
        ("action", ACTION_KEY, demos.action),
    ):
        s = stats.get(key, {})
        mean = np.asarray(s.get("mean", values.mean(axis=0)), np.float32).reshape(-1)
        std = np.asarray(s.get("std", values.std(axis=0)), np.float32).reshape(-1)
        if mean.shape != (6,) or std.shape != (6,) or not np.isfinite([mean, std]).all():
            raise DatasetError(f"{root}: stats.json's {key} mean/std are not 6 finite numbers")
        out[f"{name}_mean"] = mean
        out[f"{name}_std"] = np.where(std < 1e-3, 1.0, std).astype(np.float32)
    return out

"""The project's replay episodes (world_model/replay.py, ``.npz``) as LeRobotDataset frames.

The replay keeps T observations with the action taken after each (zeros after the last) and the
reward received on arriving at each. A LeRobot frame is (observation t, action t, then what
followed: ``next.reward``, ``next.done``, ``next.success``), so an episode of T replay steps
becomes T - 1 frames: frame t = obs t, ``action[t]``, ``reward[t + 1]``, ``is_success[t + 1]``,
done on the last frame. The final observation (after the last action) has no action and is left
out.

Keys: ``state`` -> ``observation.state`` (named by LeRobot's SO-arm joints when it has 6 values),
any other vector ``k`` -> ``observation.k``, camera ``k`` -> ``observation.images.k``; the seed of
a ``kiwi collect`` episode -> ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..replay import episode_files, load_episode, load_spec
from .lerobot_format import SO_JOINT_NAMES, DatasetError, image_feature
from .lerobot_writer import LeRobotWriter

GRASP_TASK = "pick up the red cube"


def observation_key(key: str, is_image: bool) -> str:
    if is_image:
        return f"observation.images.{key}"
    return "observation.state" if key == "state" else f"observation.{key}"


def replay_features(
    vector_dims: dict[str, int],
    image_shapes: dict[str, tuple[int, int]],
    action_dim: int,
    labels: tuple[str, ...] = ("next.reward", "next.done", "next.success"),
    camera_dtype: str = "video",
    seed: bool = False,
) -> dict:
    """LeRobot features for replay episodes with these observation keys."""

    def names(n: int) -> list[str] | None:
        return list(SO_JOINT_NAMES) if n == len(SO_JOINT_NAMES) else None

    features: dict = {}
    for key, dim in vector_dims.items():
        features[observation_key(key, False)] = {
            "dtype": "float32",
            "shape": [dim],
            "names": names(dim) if key == "state" else None,
        }
    features["action"] = {"dtype": "float32", "shape": [action_dim], "names": names(action_dim)}
    for key, (h, w) in image_shapes.items():
        features[observation_key(key, True)] = {**image_feature(h, w), "dtype": camera_dtype}
    dtypes = {"next.reward": "float32", "next.done": "bool", "next.success": "bool"}
    for label in labels:
        features[label] = {"dtype": dtypes[label], "shape": [1], "names": None}
    if seed:
        features["seed"] = {"dtype": "int64", "shape": [1], "names": None}
    return features


def lerobot_frames(
    episode: dict[str, np.ndarray], vector_keys: list[str], image_keys: list[str], features: dict
) -> dict[str, np.ndarray]:
    """One replay episode as LeRobot frames (see the module docstring for the alignment)."""
    length = len(episode["action"]) - 1
    if length < 1:
        raise DatasetError("a replay episode of one step has no action to record")
    frames = {
        observation_key(k, False): episode[k][:length].astype(np.float32) for k in vector_keys
    }
    frames.update({observation_key(k, True): episode[k][:length] for k in image_keys})
    frames["action"] = episode["action"][:length].astype(np.float32)
    if "next.reward" in features:
        frames["next.reward"] = episode["reward"][1:].astype(np.float32)
    if "next.done" in features:
        frames["next.done"] = np.arange(length) == length - 1
    if "next.success" in features:
        if "is_success" in episode:
            frames["next.success"] = episode["is_success"][1:].astype(bool)
        else:
            frames["next.success"] = np.zeros(length, bool)
            frames["next.success"][-1] = bool(np.asarray(episode["success"])[0])
    if "seed" in features:
        frames["seed"] = np.full(length, int(episode["seed"][0]), dtype=np.int64)
    return frames


def convert_replay_folder(
    npz_dir: Path,
    out: Path,
    task: str = GRASP_TASK,
    robot_type: str | None = "so101_follower",
    fps: int = 50,
    camera_dtype: str = "video",
    video_encoder: str | None = None,
    on_episode: Callable[[int], None] | None = None,
) -> dict:
    """Writes every ``.npz`` episode of ``npz_dir`` (with its ``spec.json``) as a new LeRobot
    dataset in ``out`` and returns a summary."""
    spec = load_spec(Path(npz_dir))
    paths = episode_files(Path(npz_dir))
    if not paths:
        raise DatasetError(f"{npz_dir} holds no .npz episodes")
    first = load_episode(paths[0])
    vector_keys, image_keys = list(spec.vector_dims), list(spec.image_keys)
    missing = [k for k in vector_keys + image_keys if k not in first]
    if missing:
        raise DatasetError(f"{paths[0]} lacks {missing}, which {npz_dir}/spec.json promises")
    labels = ["next.reward", "next.done"]
    if "is_success" in first or "success" in first:
        labels.append("next.success")
    features = replay_features(
        {k: int(first[k].shape[-1]) for k in vector_keys},
        {k: tuple(first[k].shape[1:3]) for k in image_keys},
        int(first["action"].shape[-1]),
        tuple(labels),
        camera_dtype,
        seed="seed" in first,
    )
    writer = LeRobotWriter.create(out, fps, features, robot_type, video_encoder=video_encoder)
    episodes = frames = skipped = successes = 0
    for i, path in enumerate(paths):
        episode = first if i == 0 else load_episode(path)
        if len(episode["action"]) < 2:
            skipped += 1
            continue
        converted = lerobot_frames(episode, vector_keys, image_keys, features)
        writer.add_episode(converted, task)
        episodes += 1
        frames += len(converted["action"])
        if "next.success" in converted:
            successes += bool(converted["next.success"][-1])
        if on_episode:
            on_episode(i)
    return {
        "episodes": episodes,
        "frames": frames,
        "skipped_one_step_episodes": skipped,
        "successes": successes if "next.success" in features else None,
        "features": list(features),
        "out": str(out),
    }

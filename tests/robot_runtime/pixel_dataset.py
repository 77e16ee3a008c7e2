"""Tiny LeRobotDataset v3.0 folders written by the project's writer, for the pixel world model's
tests: a moving square on two cameras (one video, one PNG image of another size) and a joint
state that follows the action."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from world_model.datasets import SO_JOINT_NAMES, LeRobotWriter


def episode_frames(episode: int, length: int, state: bool = True, cameras: bool = True) -> dict:
    rng = np.random.default_rng(episode)
    action = np.cumsum(rng.normal(0, 2, (length, 6)), 0).astype(np.float32)
    frames: dict[str, np.ndarray] = {"action": action}
    if state:
        frames["observation.state"] = np.concatenate([action[:1], action[:-1]]).astype(np.float32)
    if cameras:
        wrist = np.full((length, 64, 64, 3), 30, np.uint8)
        front = np.full((length, 48, 64, 3), 90, np.uint8)
        for t in range(length):
            x = (4 * t + 7 * episode) % 48
            wrist[t, 20:36, x : x + 16, 0] = 220
            front[t, 10:26, 40 - x // 2 : 56 - x // 2, 1] = 200
        frames["observation.images.wrist"] = wrist
        frames["observation.images.front"] = front
    success = np.zeros(length, bool)
    success[-1] = episode % 2 == 0
    frames["next.success"] = success
    frames["next.reward"] = success.astype(np.float32)
    return frames


def write_dataset(
    root: Path, episodes: int = 4, length: int = 24, state: bool = True, cameras: bool = True
) -> Path:
    joints = {"dtype": "float32", "shape": [6], "names": list(SO_JOINT_NAMES)}
    features: dict = {"action": joints}
    if state:
        features["observation.state"] = dict(joints)
    if cameras:
        features["observation.images.wrist"] = {"dtype": "video", "shape": [64, 64, 3]}
        features["observation.images.front"] = {"dtype": "image", "shape": [48, 64, 3]}
    features["next.success"] = {"dtype": "bool", "shape": [1]}
    features["next.reward"] = {"dtype": "float32", "shape": [1]}
    writer = LeRobotWriter.create(root, 50, features, "so101_follower")
    for e in range(episodes):
        writer.add_episode(episode_frames(e, length, state, cameras), "pick up the cube")
    return root

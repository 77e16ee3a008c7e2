"""`kiwi bench world-model`'s pixel figures: the model of configs/so101_pixels.yaml (joint
state plus 64x64 cameras) at batch 1 on one thread, and how fast a LeRobot dataset is read with
its video decoded.

- ``posterior_1cam_us_p50``: one ``obs_step`` with one 64x64 image and the joint state (the CNN
  encoder, then the posterior): what the runtime runs when a camera frame arrives;
- ``posterior_us_p50``: the same with every camera of the config (wrist and front);
- ``prior_step_us_p50``: one ``img_step`` (every tick of the fast loop; its budget at 50 Hz is
  20 ms);
- ``read_frames_per_s``: frames (all features, each camera decoded) per second of
  ``LeRobotReader.read_episode``, on ``--data`` or on a dataset written here by the project's
  writer (two AV1 64x64 cameras); ``camera_frames_per_s`` counts each camera's frame.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from world_model.config import ModelSpec
from world_model.model import WorldModel

from .common import percentiles_us

CAMERAS = ("observation.images.wrist", "observation.images.front")
STATE = "observation.state"


def pixel_model(cameras: tuple[str, ...]) -> WorldModel:
    """configs/so101_pixels.yaml's model with ``cameras`` (random weights: speed only)."""
    from ..config import LeRobotJob, load_config

    job, _ = load_config("so101_pixels", LeRobotJob, [f"data.cameras={list(cameras)}"])
    spec = ModelSpec(vector_dims={STATE: 6}, image_keys=cameras, action_dim=6)
    return WorldModel(job.model, spec).eval()


def time_posterior(wm: WorldModel, n: int) -> tuple[float, float]:
    gen = torch.Generator().manual_seed(0)
    obs = {STATE: torch.zeros(1, 6)}
    for key in wm.config.cnn_keys:
        obs[key] = torch.randint(0, 256, (1, 64, 64, 3), dtype=torch.uint8, generator=gen)
    state, action = wm.initial(1), torch.zeros(1, 6)
    times = []
    with torch.no_grad():
        for i in range(n + 20):
            t = time.perf_counter()
            state, _ = wm.obs_step(state, action, obs, None, gen)
            if i >= 20:
                times.append(time.perf_counter() - t)
    return percentiles_us(times)


def time_prior(wm: WorldModel, n: int) -> tuple[float, float]:
    gen = torch.Generator().manual_seed(0)
    state, action = wm.initial(1), torch.zeros(1, 6)
    times = []
    with torch.no_grad():
        for i in range(n + 200):
            t = time.perf_counter()
            state = wm.img_step(state, action, gen)
            if i >= 200:
                times.append(time.perf_counter() - t)
    return percentiles_us(times)


def write_sample_dataset(root: Path, episodes: int, length: int) -> Path:
    """Moving squares on two 64x64 video cameras, written by the project's writer."""
    from world_model.datasets import SO_JOINT_NAMES, LeRobotWriter

    joints = {"dtype": "float32", "shape": [6], "names": list(SO_JOINT_NAMES)}
    features = {
        STATE: joints,
        "action": dict(joints),
        **{cam: {"dtype": "video", "shape": [64, 64, 3]} for cam in CAMERAS},
    }
    writer = LeRobotWriter.create(root, 50, features, "so101_follower")
    rng = np.random.default_rng(0)
    for e in range(episodes):
        frames: dict[str, np.ndarray] = {STATE: rng.normal(size=(length, 6)).astype(np.float32)}
        frames["action"] = frames[STATE] + 1
        for c, cam in enumerate(CAMERAS):
            video = np.full((length, 64, 64, 3), 40 * (c + 1), np.uint8)
            for t in range(length):
                x = (t + 9 * e) % 48
                video[t, 24:40, x : x + 16] = 220
            frames[cam] = video
        writer.add_episode(frames, "bench")
    return root


def time_dataset_read(root: Path, max_episodes: int) -> dict:
    from world_model.datasets import LeRobotReader

    with LeRobotReader(root) as reader:
        indices = list(range(min(max_episodes, reader.num_episodes)))
        t = time.perf_counter()
        frames = sum(reader.read_episode(i).length for i in indices)
        elapsed = time.perf_counter() - t
        cameras = len(reader.camera_keys)
    return {
        "read_frames_per_s": frames / elapsed,
        "camera_frames_per_s": frames * cameras / elapsed,
        "read_frames": frames,
        "read_cameras": cameras,
        "read_dataset": str(root),
    }


def measure(data: str | None, quick: bool) -> dict:
    n = 200 if quick else 1000
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        one = pixel_model(CAMERAS[:1])
        both = pixel_model(CAMERAS)
        post1, post1_p99 = time_posterior(one, n)
        post2, _ = time_posterior(both, n)
        prior, prior_p99 = time_prior(both, n * 5)
    finally:
        torch.set_num_threads(before)
    if data:
        read = time_dataset_read(Path(data), 10 if quick else 50)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            root = write_sample_dataset(Path(tmp) / "ds", 4 if quick else 10, 100 if quick else 250)
            read = time_dataset_read(root, 10)
            read["read_dataset"] = "written here (two AV1 64x64 cameras)"
    c = both.config
    return {
        "posterior_1cam_us_p50": post1,
        "posterior_1cam_us_p99": post1_p99,
        "posterior_us_p50": post2,
        "prior_step_us_p50": prior,
        "prior_step_us_p99": prior_p99,
        **read,
        "model": {
            "deter": c.deter,
            "stoch": c.stoch,
            "classes": c.classes,
            "cnn_depth": c.cnn_depth,
        },
    }


def summary_lines(p: dict) -> list[str]:
    m = p["model"]
    return [
        f"pixel model (configs/so101_pixels.yaml: deter {m['deter']}, CNN depth "
        f"{m['cnn_depth']}), 1 thread: posterior with one 64x64 image p50 "
        f"{p['posterior_1cam_us_p50']:.0f} µs (p99 {p['posterior_1cam_us_p99']:.0f}), with "
        f"both cameras {p['posterior_us_p50']:.0f} µs; prior step p50 "
        f"{p['prior_step_us_p50']:.0f} µs (p99 {p['prior_step_us_p99']:.0f}) of a 20000 µs tick",
        f"dataset read with video decode: {p['read_frames_per_s']:.0f} frames/s "
        f"({p['camera_frames_per_s']:.0f} camera frames/s, {p['read_cameras']} cameras, "
        f"{p['read_frames']} frames of {p['read_dataset']})",
    ]

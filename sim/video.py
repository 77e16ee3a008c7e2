"""Render a recorded grasp episode for a person to look at (GIF with Pillow, MP4 with ffmpeg)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from .kiwi_grasp import KiwiGraspEnv


def render_episode(
    episode: dict[str, np.ndarray],
    cameras: tuple[str, ...] = ("front", "wrist"),
    size: tuple[int, int] = (240, 320),
    every: int = 2,
) -> list[np.ndarray]:
    """Frames ``[H, W * len(cameras), 3]`` of every ``every``-th step, from the stored ``qpos``
    (the cube is rebuilt from the episode's seed, so it has the recorded size)."""
    if "qpos" not in episode or "seed" not in episode:
        raise ValueError("episode has no qpos/seed: record it with `kiwi collect --env grasp`")
    env = KiwiGraspEnv()
    try:
        env.reset(seed=int(episode["seed"][0]))
        import mujoco

        frames = []
        for t in range(0, len(episode["qpos"]), every):
            env.data.qpos[:] = episode["qpos"][t]
            mujoco.mj_forward(env.model, env.data)
            views = [env.render_camera(cam, *size) for cam in cameras]
            frames.append(np.concatenate(views, axis=1))
        return frames
    finally:
        env.close()


def write_video(frames: list[np.ndarray], path: Path, fps: float) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        images[0].save(
            path, save_all=True, append_images=images[1:], loop=0, duration=int(round(1000 / fps))
        )
    elif suffix == ".mp4":
        try:
            import imageio_ffmpeg
        except ImportError as e:
            raise RuntimeError(
                "MP4 needs the imageio-ffmpeg package (pip install imageio-ffmpeg); or write a .gif"
            ) from e
        h, w = frames[0].shape[:2]
        cmd = [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-y",
            "-loglevel",
            "error",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-s",
            f"{w}x{h}",
            "-r",
            f"{fps}",
            "-i",
            "-",
            "-pix_fmt",
            "yuv420p",
            "-vcodec",
            "libx264",
            str(path),
        ]
        subprocess.run(
            cmd, input=b"".join(np.ascontiguousarray(f).tobytes() for f in frames), check=True
        )
    else:
        raise ValueError(f"video must end in .gif or .mp4, got {path.name}")

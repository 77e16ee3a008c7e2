"""Short video clips written at test time (never committed): a red square moving right on
black, the colour the stand-in perception (robot_runtime/perception.py) looks for. For
`VideoFileCamera` and for end-to-end runs with `--camera wrist=CLIP`."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def moving_square(i: int, side: int = 64) -> np.ndarray:
    """Frame ``i``: uint8 RGB [side, side, 3], a red square side/5 wide at x = 2 + 2i."""
    frame = np.zeros((side, side, 3), np.uint8)
    edge, top = max(4, side // 5), (side - max(4, side // 5)) // 2
    frame[top : top + edge, 2 + 2 * i : 2 + 2 * i + edge] = (230, 20, 20)
    return frame


def write_mp4(path: Path, frames: int = 20, side: int = 64, fps: float = 20.0) -> Path:
    """An H.264 mp4 through imageio-ffmpeg (``side`` a multiple of 16 keeps it unscaled)."""
    import imageio_ffmpeg

    writer = imageio_ffmpeg.write_frames(
        str(path), (side, side), fps=fps, macro_block_size=16, ffmpeg_log_level="error"
    )
    writer.send(None)
    for i in range(frames):
        writer.send(moving_square(i, side).tobytes())
    writer.close()
    return path


def write_gif(path: Path, frames: int = 20, side: int = 64, fps: float = 20.0) -> Path:
    from PIL import Image

    images = [Image.fromarray(moving_square(i, side)) for i in range(frames)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=1000 / fps, loop=0)
    return path

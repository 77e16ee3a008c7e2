"""A LeRobot dataset's episodes decoded once into memory-mapped arrays, in the replay's convention.

Training samples thousands of windows per epoch; decoding AV1 for each would cost more than the
update. So the chosen episodes are decoded once into ``CACHE/<fingerprint>/``: one ``.npy`` file
per feature (frames of all episodes concatenated, cameras ``[N, S, S, 3]`` uint8 at the model's
image size: resized whole, not cropped, so a 4:3 camera is squeezed) and ``index.json`` (the
fingerprint, the episodes and their offsets). The folder is built under a temporary name and
renamed when complete, ``index.json`` last, so a killed build leaves nothing that looks
finished. The fingerprint covers the dataset's features and fps, the chosen episodes' metadata
rows (where their frames and video spans are) and the keys and image size, so a rerun or resume
on the same episodes reuses the cache (also while the dataset grows) and anything else rebuilds
it.

Episodes come back as dicts of arrays (memmap slices for cameras) in world_model/replay.py's
convention: ``action[t]`` is LeRobot's action at frame t (taken after seeing it); ``reward[t]``
is ``next.reward[t - 1]`` (0 on the first frame); ``is_first``/``is_last`` mark the ends and
``is_terminal`` stays False (LeRobot's ``next.done`` does not tell a time limit from a terminal
state). The other cached features (``next.success``, ...) ride along under their own names.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import TEMP_SUFFIX, atomic_write_text
from .lerobot_format import DatasetError
from .lerobot_reader import LeRobotReader

CACHE_VERSION = 1
INDEX = "index.json"
LABELS = ("next.reward", "next.done", "next.success")  # cached when the dataset has them


@dataclass
class FrameCache:
    """Cached episodes: ``episodes[i]`` is dataset episode ``indices[i]``."""

    folder: Path
    fingerprint: str
    indices: list[int]
    episodes: list[dict[str, np.ndarray]]
    built_s: float | None  # seconds spent decoding now; None when an existing cache was reused

    @property
    def frames(self) -> int:
        return int(sum(len(e["action"]) for e in self.episodes))


def fingerprint(reader: LeRobotReader, indices: list[int], keys: list[str], image_size: int) -> str:
    """sha256 over what decides the cache's content (never the frames themselves: committed
    episodes do not change, and their rows say where each one's frames are)."""
    rows = [reader.episode_rows[i] for i in indices]
    what = {
        "version": CACHE_VERSION,
        "codebase_version": reader.info.get("codebase_version"),
        "fps": reader.fps,
        "features": {k: reader.features[k] for k in keys},
        "rows": rows,
        "keys": keys,
        "image_size": image_size,
    }
    text = json.dumps(what, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """``[T, H, W, 3]`` uint8 -> ``[T, size, size, 3]`` (Pillow's area filter; no-op at size)."""
    if frames.shape[1:3] == (size, size):
        return frames
    from PIL import Image

    return np.stack(
        [np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.BOX)) for f in frames]
    )


def cached_keys(reader: LeRobotReader, vector_keys: list[str], cameras: list[str]) -> list[str]:
    return [*vector_keys, "action", *cameras, *(k for k in LABELS if k in reader.features)]


def load_or_build(
    reader: LeRobotReader,
    indices: list[int],
    vector_keys: list[str],
    cameras: list[str],
    cache_root: Path,
    image_size: int = 64,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> FrameCache:
    """The cache of episodes ``indices`` under ``cache_root``: reused when its fingerprint
    matches, otherwise decoded now (other fingerprints' folders there are removed: a cache
    holds one dataset state)."""
    if not indices:
        raise DatasetError(f"{reader.root}: no episodes to read")
    keys = cached_keys(reader, vector_keys, cameras)
    fp = fingerprint(reader, indices, keys, image_size)
    cache_root = Path(cache_root)
    folder = cache_root / fp[:16]
    if (folder / INDEX).is_file():
        try:
            return _open(folder, fp, None)
        except (OSError, ValueError, KeyError) as e:
            log(f"cache {folder} is damaged ({e}); decoding again")
            shutil.rmtree(folder)
    _remove_other_caches(cache_root, keep=folder.name, log=log)
    t0 = time.perf_counter()
    _build(reader, indices, keys, cameras, fp, folder, image_size, progress)
    return _open(folder, fp, time.perf_counter() - t0)


def _remove_other_caches(cache_root: Path, keep: str, log: Callable[[str], None]) -> None:
    if not cache_root.is_dir():
        return
    for p in cache_root.iterdir():
        if p.name == keep or not p.is_dir():
            continue
        if p.name.endswith(TEMP_SUFFIX):  # a build in progress elsewhere, or a killed one
            pid = p.name.rsplit(".", 3)[-3].split("-")[0] if p.name.count(".") >= 3 else ""
            if pid.isdigit() and _alive(int(pid)):
                continue
        elif not (p / INDEX).is_file():
            continue  # not ours
        shutil.rmtree(p)
        log(f"removed the cache {p} (another dataset state, or a killed build)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _build(
    reader: LeRobotReader,
    indices: list[int],
    keys: list[str],
    cameras: list[str],
    fp: str,
    folder: Path,
    image_size: int,
    progress: bool,
) -> None:
    from tqdm import tqdm

    lengths = [reader.episode_length(i) for i in indices]
    total = int(sum(lengths))
    tmp = folder.parent / f".{folder.name}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}"
    tmp.mkdir(parents=True)
    try:
        arrays: dict[str, np.ndarray] = {}
        files: dict[str, dict] = {}
        for n, key in enumerate(keys):
            feature = reader.features[key]
            shape: tuple[int, ...]
            dtype: np.dtype
            if key in cameras:
                shape, dtype = (total, image_size, image_size, 3), np.dtype(np.uint8)
            else:
                size = int(np.prod(feature["shape"] or [1]))
                shape = (total, size) if size > 1 else (total,)
                dtype = np.dtype(np.bool_) if feature["dtype"] == "bool" else np.dtype(np.float32)
            name = f"{n:02d}.npy"
            arrays[key] = np.lib.format.open_memmap(tmp / name, "w+", dtype, shape)
            files[key] = {"file": name, "dtype": dtype.str, "shape": list(shape)}
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(int)
        bar = tqdm(
            total=total * max(len(cameras), 1),
            desc="decoding video",
            unit="frame",
            unit_scale=True,
            disable=not progress,
            dynamic_ncols=True,
        )
        for i, index in enumerate(indices):
            episode = reader.read_episode(index, keys)
            lo, hi = offsets[i], offsets[i + 1]
            for key in keys:
                value = episode[key]
                if key in cameras:
                    value = resize_frames(value, image_size)
                arrays[key][lo:hi] = value.reshape(arrays[key][lo:hi].shape)
            bar.update((hi - lo) * max(len(cameras), 1))
        bar.close()
        for a in arrays.values():
            a.flush()  # type: ignore[attr-defined]
        del arrays
        about = {
            "fingerprint": fp,
            "dataset": str(reader.root),
            "episodes": [int(i) for i in indices],
            "offsets": offsets.tolist(),
            "image_size": image_size,
            "cameras": cameras,
            "keys": files,
        }
        atomic_write_text(tmp / INDEX, json.dumps(about, indent=1))
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _open(folder: Path, fp: str, built_s: float | None) -> FrameCache:
    index = json.loads((folder / INDEX).read_text())
    if index.get("fingerprint") != fp:
        raise ValueError("its index names another fingerprint")
    arrays = {}
    for key, f in index["keys"].items():
        a = np.load(folder / f["file"], mmap_mode="r", allow_pickle=False)
        if list(a.shape) != f["shape"] or a.dtype.str != f["dtype"]:
            raise ValueError(f"{f['file']} holds {a.shape} {a.dtype}, the index says otherwise")
        arrays[key] = a
    offsets = index["offsets"]
    episodes = [
        replay_episode({k: a[lo:hi] for k, a in arrays.items()})
        for lo, hi in zip(offsets[:-1], offsets[1:])
    ]
    return FrameCache(folder, fp, list(index["episodes"]), episodes, built_s)


def replay_episode(frames: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One episode's LeRobot features -> the replay's convention (see the module docstring)."""
    length = len(frames["action"])
    reward = np.zeros(length, np.float32)
    if "next.reward" in frames:
        reward[1:] = frames["next.reward"][:-1]
    flags = {name: np.zeros(length, bool) for name in ("is_first", "is_last", "is_terminal")}
    flags["is_first"][0] = True
    flags["is_last"][-1] = True
    return {**frames, "reward": reward, **flags}

"""Reads LeRobotDataset v3.0 folders (written by lerobot or by this project) with pyarrow and PyAV.

``info.json`` and the episodes metadata say where each episode lives: rows
``[dataset_from_index, dataset_to_index)`` of its data file, and for each camera the span
``[from_timestamp, to_timestamp)`` of a shared mp4, where frame t is at
``from_timestamp + timestamp[t]``. Only committed episodes (``episode_index <
info.total_episodes``) are read; anything a crashed writer left after them is ignored.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .lerobot_format import (
    EPISODES_PATH,
    STATS_PATH,
    TASKS_PATH,
    DatasetError,
    camera_keys,
    column_to_numpy,
    image_keys,
    load_info,
    stats_from_json,
    video_keys,
)
from .lerobot_video import VideoReader


@dataclass
class Episode:
    """One episode's frames: ``arrays[key]`` is ``[T, ...]`` (``[T]`` for shape-(1,) features,
    ``[T, H, W, 3]`` uint8 RGB for cameras)."""

    index: int
    task: str
    length: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def __contains__(self, key: str) -> bool:
        return key in self.arrays


def _decode_png(cell: dict) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(cell["bytes"])) as img:
        return np.asarray(img.convert("RGB"))


def read_table(path: Path) -> pa.Table:
    """A whole parquet file through one open handle. ``pq.read_table(path)`` looks the size up
    and opens the file separately: a writer renaming a new version over it in between (a folder
    read while `kiwi collect` appends) gives "Page was smaller than expected"."""
    with open(path, "rb") as f:
        return pq.read_table(f)


class LeRobotReader:
    """An open dataset folder. Use as a context manager (or call ``close``) to release the
    video files it keeps open."""

    def __init__(self, root: Path, tolerance_s: float = 1e-4):
        self.root = Path(root)
        self.tolerance_s = tolerance_s
        self.info = load_info(self.root)
        self.features: dict = self.info["features"]
        self.fps = int(self.info["fps"])
        self.robot_type: str | None = self.info.get("robot_type")
        self.video_keys = video_keys(self.features)
        self.image_keys = image_keys(self.features)
        self.camera_keys = camera_keys(self.features)
        self.tasks = self._load_tasks()
        self._rows, self._stats = self._load_episodes()
        self._videos: dict[tuple, VideoReader] = {}
        self._data_files: dict[tuple, tuple[pq.ParquetFile, np.ndarray, np.ndarray]] = {}

    def __enter__(self) -> LeRobotReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for video in self._videos.values():
            video.close()
        self._videos.clear()
        self._data_files.clear()

    # ---- metadata ---------------------------------------------------------------------------

    def _load_tasks(self) -> list[str]:
        path = self.root / TASKS_PATH
        if not path.is_file():
            return []
        table = read_table(path)
        names = [n for n in table.column_names if n != "task_index"]
        if "task_index" not in table.column_names or not names:
            raise DatasetError(f"{path}: expected task_index and the task strings")
        strings = table.column("task" if "task" in names else names[0]).to_pylist()
        tasks = [""] * len(strings)
        for i, s in zip(table.column("task_index").to_pylist(), strings):
            if not 0 <= i < len(tasks):
                raise DatasetError(f"{path}: task_index {i} out of range")
            tasks[i] = s
        return tasks

    def _load_episodes(self) -> tuple[list[dict], list[dict]]:
        folder = self.root / Path(EPISODES_PATH).parent.parent
        total = int(self.info["total_episodes"])
        rows = []
        for path in sorted(folder.glob("chunk-*/file-*.parquet")):
            rows += read_table(path).to_pylist()
        rows = sorted(
            (r for r in rows if r["episode_index"] < total), key=lambda r: r["episode_index"]
        )
        if [r["episode_index"] for r in rows] != list(range(total)):
            raise DatasetError(
                f"{self.root}: info.json says {total} episodes, the episodes metadata holds "
                f"{len(rows)} of them"
            )
        meta, stats = [], []
        for r in rows:
            meta.append({k: v for k, v in r.items() if not k.startswith("stats/")})
            s: dict = {}
            for k, v in r.items():
                if k.startswith("stats/") and v is not None:
                    feature, name = k[len("stats/") :].rsplit("/", 1)
                    s.setdefault(feature, {})[name] = np.asarray(v)
            stats.append(s)
        return meta, stats

    @property
    def episode_rows(self) -> list[dict]:
        """The episodes metadata, one dict per episode, without the stats columns."""
        return self._rows

    @property
    def num_episodes(self) -> int:
        return len(self._rows)

    @property
    def num_frames(self) -> int:
        return int(sum(r["length"] for r in self._rows))

    def episode_length(self, index: int) -> int:
        return int(self._rows[index]["length"])

    def episode_stats(self, index: int) -> dict:
        return self._stats[index]

    @property
    def stats(self) -> dict:
        path = self.root / STATS_PATH
        return stats_from_json(json.loads(path.read_text())) if path.is_file() else {}

    # ---- frames -----------------------------------------------------------------------------

    def _row(self, index: int) -> dict:
        if not 0 <= index < len(self._rows):
            raise DatasetError(f"{self.root} has episodes 0..{len(self._rows) - 1}, not {index}")
        return self._rows[index]

    def _data_file(self, chunk: int, file: int):
        key = (chunk, file)
        if key not in self._data_files:
            path = self.root / self.info["data_path"].format(chunk_index=chunk, file_index=file)
            if not path.is_file():
                raise DatasetError(f"{path} is missing")
            pf = pq.ParquetFile(path)
            index = pf.read(columns=["index"]).column("index").to_numpy()
            sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
            self._data_files = {key: (pf, index, np.concatenate([[0], np.cumsum(sizes)]))}
        return self._data_files[key]

    def _data_columns(self, index: int, keys: list[str]) -> dict[str, np.ndarray]:
        row = self._row(index)
        pf, global_index, starts = self._data_file(row["data/chunk_index"], row["data/file_index"])
        lo = int(np.searchsorted(global_index, row["dataset_from_index"]))
        hi = lo + int(row["dataset_to_index"] - row["dataset_from_index"])
        if hi > len(global_index) or global_index[lo] != row["dataset_from_index"]:
            raise DatasetError(f"{self.root}: episode {index}'s rows are not in its data file")
        g0 = int(np.searchsorted(starts, lo, side="right") - 1)
        g1 = int(np.searchsorted(starts, hi, side="left"))
        table = pf.read_row_groups(list(range(g0, g1)), columns=keys)
        table = table.slice(lo - int(starts[g0]), hi - lo)
        out = {}
        for k in keys:
            if self.features[k]["dtype"] == "image":
                out[k] = np.stack([_decode_png(c) for c in table.column(k).to_pylist()])
            else:
                out[k] = column_to_numpy(table.column(k), self.features[k])
        return out

    def _video(self, key: str, row: dict) -> tuple[VideoReader, float]:
        where = (key, row[f"videos/{key}/chunk_index"], row[f"videos/{key}/file_index"])
        if where not in self._videos:
            path = self.root / self.info["video_path"].format(
                video_key=key, chunk_index=where[1], file_index=where[2]
            )
            self._videos[where] = VideoReader(path, self.tolerance_s)
        return self._videos[where], float(row[f"videos/{key}/from_timestamp"])

    def _keys(self, keys: list[str] | None) -> tuple[list[str], list[str]]:
        keys = list(self.features) if keys is None else list(keys)
        unknown = [k for k in keys if k not in self.features]
        if unknown:
            raise DatasetError(
                f"{self.root} has no features {unknown} (it has {list(self.features)})"
            )
        return [k for k in keys if k not in self.video_keys], [
            k for k in keys if k in self.video_keys
        ]

    def _task(self, columns: dict) -> str:
        ti = int(columns["task_index"][0])
        return self.tasks[ti] if ti < len(self.tasks) else ""

    def read_episode(self, index: int, keys: list[str] | None = None) -> Episode:
        """All frames of episode ``index`` (``keys``: the features to read; all by default)."""
        stored, videos = self._keys(keys)
        columns = self._data_columns(index, sorted(set(stored) | {"timestamp", "task_index"}))
        row = self._row(index)
        for key in videos:
            reader, from_s = self._video(key, row)
            columns[key] = np.stack(list(reader.iter_frames(from_s, columns["timestamp"])))
        task = self._task(columns)
        arrays = {k: columns[k] for k in stored + videos}
        return Episode(index, task, int(row["length"]), arrays)

    def iter_frames(self, index: int, keys: list[str] | None = None) -> Iterator[dict]:
        """Episode ``index`` frame by frame (dicts of one frame's values plus ``task``); video is
        decoded as it goes, from the keyframe at the episode's ``from_timestamp``."""
        stored, videos = self._keys(keys)
        columns = self._data_columns(index, sorted(set(stored) | {"timestamp", "task_index"}))
        row = self._row(index)
        streams = {}
        for key in videos:
            reader, from_s = self._video(key, row)
            streams[key] = reader.iter_frames(from_s, columns["timestamp"])
        task = self._task(columns)
        for t in range(int(row["length"])):
            frame = {k: columns[k][t] for k in stored}
            for key, stream in streams.items():
                frame[key] = next(stream)
            frame["task"] = task
            yield frame

    def describe(self) -> dict:
        """What the folder holds, for ``kiwi dataset info``: counts, fps, features with shapes
        and dtypes, cameras and their codec, tasks with their episode counts, episode lengths,
        files on disk, and the success rate when ``next.success`` labels the episodes (an
        episode succeeded when its last frame says so)."""
        lengths = np.array([r["length"] for r in self._rows], dtype=np.int64)
        per_task: dict[str, int] = {}
        for r in self._rows:
            for task in r.get("tasks") or []:
                per_task[task] = per_task.get(task, 0) + 1
        cameras = {}
        for key in self.camera_keys:
            f = self.features[key]
            extra = f.get("info") or {}
            cameras[key] = {
                "storage": f["dtype"],
                "shape": list(f["shape"]),
                "codec": extra.get("video.codec", "png" if f["dtype"] == "image" else None),
                "pix_fmt": extra.get("video.pix_fmt"),
            }
        success = None
        if "next.success" in self.features and self._rows:
            last = [
                bool(self.read_episode(i, ["next.success"])["next.success"][-1])
                for i in range(self.num_episodes)
            ]
            success = {"episodes": len(last), "succeeded": sum(last), "rate": sum(last) / len(last)}
        files = [p for p in self.root.rglob("*") if p.is_file() and not p.name.startswith(".")]
        return {
            "root": str(self.root),
            "codebase_version": self.info["codebase_version"],
            "robot_type": self.robot_type,
            "fps": self.fps,
            "episodes": self.num_episodes,
            "frames": self.num_frames,
            "duration_s": self.num_frames / self.fps,
            "episode_length": {
                "min": int(lengths.min()) if len(lengths) else None,
                "mean": float(lengths.mean()) if len(lengths) else None,
                "max": int(lengths.max()) if len(lengths) else None,
            },
            "features": {
                k: {"dtype": f["dtype"], "shape": list(f["shape"]), "names": f.get("names")}
                for k, f in self.features.items()
            },
            "cameras": cameras,
            "tasks": per_task or {t: 0 for t in self.tasks},
            "success": success,
            "files": {
                "data": len([p for p in files if p.relative_to(self.root).parts[0] == "data"]),
                "video": len([p for p in files if p.suffix == ".mp4"]),
                "size_mb": sum(p.stat().st_size for p in files) / 1e6,
            },
        }


def open_dataset(root: Path) -> LeRobotReader:
    return LeRobotReader(root)

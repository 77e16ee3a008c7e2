"""LeRobotDataset v3.0 as plain data: paths, ``info.json``, features, Arrow schemas, statistics.

No lerobot import (it pins an older torch); the format was measured against lerobot 0.4.4 (see
``../shared/notes/lerobot_dataset.md``). A folder holds::

    meta/info.json                            fps, features, totals, path templates
    meta/stats.json                           per feature min/max/mean/std/count/q01..q99
    meta/tasks.parquet                        task_index, the task string as the pandas index
    meta/episodes/chunk-000/file-000.parquet  one row per episode (where its frames live)
    data/chunk-000/file-000.parquet           the frames of many episodes
    videos/<key>/chunk-000/file-000.mp4       many episodes concatenated per camera
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import KiwiError

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
CHUNKS_SIZE = 1000
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 200
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
# the five columns every dataset has, after its own features
DEFAULT_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
# LeRobot's SO-100/SO-101 follower: body joints in degrees, gripper 0..100
SO_JOINT_NAMES = (
    "shoulder_pan.pos",
    "shoulder_lift.pos",
    "elbow_flex.pos",
    "wrist_flex.pos",
    "wrist_roll.pos",
    "gripper.pos",
)
V21_CONVERT_HINT = (
    "convert it with lerobot's script (lerobot >= 0.4): "
    "python -m lerobot.datasets.v30.convert_dataset_v21_to_v30 --repo-id=<owner/name>"
)


class DatasetError(KiwiError):
    """A folder that is not a readable LeRobotDataset v3.0, or data that does not fit one."""


def chunk_file_path(template: str, chunk: int, file: int, **extra) -> str:
    return template.format(chunk_index=chunk, file_index=file, **extra)


def next_chunk_file(chunk: int, file: int, chunks_size: int = CHUNKS_SIZE) -> tuple[int, int]:
    file += 1
    return (chunk + 1, 0) if file >= chunks_size else (chunk, file)


def load_info(root: Path) -> dict:
    """``meta/info.json``, checked to be v3.0 (a v2.1 folder gets the command that converts it)."""
    root = Path(root)
    path = root / INFO_PATH
    if not path.is_file():
        raise DatasetError(f"{root} is not a LeRobotDataset folder (no {INFO_PATH})")
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read {path}: {' '.join(str(e).split())}") from e
    version = info.get("codebase_version")
    if version != CODEBASE_VERSION:
        if isinstance(version, str) and version.startswith("v2"):
            raise DatasetError(
                f"{root} is a LeRobotDataset {version} folder (one file per episode); this "
                f"reads {CODEBASE_VERSION}: {V21_CONVERT_HINT}"
            )
        raise DatasetError(
            f"{root}: codebase_version {version!r} is not supported (only {CODEBASE_VERSION})"
        )
    missing = [k for k in ("fps", "features", "total_episodes", "data_path") if k not in info]
    if missing:
        raise DatasetError(f"{path} lacks {missing}")
    return info


def video_keys(features: dict) -> list[str]:
    return [k for k, f in features.items() if f["dtype"] == "video"]


def image_keys(features: dict) -> list[str]:
    return [k for k, f in features.items() if f["dtype"] == "image"]


def camera_keys(features: dict) -> list[str]:
    return [k for k, f in features.items() if f["dtype"] in ("video", "image")]


def _is_scalar(feature: dict) -> bool:
    return list(feature["shape"]) == [1]


def arrow_type(feature: dict) -> pa.DataType:
    """The data parquet's column type: shape (1,) is a plain value, (n,) a fixed-size list,
    an image a ``struct<bytes: PNG, path>``."""
    dtype = feature["dtype"]
    if dtype == "image":
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    if dtype == "string":
        return pa.string()
    value = pa.from_numpy_dtype(np.dtype(dtype))
    shape = list(feature["shape"])
    if shape == [1]:
        return value
    if len(shape) == 1:
        return pa.list_(value, shape[0])
    raise DatasetError(f"features of shape {shape} are not supported (only (1,) and (n,))")


def _hf_feature(feature: dict) -> dict:
    if feature["dtype"] == "image":
        return {"_type": "Image"}
    value = {"dtype": feature["dtype"], "_type": "Value"}
    if _is_scalar(feature) or feature["dtype"] == "string":
        return value
    return {"feature": value, "length": int(feature["shape"][0]), "_type": "List"}


def data_schema(features: dict) -> pa.Schema:
    """Columns of the data parquet in feature order (video features live in mp4 files), with
    the ``huggingface`` metadata that Hugging Face ``datasets`` reads the feature types from."""
    stored = {k: f for k, f in features.items() if f["dtype"] != "video"}
    hf = {"info": {"features": {k: _hf_feature(f) for k, f in stored.items()}}}
    fields = [pa.field(k, arrow_type(f)) for k, f in stored.items()]
    return pa.schema(fields, metadata={b"huggingface": json.dumps(hf).encode()})


def column_to_numpy(column: pa.ChunkedArray | pa.Array, feature: dict) -> np.ndarray:
    """A data column as ``[T]`` (shape (1,) features) or ``[T, n]``."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_fixed_size_list(column.type):
        n = column.type.list_size
        flat = column.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(len(column), n).astype(feature["dtype"], copy=False)
    if feature["dtype"] == "string":
        return np.asarray(column.to_pylist(), dtype=object)
    array = column.to_numpy(zero_copy_only=False)
    if len(feature["shape"]) == 1 and feature["shape"][0] == 1:
        return array.astype(feature["dtype"], copy=False)
    return np.stack(array).astype(feature["dtype"], copy=False)  # a variable-size list column


def video_feature(height: int, width: int, fps: int, codec: str) -> dict:
    return {
        "dtype": "video",
        "shape": [height, width, 3],
        "names": ["height", "width", "channels"],
        "info": {
            "video.height": height,
            "video.width": width,
            "video.codec": codec,
            "video.pix_fmt": "yuv420p",
            "video.is_depth_map": False,
            "video.fps": fps,
            "video.channels": 3,
            "has_audio": False,
        },
    }


def image_feature(height: int, width: int) -> dict:
    return {"dtype": "image", "shape": [height, width, 3], "names": ["height", "width", "channels"]}


def tasks_table(tasks: list[str]) -> pa.Table:
    """Task strings as the pandas index (``__index_level_0__``), as lerobot reads them."""
    pandas_meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": None,
                "field_name": "__index_level_0__",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "attributes": {},
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    schema = pa.schema(
        [("task_index", pa.int64()), ("__index_level_0__", pa.large_string())],
        metadata={b"pandas": json.dumps(pandas_meta).encode()},
    )
    return pa.table({"task_index": list(range(len(tasks))), "__index_level_0__": tasks}, schema)


# ---- statistics -------------------------------------------------------------------------------


def feature_stats(values: np.ndarray, is_image: bool) -> dict[str, np.ndarray]:
    """min/max/mean/std/count/q01..q99 of one episode's values: vectors per dimension (``[T, D]``
    -> ``(D,)``), images per channel scaled to [0, 1] (``[T, H, W, 3]`` uint8 -> ``(3, 1, 1)``),
    booleans kept as booleans for min and max (as lerobot writes them)."""
    values = np.asarray(values)
    count = np.array([len(values)], dtype=np.int64)
    if is_image:
        x = values.reshape(-1, values.shape[-1]).astype(np.float64) / 255.0
        shape = (x.shape[1], 1, 1)
    else:
        x = values.reshape(len(values), -1)
        shape = (x.shape[1],)
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            # a column that is NaN where it does not apply (the gate's P at decision frames
            # only): statistics of the rows that hold values; count 0 and NaN when none does
            x = x[np.isfinite(x).all(axis=1)]
            count = np.array([len(x)], dtype=np.int64)
            if not len(x):
                nan = np.full(shape, np.nan)
                return {"min": nan, "max": nan, "mean": nan, "std": nan, "count": count} | {
                    q: nan for q in QUANTILES
                }
    stats = {
        "min": x.min(axis=0).reshape(shape),
        "max": x.max(axis=0).reshape(shape),
    }
    xf = x.astype(np.float64)
    stats["mean"] = xf.mean(axis=0).reshape(shape)
    stats["std"] = xf.std(axis=0).reshape(shape)
    stats["count"] = count
    qs = np.quantile(xf, list(QUANTILES.values()), axis=0)
    for i, name in enumerate(QUANTILES):
        stats[name] = qs[i].reshape(shape)
    return stats


def aggregate_stats(episodes: list[dict[str, dict[str, np.ndarray]]]) -> dict:
    """Dataset statistics from per-episode ones: exact min, max, mean and std (pooled variance),
    count summed, quantiles averaged weighted by count (lerobot's approximation)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for key in episodes[0] if episodes else ():
        parts = [e[key] for e in episodes if key in e]
        parts = [p for p in parts if p["count"][0] > 0] or parts[:1]  # (see feature_stats)
        n = np.array([p["count"][0] for p in parts], dtype=np.float64)
        with np.errstate(invalid="ignore"):  # no values anywhere: NaN, count 0
            w = (n / n.sum()).reshape((-1,) + (1,) * np.ndim(parts[0]["mean"]))
        means = np.stack([p["mean"] for p in parts])
        mean = (w * means).sum(axis=0)
        var = (w * (np.stack([p["std"] for p in parts]) ** 2 + (means - mean) ** 2)).sum(axis=0)
        agg = {
            "min": np.min(np.stack([p["min"] for p in parts]), axis=0),
            "max": np.max(np.stack([p["max"] for p in parts]), axis=0),
            "mean": mean,
            "std": np.sqrt(var),
            "count": np.array([int(n.sum())], dtype=np.int64),
        }
        for q in QUANTILES:
            agg[q] = (w * np.stack([p[q] for p in parts])).sum(axis=0)
        out[key] = agg
    return out


def stats_to_json(stats: dict) -> dict:
    return {k: {s: np.asarray(v).tolist() for s, v in d.items()} for k, d in stats.items()}


def stats_from_json(data: dict) -> dict:
    return {k: {s: np.asarray(v) for s, v in d.items()} for k, d in data.items()}

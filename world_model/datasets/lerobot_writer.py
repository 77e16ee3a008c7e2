"""Writes LeRobotDataset v3.0 folders episode by episode, each episode atomically.

Parquet and mp4 files cannot be appended in place, so adding an episode rewrites the file it goes
into (existing row groups / packets copied, nothing re-encoded) to a temporary name and renames it
over the old one. The order makes a crash lose at most the episode being written:

1. each camera's mp4 (the episode appended to the current file, or a new file past the size limit);
2. the data parquet (one row group per episode);
3. ``meta/tasks.parquet`` (when the task is new), the episodes parquet, ``meta/stats.json``;
4. ``meta/info.json`` last: its ``total_episodes``/``total_frames`` are the commit.

Readers trust ``info.json`` and the episodes metadata, so frames or video a crash left after the
last committed episode are never seen; ``LeRobotWriter.resume`` cuts them off before appending.
Rewriting costs O(size of the current file) per episode, bounded by the rotation limits
(``data_files_size_in_mb``, ``video_files_size_in_mb``, and for mp4 files also
``video_file_max_frames``: copying packets is per packet, not per byte).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..atomic import TEMP_SUFFIX, atomic_path, atomic_write_text, remove_stale_temp_files
from .lerobot_format import (
    CHUNKS_SIZE,
    CODEBASE_VERSION,
    DATA_FILES_SIZE_IN_MB,
    DATA_PATH,
    DEFAULT_FEATURES,
    EPISODES_PATH,
    INFO_PATH,
    STATS_PATH,
    TASKS_PATH,
    VIDEO_FILES_SIZE_IN_MB,
    VIDEO_PATH,
    DatasetError,
    aggregate_stats,
    arrow_type,
    data_schema,
    feature_stats,
    next_chunk_file,
    stats_to_json,
    tasks_table,
    video_feature,
    video_keys,
)
from .lerobot_video import (
    append_video,
    available_encoder,
    encode_video,
    truncate_video,
    video_duration_s,
)

_MB = 1024 * 1024
VIDEO_FILE_MAX_FRAMES = 10_000


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_parquet(path: Path, tables: list[pa.Table], schema: pa.Schema) -> None:
    """``tables`` as one row group each, written to a temporary file and renamed over ``path``."""
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            for table in tables:
                writer.write_table(table.cast(schema))
        _fsync(tmp)


def _row_groups(path: Path) -> list[pa.Table]:
    if not path.exists():
        return []
    pf = pq.ParquetFile(path)
    return [pf.read_row_group(i) for i in range(pf.num_row_groups)]


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _cut_video(path: Path, end_s: float) -> None:
    if video_duration_s(path) > end_s + 1e-4:
        truncate_video(path, end_s)


@dataclass
class PreparedEpisode:
    """An episode ready for ``LeRobotWriter.add_prepared``: its stored columns, the statistics of
    its own features and each camera already encoded into an mp4 of its own. Preparing is the
    costly part (encoding, image statistics) and needs no writer: a collection worker does it,
    and the one writer only appends."""

    length: int
    columns: dict[str, np.ndarray]  # the features stored in the data parquet, [T, ...]
    stats: dict[str, dict[str, np.ndarray]]  # per own feature (strings have none)
    # per video key: an mp4 of this episode alone
    videos: dict[str, Path] = dataclasses.field(default_factory=dict)


def check_frames(features: dict, frames: dict[str, np.ndarray]) -> int:
    """The episode's length; DatasetError when ``frames`` do not fit ``features``."""
    own = [k for k in features if k not in DEFAULT_FEATURES]
    missing = [k for k in own if k not in frames]
    extra = sorted(set(frames) - set(own))
    if missing or extra:
        raise DatasetError(f"episode: missing features {missing}, unknown {extra}")
    lengths = {k: len(frames[k]) for k in own}
    length = next(iter(lengths.values()), 0)
    if length == 0 or any(n != length for n in lengths.values()):
        raise DatasetError(f"episode: features of unequal or zero length: {lengths}")
    for k in own:
        f, shape = features[k], np.shape(frames[k])[1:]
        want = tuple(f["shape"])
        if f["dtype"] == "string" or shape == want or (want == (1,) and shape == ()):
            continue
        raise DatasetError(f"episode: {k} has frames of shape {shape}, the feature {want}")
    return length


def prepare_episode(
    frames: dict[str, np.ndarray], features: dict, fps: int, encoder: str | None, tmp_dir: Path
) -> PreparedEpisode:
    """Checks ``frames`` (as ``add_episode`` takes them), computes their statistics and encodes
    each video feature into ``tmp_dir`` (files named like the atomic writer's temporary files,
    so a crash's leftovers in a dataset folder are cleaned on resume)."""
    length = check_frames(features, frames)
    own = {k: f for k, f in features.items() if k not in DEFAULT_FEATURES}
    stats = {
        k: feature_stats(np.asarray(frames[k]), f["dtype"] in ("image", "video"))
        for k, f in own.items()
        if f["dtype"] != "string"
    }
    videos: dict[str, Path] = {}
    try:
        for key, f in own.items():
            if f["dtype"] == "video":
                tmp = Path(tmp_dir) / f".{key}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}"
                videos[key] = tmp
                encode_video(np.asarray(frames[key]), tmp, fps, encoder)
    except BaseException:
        for path in videos.values():
            path.unlink(missing_ok=True)
        raise
    columns = {k: np.asarray(frames[k]) for k, f in own.items() if f["dtype"] != "video"}
    return PreparedEpisode(length, columns, stats, videos)


WRITER_LOCK = ".kiwi-writer.lock"


def writer_lock(root: Path):
    """An exclusive lock on ``root`` for one writer (an flock on ``root/.kiwi-writer.lock``, held
    while the returned file is open: released by ``close()`` or when the process ends, however
    it ends). A second writer, in this process or another, gets a DatasetError naming the pid
    that holds it: two writers appending to one folder would interleave their episodes."""
    import fcntl

    path = Path(root) / WRITER_LOCK
    handle = open(path, "a+")  # noqa: SIM115 (held open: the lock lives as long as the file)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise DatasetError(
            f"{root} is being written by another writer (pid {holder}); wait for it to finish, "
            "or write into another folder"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


class LeRobotWriter:
    """Appends episodes to a v3.0 folder. ``create`` starts one; ``resume`` continues one (after
    cutting off what a crash left beyond its last committed episode)."""

    def __init__(self, root: Path, info: dict, video_encoder: str | None = None):
        self.root = Path(root)
        self._lock = writer_lock(self.root)  # one writer per folder, for this object's life
        self.info = info
        self.features: dict = info["features"]
        self.fps = int(info["fps"])
        self.video_keys = video_keys(self.features)
        self.encoder = None
        if self.video_keys:
            codecs = {self.features[k]["info"]["video.codec"] for k in self.video_keys}
            self.encoder = available_encoder(video_encoder or codecs.pop())[0]
        # appending an episode to an mp4 copies the packets already there (~15 us each in
        # PyAV): files also roll over past this many frames, so the copy stays under ~0.2 s
        self.video_file_max_frames = VIDEO_FILE_MAX_FRAMES
        self.tasks: list[str] = []
        self.episodes: list[dict] = []  # the episodes parquet's rows (without stats)
        self.episode_stats: list[dict] = []
        self._episodes_schema: pa.Schema | None = None

    @classmethod
    def create(
        cls,
        root: Path,
        fps: int,
        features: dict,
        robot_type: str | None = None,
        data_files_size_in_mb: float = DATA_FILES_SIZE_IN_MB,
        video_files_size_in_mb: float = VIDEO_FILES_SIZE_IN_MB,
        video_encoder: str | None = None,
        video_file_max_frames: int = VIDEO_FILE_MAX_FRAMES,
    ) -> LeRobotWriter:
        """A new dataset in ``root`` (absent or empty). ``features`` as in ``info.json`` without
        the five index columns; a ``video`` feature's ``info`` is filled in (codec chosen here:
        AV1 if this PyAV build encodes it)."""
        root = Path(root)
        if (root / INFO_PATH).exists() or (root.is_dir() and any(root.iterdir())):
            raise DatasetError(f"{root} is not empty; write a new dataset into a new folder")
        features = {k: dict(v) for k, v in features.items()}
        clash = sorted(set(features) & set(DEFAULT_FEATURES))
        if clash:
            raise DatasetError(f"features {clash} are added by the writer; leave them out")
        if any(f["dtype"] == "video" for f in features.values()):
            codec = available_encoder(video_encoder)[1]
            for k, f in features.items():
                if f["dtype"] == "video":
                    h, w = f["shape"][:2]
                    features[k] = video_feature(int(h), int(w), int(fps), codec)
        for f in features.values():
            f["shape"] = list(f["shape"])
            f.setdefault("names", None)
            if f["dtype"] != "video":
                arrow_type(f)  # refuses shapes the format cannot hold
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": robot_type,
            "total_episodes": 0,
            "total_frames": 0,
            "total_tasks": 0,
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": data_files_size_in_mb,
            "video_files_size_in_mb": video_files_size_in_mb,
            "fps": int(fps),
            "splits": {},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH
            if any(f["dtype"] == "video" for f in features.values())
            else None,
            "features": {**features, **DEFAULT_FEATURES},
        }
        root.mkdir(parents=True, exist_ok=True)
        writer = cls(root, info, video_encoder)
        writer.video_file_max_frames = video_file_max_frames
        return writer

    @classmethod
    def resume(cls, root: Path, video_encoder: str | None = None) -> LeRobotWriter:
        from .lerobot_reader import LeRobotReader

        root = Path(root)
        for folder in {p.parent for p in root.rglob(f"*{TEMP_SUFFIX}")}:
            remove_stale_temp_files(folder)
        with LeRobotReader(root) as reader:
            writer = cls(root, dict(reader.info), video_encoder)
            writer.tasks = list(reader.tasks)
            writer.episodes = [dict(row) for row in reader.episode_rows]
            writer.episode_stats = [reader.episode_stats(i) for i in range(reader.num_episodes)]
        writer._cut_uncommitted()
        return writer

    def close(self) -> None:
        """Lets another writer open the folder (the process ending does the same)."""
        if not self._lock.closed:
            self._lock.close()

    def __enter__(self) -> LeRobotWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- one episode ----------------------------------------------------------------------

    def add_episode(self, frames: dict[str, np.ndarray], task: str) -> int:
        """Appends one episode: ``frames`` maps every feature to ``[T, ...]`` (``[T]`` or
        ``[T, 1]`` for shape-(1,) features; cameras ``[T, H, W, 3]`` uint8 RGB). Returns its
        index; on return it is committed."""
        tmp_dir = self.root / "videos"
        if self.video_keys:
            tmp_dir.mkdir(parents=True, exist_ok=True)
        prepared = prepare_episode(frames, self.features, self.fps, self.encoder, tmp_dir)
        return self.add_prepared(prepared, task)

    def add_prepared(self, episode: PreparedEpisode, task: str) -> int:
        """Appends an episode ``prepare_episode`` made (for this dataset's features, fps and
        encoder); its mp4 files are consumed. Returns its index; on return it is committed."""
        try:
            return self._add_prepared(episode, task)
        finally:
            for path in episode.videos.values():
                Path(path).unlink(missing_ok=True)

    def _add_prepared(self, episode: PreparedEpisode, task: str) -> int:
        own = [k for k in self.features if k not in DEFAULT_FEATURES]
        missing = [k for k in own if k not in episode.columns and k not in episode.videos]
        if missing or set(episode.videos) != set(self.video_keys):
            raise DatasetError(f"prepared episode: missing {missing or sorted(self.video_keys)}")
        length = episode.length
        index = len(self.episodes)
        start = int(self.info["total_frames"])
        if task not in self.tasks:
            self.tasks.append(task)
        task_index = self.tasks.index(task)
        columns = dict(episode.columns)
        columns["timestamp"] = (np.arange(length) / self.fps).astype(np.float32)
        columns["frame_index"] = np.arange(length, dtype=np.int64)
        columns["episode_index"] = np.full(length, index, dtype=np.int64)
        columns["index"] = np.arange(start, start + length, dtype=np.int64)
        columns["task_index"] = np.full(length, task_index, dtype=np.int64)
        stats = {k: episode.stats[k] for k in own if k in episode.stats}
        stats.update({k: feature_stats(columns[k], False) for k in DEFAULT_FEATURES})
        row: dict = {"episode_index": index, "tasks": [task], "length": length}
        row.update(self._write_data(columns, length))
        row["dataset_from_index"], row["dataset_to_index"] = start, start + length
        for key in self.video_keys:
            row.update(self._write_video(key, episode.videos[key], length))
        if len(self.tasks) > int(self.info["total_tasks"]):
            _write_parquet(
                self.root / TASKS_PATH, [tasks_table(self.tasks)], tasks_table(self.tasks).schema
            )
        self.episodes.append(row)
        self.episode_stats.append(stats)
        self._write_episodes()
        atomic_write_text(
            self.root / STATS_PATH,
            json.dumps(stats_to_json(aggregate_stats(self.episode_stats)), indent=4),
        )
        self.info.update(
            total_episodes=index + 1,
            total_frames=start + length,
            total_tasks=len(self.tasks),
            splits={"train": f"0:{index + 1}"},
        )
        atomic_write_text(self.root / INFO_PATH, json.dumps(self.info, indent=4))
        return index

    def _write_data(self, columns: dict[str, np.ndarray], length: int) -> dict:
        schema = data_schema(self.features)
        arrays = []
        for field in schema:
            f, values = self.features[field.name], columns[field.name]
            if f["dtype"] == "image":
                pngs = [_png(img) for img in values]
                names = [f"frame-{i:06d}.png" for i in range(length)]
                arrays.append(
                    pa.array([{"bytes": b, "path": p} for b, p in zip(pngs, names)], field.type)
                )
            elif pa.types.is_fixed_size_list(field.type):
                flat = pa.array(values.reshape(length, -1).reshape(-1).astype(f["dtype"]))
                arrays.append(pa.FixedSizeListArray.from_arrays(flat, field.type.list_size))
            else:
                arrays.append(
                    pa.array(
                        values.reshape(length).tolist()
                        if f["dtype"] == "string"
                        else values.reshape(length),
                        field.type,
                    )
                )
        table = pa.Table.from_arrays(arrays, schema=schema)
        chunk, file = self._current("data")
        path = self.root / DATA_PATH.format(chunk_index=chunk, file_index=file)
        limit = float(self.info["data_files_size_in_mb"]) * _MB
        if path.exists() and path.stat().st_size + table.nbytes >= limit:
            chunk, file = next_chunk_file(chunk, file, int(self.info["chunks_size"]))
            path = self.root / DATA_PATH.format(chunk_index=chunk, file_index=file)
        _write_parquet(path, _row_groups(path) + [table], schema)
        return {"data/chunk_index": chunk, "data/file_index": file}

    def _write_video(self, key: str, encoded: Path, length: int) -> dict:
        """Appends ``encoded`` (this episode's mp4, ``length`` frames) to the camera's file."""
        chunk, file = self._current(f"videos/{key}")
        from_s = 0.0
        if self.episodes and f"videos/{key}/to_timestamp" in self.episodes[-1]:
            from_s = float(self.episodes[-1][f"videos/{key}/to_timestamp"])
        target = self.root / VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)
        target.parent.mkdir(parents=True, exist_ok=True)
        limit = float(self.info["video_files_size_in_mb"]) * _MB
        too_long = round(from_s * self.fps) + length > self.video_file_max_frames
        if target.exists() and (
            too_long or target.stat().st_size + Path(encoded).stat().st_size >= limit
        ):
            chunk, file = next_chunk_file(chunk, file, int(self.info["chunks_size"]))
            target = self.root / VIDEO_PATH.format(
                video_key=key, chunk_index=chunk, file_index=file
            )
            target.parent.mkdir(parents=True, exist_ok=True)
            from_s = 0.0
        append_video(target, Path(encoded), from_s)
        return {
            f"videos/{key}/chunk_index": chunk,
            f"videos/{key}/file_index": file,
            f"videos/{key}/from_timestamp": from_s,
            f"videos/{key}/to_timestamp": from_s + length / self.fps,
        }

    def _current(self, prefix: str) -> tuple[int, int]:
        if not self.episodes:
            return 0, 0
        last = self.episodes[-1]
        return int(last[f"{prefix}/chunk_index"]), int(last[f"{prefix}/file_index"])

    def _episode_table(self, row: dict, stats: dict) -> pa.Table:
        """One row in lerobot's column order: the episode, its stats, then where the row is."""
        full = {k: v for k, v in row.items() if not k.startswith("meta/")}
        for key, s in stats.items():
            for name, value in s.items():
                full[f"stats/{key}/{name}"] = np.asarray(value).tolist()
        full.update({k: v for k, v in row.items() if k.startswith("meta/")})
        return pa.Table.from_pylist([full])

    def _write_episodes(self) -> None:
        """Rewrites the episodes file the newest episode belongs in (rotated like data files)."""
        row, stats = self.episodes[-1], self.episode_stats[-1]
        if len(self.episodes) > 1:
            prev = self.episodes[-2]
            chunk, file = prev["meta/episodes/chunk_index"], prev["meta/episodes/file_index"]
        else:
            chunk, file = 0, 0
        path = self.root / EPISODES_PATH.format(chunk_index=chunk, file_index=file)
        limit = float(self.info["data_files_size_in_mb"]) * _MB
        if path.exists() and path.stat().st_size >= limit:
            chunk, file = next_chunk_file(chunk, file, int(self.info["chunks_size"]))
            path = self.root / EPISODES_PATH.format(chunk_index=chunk, file_index=file)
        row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = chunk, file
        table = self._episode_table(row, stats)
        if path.exists():  # one row group: ~150 columns of metadata per group add up otherwise
            old = pq.read_table(path)
            if set(old.column_names) != set(table.column_names):
                raise DatasetError(
                    f"{path} has other columns than this episode's row would "
                    f"({sorted(set(old.column_names) ^ set(table.column_names))[:6]})"
                )
            table = pa.concat_tables([old, table.select(old.column_names).cast(old.schema)])
        _write_parquet(path, [table], table.schema)

    # ---- after a crash --------------------------------------------------------------------

    def _cut_uncommitted(self) -> None:
        """Removes what lies beyond the last committed episode: episode rows, data rows, video
        tails, and files that only hold those."""
        total = int(self.info["total_frames"])
        last = self.episodes[-1] if self.episodes else None
        self._cut_files("data", DATA_PATH, {}, last, lambda p: self._cut_rows(p, "index", total))
        self._cut_files(
            "meta/episodes",
            EPISODES_PATH,
            {},
            last,
            lambda p: self._cut_rows(p, "episode_index", len(self.episodes)),
        )
        for key in self.video_keys:
            end = float(last[f"videos/{key}/to_timestamp"]) if last else 0.0
            self._cut_files(
                f"videos/{key}",
                VIDEO_PATH,
                {"video_key": key},
                last,
                lambda p, end=end: _cut_video(p, end),
            )

    def _cut_files(self, prefix, template, extra, last, cut) -> None:
        keep = (
            (int(last[f"{prefix}/chunk_index"]), int(last[f"{prefix}/file_index"]))
            if last
            else None
        )
        pattern = template.format(chunk_index=0, file_index=0, **extra)
        folder = (self.root / pattern).parent.parent
        for path in sorted(folder.glob(f"chunk-*/file-*{Path(pattern).suffix}")):
            at = (int(path.parent.name[6:]), int(path.stem[5:]))
            if keep is None or at > keep:
                path.unlink()
            elif at == keep:
                cut(path)

    @staticmethod
    def _cut_rows(path: Path, column: str, end: int) -> None:
        groups = _row_groups(path)
        kept = [g.filter(pc.less(g[column], end)) for g in groups]
        kept = [g for g in kept if g.num_rows]
        if sum(g.num_rows for g in kept) != sum(g.num_rows for g in groups):
            _write_parquet(path, kept, groups[0].schema)

"""A world model on a LeRobotDataset v3.0 folder: which features it reads, which episodes it
never trains on, the action units from the dataset's stats, the decoded-frame cache, training.

Any dataset with a state vector, ``action`` and one or more cameras works: the keys come from
the job's ``data`` section (default ``observation.state`` plus every camera), never from code.
Held out: episode i when ``i % data.holdout_every == data.holdout_every - 1`` (episodes 9, 19,
29, ... at the default 10), a rule that keeps the split when a dataset grows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from world_model.config import ModelSpec
from world_model.datasets.frame_cache import FrameCache, load_or_build
from world_model.datasets.lerobot_format import INFO_PATH, DatasetError
from world_model.datasets.lerobot_reader import LeRobotReader

from .config import LeRobotJob


def is_lerobot_dataset(path: Path) -> bool:
    return (Path(path) / INFO_PATH).is_file()


def resolve_job(job: LeRobotJob, reader: LeRobotReader) -> LeRobotJob:
    """The job with its keys checked against the dataset and ``data.cameras`` (hence
    ``model.cnn_keys``) filled in when it says "every camera"."""
    features = reader.features
    root = reader.root
    missing = [k for k in (*job.data.vector_keys, "action") if k not in features]
    if missing:
        vectors = [k for k, f in features.items() if f["dtype"] in ("float32", "float64")]
        raise DatasetError(
            f"{root} has no {', '.join(missing)} (its vector features: {vectors}); set "
            "data.vector_keys to the state it records, e.g. --set "
            "'data.vector_keys=[observation.state]'"
        )
    wrong = [
        k
        for k in (*job.data.vector_keys, "action")
        if features[k]["dtype"] not in ("float32", "float64") or len(features[k]["shape"]) != 1
    ]
    if wrong:
        raise DatasetError(f"{root}: {wrong} are not float vectors (dtype and shape [D])")
    cameras = list(job.data.cameras) if job.data.cameras is not None else reader.camera_keys
    if not cameras:
        raise DatasetError(
            f"{root} has no cameras (no video or image feature such as "
            "observation.images.front); this job learns from pixels: record a camera"
        )
    unknown = [k for k in cameras if k not in reader.camera_keys]
    if unknown:
        raise DatasetError(
            f"{root}: data.cameras {unknown} are not its cameras {reader.camera_keys}"
        )
    raw = job.model_dump(mode="json")
    raw["data"]["cameras"] = cameras
    raw["model"]["cnn_keys"] = cameras
    return LeRobotJob.model_validate(raw)


def split_episodes(num_episodes: int, job: LeRobotJob) -> tuple[list[int], list[int]]:
    """(training, held-out) episode indices by the module docstring's rule."""
    n = min(num_episodes, job.data.max_episodes or num_episodes)
    every = job.data.holdout_every
    held = [i for i in range(n) if i % every == every - 1]
    train = [i for i in range(n) if i % every != every - 1]
    return train, held


def action_bounds(reader: LeRobotReader, key: str = "action") -> tuple[list[float], list[float]]:
    """The dataset's action range (stats.json's min and max); a constant column gets +-1 so the
    model's [-1, 1] scaling never divides by zero."""
    stats = reader.stats.get(key, {})
    if "min" not in stats or "max" not in stats:
        raise DatasetError(f"{reader.root}: meta/stats.json has no min/max of {key}")
    low = np.asarray(stats["min"], np.float64).reshape(-1)
    high = np.asarray(stats["max"], np.float64).reshape(-1)
    flat = high - low < 1e-6
    low, high = np.where(flat, low - 1.0, low), np.where(flat, high + 1.0, high)
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise DatasetError(f"{reader.root}: meta/stats.json's {key} min/max are not finite")
    return [float(x) for x in low], [float(x) for x in high]


def spec_from_dataset(reader: LeRobotReader, job: LeRobotJob) -> ModelSpec:
    features = reader.features
    low, high = action_bounds(reader)
    action_dim = int(features["action"]["shape"][0])
    if len(low) != action_dim:
        raise DatasetError(
            f"{reader.root}: stats of action have {len(low)} entries, not {action_dim}"
        )
    return ModelSpec(
        vector_dims={k: int(features[k]["shape"][0]) for k in job.data.vector_keys},
        image_keys=tuple(job.data.cameras or ()),
        action_dim=action_dim,
        action_low=tuple(low),
        action_high=tuple(high),
    )


def check_spec(spec: ModelSpec, reader: LeRobotReader) -> None:
    """A checkpoint's model reads this dataset: its keys exist with the same sizes."""
    features = reader.features
    for key, dim in {**spec.vector_dims, "action": spec.action_dim}.items():
        if key not in features:
            raise DatasetError(f"{reader.root} has no {key}, which the model reads")
        if int(features[key]["shape"][0]) != dim:
            raise DatasetError(
                f"{reader.root}: {key} has {features[key]['shape'][0]} entries, the model {dim}"
            )
    absent = [k for k in spec.image_keys if k not in reader.camera_keys]
    if absent:
        raise DatasetError(
            f"{reader.root} has no cameras {absent}, which the model reads (it has "
            f"{reader.camera_keys})"
        )


def cached_episodes(
    reader: LeRobotReader,
    job: LeRobotJob,
    indices: list[int],
    cache_root: Path,
    progress: bool,
    log: Callable[[str], None],
) -> FrameCache:
    cache = load_or_build(
        reader,
        indices,
        list(job.data.vector_keys),
        list(job.data.cameras or ()),
        cache_root,
        job.model.image_size,
        progress,
        log,
    )
    if cache.built_s is None:
        log(f"frames: reusing the decoded cache {cache.folder} ({cache.frames} frames)")
    else:
        rate = cache.frames * max(len(job.data.cameras or ()), 1) / max(cache.built_s, 1e-9)
        log(
            f"frames: decoded {cache.frames} frames of {len(indices)} episodes into "
            f"{cache.folder} in {cache.built_s:.0f} s ({rate:.0f} camera frames/s)"
        )
    return cache


def dataset_meta(reader: LeRobotReader, job: LeRobotJob, train: list[int], held: list[int]) -> dict:
    """What a checkpoint records about the data it learned from."""
    return {
        "root": str(reader.root.resolve()),
        "robot_type": reader.robot_type,
        "fps": reader.fps,
        "train_episodes": len(train),
        "holdout_episodes": len(held),
        "holdout_rule": f"episode_index % {job.data.holdout_every} == {job.data.holdout_every - 1}",
    }


def train_on_dataset(
    job: LeRobotJob,
    data: Path,
    out: Path,
    steps: int,
    resume: bool,
    progress: bool = True,
    log: Callable[[str], None] = print,
    options: dict | None = None,
) -> dict:
    """Trains (or resumes) the job's world model on the training episodes of ``data`` into
    ``out`` (checkpoint, metrics.jsonl, config.yaml; decoded frames under ``out/cache``).
    ``options``: the trainer's device, autocast dtype and compile flag (default: the CPU,
    float32, eager). Returns what it did: steps, episodes, frames, the held-out rule, wall
    time."""
    import time

    from world_model.model import WorldModel
    from world_model.replay import Replay
    from world_model.train import CHECKPOINT, WorldModelTrainer, train_world_model

    from .config import dump_config

    out = Path(out)
    ckpt = out / CHECKPOINT
    with LeRobotReader(data) as reader:
        job = resolve_job(job, reader)
        train, held = split_episodes(reader.num_episodes, job)
        if not train:
            raise DatasetError(
                f"{data} has {reader.num_episodes} episode(s): none left to train on after "
                f"holding out every {job.data.holdout_every}th"
            )
        if resume:
            wm, meta, groups = WorldModel.load(ckpt)
            check_spec(wm.spec, reader)
            if wm.obs_keys != tuple(job.data.vector_keys) + tuple(job.data.cameras or ()):
                raise DatasetError(f"{ckpt} reads {list(wm.obs_keys)}, the config names other keys")
        else:
            wm = WorldModel(job.model, spec_from_dataset(reader, job))
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump_config(job))
        cache = cached_episodes(reader, job, train, out / "cache", progress, log)
        about = dataset_meta(reader, job, train, held)
    replay = Replay()
    for episode in cache.episodes:
        replay.add(episode, save=False)
    trainer = WorldModelTrainer(wm, job.train, **(options or {}))
    if resume:
        trainer.restore(groups, meta)
        log(f"resuming from {ckpt} at step {trainer.step}")
    else:
        ckpt.unlink(missing_ok=True)  # --overwrite: the folder never mixes two runs
    log(
        f"training on {len(replay)} frames of {replay.num_episodes} episodes "
        f"({about['holdout_episodes']} held out: {about['holdout_rule']}); reads "
        f"{list(wm.obs_keys)}; {steps} updates -> {ckpt}"
    )
    t0 = time.perf_counter()
    train_world_model(
        wm,
        replay,
        job.train,
        out,
        steps,
        job.model_dump(mode="json"),
        trainer,
        progress,
        log,
        meta={"dataset": {**about, "fingerprint": cache.fingerprint}},
    )
    return {
        **about,
        "steps": trainer.step,
        "frames": len(replay),
        "wall_s": time.perf_counter() - t0,
    }

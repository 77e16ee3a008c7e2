"""The lab on any LeRobot dataset (`kiwi eval world-model`): on held-out episodes, the
posterior's reconstructions beside the cameras and joints, the prior dreaming forward with the
recorded actions against reality, and the open-loop error against horizon beside persistence.

The figures are computed by world_model/evaluate.py, the same code as the Pendulum lab's
(robot_runtime/lab.py); the image strips are world_model/pixel_plots.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from world_model import evaluate as ev
from world_model import pixel_plots
from world_model.datasets.lerobot_format import DatasetError
from world_model.datasets.lerobot_reader import LeRobotReader
from world_model.model import WorldModel
from world_model.rssm import index_state

from .config import DatasetLabConfig, LeRobotJob
from .dataset_world_model import cached_episodes, check_spec
from .jsonout import write_json

OUTPUTS = ("recon.png", "imagination.png", "horizon.png", "report.json")


def job_of(meta: dict, checkpoint: Path, overrides: Sequence[str] = ()) -> LeRobotJob:
    """The job a checkpoint was trained with, with ``overrides`` (``gate.horizon=5``) laid
    over it."""
    from .config import deep_merge, parse_override

    raw = meta.get("job_config") or {}
    if raw.get("task") != "lerobot":
        raise DatasetError(
            f"{checkpoint} was not trained on a LeRobot dataset (its job is "
            f"{raw.get('task', 'unknown')!r}); `kiwi lab pendulum` evaluates the Pendulum model"
        )
    job = LeRobotJob.model_validate(raw)
    if not overrides:
        return job
    # laid over the validated job, not over the stored mapping: a section the checkpoint's job
    # predates (``gate``) keeps the job's defaults for it, not the section class's own
    full = job.model_dump(mode="json")
    for text in overrides:
        full = deep_merge(full, parse_override(text))
    return LeRobotJob.model_validate(full)


def evaluate_dataset(
    checkpoint: Path,
    data: Path,
    out: Path,
    episodes: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Writes OUTPUTS into ``out`` and returns the report."""
    wm, meta, _ = WorldModel.load(checkpoint)
    wm.eval()
    job = job_of(meta, checkpoint)
    lab = job.lab.model_copy(update={"episodes": episodes}) if episodes else job.lab
    with LeRobotReader(data) as reader:
        check_spec(wm.spec, reader)
        # every held-out episode of the rule counts, also past the data.max_episodes trained on
        every = job.data.holdout_every
        held = [i for i in range(reader.num_episodes) if i % every == every - 1][: lab.episodes]
        if not held:
            raise DatasetError(
                f"{data} has {reader.num_episodes} episode(s) and none is held out "
                f"(episode_index % {job.data.holdout_every} == {job.data.holdout_every - 1})"
            )
        names = _joint_names(reader, wm)
        cache = cached_episodes(reader, job, held, Path(out) / "cache", progress, log)
    window = lab.context + lab.horizon
    long_enough = [i for i, e in enumerate(cache.episodes) if len(e["action"]) >= window]
    if not long_enough:
        raise DatasetError(
            f"no held-out episode has {window} frames (lab.context + lab.horizon); the longest "
            f"has {max(len(e['action']) for e in cache.episodes)}"
        )
    usable = [cache.episodes[i] for i in long_enough]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    key = wm.config.mlp_keys[0]
    cams = tuple(wm.config.cnn_keys)
    log(
        f"open-loop error on {len(usable)} held-out episodes "
        f"{[cache.indices[i] for i in long_enough]}"
    )
    curves = ev.open_loop_nmse(
        wm,
        usable,
        key,
        lab.context,
        lab.horizon,
        lab.samples,
        seed=job.train.seed,
        batch=8,
        image_keys=cams,
        progress=progress,
    )
    episode, episode_index = usable[0], cache.indices[long_enough[0]]
    _plot_recon(wm, episode, key, cams, names, lab, out / "recon.png", episode_index)
    var = np.concatenate([e[key] for e in usable]).var(0) + 1e-8
    start, diverge = _plot_dream(wm, episode, key, cams, names, lab, var, out, episode_index)
    marks = lab.report_horizons
    pixel_plots.plot_pixel_horizon(
        (curves["model"], curves["persistence"]),
        {c: (curves["images"][c]["model"], curves["images"][c]["persistence"]) for c in cams},
        marks,
        key,
        out / "horizon.png",
        f"open-loop error after {lab.context} frames of context "
        f"({curves['windows']} windows of {len(usable)} held-out episodes)",
    )
    pick = lambda c: {str(h): float(c[h - 1]) for h in marks if h <= lab.horizon}  # noqa: E731
    report = {
        "state_key": key,
        "nmse_open_loop": pick(curves["model"]),
        "nmse_persistence": pick(curves["persistence"]),
        "image_mse_open_loop": {c: pick(curves["images"][c]["model"]) for c in cams},
        "image_mse_persistence": {c: pick(curves["images"][c]["persistence"]) for c in cams},
        "nmse_open_loop_curve": [float(x) for x in curves["model"]],
        "nmse_persistence_curve": [float(x) for x in curves["persistence"]],
        "windows": curves["windows"],
        "context": lab.context,
        "horizon": lab.horizon,
        "samples": lab.samples,
        "holdout_episodes": [cache.indices[i] for i in long_enough],
        "holdout_rule": f"episode_index % {job.data.holdout_every} == {job.data.holdout_every - 1}",
        "imagination": {
            "episode": episode_index,
            "start_frame": start,
            "diverges_at_step": None if diverge is None else diverge + 1,
        },
        "checkpoint": str(checkpoint),
        "checkpoint_step": meta.get("step"),
        "dataset": str(data),
    }
    write_json(out / "report.json", report, indent=2)
    return report


def _joint_names(reader: LeRobotReader, wm: WorldModel) -> list[str]:
    key = wm.config.mlp_keys[0]
    names = reader.features[key].get("names")
    dims = wm.spec.vector_dims[key]
    if isinstance(names, dict):  # lerobot's older {"motors": [...]} form
        names = next(iter(names.values()), None)
    if isinstance(names, list) and len(names) == dims:
        return [str(n) for n in names]
    return [f"{key}[{d}]" for d in range(dims)]


def _steps(first: int, last: int, count: int) -> list[int]:
    return sorted({int(round(x)) for x in np.linspace(first, last, count)})


@torch.no_grad()
def _plot_recon(wm, episode, key, cams, names, lab: DatasetLabConfig, path, index) -> None:
    keys = (*wm.obs_keys, "action")
    recon = ev.reconstruct(wm, {k: np.asarray(episode[k]) for k in keys})
    steps = _steps(0, len(episode["action"]) - 1, lab.strip_frames)
    pixel_plots.plot_pixel_reconstruction(
        {c: np.asarray(episode[c][steps]) for c in cams},
        {c: recon[c][steps] for c in cams},
        steps,
        np.asarray(episode[key]),
        recon[key],
        names,
        path,
        f"held-out episode {index}: camera frames and joints beside the posterior's "
        "reconstructions",
    )


@torch.no_grad()
def _plot_dream(wm, episode, key, cams, names, lab: DatasetLabConfig, var, out: Path, index):
    """The window where the recorded state moves most (the most telling dream); returns its
    start frame and the divergence step."""
    length = lab.context + lab.horizon
    state = np.asarray(episode[key])
    starts = range(0, len(state) - length + 1)
    motion = [float(state[s + lab.context : s + length].var(0).sum()) for s in starts]
    start = int(np.argmax(motion))
    keys = (*wm.obs_keys, "action")
    window = ev.tensors({k: np.asarray(episode[k][start : start + length])[None] for k in keys})
    samples = max(lab.samples, 4)
    post, imagined = ev.posterior_then_prior(
        wm, window, lab.context, lab.horizon, samples, torch.Generator().manual_seed(1)
    )
    decoded = wm.decode(imagined)
    belief = wm.decode(index_state(post, (slice(None), -1)))  # the start: the last posterior
    futures = decoded[key].numpy()  # [samples, H, D]
    diverge = ev.divergence_step(state[start + lab.context : start + length], futures.mean(0), var)
    steps = [lab.context - 1] + _steps(lab.context, length - 1, lab.strip_frames - 1)
    dream = {}
    for c in cams:
        frames = decoded[c][0].numpy()  # sample 0: one dream, not a blur of several
        start_frame = belief[c][0].numpy()
        dream[c] = np.stack(
            [start_frame if s < lab.context else frames[s - lab.context] for s in steps]
        )
    pixel_plots.plot_pixel_imagination(
        {c: np.asarray(episode[c][start : start + length])[steps] for c in cams},
        dream,
        steps,
        state[start : start + length],
        futures,
        lab.context,
        names,
        out / "imagination.png",
        f"held-out episode {index} from frame {start}: the prior with the recorded actions",
        diverge,
    )
    return start, diverge

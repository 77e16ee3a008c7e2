""" "Will this grasp succeed?" learned and scored on a LeRobot dataset with ``next.success``.

The decision is the frame where the commanded gripper starts to close (the action's gripper
column first falls ``CLOSE_DROP`` below the most open command so far); the belief there comes
from the episode's frames (cameras and joints, every ``gate.obs_every`` frames); the prior then
rolls the recorded actions from the decision for ``gate.horizon`` frames, K times, and the
success head (robot_runtime/grasp_training.py's, unchanged) learns the episode's outcome, the
last frame's ``next.success``, from the states reached. The no-rollout head learns it from the
belief alone. Both are calibrated (temperature and bias) on the last ``gate.holdout_fraction``
of the training episodes; the dataset's held-out episodes (the world model's rule) are never
used, so `kiwi eval grasp --data` can score them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from world_model.datasets.lerobot_format import DatasetError
from world_model.datasets.lerobot_reader import LeRobotReader
from world_model.grasp import Calibration, SuccessHead, fit_platt, reliability
from world_model.model import WorldModel

from .config import LeRobotJob
from .dataset_lab import job_of
from .dataset_world_model import cached_episodes, check_spec
from .grasp_training import (
    GRASP_MODEL,
    build_decisions,
    fit_heads,
    heads_report,
    mean_logits,
    save_grasp_model,
)

CLOSE_DROP = 5.0  # gripper units (LeRobot's 0..100): a smaller dip is not a close
SUCCESS = "next.success"


def gripper_column(reader: LeRobotReader) -> int:
    """The action's gripper entry: the one named ``gripper*``, else the last."""
    names = reader.features["action"].get("names")
    if isinstance(names, dict):
        names = next(iter(names.values()), None)
    if isinstance(names, list):
        for i, name in enumerate(names):
            if str(name).startswith("gripper"):
                return i
    return int(reader.features["action"]["shape"][0]) - 1


def close_frame(action: np.ndarray, column: int, drop: float = CLOSE_DROP) -> int | None:
    """The first frame whose gripper command is ``drop`` below the most open one so far."""
    grip = np.asarray(action)[:, column]
    closing = np.nonzero(np.maximum.accumulate(grip) - grip > drop)[0]
    return int(closing[0]) if len(closing) else None


def labelled_episodes(
    reader: LeRobotReader,
    job: LeRobotJob,
    indices: list[int],
    cache_root: Path,
    progress: bool,
    log: Callable[[str], None],
) -> tuple[list[dict[str, np.ndarray]], list[int]]:
    if SUCCESS not in reader.features:
        raise DatasetError(
            f"{reader.root} has no {SUCCESS} labels: a success head learns from labelled "
            "episodes (e.g. `kiwi collect --env grasp --format lerobot`)"
        )
    cache = cached_episodes(reader, job, indices, cache_root, progress, log)
    return cache.episodes, cache.indices


def decidable(episodes: list[dict[str, np.ndarray]], column: int, horizon: int) -> list[int]:
    """Positions of the episodes with a close and ``horizon`` frames after it."""
    keep = []
    for i, ep in enumerate(episodes):
        j = close_frame(ep["action"], column)
        if j is not None and j + horizon <= len(ep["action"]):
            keep.append(i)
    return keep


def decisions(
    wm: WorldModel,
    episodes,
    column: int,
    job: LeRobotJob,
    seed: int,
    progress: bool,
    samples: int | None = None,
):
    g = job.gate
    return build_decisions(
        wm,
        episodes,
        g.horizon,
        samples or g.train_samples,
        g.obs_every,
        seed,
        batch=16,  # frames of two cameras up to the decision: 16 episodes at a time
        progress=progress,
        decide=lambda ep: close_frame(ep["action"], column),
        outcome=lambda ep: float(ep[SUCCESS][-1]),
    )


def train_grasp_on_dataset(
    init: Path,
    data: Path,
    out: Path,
    command: str,
    overrides: list[str] | tuple[str, ...] = (),
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Success heads on the world model in ``init`` (from `kiwi train world-model` on a LeRobot
    dataset), from the training episodes of ``data``; writes ``out/GRASP_MODEL``. The settings
    are the world model's job with ``overrides`` (``gate.epochs=20``) laid over it."""
    wm, meta, _ = WorldModel.load(init)
    wm.eval()
    job = job_of(meta, init, overrides)
    g = job.gate
    every = job.data.holdout_every
    with LeRobotReader(data) as reader:
        check_spec(wm.spec, reader)
        n = min(reader.num_episodes, job.data.max_episodes or reader.num_episodes)
        train_ids = [i for i in range(n) if i % every != every - 1]
        column = gripper_column(reader)
        episodes, _ = labelled_episodes(reader, job, train_ids, out / "cache", progress, log)
    n_cal = max(10, int(round(g.holdout_fraction * len(episodes))))
    if len(episodes) - n_cal < 10:
        raise DatasetError(
            f"{data}: {len(episodes)} training episodes; a success head needs hundreds"
        )
    fit_eps, cal_eps = episodes[:-n_cal], episodes[-n_cal:]
    log(
        f"{len(fit_eps)} episodes to fit the heads, {len(cal_eps)} to calibrate them; decision: "
        f"the gripper (action column {column}) starts to close; horizon {g.horizon}, "
        f"{g.train_samples} rollouts per decision"
    )
    fit = decisions(wm, fit_eps, column, job, 1, progress)
    cal = decisions(wm, cal_eps, column, job, 2, progress)
    head, head_now, logits, logits_now, labels = fit_heads(fit, cal, g.epochs, log)
    calib, calib_now = fit_platt(logits, labels), fit_platt(logits_now, labels)
    report = {
        **heads_report(logits, logits_now, labels, calib, calib_now, len(fit.labels)),
        "calibrated_on": "recorded decisions of the last training episodes (in-sample figures)",
    }
    save_grasp_model(
        out / GRASP_MODEL,
        wm,
        {**meta, "job_config": job.model_dump(mode="json")},  # with the --set overrides
        g,
        calib,
        calib_now,
        report,
        command,
        head,
        head_now,
        decision=f"action column {column} falls {CLOSE_DROP} below its most open command",
    )
    return report


def evaluate_grasp_on_dataset(
    checkpoint: Path,
    data: Path,
    cache: Path,
    episodes: int | None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[dict, list]:
    """Forecasts at every labelled episode's decision: the dataset's held-out episodes when the
    model learned from this dataset, every episode when it never saw it. Returns the summary
    (``auroc``, ``brier``, ``ece``, ``episodes``, ...) and per-decision records for the plot."""
    from world_model.checkpoint import CheckpointError
    from world_model.grasp import auroc, brier, ece_if_calibrated

    from .grasp_eval import DecisionRecord

    wm, meta, groups = WorldModel.load(checkpoint)
    wm.eval()
    if "success_head" not in groups or "grasp" not in meta:
        raise CheckpointError(
            f"{checkpoint} has no success head: train one with `kiwi train grasp`"
        )
    g = meta["grasp"]
    job = job_of(meta, checkpoint)
    # the heads' own settings: a model whose heads were fitted with `--set gate.horizon=5` on a
    # world model whose job said 20 is scored on 5-frame rollouts (its job may predate them)
    gate = job.gate.model_copy(
        update={"horizon": g["horizon"], "obs_every": g.get("obs_every", job.gate.obs_every)}
    )
    job = job.model_copy(update={"gate": gate})
    head, head_now = SuccessHead(wm.rssm.feat_dim), SuccessHead(wm.rssm.feat_dim)
    head.load_state_dict(groups["success_head"])
    head_now.load_state_dict(groups["success_head_now"])
    every = job.data.holdout_every
    with LeRobotReader(data) as reader:
        check_spec(wm.spec, reader)
        root = meta.get("dataset", {}).get("root")
        trained_here = root is not None and Path(root).resolve() == reader.root.resolve()
        ids = [i for i in range(reader.num_episodes) if not trained_here or i % every == every - 1][
            :episodes
        ]
        which = f"held out ({every}th)" if trained_here else "all (a dataset it never saw)"
        log(f"{len(ids)} episodes of {data}: {which}")
        column = gripper_column(reader)
        eps, indices = labelled_episodes(reader, job, ids, cache, progress, log)
    keep = decidable(eps, column, g["horizon"])
    if not keep:
        raise DatasetError(f"{data}: no episode has a gripper close to decide at")
    eps, indices = [eps[i] for i in keep], [indices[i] for i in keep]
    forecast = decisions(wm, eps, column, job, 3, progress, g["samples"])
    labels = forecast.labels.numpy()
    with torch.no_grad():
        p_each = torch.sigmoid(head(forecast.rollout_feat)).numpy()  # [N, K] uncalibrated
    p = Calibration(g["temperature"], g.get("bias", 0.0))(mean_logits(head, forecast.rollout_feat))
    p_now = Calibration(g["temperature_now"], g.get("bias_now", 0.0))(
        mean_logits(head_now, forecast.now_feat)
    )
    ece, table = reliability(p, labels)
    y = labels > 0.5
    records = [
        DecisionRecord(i, 0, float(a), float(b), float(s), 0.0, bool(t), bool(a >= g["threshold"]))
        for i, a, b, s, t in zip(indices, p, p_now, p_each.std(-1), y)
    ]
    summary = {
        "auroc": auroc(p, labels),
        "brier": brier(p, labels),
        "ece": ece,
        "ece_if_calibrated": ece_if_calibrated(p),
        "episodes": int(len(labels)),
        "reliability": table,
        "auroc_no_rollout": auroc(p_now, labels),
        "brier_no_rollout": brier(p_now, labels),
        "ece_no_rollout": reliability(p_now, labels)[0],
        "success_rate": float(labels.mean()),
        "threshold": g["threshold"],
        "samples": g["samples"],
        "horizon": g["horizon"],
        "dataset": str(data),
        "which_episodes": which,
    }
    return summary, records

"""The RSSM lab, "dream a tiny world": collect Pendulum-v1, train the world model, and show where
its imagination drifts from reality (recon.png, imagination.png, horizon.png, report.json)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from world_model import evaluate as ev
from world_model.errors import CheckpointError
from world_model.model import WorldModel
from world_model.replay import Replay, save_spec
from world_model.train import (
    CHECKPOINT,
    WorldModelTrainer,
    collect_random,
    spec_from_env,
    train_world_model,
)

from .config import PendulumJob, dump_config
from .envs import make_env
from .jsonout import write_json


def prepare_data(
    job: PendulumJob, out: Path, progress: bool, log: Callable[[str], None]
) -> tuple[Replay, Replay, object]:
    """Training and held-out replays (collected with a random policy unless already there)."""
    make = lambda: make_env(job.env.id, job.env.obs_key)  # noqa: E731
    env = make()
    spec = spec_from_env(env)
    env.close()
    train = Replay(Path(job.data.episodes) if job.data.episodes else out / "replay")
    if not job.data.episodes:
        save_spec(out / "replay", spec)
    if len(train) < job.data.random_steps and not job.data.episodes:
        log(f"collecting {job.data.random_steps - len(train)} random-policy steps of {job.env.id}")
        collect_random(
            make,
            spec,
            train,
            job.data.seed,
            steps=job.data.random_steps - len(train),
            progress=progress,
            first_episode=train.num_episodes,  # an interrupted collection goes on, no repeats
        )
    holdout = Replay(out / "holdout")
    if holdout.num_episodes < job.data.holdout_episodes:
        # Seeds far from the training seeds, so held-out episodes never repeat training ones.
        collect_random(
            make,
            spec,
            holdout,
            1_000_000 + job.data.seed,
            episodes=job.data.holdout_episodes - holdout.num_episodes,
            progress=False,
            first_episode=holdout.num_episodes,
        )
    return train, holdout, spec


def run_lab(
    job: PendulumJob,
    out: Path,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = tqdm.write,
    trainer_options: dict | None = None,
) -> dict:
    """The whole lab in ``out``: continues its checkpoint with ``resume``, otherwise starts
    again (the CLI asks for --overwrite first); the collected data are kept either way.
    ``trainer_options`` (device, autocast_dtype, compile) go to the WorldModelTrainer; the
    evaluation after training runs on the CPU."""
    options = trainer_options or {}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_config(job))
    torch.manual_seed(job.train.seed)
    train, holdout, spec = prepare_data(job, out, progress, log)
    log(
        f"data: {len(train)} training steps in {train.num_episodes} episodes, "
        f"{holdout.num_episodes} held-out episodes"
    )
    ckpt = out / CHECKPOINT
    if resume:
        if not ckpt.is_file():
            raise CheckpointError(f"cannot resume: {ckpt} does not exist")
        wm, meta, groups = WorldModel.load(ckpt)
        trainer = WorldModelTrainer(wm, job.train, **options)
        trainer.restore(groups, meta)
        log(f"resuming from {ckpt} at step {trainer.step}")
    else:
        ckpt.unlink(missing_ok=True)  # a fresh run: the folder never mixes two runs
        wm = WorldModel(job.model, spec)
        trainer = WorldModelTrainer(wm, job.train, **options)
    t0 = time.perf_counter()
    train_world_model(
        wm,
        train,
        job.train,
        out,
        job.train.steps,
        job.model_dump(mode="json"),
        trainer,
        progress,
        log,
    )
    train_wall = time.perf_counter() - t0
    wm.cpu().eval()
    report = evaluate_lab(wm, job, holdout, out)
    report["train_wall_s"] = train_wall
    report["train_steps"] = trainer.step
    report["data"] = {
        "train_steps": len(train),
        "train_episodes": train.num_episodes,
        "holdout_episodes": holdout.num_episodes,
    }
    write_json(out / "report.json", report, indent=2)
    return report


@torch.no_grad()
def evaluate_lab(wm: WorldModel, job: PendulumJob, holdout: Replay, out: Path) -> dict:
    key, lab = job.env.obs_key, job.lab
    names = list(job.env.dim_names) or [f"{key}[{d}]" for d in range(wm.spec.vector_dims[key])]
    curves = ev.open_loop_nmse(
        wm, holdout.episodes, key, lab.context, lab.horizon, lab.samples, seed=job.train.seed
    )
    episode = holdout.episodes[0]
    recon = ev.reconstruct(wm, episode)
    ev.plot_reconstruction(
        episode[key],
        recon[key],
        names,
        out / "recon.png",
        f"{job.env.id}: posterior reconstructions of a held-out episode",
    )
    window_len = lab.context + lab.horizon
    window = ev.tensors({k: v[None, :window_len] for k, v in episode.items()})
    _, imagined = ev.posterior_then_prior(
        wm, window, lab.context, lab.horizon, 16, torch.Generator().manual_seed(1)
    )
    futures = wm.decode(imagined)[key].numpy()  # [16, H, D]
    var = np.concatenate([ep[key] for ep in holdout.episodes]).var(0) + 1e-8
    true = episode[key][:window_len]
    diverge = ev.divergence_step(true[lab.context :], futures.mean(0), var)
    ev.plot_imagination(
        true,
        futures,
        lab.context,
        names,
        out / "imagination.png",
        f"{job.env.id}: the prior rolled forward with the true actions",
        diverge,
    )
    ev.plot_horizon(
        curves["model"],
        curves["persistence"],
        out / "horizon.png",
        f"{job.env.id}: open-loop error after {lab.context} steps of context",
        lab.report_horizons,
    )
    pick = lambda c: {str(h): float(c[h - 1]) for h in lab.report_horizons if h <= lab.horizon}  # noqa: E731
    return {
        "nmse_open_loop": pick(curves["model"]),
        "nmse_persistence": pick(curves["persistence"]),
        "nmse_open_loop_curve": [float(x) for x in curves["model"]],
        "nmse_persistence_curve": [float(x) for x in curves["persistence"]],
        "windows": curves["windows"],
        "context": lab.context,
        "samples": lab.samples,
        "imagination_diverges_at_step": None if diverge is None else diverge + 1,
    }

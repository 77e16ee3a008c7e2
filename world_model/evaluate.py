"""How good is the model? Reconstructions, open-loop drift against horizon, and their plots.

Open-loop protocol: in held-out episodes, windows of ``context + horizon`` steps; the posterior
runs over the first ``context`` observations, then the prior is rolled forward with the true
actions. The error at horizon k is the squared error of the k-th imagined observation (the mean
of ``samples`` imagined futures), divided by each dimension's variance over the held-out data and
averaged over dimensions and windows (nMSE). "Persistence" predicts the last observed value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .model import WorldModel
from .rssm import State, index_state


def make_windows(
    episodes: list[dict[str, np.ndarray]], length: int, stride: int
) -> dict[str, np.ndarray]:
    """All windows of ``length`` steps, ``stride`` apart, from each episode.

    Returns ``{key: [N, length, ...]}``."""
    out: dict[str, list[np.ndarray]] = {}
    for ep in episodes:
        for start in range(0, len(ep["action"]) - length + 1, stride):
            for k, v in ep.items():
                out.setdefault(k, []).append(v[start : start + length])
    if not out:
        raise ValueError(f"no held-out episode has {length} steps")
    return {k: np.stack(v) for k, v in out.items()}


def tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Floats as float32, uint8 images as they are; read-only arrays (memory-mapped frames)
    are copied first."""
    out = {}
    for k, v in batch.items():
        v = np.ascontiguousarray(v) if v.flags.writeable else np.array(v)
        out[k] = torch.from_numpy(v) if v.dtype == np.uint8 else torch.from_numpy(v).float()
    return out


@torch.no_grad()
def observe_window(
    wm: WorldModel,
    window: dict[str, torch.Tensor],
    context: int,
    generator: torch.Generator | None = None,
) -> tuple[State, torch.Tensor]:
    """Posterior over the first ``context`` steps of ``[N, T, ...]`` windows, each starting from
    the initial state. Returns the posterior states and the whole window's previous actions
    (model units): prev_action[:, t] led to obs[:, t]."""
    action = wm.normalize_action(window["action"])
    prev_action = torch.cat([torch.zeros_like(action[:, :1]), action[:, :-1]], 1)
    is_first = torch.zeros(action.shape[0], context, dtype=torch.bool)
    is_first[:, 0] = True
    obs = {k: window[k][:, :context] for k in wm.obs_keys}
    post, _ = wm.observe(obs, prev_action[:, :context], is_first, generator=generator)
    return post, prev_action


@torch.no_grad()
def posterior_then_prior(
    wm: WorldModel,
    window: dict[str, torch.Tensor],
    context: int,
    horizon: int,
    samples: int,
    generator: torch.Generator | None = None,
) -> tuple[State, State]:
    """Posterior over ``window[:, :context]``, then ``samples`` prior rollouts with the true
    actions. Returns (posterior states ``[N, context]``, imagined states ``[N*samples, horizon]``,
    sample-major within each window)."""
    post, prev_action = observe_window(wm, window, context, generator)
    start = index_state(post, (slice(None), -1))
    start = State(*(x.repeat_interleave(samples, 0) for x in start))
    future = prev_action[:, context : context + horizon].repeat_interleave(samples, 0)
    imagined, _ = wm.imagine(start, future, generator=generator)
    return post, imagined


@torch.no_grad()
def open_loop_nmse(
    wm: WorldModel,
    episodes: list[dict[str, np.ndarray]],
    key: str,
    context: int,
    horizon: int,
    samples: int,
    stride: int | None = None,
    seed: int = 0,
    batch: int = 256,
    image_keys: tuple[str, ...] = (),
    progress: bool = False,
) -> dict[str, Any]:
    """Returns ``{"model": [horizon], "persistence": [horizon]}`` nMSE curves (index k-1 is
    horizon k) and the number of windows. With ``image_keys``, also ``images[camera]`` =
    ``{"model", "persistence"}``: the mean squared pixel error (pixels in [0, 1]) of the mean of
    the imagined frames, and of the last observed frame."""
    from tqdm import tqdm

    keys = {key, "action", *image_keys, *wm.obs_keys}
    windows = make_windows(
        [{k: ep[k] for k in keys} for ep in episodes],
        context + horizon,
        stride or max(1, horizon // 2),
    )
    var = np.concatenate([ep[key] for ep in episodes]).var(0) + 1e-8
    gen = torch.Generator().manual_seed(seed)
    n = len(windows["action"])
    model_err = np.zeros(horizon)
    persist_err = np.zeros(horizon)
    image_err = {k: (np.zeros(horizon), np.zeros(horizon)) for k in image_keys}
    for lo in tqdm(
        range(0, n, batch), desc="open loop", unit="batch", disable=not progress, leave=False
    ):
        part = tensors({k: v[lo : lo + batch] for k, v in windows.items()})
        _, imagined = posterior_then_prior(wm, part, context, horizon, samples, gen)
        decoded = wm.decode(imagined)
        pred = decoded[key].reshape(-1, samples, horizon, var.shape[0]).mean(1).numpy()
        true = part[key][:, context : context + horizon].numpy()
        last = part[key][:, context - 1 : context].numpy()
        model_err += (((pred - true) ** 2) / var).mean(-1).sum(0)
        persist_err += (((last - true) ** 2) / var).mean(-1).sum(0)
        for k, (err, persist) in image_err.items():
            frames = decoded[k].reshape(-1, samples, horizon, *decoded[k].shape[-3:]).mean(1)
            real = part[k][:, context - 1 : context + horizon].float() / 255.0
            err += ((frames - real[:, 1:]) ** 2).mean((-3, -2, -1)).sum(0).numpy()
            persist += ((real[:, :1] - real[:, 1:]) ** 2).mean((-3, -2, -1)).sum(0).numpy()
    out: dict[str, Any] = {"model": model_err / n, "persistence": persist_err / n, "windows": n}
    if image_keys:
        out["images"] = {
            k: {"model": err / n, "persistence": persist / n}
            for k, (err, persist) in image_err.items()
        }
    return out


@torch.no_grad()
def estimate_error_by_age(
    wm: WorldModel,
    episodes: list[dict[str, np.ndarray]],
    key: str = "object",
    truth_key: str = "object_true",
    every: int = 20,
    warmup: int = 20,
    seed: int = 0,
) -> dict[str, list[float]]:
    """How well the latent tracks a cube-like ``key`` ``[x, y, z (m), yaw (deg)]`` when it sees
    an observation every ``every`` ticks (random phase per episode), as on the robot.

    The decoded estimate at every tick after ``warmup`` is compared with ``truth_key`` (the
    noiseless value), grouped by the ticks since the last observation (0: the posterior, k: the
    prior k ticks on). Returns per age the median position error (mm) and yaw error (degrees,
    modulo the periodic column's period), and ``raw``: the observations' own error (every
    tick)."""
    column, period, *_ = wm.config.periodic.get(key, (3, 360.0))
    length = min(len(ep["action"]) for ep in episodes)
    window = tensors(
        {k: np.stack([ep[k][:length] for ep in episodes]) for k in (*wm.obs_keys, "action")}
    )
    truth = np.stack([ep[truth_key][:length] for ep in episodes])
    gen = torch.Generator().manual_seed(seed)
    n = len(episodes)
    phase = torch.randint(0, every, (n, 1), generator=gen)
    observed = (torch.arange(length)[None] - phase) % every == 0
    action = wm.normalize_action(window["action"])
    prev_action = torch.cat([torch.zeros_like(action[:, :1]), action[:, :-1]], 1)
    is_first = torch.zeros(n, length, dtype=torch.bool)
    is_first[:, 0] = True
    obs = {k: window[k] for k in wm.obs_keys}
    states, _ = wm.observe(obs, prev_action, is_first, generator=gen, observed=observed)
    estimate = wm.decode(states)[key].numpy()
    age = (torch.arange(length)[None] - phase) % every  # ticks since the last observation
    age = age.numpy()
    late = np.arange(length)[None].repeat(n, 0) >= warmup

    def errors(value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos_mm = np.linalg.norm(value[..., :column] - truth[..., :column], axis=-1) * 1000
        yaw = value[..., column] - truth[..., column]
        return pos_mm, np.abs((yaw + period / 2) % period - period / 2)

    pos, yaw = errors(estimate)
    raw_pos, raw_yaw = errors(window[key].numpy())
    out = {"raw": [float(np.median(raw_pos[late])), float(np.median(raw_yaw[late]))]}
    for a in range(every):
        sel = late & (age == a)
        out[f"age_{a}"] = [float(np.median(pos[sel])), float(np.median(yaw[sel]))]
    out["all"] = [float(np.median(pos[late])), float(np.median(yaw[late]))]
    return out


@torch.no_grad()
def reconstruct(
    wm: WorldModel, episode: dict[str, np.ndarray], seed: int = 0
) -> dict[str, np.ndarray]:
    """Posterior reconstructions of a whole episode: ``{key: [T, ...]}`` in observation units."""
    window = tensors({k: v[None] for k, v in episode.items()})
    gen = torch.Generator().manual_seed(seed)
    post, _ = observe_window(wm, window, len(episode["action"]), gen)
    return {k: v[0].numpy() for k, v in wm.decode(post).items()}


# --- plots (matplotlib, headless) -----------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_reconstruction(
    true: np.ndarray, recon: np.ndarray, names: list[str], path: Path, title: str
) -> None:
    plt = _pyplot()
    dims = true.shape[-1]
    fig, axes = plt.subplots(dims, 1, figsize=(9, 1.9 * dims + 0.6), sharex=True, squeeze=False)
    for d, ax in enumerate(axes[:, 0]):
        ax.plot(true[:, d], color="black", lw=1.6, label="real observation")
        ax.plot(recon[:, d], color="tab:orange", lw=1.2, ls="--", label="posterior reconstruction")
        ax.set_ylabel(names[d])
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_dream_traces(
    ax,
    context: int,
    samples: np.ndarray,
    truth: np.ndarray,
    names: tuple[str, str, str] = ("imagined samples", "imagined mean", "true environment"),
) -> None:
    """One dimension of a dream against reality on ``ax``: the posterior's context shaded, the
    prior's ``samples [S, H]`` from ``context`` on, their mean, and ``truth [T]``."""
    t_future = np.arange(context, context + samples.shape[1])
    ax.axvspan(0, context - 1, color="tab:blue", alpha=0.08, label="posterior context")
    for s in range(samples.shape[0]):
        ax.plot(t_future, samples[s], color="tab:orange", lw=0.6, alpha=0.35,
                label=names[0] if s == 0 else None)  # fmt: skip
    ax.plot(t_future, samples.mean(0), color="tab:red", lw=1.4, label=names[1])
    ax.plot(np.arange(len(truth)), truth, color="black", lw=1.4, label=names[2])


def plot_imagination(
    true: np.ndarray,
    imagined: np.ndarray,
    context: int,
    names: list[str],
    path: Path,
    title: str,
    diverge_at: int | None,
) -> None:
    """true ``[context + H, D]``; imagined ``[samples, H, D]`` starting after the context."""
    plt = _pyplot()
    dims = true.shape[-1]
    fig, axes = plt.subplots(dims, 1, figsize=(9, 1.9 * dims + 0.6), sharex=True, squeeze=False)
    for d, ax in enumerate(axes[:, 0]):
        draw_dream_traces(ax, context, imagined[:, :, d], true[:, d])
        if diverge_at is not None:
            ax.axvline(
                context + diverge_at,
                color="gray",
                ls=":",
                lw=1.2,
                label=f"diverges (step {diverge_at + 1})",
            )
        ax.set_ylabel(names[d])
        ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="upper center",
        ncol=5,
        fontsize=8,
        frameon=False,
        bbox_to_anchor=(0.5, 0.955),
    )
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_horizon(
    model: np.ndarray,
    persistence: np.ndarray,
    path: Path,
    title: str,
    marks: tuple[int, ...] = (1, 5, 15),
) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    draw_horizon(ax, model, persistence, marks)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_horizon(
    ax,
    model: np.ndarray,
    persistence: np.ndarray,
    marks: tuple[int, ...],
    ylabel: str = "normalised MSE",
    color: str = "tab:red",
    name: str = "",
    table: bool = True,
) -> None:
    """One open-loop error curve beside its persistence baseline on ``ax`` (log scale), the
    ``marks`` circled and (with ``table``) listed."""
    h = np.arange(1, len(model) + 1)
    suffix = f" {name}" if name else ""
    ax.semilogy(h, model, "o-", ms=3, color=color, label=f"world model (open loop){suffix}")
    ax.semilogy(
        h,
        persistence,
        "s--",
        ms=3,
        color=color,
        alpha=0.45,
        label=f'persistence ("no change"){suffix}',
    )
    marks = tuple(m for m in marks if m <= len(model))
    ax.plot(marks, [model[m - 1] for m in marks], "o", ms=8, mfc="none", color="black")
    if table:
        text = "\n".join(
            [" h   model   persist."]
            + [f"{m:>2}  {model[m - 1]:.2e}  {persistence[m - 1]:.2e}" for m in marks]
        )
        ax.text(
            0.98,
            0.35,
            text,
            transform=ax.transAxes,
            ha="right",
            va="top",
            family="monospace",
            fontsize=8,
            bbox={"boxstyle": "round", "fc": "white", "ec": "0.7"},
        )
    ax.set_xlabel("horizon (steps after the last observation)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)


def divergence_step(
    true: np.ndarray, mean: np.ndarray, var: np.ndarray, threshold: float = 0.1
) -> int | None:
    """First imagined step whose nMSE exceeds ``threshold``, or None."""
    err = (((mean - true) ** 2) / var).mean(-1)
    over = np.nonzero(err > threshold)[0]
    return int(over[0]) if len(over) else None

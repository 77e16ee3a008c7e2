"""`kiwi train grasp`: a success head on top of the grasp world model, from collected grasps.

For each recorded episode, the decision is the tick the gripper starts to close (the scripted
policy's ``close`` phase; the runtime's DECIDE is at the same place: open gripper at grasp
height). The belief there comes from the episode's observations thinned to the runtime's rate
(one every ``obs_every`` ticks, as the slow process delivers them); the prior then rolls the
recorded commit (close, start of the lift) for ``horizon`` ticks, K times; the head learns the
episode's outcome from the states those rollouts reach. A second head learns it from the belief
at the decision tick alone: the no-rollout ablation. Both are calibrated with a temperature on
held-out episodes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sim.outcomes import PHASES
from world_model.grasp import (
    Calibration,
    SuccessHead,
    auroc,
    brier,
    fit_platt,
    fit_temperature,
    reliability,
)
from world_model.model import WorldModel
from world_model.rssm import State

CLOSE = PHASES.index("close")
GRASP_MODEL = "grasp_model.safetensors"  # what `kiwi train grasp` writes in its folder


@dataclass
class Decisions:
    rollout_feat: torch.Tensor  # [N, K, F] states reached by the rollouts
    now_feat: torch.Tensor  # [N, F] beliefs at the decision tick
    labels: torch.Tensor  # [N] 1.0 = the grasp succeeded


def decision_tick(episode: dict[str, np.ndarray]) -> int | None:
    closing = np.nonzero(np.asarray(episode["phase"]) == CLOSE)[0]
    return int(closing[0]) if len(closing) else None


@torch.no_grad()
def build_decisions(
    wm: WorldModel,
    episodes: list[dict[str, np.ndarray]],
    horizon: int,
    samples: int,
    obs_every: int,
    seed: int,
    batch: int = 128,
    progress: bool = True,
    decide: Callable[[dict[str, np.ndarray]], int | None] = decision_tick,
    outcome: Callable[[dict[str, np.ndarray]], float] = lambda ep: float(ep["success"][0]),
) -> Decisions:
    """``decide``: an episode's decision tick (None: no decision in it); ``outcome``: its
    label (1.0 = the grasp succeeded). The rollouts run where the model is (``kiwi train grasp
    --device``); the features come back to the CPU."""
    device = next(wm.parameters()).device
    gen = torch.Generator(device).manual_seed(seed)
    rng = np.random.default_rng(seed)
    usable = [(ep, decide(ep)) for ep in episodes]
    usable = [(ep, j) for ep, j in usable if j is not None and j + horizon <= len(ep["action"])]
    rollout, now, labels = [], [], []
    for lo in tqdm(
        range(0, len(usable), batch), desc="decisions", disable=not progress, dynamic_ncols=True
    ):
        part = usable[lo : lo + batch]
        context = min(j for _, j in part) + 1  # ticks up to and including the decision
        obs = {
            k: torch.as_tensor(np.stack([ep[k][j + 1 - context : j + 1] for ep, j in part]))
            for k in wm.obs_keys
        }
        obs = {k: v.to(device) for k, v in obs.items()}
        actions = torch.as_tensor(
            np.stack([ep["action"][j + 1 - context : j + horizon] for ep, j in part])
        ).to(device, torch.float32)
        norm = wm.normalize_action(actions)
        prev = torch.cat([torch.zeros_like(norm[:, :1]), norm[:, : context - 1]], 1)
        first = torch.zeros(len(part), context, dtype=torch.bool, device=device)
        first[:, 0] = True
        phase = torch.as_tensor(rng.integers(0, obs_every, (len(part), 1)), device=device)
        observed = (torch.arange(context, device=device)[None] - phase) % obs_every == 0
        states, _ = wm.observe(
            {k: v.float() for k, v in obs.items()}, prev, first, generator=gen, observed=observed
        )
        belief = State(*(x[:, -1] for x in states))
        now.append(belief.feat().cpu())
        start = State(*(x.repeat_interleave(samples, 0) for x in belief))
        plan = norm[:, context - 1 : context - 1 + horizon].repeat_interleave(samples, 0)
        imagined, _ = wm.imagine(start, plan, generator=gen)
        rollout.append(imagined.feat()[:, -1].reshape(len(part), samples, -1).cpu())
        labels.append(torch.tensor([outcome(ep) for ep, _ in part]))
    return Decisions(torch.cat(rollout), torch.cat(now), torch.cat(labels))


def train_head(
    feat: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    seed: int,
    log: Callable[[str], None] = print,
    validation: float = 0.15,
) -> SuccessHead:
    """``feat [N, K, F]`` (every sample carries its decision's label) or ``[N, F]``. A share of
    the decisions is kept back to pick the epoch (early stopping): the head overfits fast."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    order = torch.randperm(len(labels), generator=gen)
    n_val = max(1, int(validation * len(labels)))
    val, train = order[:n_val], order[n_val:]

    def flat(idx):
        f, y = feat[idx], labels[idx]
        if f.dim() == 3:
            y = y[:, None].expand(-1, f.shape[1]).reshape(-1)
            f = f.reshape(-1, f.shape[-1])
        return f, y

    f_train, y_train = flat(train)
    f_val, y_val = flat(val)
    head = SuccessHead(feat.shape[-1])
    opt = torch.optim.Adam(head.parameters(), 1e-3, weight_decay=1e-4)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    best, best_state, best_epoch = float("inf"), None, 0
    for epoch in range(epochs):
        head.train()
        perm = torch.randperm(len(y_train), generator=gen)
        for lo in range(0, len(perm), 256):
            idx = perm[lo : lo + 256]
            loss = bce(head(f_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
        with torch.no_grad():
            val_loss = bce(head(f_val), y_val).item()
        if val_loss < best:
            best, best_epoch = val_loss, epoch + 1
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
        if (epoch + 1) % max(1, epochs // 5) == 0:
            log(f"epoch {epoch + 1}/{epochs}: validation BCE {val_loss:.4f}")
    head.load_state_dict(best_state)
    log(f"kept epoch {best_epoch} (validation BCE {best:.4f})")
    return head.eval()


@torch.no_grad()
def mean_logits(head: SuccessHead, feat: torch.Tensor) -> np.ndarray:
    logits = head(feat)
    return (logits.mean(-1) if feat.dim() == 3 else logits).numpy()


def scores(logits: np.ndarray, labels: np.ndarray, calibration: Calibration) -> dict:
    p = calibration(logits)
    ece, _ = reliability(p, labels)
    return {"auroc": auroc(p, labels), "brier": brier(p, labels), "ece": ece}


def train_grasp(
    job,
    init: Path,
    data: Path,
    out: Path,
    command: str,
    progress: bool = True,
    log: Callable[[str], None] = print,
    device: torch.device | None = None,
) -> dict:
    """Heads on top of the world model in ``init``; writes ``out/GRASP_MODEL``
    (world model + success heads + calibration) and returns the held-out figures."""
    from world_model.errors import ReplayError
    from world_model.replay import Replay

    g = job.gate
    wm, meta, _ = WorldModel.load(init, device)
    wm.eval()
    episodes = Replay(data).episodes
    if len(episodes) < 20:
        raise ReplayError(
            f"{data}: {len(episodes)} episodes; a success head needs hundreds "
            "(kiwi collect --env grasp --episodes 1000 ...)"
        )
    n_hold = max(10, int(round(g.holdout_fraction * len(episodes))))
    train_eps, hold_eps = episodes[:-n_hold], episodes[-n_hold:]
    log(
        f"{len(train_eps)} training and {len(hold_eps)} held-out episodes; horizon {g.horizon}, "
        f"{g.train_samples} rollouts per decision"
    )
    train = build_decisions(
        wm, train_eps, g.horizon, g.train_samples, g.obs_every, 1, progress=progress
    )
    hold = build_decisions(
        wm, hold_eps, g.horizon, g.train_samples, g.obs_every, 2, progress=progress
    )
    wm.cpu()  # the heads, the calibration and the file: on the CPU
    head, head_now, logits, logits_now, labels = fit_heads(train, hold, g.epochs, log)
    calib, calib_now = fit_platt(logits, labels), fit_platt(logits_now, labels)
    closed_loop = None
    if g.calibration_episodes:  # refit on decisions the runtime itself makes
        calib, calib_now, closed_loop = calibrate_closed_loop(
            job, wm, head, head_now, progress, log
        )
    report = {
        **heads_report(logits, logits_now, labels, calib, calib_now, len(train.labels)),
        "closed_loop_calibration": closed_loop,
    }
    save_grasp_model(
        out / GRASP_MODEL, wm, meta, g, calib, calib_now, report, command, head, head_now
    )
    return report


def heads_report(
    logits: np.ndarray,
    logits_now: np.ndarray,
    labels: np.ndarray,
    calib: Calibration,
    calib_now: Calibration,
    fitted: int,
) -> dict:
    """What `kiwi train grasp` reports (and writes into the file) of both heads on the held-out
    decisions (``labels``) and their calibrations; ``fitted``: decisions the heads learned."""
    return {
        "rollout": scores(logits, labels, calib),
        "no_rollout": scores(logits_now, labels, calib_now),
        "temperature": calib.temperature,
        "bias": calib.bias,
        "temperature_now": calib_now.temperature,
        "bias_now": calib_now.bias,
        "holdout_decisions": int(len(labels)),
        "train_decisions": int(fitted),
        "holdout_success_rate": float(labels.mean()),
    }


def fit_heads(train: Decisions, hold: Decisions, epochs: int, log: Callable[[str], None]):
    """The success head on the rollouts' states and the no-rollout ablation on the belief at
    the decision, both fitted on ``train``; their mean logits on ``hold`` and its labels:
    (head, head_now, logits, logits_now, labels)."""
    log("success head on the rollouts' states")
    head = train_head(train.rollout_feat, train.labels, epochs, 0, log)
    log("no-rollout ablation: a head on the belief at the decision")
    head_now = train_head(train.now_feat, train.labels, epochs, 0, log)
    logits, logits_now = mean_logits(head, hold.rollout_feat), mean_logits(head_now, hold.now_feat)
    return head, head_now, logits, logits_now, hold.labels.numpy()


def save_grasp_model(
    path: Path,
    wm: WorldModel,
    meta: dict,
    g,
    calib: Calibration,
    calib_now: Calibration,
    report: dict,
    command: str,
    head: SuccessHead,
    head_now: SuccessHead,
    **extra,
) -> None:
    """The world model with both heads and what the gate needs (``g``: the job's gate section;
    ``extra``: more fields of the file's ``grasp`` metadata)."""
    grasp_meta = {
        "horizon": g.horizon,
        "samples": g.samples,
        "temperature": calib.temperature,
        "bias": calib.bias,
        "temperature_now": calib_now.temperature,
        "bias_now": calib_now.bias,
        "obs_every": g.obs_every,
        "threshold": g.threshold,
        **extra,
        "holdout": report,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    wm.save(
        path,
        {
            **{k: v for k, v in meta.items() if k not in ("model_config", "spec")},
            "grasp": grasp_meta,
            "made_by": command,
        },
        {"success_head": head.state_dict(), "success_head_now": head_now.state_dict()},
    )


def calibrate_closed_loop(
    job, wm, head, head_now, progress: bool, log: Callable[[str], None]
) -> tuple[Calibration, Calibration, dict]:
    """Runs the runtime's grasp (lockstep, its own seeds) with uncalibrated forecasts, plays every
    decision out, and fits both calibrations (temperature and bias) on those (forecast, outcome)
    pairs: the decisions the runtime makes differ from the recorded scripted ones (it looks
    before deciding)."""
    from world_model.grasp import GraspPredictor

    from .config import GRASP_CALIBRATION_SEED
    from .grasp_eval import run_decisions

    g = job.gate
    log(
        f"calibrating on {g.calibration_episodes} closed-loop grasps "
        f"(seeds {GRASP_CALIBRATION_SEED}..)"
    )
    predictor = GraspPredictor(wm, head, g.horizon, g.samples, temperature=1.0)
    _, records = run_decisions(
        job,
        wm,
        predictor,
        head_now,
        Calibration(),
        g.calibration_episodes,
        GRASP_CALIBRATION_SEED,
        g.threshold,
        progress,
        "calibrate",
    )
    to_logit = lambda p: np.log(np.clip(p, 1e-6, 1 - 1e-6) / np.clip(1 - p, 1e-6, 1))  # noqa: E731
    z = to_logit(np.array([r.p_success for r in records]))
    z_now = to_logit(np.array([r.p_no_rollout for r in records]))
    y = np.array([r.would_succeed for r in records], float)
    calib, calib_now = fit_platt(z, y), fit_platt(z_now, y)
    return (
        calib,
        calib_now,
        {
            "decisions": len(records),
            "success_rate": float(y.mean()) if len(y) else None,
            "rollout": scores(z, y, calib),
            "no_rollout": scores(z_now, y, calib_now),
            # in-sample, for comparison: the temperature alone
            "rollout_temperature_only": scores(z, y, Calibration(fit_temperature(z, y))),
        },
    )

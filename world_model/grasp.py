"""Will this grasp succeed? Roll the prior K times through the commit plan and read a success head.

The head sees the state the rollout reaches after H steps of the plan (close the gripper, start
lifting) and predicts the outcome of the whole commit, so H need not cover the lift. Its
probabilities are calibrated on held-out episodes by a temperature (or an isotonic map).

Pure PyTorch: plans are action sequences in the data's units; the caller builds them.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .nets import init_weights, mlp
from .rssm import State


class SuccessHead(nn.Module):
    def __init__(self, feat_dim: int, units: int = 128, layers: int = 2):
        super().__init__()
        self.mlp = mlp(feat_dim, units, layers)
        self.out = nn.Linear(units, 1)
        init_weights(self)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """Logits ``[...]``."""
        return self.out(self.mlp(feat)).squeeze(-1)


@dataclass(frozen=True)
class Forecast:
    p_success: float  # calibrated, averaged over the K rollouts
    spread: float  # standard deviation of the K rollouts' probabilities
    samples: int
    horizon: int
    ms: float  # time taken


# --- calibration (pure numpy) -------------------------------------------------------------


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the NLL of sigmoid(logit / T) (golden-section on log T);
    1 (no change) when there is nothing to fit: no finite logit."""
    logits, labels = np.asarray(logits, float), np.asarray(labels, float)
    keep = np.isfinite(logits) & np.isfinite(labels)
    logits, labels = logits[keep], labels[keep]
    if len(logits) == 0:
        return 1.0

    def nll(log_t: float) -> float:
        z = logits / np.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, z) - labels * z))

    lo, hi = np.log(0.05), np.log(20.0)
    g = (np.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    for _ in range(80):
        if nll(a) < nll(b):
            hi, b = b, a
            a = hi - g * (hi - lo)
        else:
            lo, a = a, b
            b = lo + g * (hi - lo)
    return float(np.exp((lo + hi) / 2))


@dataclass(frozen=True)
class Calibration:
    """A head's logit -> probability: sigmoid(logit / temperature + bias)."""

    temperature: float = 1.0
    bias: float = 0.0

    def __call__(self, logits) -> np.ndarray:
        z = np.asarray(logits, float) / self.temperature + self.bias
        return 1.0 / (1.0 + np.exp(-z))


def fit_platt(logits: np.ndarray, labels: np.ndarray, l2: float = 1e-3) -> Calibration:
    """Scale and bias minimising the NLL of sigmoid(a * logit + b) (Newton's method; a small
    ridge keeps it finite on separable data). A bias corrects a head that is over- or
    under-confident on one side, which a temperature alone cannot; where the fit would flip
    the ranking (a <= 0) it falls back to the temperature."""
    z, y = np.asarray(logits, float), np.asarray(labels, float)
    keep = np.isfinite(z) & np.isfinite(y)
    z, y = z[keep], y[keep]
    if len(y) < 2 or y.min() == y.max():  # one class (or none): a bias would run off to infinity
        return Calibration(fit_temperature(z, y), 0.0)
    x = np.stack([z, np.ones_like(z)], 1)

    def nll(w: np.ndarray) -> float:
        m = x @ w
        return float(np.mean(np.logaddexp(0.0, m) - y * m) + 0.5 * l2 * w @ w)

    w = np.array([1.0, 0.0])
    for _ in range(100):
        q = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -500, 500)))
        grad = x.T @ (q - y) / len(y) + l2 * w
        hess = (x * (q * (1 - q))[:, None]).T @ x / len(y) + l2 * np.eye(2)
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:  # saturated: no curvature left to step on
            break
        # damped Newton: halve the step until the NLL falls (plain steps diverge when the
        # starting point is far from the optimum)
        before, scale = nll(w), 1.0
        while nll(w - scale * step) > before and scale > 1e-6:
            scale /= 2
        w = w - scale * step
        if np.abs(scale * step).max() < 1e-10:
            break
    if not np.all(np.isfinite(w)) or w[0] <= 0:
        return Calibration(fit_temperature(z, y), 0.0)
    return Calibration(float(1.0 / w[0]), float(w[1]))


def fit_isotonic(p: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pool-adjacent-violators: a non-decreasing map from predicted to observed frequency.
    Returns (knots x, values y) for ``np.interp``."""
    order = np.argsort(p, kind="stable")
    x, y = np.asarray(p, float)[order], np.asarray(labels, float)[order]
    blocks: list[list[float]] = []  # [sum_y, count, x_min, x_max]
    for xi, yi in zip(x, y):
        blocks.append([yi, 1.0, xi, xi])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c, x0, _ = blocks.pop(-2)
            blocks[-1][0] += s
            blocks[-1][1] += c
            blocks[-1][2] = x0
    knots, values = [], []
    for s, c, x0, x1 in blocks:
        knots += [x0, x1]
        values += [s / c, s / c]
    return np.array(knots), np.array(values)


# --- metrics (pure numpy) -----------------------------------------------------------------


def auroc(p: np.ndarray, labels: np.ndarray) -> float:
    """Probability that a random success scores above a random failure (ties count half)."""
    p, labels = np.asarray(p, float), np.asarray(labels, bool)
    pos, neg = p[labels], p[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = np.argsort(np.argsort(np.concatenate([pos, neg]), kind="stable"), kind="stable") + 1.0
    # average ranks over ties
    allv = np.concatenate([pos, neg])
    for v in np.unique(allv):
        idx = allv == v
        ranks[idx] = ranks[idx].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def brier(p: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean((np.asarray(p, float) - np.asarray(labels, float)) ** 2))


def reliability(
    p: np.ndarray, labels: np.ndarray, bins: int = 10
) -> tuple[float, list[tuple[float, float, int]]]:
    """Expected calibration error over equal-width bins, and (mean p, frequency, count) per
    non-empty bin."""
    p, labels = np.asarray(p, float), np.asarray(labels, float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    ece, table = 0.0, []
    for b in range(bins):
        sel = which == b
        if sel.any():
            conf, freq = p[sel].mean(), labels[sel].mean()
            ece += sel.mean() * abs(conf - freq)
            table.append((float(conf), float(freq), int(sel.sum())))
    return float(ece), table


def ece_if_calibrated(
    p: np.ndarray, bins: int = 10, draws: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """The ECE a perfectly calibrated forecast would score by chance with these forecasts:
    outcomes drawn as Bernoulli(p), ``draws`` times. Returns (median, 95th percentile): an ECE
    below the 95th percentile cannot be told from perfect calibration on this many decisions
    (300 grasps with forecasts spread over 0..1 give about 0.05)."""
    p = np.asarray(p, float)
    p = p[np.isfinite(p)]
    if len(p) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    eces = [reliability(p, (rng.random(len(p)) < p).astype(float), bins)[0] for _ in range(draws)]
    return float(np.median(eces)), float(np.percentile(eces, 95))


class GraspPredictor:
    """``forecast(state, plan)``: K prior rollouts of the plan from the belief ``state``."""

    def __init__(
        self,
        world_model,
        head: SuccessHead,
        horizon: int,
        samples: int = 64,
        temperature: float = 1.0,
        isotonic: tuple[np.ndarray, np.ndarray] | None = None,
        seed: int = 0,
        bias: float = 0.0,
    ):
        self.wm, self.head = world_model.eval(), head.eval()
        self.horizon, self.samples = horizon, samples
        self.calibration, self.isotonic = Calibration(temperature, bias), isotonic
        self.gen = torch.Generator().manual_seed(seed)
        # the runtime forecasts on a worker thread and answers grasp queries on the loop's:
        # one rollout at a time, so the generator is never drawn from by both
        self._lock = threading.Lock()

    def calibrate(self, logits: np.ndarray) -> np.ndarray:
        """Logits ``[...]`` -> calibrated probabilities (temperature and bias, then isotonic
        if fitted)."""
        p = self.calibration(logits)
        if self.isotonic is not None:
            p = np.interp(p, *self.isotonic)
        return p

    @torch.no_grad()
    def rollout_logits(self, state: State, plan: torch.Tensor) -> torch.Tensor:
        """``state`` batch of B beliefs, ``plan [B, H, A]`` in data units -> logits ``[B, K]``."""
        b = state.deter.shape[0]
        start = State(*(x.repeat_interleave(self.samples, 0) for x in state))
        actions = self.wm.normalize_action(plan[:, : self.horizon]).repeat_interleave(
            self.samples, 0
        )
        # The same steps as wm.imagine, keeping only the state reached: stacking the H
        # intermediate states cost a quarter of the forecast's time.
        state = start
        for k in range(actions.shape[1]):
            state = self.wm.img_step(state, actions[:, k], self.gen)
        return self.head(state.feat()).view(b, self.samples)

    def forecast(self, state: State, plan: np.ndarray) -> Forecast:
        """One belief (batch of one) and one plan ``[H, A]`` (degrees, gripper 0..100)."""
        t0 = time.perf_counter()
        plan_t = torch.tensor(np.asarray(plan, np.float32))[None]  # a copy: plans may be read-only
        with self._lock:
            logits = self.rollout_logits(state, plan_t)[0].numpy()
        p = float(self.calibrate(logits.mean()))  # the K rollouts' mean logit, calibrated
        spread = float(self.calibrate(logits).std())
        return Forecast(p, spread, self.samples, self.horizon, (time.perf_counter() - t0) * 1e3)


def load_grasp_predictor(path: Path, samples: int | None = None, seed: int = 0):
    """(world model, GraspPredictor, no-rollout head, that head's Calibration) from a file
    written by `kiwi train grasp` (files from before the bias have none: 0)."""
    from .errors import CheckpointError
    from .model import WorldModel

    wm, meta, groups = WorldModel.load(path)
    if "success_head" not in groups or "grasp" not in meta:
        raise CheckpointError(f"{path} has no success head: train one with `kiwi train grasp`")
    g = meta["grasp"]
    head, head_now = SuccessHead(wm.rssm.feat_dim), SuccessHead(wm.rssm.feat_dim)
    head.load_state_dict(groups["success_head"])
    head_now.load_state_dict(groups["success_head_now"])
    predictor = GraspPredictor(
        wm,
        head,
        g["horizon"],
        samples or g["samples"],
        g["temperature"],
        seed=seed,
        bias=g.get("bias", 0.0),
    )
    return (
        wm.eval(),
        predictor,
        head_now.eval(),
        Calibration(g["temperature_now"], g.get("bias_now", 0.0)),
    )

"""`kiwi bench world-model`: the RSSM's speed at a reference size peers can be measured at.

Reference: deter 256, hidden 256, 32 x 32 categorical stoch, 6-dim action, 16-dim vector
observation (MLP encoder/decoder 2 x 256). Figures:
- prior_step_us_p50/p99: one ``img_step`` at batch 1 (what the fast loop runs every tick);
- rollout_k{64,256}_h16_ms: ``imagine`` of K samples for 16 steps (what the grasp predictor runs);
- gemm_gflops: float32 matrix-multiply throughput measured in the same run, same threads;
- rollout_gflops: the rollout's matrix work divided by its time;
- train_step_ms: one full world-model update (loss, backward, Adam) at batch 16 x 64.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from world_model.config import ModelConfig, ModelSpec, TrainConfig
from world_model.model import WorldModel
from world_model.train import WorldModelTrainer

from ..textui import format_table
from .common import machine, percentiles_us, verdict, write_json

REFERENCE = ModelConfig(
    deter=256, hidden=256, stoch=32, classes=32, units=256, layers=2, mlp_keys=("obs",)
)
SPEC = ModelSpec(vector_dims={"obs": 16}, action_dim=6)
TARGETS = {"prior_step_us_p50": 150.0, "rollout_k256_h16_ms": 40.0}


class TextbookPrior(torch.nn.Module):
    """The same prior step written the common way (nn.Linear/LayerNorm modules,
    torch.distributions with its default argument validation), timed beside ours in the same run
    so the comparison survives this machine's run-to-run swings."""

    def __init__(self, cfg: ModelConfig, action_dim: int):
        super().__init__()
        nn = torch.nn
        d, h, s, c = cfg.deter, cfg.hidden, cfg.stoch, cfg.classes
        self.s, self.c = s, c
        self.img_in = nn.Sequential(
            nn.Linear(s * c + action_dim, h, bias=False), nn.LayerNorm(h), nn.SiLU()
        )
        self.gru = nn.Linear(h + d, 3 * d, bias=False)
        self.gru_norm = nn.LayerNorm(3 * d)
        self.prior = nn.Sequential(
            nn.Linear(d, h, bias=False), nn.LayerNorm(h), nn.SiLU(), nn.Linear(h, s * c)
        )

    def forward(self, deter: torch.Tensor, stoch: torch.Tensor, action: torch.Tensor):
        x = self.img_in(torch.cat([stoch.flatten(1), action], -1))
        reset, cand, update = self.gru_norm(self.gru(torch.cat([x, deter], -1))).chunk(3, -1)
        reset, update = torch.sigmoid(reset), torch.sigmoid(update - 1)
        deter = update * torch.tanh(reset * cand) + (1 - update) * deter
        logits = self.prior(deter).reshape(-1, self.s, self.c)
        probs = 0.99 * torch.softmax(logits, -1) + 0.01 / self.c
        dist = torch.distributions.OneHotCategoricalStraightThrough(probs=probs)
        return deter, dist.rsample()


def time_textbook_step(cfg: ModelConfig, action_dim: int, n: int) -> tuple[float, float]:
    step = TextbookPrior(cfg, action_dim).eval()
    deter, stoch = torch.zeros(1, cfg.deter), torch.zeros(1, cfg.stoch, cfg.classes)
    action = torch.zeros(1, action_dim)
    times = []
    with torch.no_grad():
        for _ in range(100):
            deter, stoch = step(deter, stoch, action)
        for _ in range(n):
            t = time.perf_counter()
            deter, stoch = step(deter, stoch, action)
            times.append(time.perf_counter() - t)
    return percentiles_us(times)


def step_flops(cfg: ModelConfig, action_dim: int) -> float:
    """Multiply-add work of one prior step for one sample (matrix products only, x2 for FLOPs)."""
    d, h, sc = cfg.deter, cfg.hidden, cfg.stoch * cfg.classes
    macs = (
        action_dim * h
        + cfg.stoch * h / 2  # input layer (z rows are gathered and summed)
        + (h + d) * 3 * d  # GRU
        + d * h
        + h * sc
    )  # prior hidden layer and logits
    return 2.0 * macs


def time_prior_step(wm: WorldModel, n: int) -> tuple[float, float]:
    state = wm.initial(1)
    action = torch.zeros(1, wm.spec.action_dim)
    gen = torch.Generator().manual_seed(0)
    times = []
    with torch.no_grad():
        for _ in range(200):
            state = wm.img_step(state, action, gen)
        for _ in range(n):
            t = time.perf_counter()
            state = wm.img_step(state, action, gen)
            times.append(time.perf_counter() - t)
    return percentiles_us(times)


def time_rollout(wm: WorldModel, k: int, horizon: int, repeats: int) -> float:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        start = wm.initial(k)
        actions = torch.rand(k, horizon, wm.spec.action_dim, generator=gen) * 2 - 1
        for _ in range(3):
            wm.imagine(start, actions, generator=gen)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            wm.imagine(start, actions, generator=gen)
            times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def gemm_gflops(size: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2.0 * size**3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def time_train_step(wm: WorldModel, repeats: int) -> float:
    trainer = WorldModelTrainer(wm, TrainConfig())
    rng = np.random.default_rng(0)
    b, t = 16, 64
    batch = {
        "obs": torch.tensor(rng.normal(size=(b, t, 16)), dtype=torch.float32),
        "action": torch.tensor(rng.uniform(-1, 1, (b, t, 6)), dtype=torch.float32),
        "reward": torch.tensor(rng.normal(size=(b, t)), dtype=torch.float32),
        "is_first": torch.zeros(b, t, dtype=torch.bool),
        "is_terminal": torch.zeros(b, t, dtype=torch.bool),
    }
    for _ in range(2):
        trainer.update(batch)
    return float(np.median([_timed(lambda: trainer.update(batch)) for _ in range(repeats)]) * 1e3)


def measure(wm: WorldModel, threads: int, quick: bool) -> dict:
    n_steps, repeats = (1000, 5) if quick else (5000, 20)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        p50, p99 = time_prior_step(wm, n_steps)
        textbook_p50, _ = time_textbook_step(wm.config, wm.spec.action_dim, n_steps // 2)
        k64 = time_rollout(wm, 64, 16, repeats)
        k256 = time_rollout(wm, 256, 16, repeats)
        gemm = gemm_gflops()
        train = time_train_step(wm, 3 if quick else 8)
    finally:
        torch.set_num_threads(before)
    flops = step_flops(wm.config, wm.spec.action_dim) * 256 * 16
    return {
        "prior_step_us_p50": p50,
        "prior_step_us_p99": p99,
        "textbook_prior_step_us_p50": textbook_p50,
        "rollout_k64_h16_ms": k64,
        "rollout_k256_h16_ms": k256,
        "gemm_gflops": gemm,
        "rollout_gflops": flops / (k256 / 1e3) / 1e9,
        "train_step_ms": train,
        "threads": threads,
    }


def default_model(quick: bool) -> dict | None:
    """The shipped grasp model's own figures, at one thread (the runtime's setting)."""
    from ..assets import ASSETS

    path = ASSETS / "grasp_world_model.safetensors"
    if not path.is_file():
        return None
    wm, meta, _ = WorldModel.load(path)
    wm.eval()
    horizon = int(meta.get("grasp", {}).get("horizon", 30))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        p50, _ = time_prior_step(wm, 1000 if quick else 5000)
        forecast = time_rollout(wm, 64, horizon, 5 if quick else 20)
    finally:
        torch.set_num_threads(before)
    c = wm.config
    return {
        "deter": c.deter,
        "hidden": c.hidden,
        "stoch": c.stoch,
        "classes": c.classes,
        "prior_step_us_p50": p50,
        "forecast_k64_ms": forecast,
        "horizon": horizon,
    }


def run(args) -> int:
    torch.manual_seed(0)
    wm = WorldModel(REFERENCE, SPEC).eval()
    params = sum(p.numel() for p in wm.rssm.parameters())
    print(
        f"reference RSSM: deter 256, hidden 256, stoch 32x32, action 6, obs 16 "
        f"({params / 1e6:.2f} M RSSM parameters); torch {torch.__version__}"
    )
    results = {threads: measure(wm, threads, args.quick) for threads in sorted({1, args.threads})}
    main = results[args.threads]
    rows = [("figure", *[f"{t} thread{'s' if t > 1 else ''}" for t in results], "target", "")]
    for key, unit in (
        ("prior_step_us_p50", "µs"),
        ("prior_step_us_p99", "µs"),
        ("textbook_prior_step_us_p50", "µs"),
        ("rollout_k64_h16_ms", "ms"),
        ("rollout_k256_h16_ms", "ms"),
        ("gemm_gflops", "GFLOP/s"),
        ("rollout_gflops", "GFLOP/s"),
        ("train_step_ms", "ms"),
    ):
        target = TARGETS.get(key)
        rows.append(
            (
                f"{key} [{unit}]",
                *[f"{r[key]:.1f}" for r in results.values()],
                f"<= {target:g}" if target else "",
                verdict(main[key], target) if target else "",
            )
        )
    print(format_table(rows))
    print(
        f"headline: {args.threads} thread(s); the K=256 rollout reaches "
        f"{100 * main['rollout_gflops'] / main['gemm_gflops']:.0f} % of GEMM throughput"
    )
    default = default_model(args.quick)
    if default:
        print(
            f"the shipped grasp model (deter {default['deter']}, {default['stoch']}x"
            f"{default['classes']} stoch), 1 thread: prior step p50 "
            f"{default['prior_step_us_p50']:.0f} µs, the gate's forecast (K=64, "
            f"H={default['horizon']}) {default['forecast_k64_ms']:.1f} ms"
        )
    from .pixels import measure as measure_pixels
    from .pixels import summary_lines

    pixels = measure_pixels(getattr(args, "data", None), args.quick)
    for line in summary_lines(pixels):
        print(line)
    write_json(
        args.json,
        {
            **main,
            "default_model": default,
            "pixel_model": pixels,
            "by_threads": {str(t): r for t, r in results.items()},
            "reference": {
                "deter": 256,
                "hidden": 256,
                "stoch": 32,
                "classes": 32,
                "action_dim": 6,
                "obs_dim": 16,
            },
            "machine": machine(),
            "torch": torch.__version__,
        },
    )
    return 0

"""`kiwi train policy`: behaviour cloning of action chunks from a LeRobot dataset.

Reads the demonstrations once (robot_runtime/bc_data.py), holds out the last episodes for a
validation loss, and trains world_model/bc_net.py's network with an L1 loss on
normalised chunks (AdamW, cosine learning rate, random image shifts). Writes
``OUT/policy.safetensors`` (weights, normalisation, config and the command that made it; no
optimizer state: a run is short and is started again rather than resumed), ``metrics.jsonl``
and ``config.yaml``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from tqdm import tqdm

from world_model.bc_net import BCPolicyConfig, BCPolicyNet, chunk_l1, random_shift
from world_model.checkpoint import save_tensors
from world_model.train import MetricLog

from .bc_data import Demonstrations, load_demonstrations, normalization
from .config import Frozen

POLICY_FILE = "policy.safetensors"
KIND = "kiwi-chunk-policy/1"
EVAL_SEED = 500_000  # held-out grasps: outside every seed range in configs/sim_grasp.yaml


class PolicyDataConfig(Frozen):
    dataset: str = Field("data/grasp-lerobot", description="LeRobot v3.0 folder")
    successful_only: bool = Field(True, description="learn from episodes that succeeded only")
    max_episodes: int | None = Field(None, ge=1, description="first N chosen episodes (None: all)")
    frame_stride: int = Field(2, ge=1, description="keep the images of every Nth frame")
    val_fraction: float = Field(0.05, ge=0, lt=1, description="last episodes held out")


class PolicyTrainConfig(Frozen):
    steps: int = Field(5000, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0, description="peak learning rate (cosine decay to 0)")
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(1e-4, ge=0)
    shift_px: int = Field(4, ge=0, description="random image shift (augmentation), pixels")
    state_noise: float = Field(
        0.1,
        ge=0,
        description="Gaussian noise on the normalised joint input (targets unchanged), so a "
        "small deviation, e.g. a gripper at 97 where the demonstrations always show 100 before "
        "closing, is not taken for the next phase",
    )
    log_every: int = Field(100, ge=1, description="steps between metrics lines")
    checkpoint_every: int = Field(1000, ge=1)
    val_samples: int = Field(512, ge=1, description="held-out frames scored at each log")
    threads: int = Field(1, ge=1)
    seed: int = 0


class PolicyEvalConfig(Frozen):
    execute_steps: int = Field(25, ge=1, description="rows of each chunk executed, then re-query")
    episode_s: float = Field(10.0, gt=0, description="longest episode")
    seed: int = Field(EVAL_SEED, description="first held-out seed")


class BCPolicyJob(Frozen):
    """configs/bc_policy.yaml."""

    task: Literal["bc_policy"] = "bc_policy"
    data: PolicyDataConfig = PolicyDataConfig()
    policy: BCPolicyConfig = BCPolicyConfig()
    train: PolicyTrainConfig = PolicyTrainConfig()
    eval: PolicyEvalConfig = PolicyEvalConfig()


def split_samples(demos: Demonstrations, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Sample indices for training and validation: the last episodes are held out (none when
    there is only one episode)."""
    n_eps = len(demos.episodes)
    n_val = min(n_eps - 1, math.ceil(val_fraction * n_eps)) if val_fraction > 0 else 0
    is_val = demos.sample_episode >= n_eps - n_val
    samples = np.arange(len(demos.sample_rows))
    return samples[~is_val], samples[is_val]


class Batches:
    """Tensors for sample indices: images [B, 3, S, S] floats 0..255 per camera, normalised
    state [B, 6] and target chunk [B, K, 6]."""

    def __init__(self, demos: Demonstrations, norm: dict[str, np.ndarray], chunk: int):
        self.demos, self.chunk = demos, chunk
        self.state_n = (demos.state - norm["state_mean"]) / norm["state_std"]
        self.action_n = (demos.action - norm["action_mean"]) / norm["action_std"]

    def get(
        self, samples: np.ndarray
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        d = self.demos
        rows = d.sample_rows[samples]
        images = {
            c: torch.from_numpy(d.images[c][samples]).permute(0, 3, 1, 2).float() for c in d.cameras
        }
        idx = d.chunk_rows(rows, self.chunk)
        return (
            images,
            torch.from_numpy(self.state_n[rows]),
            torch.from_numpy(self.action_n[idx]),
        )


def learning_rate(step: int, config: PolicyTrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * min(1.0, progress)))


def validation_l1(net: BCPolicyNet, batches: Batches, samples: np.ndarray) -> float | None:
    if len(samples) == 0:
        return None
    net.eval()
    total = 0.0
    with torch.no_grad():
        for lo in range(0, len(samples), 256):
            images, state_n, target_n = batches.get(samples[lo : lo + 256])
            total += float(chunk_l1(net(images, state_n), target_n)) * len(state_n)
    net.train()
    return total / len(samples)


def save_policy(
    path: Path,
    net: BCPolicyNet,
    norm: dict[str, np.ndarray],
    fps: int,
    meta: dict,
) -> None:
    norm_t = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in norm.items()}
    header = {
        "kind": KIND,
        "policy_config": net.config.model_dump(mode="json"),
        "fps": fps,
        **meta,
    }
    save_tensors(path, {"policy": net.state_dict(), "norm": norm_t}, header)


def train_policy(
    job: BCPolicyJob,
    data: Path,
    out: Path,
    command: str,
    progress: bool = True,
    log: Callable[[str], None] = tqdm.write,
) -> dict:
    """Trains a chunk policy on ``data`` and writes it to ``out/policy.safetensors``; returns
    the figures (losses, counts, wall time)."""
    cfg, tc = job.policy, job.train
    torch.manual_seed(tc.seed)
    t0 = time.perf_counter()
    bars: list[tqdm] = []  # the decoding bar starts with the first episode (not before checks)

    def decoded(n: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc="decode", unit="episode", disable=not progress))
        bars[0].update(n - bars[0].n)

    demos = load_demonstrations(
        data,
        cfg.cameras,
        cfg.image_size,
        job.data.successful_only,
        job.data.max_episodes,
        job.data.frame_stride,
        decoded,
    )
    for b in bars:
        b.close()
    decode_s = time.perf_counter() - t0
    norm = normalization(data, demos)
    train_idx, val_idx = split_samples(demos, job.data.val_fraction)
    rng = np.random.default_rng(tc.seed)
    val_idx = np.sort(rng.permutation(val_idx)[: tc.val_samples])
    log(
        f"{len(demos.episodes)} episodes ({len(demos.state)} frames, {len(train_idx)} training "
        f"and {len(val_idx)} held-out samples, images of {', '.join(cfg.cameras)}) decoded in "
        f"{decode_s:.0f} s"
    )
    batches = Batches(demos, norm, cfg.chunk)
    net = BCPolicyNet(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    gen = torch.Generator().manual_seed(tc.seed)
    metrics = MetricLog(out / "metrics.jsonl")
    path = out / POLICY_FILE
    figures: dict = {}

    def meta(step: int) -> dict:
        return {
            "step": step,
            "made_by": command,
            "dataset": str(data),
            "episodes": len(demos.episodes),
            "frames": len(demos.state),
            "successful_only": job.data.successful_only,
            "tasks": demos.tasks,
            "job_config": job.model_dump(mode="json"),
            "figures": figures,
        }

    bar = tqdm(total=tc.steps, desc="policy", unit="step", disable=not progress)
    t_train = time.perf_counter()
    for step in range(tc.steps):
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, tc)
        samples = train_idx[rng.integers(0, len(train_idx), tc.batch_size)]
        images, state_n, target_n = batches.get(samples)
        images = {c: random_shift(x, tc.shift_px, gen) for c, x in images.items()}
        if tc.state_noise > 0:
            state_n = state_n + tc.state_noise * torch.randn(state_n.shape, generator=gen)
        loss = chunk_l1(net(images, state_n), target_n)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        metrics.add({"train_l1": loss.item()})
        bar.update(1)
        done = step + 1
        if done % tc.log_every == 0 or done == tc.steps:
            record = metrics.flush(
                step=done,
                wall_s=time.perf_counter() - t_train,
                val_l1=validation_l1(net, batches, val_idx),
                lr=learning_rate(step, tc),
            )
            figures.update(train_l1=record["train_l1"], val_l1=record["val_l1"], step=done)
            val = record["val_l1"]
            bar.set_postfix_str(
                f"train L1 {record['train_l1']:.3f}"
                + (f", held-out L1 {val:.3f}" if val is not None else "")
            )
        if done % tc.checkpoint_every == 0 and done < tc.steps:  # the last one: below
            save_policy(path, net, norm, demos.fps, meta(done))
    bar.close()
    figures.update(
        episodes=len(demos.episodes),
        frames=len(demos.state),
        decode_s=decode_s,
        train_s=time.perf_counter() - t_train,
    )
    save_policy(path, net, norm, demos.fps, meta(tc.steps))
    return dict(figures)

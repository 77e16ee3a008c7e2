"""Training loops: the world model on a replay, and an agent that learns from its own experience.

Environments are passed in as factories and used through the gymnasium API only (reset/step),
with dict observations; nothing here imports a simulator.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from . import distributed
from .atomic import atomic_write_text
from .behavior import Behavior
from .checkpoint import load_optimizer_tensors, optimizer_tensors
from .config import AgentConfig, BehaviorConfig, ModelConfig, TrainConfig
from .device import autocast, maybe_compile
from .distributed import Distributed
from .model import ModelSpec, WorldModel, metrics_to_floats
from .replay import Replay, episode_from_steps

CHECKPOINT = "checkpoint.safetensors"


def to_torch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Floats become float32; uint8 images and bool flags keep their dtype."""
    out = {}
    for k, v in batch.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        out[k] = t.float() if t.is_floating_point() else t
    return out


def obs_to_torch(obs: dict[str, np.ndarray], keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """One observation dict -> a batch of one."""
    return {k: to_torch({k: np.asarray(obs[k])[None]})[k] for k in keys}


def sparse_observations(
    shape: tuple[int, int],
    every_max: int,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """``[B, T]`` mask: sequence b is observed every N_b steps (N_b uniform in 1..every_max)
    from a random phase; None when every_max is 1 (all observed)."""
    if every_max <= 1:
        return None
    batch, length = shape
    every = torch.randint(1, every_max + 1, (batch, 1), generator=generator, device=device)
    phase = (torch.rand(batch, 1, generator=generator, device=device) * every).long()
    return (torch.arange(length, device=device)[None] - phase) % every == 0


class MetricLog:
    """Metrics as JSON lines (one object per logging point) plus a running mean for printing."""

    def __init__(self, path: Path | None):
        self.path = path
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1

    def flush(self, **extra: Any) -> dict[str, float]:
        means = {k: v / max(self.count, 1) for k, v in self.sums.items()}
        record = {**extra, **means}
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(finite_or_null(record), allow_nan=False) + "\n")
        self.sums, self.count = {}, 0
        return record

    def keep_until(self, key: str, value: float) -> None:
        """Drops the lines a resumed (or restarted) run will write again: those whose ``key`` is
        above ``value``, and a half-written last line."""
        if self.path is None or not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get(key, math.inf) <= value:
                keep.append(line + "\n")
        atomic_write_text(self.path, "".join(keep))


def finite_or_null(obj: Any) -> Any:
    """Non-finite floats (a diverged loss, no episode yet) as None, so files stay valid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return obj


def format_metrics(record: dict[str, float], keys: tuple[str, ...]) -> str:
    return "  ".join(f"{k}={record[k]:.4g}" for k in keys if k in record)


class _Loss(torch.nn.Module):
    """The world model's loss as ``forward``: what DistributedDataParallel and torch.compile
    wrap (DDP syncs gradients only for what runs through its forward)."""

    def __init__(self, model: WorldModel):
        super().__init__()
        self.model = model

    def forward(self, batch, generator, observed):
        return self.model.loss_tensors(batch, generator=generator, observed=observed)


class WorldModelTrainer:
    """Adam on the ELBO, with gradient clipping; saves and resumes through one checkpoint file.

    ``device``: where the model, its optimizer and each batch live (default: the CPU).
    ``autocast_dtype``: torch.bfloat16 runs the networks under autocast (see
    world_model/device.py); None is plain float32. ``compile``: the loss (forward and, through
    AOTAutograd, its backward) runs through torch.compile. ``dist``: this process's place among
    torchrun's processes; gradients are averaged over them by DistributedDataParallel.
    """

    def __init__(
        self,
        model: WorldModel,
        config: TrainConfig,
        device: torch.device | None = None,
        autocast_dtype: torch.dtype | None = None,
        compile: bool = False,
        dist: Distributed | None = None,
    ):
        self.device = device or torch.device("cpu")
        self.model, self.config = model.to(self.device), config
        self.autocast_dtype, self.compiled = autocast_dtype, compile
        self.dist = dist or Distributed()
        self.opt = torch.optim.Adam(model.parameters(), config.lr, eps=config.eps)
        self.step = 0
        self._loss = maybe_compile(distributed.wrap(_Loss(model), self.dist, self.device), compile)

    def update(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> tuple[dict[str, float], Any]:
        """One update on ``batch`` (CPU or device tensors). ``generator`` must live on the
        trainer's device (its samples are drawn there)."""
        metrics, post = self.update_tensors(batch, generator)
        return metrics_to_floats(metrics), post

    def update_tensors(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> tuple[dict[str, torch.Tensor], Any]:
        """``update`` with its metrics left as 0-d tensors on the device (no sync); with
        several processes they are averaged over them."""
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        observed = sparse_observations(
            batch["action"].shape[:2], self.config.obs_every_max, generator, self.device
        )
        with autocast(self.device, self.autocast_dtype):
            loss, metrics, post = self._loss(batch, generator, observed)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        metrics["grad_norm"] = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), self.config.grad_clip
        ).detach()
        self.opt.step()
        self.step += 1
        if self.dist.enabled:
            values = distributed.mean_over_ranks(torch.stack(list(metrics.values())), self.dist)
            metrics = dict(zip(metrics, values))
        return metrics, post

    def save(
        self,
        path: Path,
        meta: dict[str, Any] | None = None,
        extra: dict[str, dict[str, torch.Tensor]] | None = None,
    ) -> None:
        groups = {"opt": optimizer_tensors(self.opt, "wm"), **(extra or {})}
        self.model.save(path, {"step": self.step, **(meta or {})}, groups)

    def restore(self, groups: dict[str, dict[str, torch.Tensor]], meta: dict[str, Any]) -> None:
        if "opt" in groups:
            load_optimizer_tensors(self.opt, groups["opt"], "wm")
        self.step = int(meta.get("step", 0))


def train_world_model(
    model: WorldModel,
    replay: Replay,
    config: TrainConfig,
    out_dir: Path,
    steps: int,
    job_config: dict | None = None,
    trainer: WorldModelTrainer | None = None,
    progress: bool = True,
    log: Callable[[str], None] = tqdm.write,
    meta: dict[str, Any] | None = None,
) -> WorldModelTrainer:
    """Trains until ``trainer.step == steps``, logging and checkpointing into ``out_dir``.

    Pass a restored trainer to resume; the replay sampler is reseeded from the step so a resumed
    run does not replay the same batches again. With several processes (the trainer's
    ``dist``), each samples its own shard of the episodes with its own seed, and rank 0 alone
    logs and writes the checkpoint (after every rank has finished the same update). ``meta``:
    more header fields for the checkpoint.
    """
    out_dir = Path(out_dir)
    trainer = trainer or WorldModelTrainer(model, config)
    ctx = trainer.dist
    if ctx.enabled:
        replay = replay.shard(ctx.rank, ctx.world)
    rng = np.random.default_rng([config.seed, trainer.step, ctx.rank])
    gen = torch.Generator(trainer.device).manual_seed(
        config.seed * 1_000_003 + trainer.step + 7_919 * ctx.rank
    )
    metrics_log = MetricLog(out_dir / "metrics.jsonl" if ctx.is_main else None)
    metrics_log.keep_until("step", trainer.step)
    meta = {**(meta or {}), "job_config": job_config or {}, "processes": ctx.world}
    model.train()
    bar = tqdm(
        total=steps,
        initial=trainer.step,
        desc="world model",
        unit="step",
        disable=not progress or not ctx.is_main,
        dynamic_ncols=True,
    )
    if not ctx.is_main:
        log = _silent
    t0 = time.perf_counter()
    while trainer.step < steps:
        batch = to_torch(replay.sample(config.batch_size, config.seq_len, rng))
        metrics, _ = trainer.update_tensors(batch, gen)
        metrics_log.add(metrics_to_floats(metrics))
        bar.update(1)
        if trainer.step % config.log_every == 0 or trainer.step == steps:
            wall_s = time.perf_counter() - t0
            record = metrics_log.flush(step=trainer.step, wall_s=wall_s)
            bar.set_postfix_str(format_metrics(record, ("loss", "loss_obs", "kl")))
            log(
                f"step {trainer.step}: "
                + format_metrics(
                    record,
                    (
                        "loss",
                        "loss_obs",
                        "loss_reward",
                        "loss_cont",
                        "loss_kl",
                        "kl",
                        "loss_open_loop_kl",
                        *[k for k in record if k.startswith("recon_mse")],
                    ),
                )
            )
        if trainer.step % config.checkpoint_every == 0 or trainer.step == steps:
            if ctx.is_main:
                trainer.save(out_dir / CHECKPOINT, meta)
            distributed.barrier(ctx)  # no rank runs ahead of a checkpoint being written
    bar.close()
    return trainer


def _silent(message: str) -> None:
    """The log of ranks other than 0."""


# --- acting in an environment -------------------------------------------------------------


class Agent:
    """World model + behaviour, acting on one environment step at a time (batch of one)."""

    def __init__(self, wm: WorldModel, behavior: Behavior | None):
        self.wm, self.behavior = wm, behavior
        self.reset()

    def reset(self) -> None:
        self.device = next(self.wm.parameters()).device
        self.state = self.wm.initial(1)
        self.prev_action = torch.zeros(1, self.wm.spec.action_dim, device=self.device)
        self.first = True

    @torch.no_grad()
    def act(
        self, obs: dict[str, np.ndarray], sample: bool, generator: torch.Generator | None = None
    ) -> np.ndarray:
        """Returns the action in [-1, 1] (model units)."""
        first = torch.tensor([self.first], device=self.device)
        obs_t = {k: v.to(self.device) for k, v in obs_to_torch(obs, self.wm.obs_keys).items()}
        self.state, _ = self.wm.obs_step(self.state, self.prev_action, obs_t, first, generator)
        action = self.behavior.policy(self.state, sample, generator)
        self.prev_action, self.first = action, False
        return action[0].cpu().numpy()


def step_record(
    obs: dict,
    action: np.ndarray,
    reward: float,
    first: bool,
    last: bool = False,
    terminal: bool = False,
) -> dict[str, np.ndarray]:
    """One step in the replay's convention (see world_model/replay.py)."""
    return {
        **{k: np.asarray(v) for k, v in obs.items()},
        "action": action,
        "reward": np.float32(reward),
        "is_first": first,
        "is_last": last,
        "is_terminal": terminal,
    }


def to_env_action(action: np.ndarray, spec: ModelSpec) -> np.ndarray:
    low, high = np.asarray(spec.action_low), np.asarray(spec.action_high)
    return (low + (np.clip(action, -1, 1) + 1) * 0.5 * (high - low)).astype(np.float32)


def run_episode(
    env,
    policy: Callable[[dict[str, np.ndarray]], np.ndarray],
    spec: ModelSpec,
    seed: int | None = None,
) -> dict[str, np.ndarray]:
    """Plays one episode; ``policy`` maps an observation to an action in [-1, 1].

    Recorded in the replay's convention: action[t] taken after obs t (zeros on the last step),
    reward[t] received on arriving at obs t, actions stored in the environment's own units.
    """
    obs, _ = env.reset(seed=seed)
    steps, reward, first = [], 0.0, True
    while True:
        env_action = to_env_action(policy(obs), spec)
        steps.append(step_record(obs, env_action, reward, first))
        obs, reward, terminated, truncated, _ = env.step(env_action)
        first = False
        if terminated or truncated:
            steps.append(
                step_record(obs, np.zeros_like(env_action), reward, False, True, bool(terminated))
            )
            return episode_from_steps(steps)


def random_policy(action_dim: int, rng: np.random.Generator) -> Callable:
    return lambda obs: rng.uniform(-1, 1, size=action_dim).astype(np.float32)


def collect_random(
    make_env: Callable,
    spec: ModelSpec,
    replay: Replay,
    seed: int,
    steps: int = 0,
    episodes: int = 0,
    progress: bool = True,
    first_episode: int = 0,
) -> None:
    """Adds uniform-random-policy episodes to ``replay`` until it has gained at least ``steps``
    transitions and ``episodes`` episodes. Episode i is reset with seed ``seed + i``, counting
    from ``first_episode``: pass the number already collected to continue an interrupted
    collection without repeating its episodes."""
    env = make_env()
    rng = np.random.default_rng(seed if first_episode == 0 else [seed, first_episode])
    policy = random_policy(spec.action_dim, rng)
    bar = tqdm(
        total=steps or episodes,
        desc="collect",
        unit="step" if steps else "episode",
        disable=not progress,
        dynamic_ncols=True,
    )
    done, episode = 0, 0
    while done < steps or episode < episodes:
        ep = run_episode(env, policy, spec, seed=seed + first_episode + episode)
        replay.add(ep)
        done += len(ep["action"]) - 1
        episode += 1
        bar.update(len(ep["action"]) - 1 if steps else 1)
    bar.close()
    env.close()


def evaluate_policy(
    make_env: Callable,
    agent: Agent,
    spec: ModelSpec,
    episodes: int,
    seed: int,
    progress: bool = True,
) -> list[float]:
    """Returns of ``episodes`` episodes with the actor's mode (deterministic)."""
    env = make_env()
    returns = []
    for i in tqdm(
        range(episodes), desc="evaluate", unit="episode", disable=not progress, dynamic_ncols=True
    ):
        agent.reset()
        ep = run_episode(env, lambda obs: agent.act(obs, sample=False), spec, seed=seed + i)
        returns.append(float(ep["reward"].sum()))
    env.close()
    return returns


def spec_from_env(env, image_keys: tuple[str, ...] = ()) -> ModelSpec:
    obs_space = env.observation_space
    vector_dims = {
        k: int(math.prod(s.shape))
        for k, s in obs_space.spaces.items()
        if k not in image_keys and len(s.shape) == 1
    }
    return ModelSpec(
        vector_dims=vector_dims,
        image_keys=image_keys,
        action_dim=int(env.action_space.shape[0]),
        action_low=[float(x) for x in env.action_space.low],
        action_high=[float(x) for x in env.action_space.high],
    )


def train_agent(
    make_env: Callable,
    model_config: ModelConfig,
    train_config: TrainConfig,
    behavior_config: BehaviorConfig,
    agent_config: AgentConfig,
    out_dir: Path,
    job_config: dict | None = None,
    progress: bool = True,
    log: Callable[[str], None] = tqdm.write,
    device: torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Learns a policy from scratch: random prefill, then act / train world model and behaviour
    at ``train_ratio`` replayed steps per environment step. Writes eval.json and returns it.
    ``device``: where the networks learn and act (the environment steps on the CPU);
    ``autocast_dtype`` applies to the world model's updates."""
    device = device or torch.device("cpu")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if agent_config.obs_every_max is not None:
        train_config = train_config.model_copy(update={"obs_every_max": agent_config.obs_every_max})
    torch.manual_seed(train_config.seed)
    env = make_env()
    spec = spec_from_env(env)
    wm = WorldModel(model_config, spec)
    behavior = Behavior(wm.rssm.feat_dim, spec.action_dim, behavior_config).to(device)
    trainer = WorldModelTrainer(wm, train_config, device=device, autocast_dtype=autocast_dtype)
    replay = Replay(out_dir / "replay")
    rng = np.random.default_rng(train_config.seed)
    gen = torch.Generator(device).manual_seed(train_config.seed)
    agent = Agent(wm, behavior)
    random_act = random_policy(spec.action_dim, rng)
    per_update = train_config.batch_size * train_config.seq_len
    metrics_log = MetricLog(out_dir / "metrics.jsonl")
    metrics_log.keep_until("env_step", 0)
    t0 = time.perf_counter()
    budget = 0.0
    episode_steps: list[dict] = []
    episode_returns: list[float] = []
    obs, _ = env.reset(seed=train_config.seed)
    reward, first, ep_return, episode = 0.0, True, 0.0, 0
    bar = tqdm(
        total=agent_config.env_steps,
        desc="agent",
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
    )
    for step in range(agent_config.env_steps):
        if first:
            agent.reset()
        if step < agent_config.prefill:
            action = random_act(obs)
        else:
            action = agent.act(obs, sample=True, generator=gen)
        env_action = to_env_action(action, spec)
        episode_steps.append(step_record(obs, env_action, reward, first))
        obs, reward, terminated, truncated, _ = env.step(env_action)
        ep_return += reward
        first = False
        if terminated or truncated:
            episode_steps.append(
                step_record(obs, np.zeros_like(env_action), reward, False, True, bool(terminated))
            )
            replay.add(episode_from_steps(episode_steps))
            episode_returns.append(ep_return)
            episode += 1
            episode_steps, ep_return, reward, first = [], 0.0, 0.0, True
            obs, _ = env.reset(seed=train_config.seed + episode)
        bar.update(1)
        if step + 1 >= agent_config.prefill and replay.num_episodes:
            budget += agent_config.train_ratio / per_update
            while budget >= 1:
                budget -= 1
                batch = to_torch(replay.sample(train_config.batch_size, train_config.seq_len, rng))
                metrics, post = trainer.update(batch, gen)
                metrics.update(behavior.train_step(wm, post.detach(), gen))
                metrics_log.add(metrics)
        if (step + 1) % agent_config.log_every == 0 and metrics_log.count:
            recent = episode_returns[-5:]
            record = metrics_log.flush(
                env_step=step + 1,
                updates=trainer.step,
                wall_s=time.perf_counter() - t0,
                train_return=float(np.mean(recent)) if recent else float("nan"),
            )
            bar.set_postfix_str(format_metrics(record, ("train_return", "loss", "imag_return")))
            log(
                f"env step {step + 1}: "
                + format_metrics(
                    record,
                    (
                        "train_return",
                        "updates",
                        "loss",
                        "loss_obs",
                        "kl",
                        "imag_return",
                        "actor_entropy",
                        "critic_loss",
                    ),
                )
            )
        if (step + 1) % agent_config.checkpoint_every == 0:
            save_agent(
                out_dir / CHECKPOINT,
                trainer,
                behavior,
                {"env_step": step + 1, "job_config": job_config or {}},
            )
    bar.close()
    env.close()
    train_wall = time.perf_counter() - t0
    save_agent(
        out_dir / CHECKPOINT,
        trainer,
        behavior,
        {"env_step": agent_config.env_steps, "job_config": job_config or {}},
    )
    returns = evaluate_policy(
        make_env,
        agent,
        spec,
        agent_config.eval_episodes,
        seed=10_000_000 + train_config.seed,
        progress=progress,
    )
    result = {
        "return_mean": float(np.mean(returns)),
        "return_std": float(np.std(returns)),
        "episodes": len(returns),
        "env_steps": agent_config.env_steps,
        "wall_s": time.perf_counter() - t0,
        "train_wall_s": train_wall,
        "updates": trainer.step,
        "returns": returns,
    }
    atomic_write_text(
        out_dir / "eval.json", json.dumps(finite_or_null(result), indent=2, allow_nan=False)
    )
    return result


def load_agent(path: Path) -> tuple[WorldModel, Behavior, dict]:
    """A world model and its actor (and critic, where the file has one) from an agent file."""
    wm, meta, groups = WorldModel.load(path)
    if "actor" not in groups or "behavior_config" not in meta:
        from .errors import CheckpointError

        raise CheckpointError(f"{path} holds no actor (is it a `kiwi train agent` checkpoint?)")
    behavior = Behavior(
        wm.rssm.feat_dim, wm.spec.action_dim, BehaviorConfig.model_validate(meta["behavior_config"])
    )
    behavior.actor.load_state_dict(groups["actor"])
    if "critic" in groups:
        behavior.critic.load_state_dict(groups["critic"])
    return wm.eval(), behavior.eval(), meta


def save_agent(
    path: Path, trainer: WorldModelTrainer, behavior: Behavior, meta: dict[str, Any]
) -> None:
    groups = {
        "actor": behavior.actor.state_dict(),
        "critic": behavior.critic.state_dict(),
        "slow_critic": behavior.slow_critic.state_dict(),
    }
    trainer.save(path, {"behavior_config": behavior.config.model_dump(mode="json"), **meta}, groups)

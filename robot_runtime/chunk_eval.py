"""`kiwi eval chunks`: late action chunks executed latest, blend or latent, in lockstep.

One episode: the simulated arm (``grasp``: kiwi/Grasp-v0; ``grasp_moving``: kiwi/GraspMoving-v0,
the cube sliding at 2-4 cm/s) driven by the runtime's control step (estimator, chunk policy in
the mode under test, safety) in virtual time. Two streams reach the step:

- perception (the slow process's detector: fast, and always the same): a wrist frame every
  ``obs_every`` ticks, the cube found in it, delivered ``obs_delay`` ticks later to the
  estimator;
- the chunk policy (the slow part): it sees the world at the capture tick (state, images,
  timestamp), and its chunk arrives ``delay`` ticks later. One request is in flight at a time:
  the next capture is ``chunk_every`` ticks after the last, or at the answer, whichever is
  later (a policy busy for 800 ms answers at most every 800 ms).

Figures per (task, mode, delay): success rate (lifted 5 cm and held 0.5 s before the episode's
end), completion time of the successes (seconds from the start), and the RMS jerk of the
commanded arm joints at chunk boundaries (the third difference of the commands at the four
ticks from each takeover, deg/s^3; the first chunk of an episode, taking over from rest, is
not a boundary).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from . import config

TASKS = ("grasp", "grasp_moving")
DELAYS_MS = (0, 100, 200, 300, 500, 800)
MODES = ("latest", "blend", "latent")
METRICS = ("success_rate", "completion_s", "jerk_rms")
CHUNK_EVAL_SEED = config.CHUNK_EVAL_SEED  # held out from every training and evaluation range
JERK_TICKS = 4  # third differences at the takeover tick and the three after it


@dataclass(frozen=True)
class Setup:
    task: str
    mode: str
    delay_ticks: int
    obs_every: int = 5  # perception: 10 Hz at 50 Hz
    obs_delay: int = 2  # ... delivered 40 ms after capture
    chunk_every: int = 10  # policy requests: at most 5 Hz
    max_s: float = 4.6  # + the policy's delay (the scripted grasp succeeds at 4.2 s, or never)


@dataclass
class Episode:
    seed: int
    success: bool
    completion_s: float  # nan when it failed
    jerk: np.ndarray  # [samples, 5] deg/s^3 at chunk boundaries
    refused: dict[str, int] = field(default_factory=dict)
    policy_errors: int = 0


def make_env(task: str):
    if task == "grasp":
        from sim.kiwi_grasp import KiwiGraspEnv

        return KiwiGraspEnv()
    if task == "grasp_moving":
        from sim.kiwi_grasp_moving import KiwiGraspMovingEnv

        return KiwiGraspMovingEnv()
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def boundary_jerk(commands: np.ndarray, boundaries, period_s: float) -> np.ndarray:
    """``[samples, 5]``: third differences of the arm's commands (``[ticks, joints]``) at each
    boundary tick b (ticks b .. b + JERK_TICKS - 1 where they exist), in deg/s^3."""
    q = commands[:, :5]
    jerk = (q[3:] - 3 * q[2:-1] + 3 * q[1:-2] - q[:-3]) / period_s**3  # jerk[j] ends at tick j+3
    out = []
    for b in boundaries:
        for tick in range(b, b + JERK_TICKS):
            if 3 <= tick < len(q):
                out.append(jerk[tick - 3])
    return np.array(out).reshape(-1, 5)


_ENVS: dict[str, Any] = {}  # one simulator per task and process (a renderer costs ~1 s)


@torch.no_grad()
def run_episode(job, wm, policy, setup: Setup, seed: int) -> Episode:
    from drivers.sim_arm import SimArm
    from sim.perception import PerceptionNoise

    from .chunk_modes import ChunkPolicy
    from .chunk_policies import DEFAULT_DT, TASK, check_chunk_rows
    from .control import ControlStep
    from .estimator import LatentEstimator
    from .messages import Chunk
    from .perception import CubePerception
    from .safety import BusHealth

    period = 1.0 / job.runtime.rate_hz
    s, sc, f = job.slow, job.safety, job.runtime.faults
    noise = PerceptionNoise(s.noise_far_m, s.noise_near_m, s.noise_far_deg, s.noise_near_deg)
    size = int(getattr(policy, "image_size", s.image_size))
    cameras = tuple(getattr(policy, "cameras", ("wrist", "front")))
    env = _ENVS.get(setup.task)
    if env is None:
        env = _ENVS[setup.task] = make_env(setup.task)
    arm = SimArm(env=env, seed=seed)
    arm.connect()
    chunks = ChunkPolicy(period, setup.mode, job.runtime.chunk, arm.limits, sc.max_step_deg)
    estimator = LatentEstimator(wm, period, buffer_ticks=512, seed=seed, budget_s=1e9)
    step = ControlStep(
        wm,
        estimator,
        chunks,
        arm,  # type: ignore[arg-type]  # (SimArm's joint_names is a fixed-length tuple)
        sc,
        BusHealth(f.max_consecutive_failures, f.max_failure_rate, f.window_ticks),
        period,
    )
    step.start(0.0, arm.read_joints())
    if hasattr(policy, "reset"):
        try:
            policy.reset(seed=seed)
        except TypeError:
            policy.reset()
    perception = CubePerception(noise, seed=seed + 1)
    dt = float(getattr(policy, "dt", DEFAULT_DT))
    observations: list[tuple[int, int, dict]] = []  # (arrival, capture tick, obs)
    in_flight: tuple[int, Chunk] | None = None
    next_request, errors = 0, 0
    commands = []
    success_tick = None
    max_ticks = int(round((setup.max_s + setup.delay_ticks * period) / period))
    for tick in range(max_ticks):
        t = tick * period
        joints = arm.read_joints()
        frames: dict[str, np.ndarray] = {}
        if tick % setup.obs_every == 0:
            frames["wrist"] = env.render_camera("wrist", s.image_size, s.image_size)
            found = perception(frames["wrist"], joints)
            if found is not None:
                obs = {"state": joints.astype(np.float32), "object": found}
                observations.append((tick + setup.obs_delay, tick, obs))
        if in_flight is None and tick >= next_request:
            seen = {
                f"observation.images.{cam}": (
                    frames[cam]
                    if cam in frames and size == s.image_size
                    else env.render_camera(cam, size, size)
                )
                for cam in cameras
            }
            seen.update(
                {"observation.state": joints.astype(np.float32), "task": TASK, "timestamp": t}
            )
            try:
                rows = check_chunk_rows(policy(seen), len(joints))
                in_flight = (tick + setup.delay_ticks, Chunk(rows, t, dt, t))
            except Exception:  # a policy that raises or answers nonsense never moves the arm
                errors += 1
            next_request = tick + setup.chunk_every
        for _, capture, obs in [o for o in observations if o[0] <= tick]:
            step.observe(obs, capture * period, t)
        observations = [o for o in observations if o[0] > tick]
        if in_flight is not None and in_flight[0] <= tick:
            step.chunk(in_flight[1], t)
            in_flight = None
            next_request = max(next_request, tick)
        commands.append(step(tick, t).command)
        if (arm.last_info or {}).get("is_success"):
            success_tick = tick + 1
            break
    boundaries = list(chunks.stats.boundaries)[1:]
    return Episode(
        seed,
        success_tick is not None,
        success_tick * period if success_tick is not None else math.nan,
        boundary_jerk(np.array(commands), boundaries, period),
        dict(chunks.stats.refused),
        errors,
    )


def summarize(task: str, mode: str, delay_ms: int, episodes: list[Episode]) -> list[dict]:
    """JSON rows ``{task, mode, delay_ms, metric, value}`` (plus ``episodes`` and ``ci95``,
    the half-width of a 95 % interval: Wilson for the success rate, t-ish 1.96 SE else)."""
    n = len(episodes)
    wins = sum(e.success for e in episodes)
    p = wins / n if n else math.nan
    z = 1.96
    wilson = (
        z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n) if n else math.nan
    )
    times = [e.completion_s for e in episodes if e.success]
    jerk = np.concatenate([e.jerk for e in episodes]) if episodes else np.zeros((0, 5))
    base = {"task": task, "mode": mode, "delay_ms": delay_ms, "episodes": n}
    refused: dict[str, int] = {}
    for e in episodes:
        for k, v in e.refused.items():
            refused[k] = refused.get(k, 0) + v
    return [
        {**base, "metric": "success_rate", "value": p, "ci95": wilson},
        {
            **base,
            "metric": "completion_s",
            "value": float(np.mean(times)) if times else math.nan,
            "ci95": 1.96 * float(np.std(times)) / math.sqrt(len(times))
            if len(times) > 1
            else math.nan,
        },
        {
            **base,
            "metric": "jerk_rms",
            "value": float(np.sqrt(np.mean(jerk**2))) if jerk.size else math.nan,
            "ci95": math.nan,
            "refused": refused,
            "policy_errors": sum(e.policy_errors for e in episodes),
        },
    ]


# --- the grid -------------------------------------------------------------------------------
_WORKER: dict = {}


def _init_worker(job, checkpoint: str, policy_spec: str) -> None:
    from sim.perception import PerceptionNoise

    from .chunk_policies import load_policy
    from .service import load_world_model

    torch.set_num_threads(1)
    s = job.slow
    noise = PerceptionNoise(s.noise_far_m, s.noise_near_m, s.noise_far_deg, s.noise_near_deg)
    _WORKER.update(job=job, wm=load_world_model(checkpoint), policy=load_policy(policy_spec, noise))


def _run_item(item: tuple[Setup, int]) -> tuple[Setup, Episode]:
    setup, seed = item
    w = _WORKER
    return setup, run_episode(w["job"], w["wm"], w["policy"], setup, seed)


def _with_max_s(setup: Setup, max_s: float | None) -> Setup:
    return setup if max_s is None else replace(setup, max_s=max_s)


def run_grid(
    job,
    policy_spec: str,
    tasks,
    modes,
    delays_ms,
    episodes: int | dict[str, int],
    seed: int,
    workers: int = 1,
    max_s: float | None = None,
    progress: bool = True,
) -> list[dict]:
    """Every (task, mode, delay) on seeds ``seed .. seed + episodes - 1`` (``episodes``: one
    count, or one per task; the same seeds in every cell of a task: differences between modes
    and delays are paired); JSON rows (``summarize``)."""
    from tqdm import tqdm

    period_ms = 1000.0 / job.runtime.rate_hz
    per_task = episodes if isinstance(episodes, dict) else dict.fromkeys(tasks, episodes)
    items = [
        (_with_max_s(Setup(task, mode, int(round(d / period_ms))), max_s), seed + i)
        for i in range(max(per_task.values()))  # seed-major: a partial run covers every cell
        for task in tasks
        if i < per_task[task]
        for d in delays_ms
        for mode in modes
    ]
    results: dict[tuple, list[Episode]] = {}
    bar = tqdm(total=len(items), desc="eval chunks", unit="episode", disable=not progress)
    if workers <= 1:
        _init_worker(job, job.runtime.checkpoint, policy_spec)
        done = map(_run_item, items)
        for setup, ep in done:
            results.setdefault((setup.task, setup.mode, setup.delay_ticks), []).append(ep)
            bar.update()
    else:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # no torch state shared with a forked child
        with ctx.Pool(workers, _init_worker, (job, job.runtime.checkpoint, policy_spec)) as pool:
            for setup, ep in pool.imap_unordered(_run_item, items):
                results.setdefault((setup.task, setup.mode, setup.delay_ticks), []).append(ep)
                bar.update()
    bar.close()
    rows = []
    for task in tasks:
        for mode in modes:
            for d in delays_ms:
                eps = results.get((task, mode, int(round(d / period_ms))), [])
                rows += summarize(task, mode, d, sorted(eps, key=lambda e: e.seed))
    return rows

"""`kiwi eval policy`: a chunk policy closed-loop in kiwi/Grasp-v0, with no delay.

Every ``execute_steps`` control steps the policy sees the wrist camera rendered now and the
joint state now, and the first ``execute_steps`` rows of its chunk are sent, one per step
(50 Hz). An episode ends when the grasp succeeds (the cube lifted 5 cm and held 0.5 s: the
env's ``is_success``) or after ``episode_s``. Seeds start at 500000 by default, outside every
seed range of configs/sim_grasp.yaml's header and the dataset's 0..999. ``--scripted`` also
plays the scripted grasp that made the demonstrations on the same seeds, for comparison.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from tqdm import tqdm

from .bc_data import IMAGE_PREFIX


def make_grasp_env():
    import gymnasium

    import sim
    import sim.envs  # noqa: F401  (registers kiwi/Grasp-v0)

    return gymnasium.make(sim.ENV_ID)


def policy_episode(
    env, policy: Callable, seed: int, execute_steps: int, max_steps: int, image_size: int
) -> dict:
    """One closed-loop episode; the policy's answer must be a finite [K >= execute_steps, 6]."""
    from sim.kiwi_grasp import CONTROL_HZ

    obs, info = env.reset(seed=seed)
    sim = env.unwrapped
    chunk = np.zeros((0, 6), np.float32)
    query_ms = []
    done_step = None
    for step in range(max_steps):
        k = step % execute_steps
        if k == 0:
            observation = {
                "observation.state": obs["state"].astype(np.float32),
                "task": "pick up the cube",
                "timestamp": step / CONTROL_HZ,
            }
            for cam in policy.cameras:  # type: ignore[attr-defined]
                observation[f"{IMAGE_PREFIX}{cam}"] = sim.render_camera(cam, image_size, image_size)
            t0 = time.perf_counter()
            chunk = policy(observation)
            query_ms.append((time.perf_counter() - t0) * 1e3)
            if chunk is None or chunk.shape[0] < execute_steps or not np.isfinite(chunk).all():
                raise ValueError(f"seed {seed}: the policy gave no usable chunk at step {step}")
        obs, _, terminated, truncated, info = env.step(chunk[k])
        if info["is_success"]:
            done_step = step + 1
            break
        if terminated or truncated:
            break
    return {
        "seed": seed,
        "success": done_step is not None,
        "completion_s": done_step / CONTROL_HZ if done_step is not None else None,
        "steps": done_step if done_step is not None else step + 1,
        "queries": len(query_ms),
        "query_ms_mean": float(np.mean(query_ms)),
    }


def scripted_episode(env, seed: int, max_steps: int) -> dict:
    """The scripted grasp of the demonstrations (sim/scripted.py) on the same seed."""
    from sim.kiwi_grasp import CONTROL_HZ
    from sim.scripted import ScriptedGrasp

    grasp = ScriptedGrasp()
    obs, info = env.reset(seed=seed)
    done_step = None
    for step in range(max_steps):
        obs, _, _, _, info = env.step(grasp.act(obs))
        if info["is_success"]:
            done_step = step + 1
            break
    return {
        "seed": seed,
        "success": done_step is not None,
        "completion_s": done_step / CONTROL_HZ if done_step is not None else None,
    }


def summarize(records: list[dict]) -> dict:
    times = [r["completion_s"] for r in records if r["success"]]
    n = len(records)
    rate = sum(r["success"] for r in records) / max(n, 1)
    return {
        "episodes": n,
        "successes": len(times),
        "success_rate": rate if n else None,
        # binomial standard error, so a reader can tell a real difference from noise
        "success_rate_se": float(np.sqrt(rate * (1 - rate) / n)) if n else None,
        "completion_s_mean": float(np.mean(times)) if times else None,
        "completion_s_median": float(np.median(times)) if times else None,
    }


def evaluate_policy(
    policy: Callable,
    episodes: int,
    seed: int,
    execute_steps: int,
    episode_s: float,
    image_size: int,
    scripted: bool = False,
    progress: bool = True,
    make_env: Callable = make_grasp_env,
) -> dict:
    from sim.kiwi_grasp import CONTROL_HZ

    dt = float(getattr(policy, "dt", 0.0))
    if abs(dt * CONTROL_HZ - 1.0) > 1e-6:
        raise ValueError(
            f"the policy's rows are {dt} s apart; kiwi/Grasp-v0 steps at {1 / CONTROL_HZ} s"
        )
    if not 1 <= execute_steps <= int(getattr(policy, "chunk", execute_steps)):
        raise ValueError(
            f"--execute {execute_steps} must be 1..the policy's chunk ({policy.chunk})"  # type: ignore[attr-defined]
        )
    max_steps = int(round(episode_s * CONTROL_HZ))
    env = make_env()
    records, baseline = [], []
    bar = tqdm(
        range(seed, seed + episodes), desc="eval policy", unit="episode", disable=not progress
    )
    try:
        for s in bar:
            records.append(policy_episode(env, policy, s, execute_steps, max_steps, image_size))
            if scripted:
                baseline.append(scripted_episode(env, s, max_steps))
            bar.set_postfix_str(f"success {summarize(records)['success_rate']:.0%}")
    finally:
        env.close()
    summary = {
        **summarize(records),
        "seeds": [seed, seed + episodes - 1],
        "execute_steps": execute_steps,
        "chunk": getattr(policy, "chunk", None),
        "image_size": image_size,
        "delay_ms": 0,
        "query_ms_mean": float(np.mean([r["query_ms_mean"] for r in records])),
    }
    if scripted:
        summary["scripted"] = summarize(baseline)
    return {"summary": summary, "episodes": records, "scripted_episodes": baseline}

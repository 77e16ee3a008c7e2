"""`kiwi collect --env grasp`: scripted grasps in the simulated arm, recorded as replay episodes.

Each episode file holds, per step: the observation (``state``, ``object``, images if asked for),
``action`` (taken after that observation), ``reward``, the ``is_*`` flags, and for evaluation the
ground truth: ``is_success`` so far, ``cube_pos``/``cube_yaw_deg`` in the world,
``object_true`` (the noiseless detection), ``qpos`` (to replay it on screen) and the scripted
``phase``; constant per episode: ``success`` (the outcome), the seed and the randomised cube.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sim.outcomes import OUTCOMES, PHASES, classify
from world_model.config import ModelSpec
from world_model.replay import episode_files, episode_from_steps, save_episode, save_spec


def grasp_spec(cameras: tuple[str, ...] = ()) -> ModelSpec:
    from sim.kiwi_grasp import ACTION_HIGH, ACTION_LOW

    return ModelSpec(
        vector_dims={"state": 6, "object": 4},
        image_keys=tuple(cameras),
        action_dim=6,
        action_low=tuple(float(x) for x in ACTION_LOW),
        action_high=tuple(float(x) for x in ACTION_HIGH),
    )


def record_grasp(env, policy, seed: int) -> dict[str, np.ndarray]:
    """One scripted grasp episode in the replay's layout (see world_model/replay.py)."""
    obs, info = env.reset(seed=seed)
    policy.reset()
    steps = []
    reward, first = 0.0, True
    while True:
        action = policy.act(obs)
        steps.append(_step(env, obs, info, action, reward, first, policy.phase))
        obs, reward, terminated, truncated, info = env.step(action)
        first = False
        if policy.done or terminated or truncated:
            last = _step(env, obs, info, np.zeros_like(action), reward, False, policy.phase)
            last.update(is_last=True, is_terminal=bool(terminated))
            steps.append(last)
            break
    episode = episode_from_steps(steps)
    length = len(episode["action"])
    episode["success"] = np.full(length, bool(info["is_success"]))
    episode["seed"] = np.full(length, seed, dtype=np.int64)
    for key, value in env.unwrapped.episode_params.items():
        episode[key] = np.full(length, value, dtype=np.float32)
    return episode


def _step(
    env, obs: dict, info: dict, action: np.ndarray, reward: float, first: bool, phase: str
) -> dict[str, np.ndarray]:
    sim = env.unwrapped
    return {
        **{k: np.asarray(v) for k, v in obs.items()},
        "action": np.asarray(action, dtype=np.float32),
        "reward": np.float32(reward),
        "is_first": first,
        "is_last": False,
        "is_terminal": False,
        "is_success": bool(info["is_success"]),
        "cube_pos": np.asarray(info["cube_pos"], dtype=np.float32),
        "cube_yaw_deg": np.float32(info["cube_yaw_deg"]),
        "finger_contacts": np.asarray(info["finger_contacts"]),
        "object_true": sim.true_object().astype(np.float32),
        "qpos": sim.data.qpos.astype(np.float32).copy(),
        "phase": np.int8(PHASES.index(phase)),
    }


def collect_grasps(
    out: Path,
    episodes: int,
    seed: int,
    cameras: tuple[str, ...] = (),
    image_size: int = 64,
    progress: bool = True,
    make_env: Callable | None = None,
    log: Callable[[str], None] = tqdm.write,
) -> dict:
    """Records ``episodes`` scripted grasps with seeds ``seed .. seed + episodes - 1`` into ``out``
    (appending to what is there) and returns a summary."""
    import gymnasium

    import sim  # noqa: F401  (registers kiwi/Grasp-v0)
    from sim.scripted import ScriptedGrasp

    out = Path(out)
    save_spec(out, grasp_spec(cameras))
    env = (
        make_env()
        if make_env
        else gymnasium.make(sim.ENV_ID, cameras=cameras, image_size=image_size)
    )
    policy = ScriptedGrasp()
    successes, steps = 0, 0
    outcomes = dict.fromkeys(OUTCOMES, 0)
    t0 = time.perf_counter()
    bar = tqdm(
        range(episodes), desc="collect", unit="episode", disable=not progress, dynamic_ncols=True
    )
    for i in bar:
        episode = record_grasp(env, policy, seed + i)
        save_episode(out, episode)
        successes += bool(episode["success"][0])
        outcomes[classify(episode)] += 1
        steps += len(episode["action"])
        bar.set_postfix_str(f"success {successes / (i + 1):.0%}")
    env.close()
    wall = time.perf_counter() - t0
    summary = {
        "episodes": episodes,
        "successes": successes,
        "success_rate": successes / max(episodes, 1),
        "steps": steps,
        "wall_s": wall,
        "outcomes": outcomes,
        "seeds": [seed, seed + episodes - 1],
        "out": str(out),
        "total_episodes_in_folder": len(episode_files(out)),
    }
    return summary

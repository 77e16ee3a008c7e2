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
from world_model.errors import ReplayError
from world_model.replay import (
    SPEC_FILE,
    episode_files,
    episode_from_steps,
    load_spec,
    save_episode,
    save_spec,
)


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


def stored_seeds(out: Path) -> dict[int, list[Path]]:
    """``{seed: [episode files]}`` of the episodes in ``out`` (reads only each file's seed)."""
    seeds: dict[int, list[Path]] = {}
    for path in episode_files(out):
        try:
            with np.load(path, allow_pickle=False) as data:
                value = data["seed"][0] if "seed" in data.files else None
        except Exception as e:  # zipfile, numpy and OS errors for a damaged file
            reason = " ".join(str(e).split()) or type(e).__name__
            raise ReplayError(
                f"cannot read episode {path} ({reason}); the file is damaged: move it out of "
                "the folder"
            ) from e
        if value is None:
            raise ReplayError(
                f"{path} has no seed: not an episode from `kiwi collect`; collect into another "
                "folder"
            )
        seeds.setdefault(int(value), []).append(path)
    return seeds


def check_spec(out: Path, spec: ModelSpec) -> None:
    """Episodes of one folder share one spec.json: appending different ones is refused."""
    if not (out / SPEC_FILE).is_file():
        return
    stored = load_spec(out)
    if stored != spec:
        raise ReplayError(
            f"{out} holds episodes of another kind (its {SPEC_FILE}: images "
            f"{list(stored.image_keys) or 'none'}, vectors {stored.vector_dims}; these would "
            f"have images {list(spec.image_keys) or 'none'}, vectors {spec.vector_dims}); "
            "collect into another folder"
        )


def format_seeds(seeds: list[int], most: int = 6) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0..2, 5, 7..8"`` (at most ``most`` runs, then a count)."""
    runs: list[list[int]] = []
    for s in sorted(seeds):
        if runs and s == runs[-1][1] + 1:
            runs[-1][1] = s
        else:
            runs.append([s, s])
    text = [f"{a}..{b}" if b > a else f"{a}" for a, b in runs[:most]]
    if len(runs) > most:
        text.append(f"and {sum(b - a + 1 for a, b in runs[most:])} more")
    return ", ".join(text)


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
    """Records scripted grasps with seeds ``seed .. seed + episodes - 1`` into ``out`` and returns
    a summary. Appends to what is there, skipping seeds already stored (so re-running after a
    crash resumes, never stores a seed twice); a folder of another spec is refused."""
    import gymnasium

    import sim.envs  # noqa: F401  (registers kiwi/Grasp-v0)
    from sim.scripted import ScriptedGrasp

    out = Path(out)
    spec = grasp_spec(cameras)
    check_spec(out, spec)
    stored = stored_seeds(out)
    todo = [s for s in range(seed, seed + episodes) if s not in stored]
    if len(todo) < episodes:
        there = episodes - len(todo)
        log(
            f"{there} episode{'s' if there != 1 else ''} already there, "
            + (f"collecting seeds {format_seeds(todo)}" if todo else "nothing to collect")
        )
    repeated = sorted(s for s, paths in stored.items() if len(paths) > 1)
    if repeated:
        log(
            f"note: {out} stores seeds {format_seeds(repeated)} more than once (an earlier "
            "run); training sees those episodes twice"
        )
    save_spec(out, spec)
    env = (
        make_env()
        if make_env
        else gymnasium.make(sim.ENV_ID, cameras=cameras, image_size=image_size)
    )
    policy = ScriptedGrasp()
    successes, steps = 0, 0
    outcomes = dict.fromkeys(OUTCOMES, 0)
    t0 = time.perf_counter()
    bar = tqdm(todo, desc="collect", unit="episode", disable=not progress, dynamic_ncols=True)
    for i, episode_seed in enumerate(bar):
        episode = record_grasp(env, policy, episode_seed)
        save_episode(out, episode)
        successes += bool(episode["success"][0])
        outcomes[classify(episode)] += 1
        steps += len(episode["action"])
        bar.set_postfix_str(f"success {successes / (i + 1):.0%}")
    env.close()
    wall = time.perf_counter() - t0
    summary = {
        "episodes": len(todo),
        "already_there": episodes - len(todo),
        "successes": successes,
        "success_rate": successes / len(todo) if todo else None,
        "steps": steps,
        "wall_s": wall,
        "outcomes": outcomes,
        "seeds": [seed, seed + episodes - 1],
        "out": str(out),
        "total_episodes_in_folder": len(episode_files(out)),
    }
    return summary


LEROBOT_CAMERAS = ("wrist", "front")


def collect_grasps_lerobot(
    out: Path,
    episodes: int,
    seed: int,
    cameras: tuple[str, ...] = LEROBOT_CAMERAS,
    image_size: int = 64,
    camera_dtype: str = "video",
    task: str | None = None,
    progress: bool = True,
    make_env: Callable | None = None,
    log: Callable[[str], None] = tqdm.write,
) -> dict:
    """Records scripted grasps as a LeRobotDataset v3.0 folder (``so101_follower``, 50 fps):
    ``observation.state``/``action`` in LeRobot's units, the cameras as ``observation.images.*``
    (AV1 video by default), ``next.reward``/``next.done``/``next.success`` and the episode's
    ``seed``; frames aligned as world_model/datasets/replay_to_lerobot.py says. Appends to a
    folder of the same features, skipping seeds already stored (a crash loses at most the
    episode in progress; re-running resumes)."""
    import gymnasium

    import sim.envs  # noqa: F401  (registers kiwi/Grasp-v0)
    from sim.kiwi_grasp import CONTROL_HZ
    from sim.scripted import ScriptedGrasp
    from world_model.datasets import DatasetError, LeRobotReader, LeRobotWriter
    from world_model.datasets.replay_to_lerobot import (
        GRASP_TASK,
        lerobot_frames,
        replay_features,
    )

    out = Path(out)
    features = replay_features(
        {"state": 6},
        {c: (image_size, image_size) for c in cameras},
        6,
        camera_dtype=camera_dtype,
        seed=True,
    )
    stored: set[int] = set()
    if (out / "meta" / "info.json").is_file():
        with LeRobotReader(out) as ds:
            have = {k: (f["dtype"], list(f["shape"])) for k, f in ds.features.items()}
            want = {k: (f["dtype"], list(f["shape"])) for k, f in features.items()}
            if any(have.get(k) != v for k, v in want.items()) or ds.fps != CONTROL_HZ:
                raise DatasetError(
                    f"{out} holds a dataset of other features ({sorted(have)}); these would be "
                    f"{sorted(want)} at {CONTROL_HZ} fps: collect into another folder"
                )
            stored = {int(ds.read_episode(i, ["seed"])["seed"][0]) for i in range(ds.num_episodes)}
        writer = LeRobotWriter.resume(out)
    else:
        writer = LeRobotWriter.create(out, CONTROL_HZ, features, "so101_follower")
    todo = [s for s in range(seed, seed + episodes) if s not in stored]
    if len(todo) < episodes:
        log(
            f"{episodes - len(todo)} of these seeds already there, "
            + (f"collecting seeds {format_seeds(todo)}" if todo else "nothing to collect")
        )
    env = (
        make_env()
        if make_env
        else gymnasium.make(sim.ENV_ID, cameras=cameras, image_size=image_size)
    )
    policy = ScriptedGrasp()
    successes, frames = 0, 0
    outcomes = dict.fromkeys(OUTCOMES, 0)
    t0 = time.perf_counter()
    bar = tqdm(todo, desc="collect", unit="episode", disable=not progress, dynamic_ncols=True)
    for i, episode_seed in enumerate(bar):
        episode = record_grasp(env, policy, episode_seed)
        converted = lerobot_frames(episode, ["state"], list(cameras), features)
        writer.add_episode(converted, task or GRASP_TASK)
        successes += bool(converted["next.success"][-1])
        outcomes[classify(episode)] += 1
        frames += len(converted["action"])
        bar.set_postfix_str(f"success {successes / (i + 1):.0%}")
    env.close()
    return {
        "episodes": len(todo),
        "already_there": episodes - len(todo),
        "successes": successes,
        "success_rate": successes / len(todo) if todo else None,
        "steps": frames,
        "wall_s": time.perf_counter() - t0,
        "outcomes": outcomes,
        "seeds": [seed, seed + episodes - 1],
        "out": str(out),
        "format": "lerobot",
        "total_episodes_in_folder": int(writer.info["total_episodes"]),
    }

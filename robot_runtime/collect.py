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
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sim.outcomes import OUTCOMES, PHASES
from world_model.config import ModelSpec
from world_model.errors import KiwiError, ReplayError
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
) -> dict:
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


class CollectError(KiwiError):
    """A collection that cannot go on (a worker died); what was written stays and loads."""


class NpzSink:
    """Episodes as the replay's ``.npz`` files with ``spec.json`` (one file per episode, written
    atomically under a unique name, so workers may write them directly)."""

    def __init__(self, out: Path, cameras: tuple[str, ...], log: Callable[[str], None]):
        from world_model.atomic import remove_stale_temp_files

        self.out = Path(out)
        spec = grasp_spec(cameras)
        check_spec(self.out, spec)
        removed = remove_stale_temp_files(self.out)
        if removed:
            log(f"removed {len(removed)} temporary file(s) left in {self.out} by a killed run")
        stored = stored_seeds(self.out)
        repeated = sorted(s for s, paths in stored.items() if len(paths) > 1)
        if repeated:
            log(
                f"note: {self.out} stores seeds {format_seeds(repeated)} more than once (an "
                "earlier run); training sees those episodes twice"
            )
        self.stored = set(stored)
        save_spec(self.out, spec)

    def add(self, rec) -> int:
        """Stores a ``collect_pool.Recorded`` (unless its worker did) and returns its steps."""
        if rec.episode is not None:
            save_episode(self.out, rec.episode)
        return rec.steps

    def worker_store(self) -> dict:
        """What a worker needs to store episodes itself (collect_pool.py)."""
        return {"format": "npz", "out": str(self.out)}

    def total(self) -> int:
        return len(episode_files(self.out))


class LeRobotSink:
    """Episodes as a LeRobotDataset v3.0 folder (``so101_follower``, 50 fps): ``observation.state``
    and ``action`` in LeRobot's units, the cameras as ``observation.images.*``, ``next.reward``/
    ``next.done``/``next.success`` and the episode's ``seed``; frames aligned as
    world_model/datasets/replay_to_lerobot.py says. One writer: the episodes go in one by one
    (workers may prepare them: ``prepare_episode``)."""

    def __init__(
        self,
        out: Path,
        cameras: tuple[str, ...],
        image_size: int,
        camera_dtype: str = "video",
        task: str | None = None,
    ):
        from sim.kiwi_grasp import CONTROL_HZ
        from world_model.datasets import DatasetError, LeRobotReader, LeRobotWriter
        from world_model.datasets.replay_to_lerobot import GRASP_TASK, replay_features

        self.out, self.cameras = Path(out), list(cameras)
        self.task = task or GRASP_TASK
        self.features = replay_features(
            {"state": 6},
            {c: (image_size, image_size) for c in cameras},
            6,
            camera_dtype=camera_dtype,
            seed=True,
        )
        self.stored: set[int] = set()
        if (self.out / "meta" / "info.json").is_file():
            with LeRobotReader(self.out) as ds:
                have = {k: (f["dtype"], list(f["shape"])) for k, f in ds.features.items()}
                want = {k: (f["dtype"], list(f["shape"])) for k, f in self.features.items()}
                if any(have.get(k) != v for k, v in want.items()) or ds.fps != CONTROL_HZ:
                    raise DatasetError(
                        f"{self.out} holds a dataset of other features ({sorted(have)}); these "
                        f"would be {sorted(want)} at {CONTROL_HZ} fps: collect into another "
                        "folder"
                    )
                self.stored = {
                    int(ds.read_episode(i, ["seed"])["seed"][0]) for i in range(ds.num_episodes)
                }
            self.writer = LeRobotWriter.resume(self.out)
        else:
            self.writer = LeRobotWriter.create(
                self.out, CONTROL_HZ, self.features, "so101_follower"
            )

    def add(self, rec) -> int:
        """Writes a ``collect_pool.Recorded``: its episode, or what a worker prepared (frames
        checked, statistics computed, cameras encoded); returns its frames."""
        from world_model.datasets.replay_to_lerobot import lerobot_frames

        if rec.prepared is not None:
            self.writer.add_prepared(rec.prepared, self.task)
            return rec.prepared.length
        frames = lerobot_frames(rec.episode, ["state"], self.cameras, self.features)
        self.writer.add_episode(frames, self.task)
        return len(frames["action"])

    def worker_store(self) -> dict:
        """What a worker needs to prepare episodes for this writer (collect_pool.py)."""
        return {
            "format": "lerobot",
            "out": str(self.out),
            "features": self.features,
            "cameras": self.cameras,
            "fps": self.writer.fps,
            "encoder": self.writer.encoder,
        }

    def total(self) -> int:
        return int(self.writer.info["total_episodes"])


def make_grasp_env(cameras: tuple[str, ...] = (), image_size: int = 64, **kwargs):
    """The simulated grasp task (a module-level factory: a worker process can be handed it, as
    ``partial(make_grasp_env, ...)``); ``kwargs`` go to ``gymnasium.make``."""
    import gymnasium

    import sim.envs  # noqa: F401  (registers kiwi/Grasp-v0)

    return gymnasium.make(sim.ENV_ID, cameras=cameras, image_size=image_size, **kwargs)


def collect(
    sink: NpzSink | LeRobotSink,
    seeds: range,
    make_env: Callable | None = None,
    workers: int = 1,
    progress: bool = True,
    log: Callable[[str], None] = tqdm.write,
) -> dict:
    """Records scripted grasps with ``seeds`` into ``sink`` and returns a summary. Seeds the sink
    already stores are skipped (re-running after a crash resumes; no seed is stored twice).
    ``workers`` > 1 runs that many simulator processes (collect_pool.py); episodes reach the
    sink in seed order, so the output is the same for any number of workers."""
    from .collect_pool import recorded_episodes

    todo = [s for s in seeds if s not in sink.stored]
    if len(todo) < len(seeds):
        there = len(seeds) - len(todo)
        log(
            f"{there} episode{'s' if there != 1 else ''} already there, "
            + (f"collecting seeds {format_seeds(todo)}" if todo else "nothing to collect")
        )
    successes, steps, done = 0, 0, 0
    outcomes = dict.fromkeys(OUTCOMES, 0)
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    bar = tqdm(
        total=len(todo), desc="collect", unit="episode", disable=not progress, dynamic_ncols=True
    )
    try:
        for rec in recorded_episodes(todo, make_env, workers, sink.worker_store()):
            steps += sink.add(rec)
            successes += rec.success
            outcomes[rec.outcome] += 1
            done += 1
            bar.update(1)
            bar.set_postfix_str(f"success {successes / done:.0%}")
    finally:
        bar.close()
    wall = time.perf_counter() - t0
    cpu = {k: v - cpu0[k] for k, v in cpu_seconds().items()}
    return {
        "episodes": len(todo),
        "already_there": len(seeds) - len(todo),
        "successes": successes,
        "success_rate": successes / len(todo) if todo else None,
        "steps": steps,
        "wall_s": wall,
        "episodes_per_s": len(todo) / wall if todo else None,
        "workers": workers,
        # CPU seconds of this process and of the workers (reaped): on a shared machine the
        # wall clock depends on the others; this says what the collection itself costs
        "cpu_s": cpu["self"] + cpu["workers"],
        "cpu_s_parent": cpu["self"],
        "cpu_s_per_episode": (cpu["self"] + cpu["workers"]) / len(todo) if todo else None,
        "outcomes": outcomes,
        "seeds": [seeds.start, seeds.stop - 1],
        "out": str(sink.out),
        **({"format": "lerobot"} if isinstance(sink, LeRobotSink) else {}),
        "total_episodes_in_folder": sink.total(),
    }


def cpu_seconds() -> dict[str, float]:
    """User + system CPU seconds of this process, and of its children that have exited."""
    import resource

    own, children = (
        resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return {"self": own.ru_utime + own.ru_stime, "workers": children.ru_utime + children.ru_stime}


def collect_grasps(
    out: Path,
    episodes: int,
    seed: int,
    cameras: tuple[str, ...] = (),
    image_size: int = 64,
    progress: bool = True,
    make_env: Callable | None = None,
    log: Callable[[str], None] = tqdm.write,
    workers: int = 1,
) -> dict:
    """Scripted grasps with seeds ``seed .. seed + episodes - 1`` as ``.npz`` episodes in
    ``out`` (appended to; a folder of another spec is refused)."""
    sink = NpzSink(Path(out), cameras, log)
    env = make_env or partial(make_grasp_env, cameras, image_size)
    return collect(sink, range(seed, seed + episodes), env, workers, progress, log)


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
    workers: int = 1,
) -> dict:
    """Scripted grasps as a LeRobotDataset v3.0 folder (``LeRobotSink``); appends to a folder of
    the same features, skipping seeds already stored (a crash loses at most the episode in
    progress; re-running resumes)."""
    sink = LeRobotSink(Path(out), cameras, image_size, camera_dtype, task)
    env = make_env or partial(make_grasp_env, cameras, image_size)
    return collect(sink, range(seed, seed + episodes), env, workers, progress, log)

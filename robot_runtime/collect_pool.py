"""Scripted grasp episodes for `kiwi collect`, in this process or in ``--workers N`` simulator
processes (a ``concurrent.futures`` process pool, spawned), yielded in seed order.

Each episode depends on its seed alone (``env.reset(seed=...)`` draws the cube, the perception
noise and everything else), so which process ran it does not matter and the output is the same
for any N. Workers never share a file: ``.npz`` episodes they write into the folder themselves
(unique names, atomic). A LeRobot folder has one writer, the parent; each worker prepares its
episode for it (frames checked, statistics computed, cameras encoded: the costly part,
``prepare_episode``) and leaves it in a private temporary folder as a plain ``.npz`` of arrays
and one mp4 per camera; the parent reads it back (``allow_pickle=False``) and appends it, in
seed order. At most ``2 N`` episodes are under way, so a slow writer does not pile them up.

Ctrl-C: the workers ignore SIGINT; the parent stops handing out seeds, lets the episodes in
progress finish, and re-raises. A worker that dies (killed, out of memory) ends the collection
with ``CollectError`` after the episodes before it are stored; what is stored loads, and the
same command resumes (stored seeds are skipped).
"""

from __future__ import annotations

import signal
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Recorded:
    seed: int
    success: bool
    outcome: str  # sim.outcomes.OUTCOMES
    steps: int
    episode: dict[str, np.ndarray] | None = None  # None: a worker stored or prepared it
    prepared: object | None = None  # world_model.datasets.lerobot_writer.PreparedEpisode


def record_one(env, policy, seed: int) -> Recorded:
    from sim.outcomes import classify

    from .collect import record_grasp

    episode = record_grasp(env, policy, seed)
    return Recorded(
        seed, bool(episode["success"][0]), classify(episode), len(episode["action"]), episode
    )


def recorded_episodes(
    seeds: list[int], make_env: Callable | None, workers: int, store: dict
) -> Iterator[Recorded]:
    """The episodes of ``seeds`` in order (see the module's docstring); ``store``: the sink's
    ``worker_store()``."""
    if make_env is None:
        from .collect import make_grasp_env

        make_env = make_grasp_env
    if not seeds:
        return
    if workers <= 1:
        from sim.scripted import ScriptedGrasp

        env, policy = make_env(), ScriptedGrasp()
        try:
            for seed in seeds:
                yield record_one(env, policy, seed)
        finally:
            env.close()
        return
    yield from _pooled(seeds, make_env, min(workers, len(seeds)), store)


# ---- the pool ---------------------------------------------------------------------------------

_worker: dict = {}  # in a worker process: its env, policy and where episodes go


def _init_worker(make_env: Callable, store: dict, tmp: str) -> None:
    from sim.scripted import ScriptedGrasp

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    _worker.update(env=make_env(), policy=ScriptedGrasp(), store=store, tmp=Path(tmp))


def _work(seed: int) -> tuple:
    """One episode in a worker: stored (npz) or prepared for the parent's writer (LeRobot)."""
    from world_model.datasets.lerobot_writer import prepare_episode
    from world_model.datasets.replay_to_lerobot import lerobot_frames
    from world_model.replay import save_episode

    rec = record_one(_worker["env"], _worker["policy"], seed)
    assert rec.episode is not None
    store, head = _worker["store"], (rec.seed, rec.success, rec.outcome, rec.steps)
    if store["format"] == "npz":
        save_episode(Path(store["out"]), rec.episode)
        return (*head, None)
    frames = lerobot_frames(rec.episode, ["state"], store["cameras"], store["features"])
    tmp = _worker["tmp"]
    prepared = prepare_episode(frames, store["features"], store["fps"], store["encoder"], tmp)
    arrays = {f"column/{k}": v for k, v in prepared.columns.items()}
    for key, stats in prepared.stats.items():
        arrays.update({f"stats/{key}/{name}": v for name, v in stats.items()})
    if any(v.dtype == object for v in arrays.values()):
        raise TypeError("string features cannot travel without pickle")
    path = tmp / f"{seed}.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    videos = {k: str(p) for k, p in prepared.videos.items()}
    return (*head, (str(path), videos, prepared.length))


def _prepared(path: str, videos: dict[str, str], length: int):
    """A worker's ``PreparedEpisode`` read back (plain arrays; the file is removed)."""
    from world_model.datasets.lerobot_writer import PreparedEpisode

    columns: dict[str, np.ndarray] = {}
    stats: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as data:
        for name in data.files:
            kind, rest = name.split("/", 1)
            if kind == "column":
                columns[rest] = data[name]
            else:
                key, stat = rest.rsplit("/", 1)
                stats.setdefault(key, {})[stat] = data[name]
    Path(path).unlink()
    return PreparedEpisode(length, columns, stats, {k: Path(p) for k, p in videos.items()})


def _pooled(seeds: list[int], make_env: Callable, workers: int, store: dict) -> Iterator[Recorded]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from .collect import CollectError

    with tempfile.TemporaryDirectory(prefix="kiwi-collect-") as tmp:
        pool = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(make_env, store, tmp),
        )
        todo = iter(seeds)
        pending: deque = deque()
        try:
            while True:
                try:
                    for seed in todo:  # keep 2 N under way
                        pending.append(pool.submit(_work, seed))
                        if len(pending) >= 2 * workers:
                            break
                    if not pending:
                        return
                    seed, success, outcome, steps, prepared = pending.popleft().result()
                except BrokenProcessPool as e:
                    raise CollectError(
                        "a collection worker died (killed, or out of memory); the episodes "
                        f"stored before it are in {store.get('out', 'the folder')} and load; "
                        "run the same command again to collect the rest"
                    ) from e
                yield Recorded(
                    seed, success, outcome, steps, None, _prepared(*prepared) if prepared else None
                )
        finally:
            for fut in pending:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

"""Scripted grasp episodes for `kiwi collect`, in this process or in ``--workers N`` simulator
processes (a ``concurrent.futures`` process pool, spawned), yielded in seed order.

Each episode depends on its seed alone (``env.reset(seed=...)`` draws the cube, the perception
noise and everything else), so which process ran it does not matter and the output is the same
for any N. Workers never share a file: ``.npz`` episodes they write into the folder themselves
(unique names, atomic); for a LeRobot folder, which has one writer, each worker leaves its
episode in a private temporary folder as a plain ``.npz`` and the parent reads it back (with
``allow_pickle=False``), converts it and writes it, in seed order. At most ``2 N`` episodes are
under way, so a slow writer does not pile episodes up on disk.

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
    episode: dict[str, np.ndarray] | None  # None: a worker stored it already


def record_one(env, policy, seed: int) -> Recorded:
    from sim.outcomes import classify

    from .collect import record_grasp

    episode = record_grasp(env, policy, seed)
    return Recorded(
        seed, bool(episode["success"][0]), classify(episode), len(episode["action"]), episode
    )


def recorded_episodes(
    seeds: list[int], make_env: Callable | None, workers: int, fmt: str, out: Path
) -> Iterator[Recorded]:
    """The episodes of ``seeds`` in order (see the module's docstring)."""
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
    yield from _pooled(seeds, make_env, min(workers, len(seeds)), fmt, Path(out))


# ---- the pool ---------------------------------------------------------------------------------

_worker: dict = {}  # in a worker process: its env, policy and where episodes go


def _init_worker(make_env: Callable, fmt: str, out: str, tmp: str) -> None:
    from sim.scripted import ScriptedGrasp

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    _worker.update(env=make_env(), policy=ScriptedGrasp(), fmt=fmt, out=Path(out), tmp=Path(tmp))


def _work(seed: int) -> tuple[int, bool, str, int, str | None]:
    """One episode in a worker: stored (npz) or left in the temporary folder (LeRobot)."""
    from world_model.replay import save_episode

    rec = record_one(_worker["env"], _worker["policy"], seed)
    assert rec.episode is not None
    if _worker["fmt"] == "npz":
        save_episode(_worker["out"], rec.episode)
        return rec.seed, rec.success, rec.outcome, rec.steps, None
    path = _worker["tmp"] / f"{seed}.npz"
    np.savez(path, **rec.episode)  # type: ignore[arg-type]
    return rec.seed, rec.success, rec.outcome, rec.steps, str(path)


def _load(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        episode = {k: data[k] for k in data.files}
    Path(path).unlink()
    return episode


def _pooled(
    seeds: list[int], make_env: Callable, workers: int, fmt: str, out: Path
) -> Iterator[Recorded]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from .collect import CollectError

    with tempfile.TemporaryDirectory(prefix="kiwi-collect-") as tmp:
        pool = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(make_env, fmt, str(out), tmp),
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
                    seed, success, outcome, steps, path = pending.popleft().result()
                except BrokenProcessPool as e:
                    raise CollectError(
                        "a collection worker died (killed, or out of memory); the episodes "
                        f"stored before it are in {out} and load; run the same command again "
                        "to collect the rest"
                    ) from e
                yield Recorded(seed, success, outcome, steps, _load(path) if path else None)
        finally:
            for fut in pending:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

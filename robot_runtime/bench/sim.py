"""`kiwi bench sim`: control steps per second of kiwi/Grasp-v0 on one core, without rendering and
with one 64x64 camera. The actions are a recorded scripted grasp replayed open loop, so the
physics includes the contacts of a real grasp."""

from __future__ import annotations

import os
import time

import numpy as np

from ..textui import format_table
from .common import machine, verdict, write_json

TARGETS = {"steps_per_s_state": 2000.0, "steps_per_s_camera64": 500.0}


def scripted_actions(seed: int) -> list[np.ndarray]:
    from sim.kiwi_grasp import KiwiGraspEnv
    from sim.scripted import ScriptedGrasp

    env, policy = KiwiGraspEnv(), ScriptedGrasp()
    obs, _ = env.reset(seed=seed)
    actions = []
    while not policy.done:
        actions.append(policy.act(obs))
        obs, *_ = env.step(actions[-1])
    env.close()
    return actions


def steps_per_second(cameras: tuple[str, ...], actions: list[np.ndarray], episodes: int) -> float:
    from sim.kiwi_grasp import KiwiGraspEnv

    env = KiwiGraspEnv(cameras=cameras, image_size=64)
    env.reset(seed=0)
    env.step(actions[0])  # the renderer is made on first use
    steps, t0 = 0, time.perf_counter()
    for ep in range(episodes):
        env.reset(seed=ep)
        for a in actions:
            env.step(a)
        steps += len(actions)
    rate = steps / (time.perf_counter() - t0)
    env.close()
    return rate


def run(args) -> int:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    os.environ.setdefault("LP_NUM_THREADS", "1")  # llvmpipe: render on this core only
    actions = scripted_actions(seed=0)
    episodes = 3 if args.quick else 10
    results = {
        "steps_per_s_state": steps_per_second((), actions, episodes),
        "steps_per_s_camera64": steps_per_second(("wrist",), actions, episodes),
        "steps_per_episode": len(actions),
        "episodes": episodes,
        "cores": 1,
    }
    rows = [("figure", "value", "target", "")]
    for key, target in TARGETS.items():
        rows.append(
            (
                key,
                f"{results[key]:.0f}",
                f">= {target:g}",
                verdict(results[key], target, lower_is_better=False),
            )
        )
    print(format_table(rows))
    write_json(args.json, {**results, "machine": machine()})
    return 0

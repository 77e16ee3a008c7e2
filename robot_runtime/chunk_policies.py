"""Chunk policies for the evaluations: the contract, the scripted stand-in, and the loader.

The contract (what `kiwi eval chunks --policy module:factory` loads): ``factory()`` returns a
callable ``policy(observation) -> np.ndarray [T, 6]``. ``observation`` holds
``"observation.state"`` float32 ``(6,)`` (degrees, gripper 0..100: LeRobot's units),
``"observation.images.wrist"`` and ``"observation.images.front"`` uint8 ``HxWx3``, ``"task"``
(a sentence) and ``"timestamp"`` (seconds since the episode began, the capture time). Row 0 is
the action for the capture time; rows are ``policy.dt`` seconds apart (else 1/50 s). Optional
attributes: ``image_size`` (frames are rendered at this size; else the config's
``slow.image_size``), ``cameras`` (the images it reads; else both), ``reset(seed=None)``
(called before every episode; the seed makes a stochastic policy repeatable).

``scripted`` is the simulator's stand-in for a VLA: it finds the cube in the wrist frame (the
reference perception, with the detector noise of the config) and plans the scripted top-down
grasp (sim/scripted.py) on a clock that starts at its first observation, aimed at the newest
detection until the plan starts to close (then the aim is kept). Every chunk is thus "the rest
of the grasp as seen in this frame": a late chunk reaches for where the cube was.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sim.kinematics import Unreachable
from sim.perception import PerceptionNoise
from sim.scripted import ScriptedGrasp

from .perception import CubePerception

TASK = "pick up the red cube"
DEFAULT_DT = 1.0 / 50


class ScriptedChunkPolicy:
    cameras = ("wrist",)

    def __init__(self, noise: PerceptionNoise | None = None, rows: int = 100, dt: float = 0.02):
        self.noise, self.rows, self.dt = noise or PerceptionNoise(), rows, dt
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        self.perception = CubePerception(self.noise, 0 if seed is None else seed)
        self.plan = ScriptedGrasp(control_hz=1.0 / self.dt)
        self.t_start: float | None = None

    def __call__(self, observation: dict) -> np.ndarray:
        state = np.asarray(observation["observation.state"], np.float32)
        t = float(observation["timestamp"])
        if self.t_start is None:
            self.t_start = t
        p, tm = self.plan, self.plan.timing
        found = self.perception(observation["observation.images.wrist"], state)
        closing_at = tm.settle_s + tm.approach_s + tm.descend_s
        if found is not None and (p.target is None or t - self.t_start < closing_at):
            obs = {"state": state, "object": found}
            if p.target is None:
                p.act(obs)  # the first look: sets the start pose and the aim
            assert p._q_start is not None  # set by the first act
            try:
                aim = p.aim(obs)
                p._q_pre = p._ik(aim[0], tm.pregrasp_height_m, aim[1], p._q_start[4])
                p.target = aim
            except Unreachable:
                pass  # keep the last aim
        if p.target is None:  # nothing seen yet: stay
            return np.repeat(state[None], self.rows, 0)
        rows = []
        for i in range(self.rows):
            p.t = t - self.t_start + i * self.dt
            rows.append(p.act({"state": state}))
        return np.stack(rows).astype(np.float32)


def scripted(noise: PerceptionNoise | None = None) -> ScriptedChunkPolicy:
    return ScriptedChunkPolicy(noise)


def load_policy(spec: str, noise: PerceptionNoise | None = None) -> Callable:
    """``scripted`` or anything `kiwi slow --policy` takes (``module:factory``, ``lerobot:PATH``:
    ``policy_runner.load_policy``) -> the policy callable; ValueError naming what is wrong."""
    if spec == "scripted":
        return scripted(noise)
    from .policy_runner import load_policy as load_slow_policy

    return load_slow_policy(spec)


def check_chunk_rows(rows, joints: int = 6) -> np.ndarray:
    """A policy's answer as ``[T, joints]`` float64; ValueError saying what is wrong."""
    rows = np.asarray(rows)
    if rows.dtype.kind not in "fiu" or rows.ndim != 2 or rows.shape[1] != joints or not len(rows):
        raise ValueError(f"policy returned {rows.dtype} {list(rows.shape)}, not [T, {joints}]")
    rows = rows.astype(np.float64)
    if not np.all(np.isfinite(rows)):
        raise ValueError("policy returned NaN or infinity")
    return rows

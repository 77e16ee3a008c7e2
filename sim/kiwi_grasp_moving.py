"""``kiwi/GraspMoving-v0``: the grasp of ``kiwi/Grasp-v0`` with a cube that slides.

The cube is laid out exactly as in ``kiwi/Grasp-v0`` for the same seed (the same draws come
first), then slides across the table at ``speed_mps`` (drawn per episode, a few cm/s) at right
angles to its bearing from the base, towards the middle of the workspace, so it stays within
reach for the length of a grasp. It is driven like a conveyor (its position moved by
``speed * 20 ms`` before each control step; the physics then settles it) until a finger first
touches it; from then on it is an ordinary free body, so a grasp holds and lifts it as in the
static task. A policy that acts on where the cube *was* (a late action chunk) reaches behind it.

``info`` adds ``cube_vel`` (the drive's velocity in m/s, world x and y; zeros once released).
"""

from __future__ import annotations

import math

import numpy as np

from .kiwi_grasp import CONTROL_HZ, KiwiGraspEnv


class KiwiGraspMovingEnv(KiwiGraspEnv):
    def __init__(self, *args, speed_mps: tuple[float, float] = (0.02, 0.04), **kwargs):
        """``speed_mps``: the range the slide's speed is drawn from (metres per second)."""
        super().__init__(*args, **kwargs)
        self.speed_mps = speed_mps
        self._velocity = np.zeros(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = super().reset(seed=seed, options=options)
        p = self.episode_params
        bearing = math.atan2(p["cube_y"], p["cube_x"])
        tangent = np.array([-math.sin(bearing), math.cos(bearing)])  # counter-clockwise
        towards_middle = -1.0 if bearing > 0 else 1.0
        speed = float(self.np_random.uniform(*self.speed_mps))
        self._velocity = towards_middle * speed * tangent
        self.episode_params = {**p, "cube_speed_mps": speed}
        return obs, {**info, "cube_vel": self._velocity.copy()}

    def step(self, action):
        if self._velocity.any():
            if any(self._finger_contacts()):
                self._velocity = np.zeros(2)  # touched: a free body from now on
            else:
                adr, dof = self._cube_qpos, self._cube_dof
                self.data.qpos[adr : adr + 2] += self._velocity / CONTROL_HZ
                self.data.qvel[dof : dof + 6] = 0.0
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, terminated, truncated, {**info, "cube_vel": self._velocity.copy()}

    def snapshot(self) -> tuple:
        return (super().snapshot(), self._velocity.copy())

    def restore(self, snapshot: tuple) -> None:
        inner, velocity = snapshot
        super().restore(inner)
        self._velocity = velocity.copy()

"""The simulated arm behind the same Arm interface as the real ones (the laptop fallback).

Each ``write_targets`` advances the simulation by one control period (20 ms), so whoever drives
the arm sets the pace: the runtime's loop in real time, or an evaluation in lockstep.
"""

from __future__ import annotations

import numpy as np

from .arm import LEROBOT_JOINTS


class SimArm:
    def __init__(self, env=None, seed: int | None = None, **env_kwargs):
        if env is None:
            from sim.kiwi_grasp import KiwiGraspEnv

            env = KiwiGraspEnv(**env_kwargs)
        self.env = env
        self.seed = seed
        self.joint_names = LEROBOT_JOINTS
        self.last_observation: dict | None = None
        self.last_info: dict | None = None
        self.connected = False

    @property
    def limits(self) -> np.ndarray:
        space = self.env.action_space
        return np.stack([space.low, space.high], 1).astype(float)

    def connect(self) -> None:
        self.last_observation, self.last_info = self.env.reset(seed=self.seed)
        self.connected = True

    def read_joints(self) -> np.ndarray:
        return self.env.unwrapped.joint_state().astype(float)

    def write_targets(self, targets: np.ndarray) -> None:
        targets = np.asarray(targets, dtype=float)
        if targets.shape != (len(self.joint_names),) or not np.all(np.isfinite(targets)):
            raise ValueError(f"targets must be {len(self.joint_names)} finite numbers")
        low, high = self.limits.T
        obs, _, _, _, info = self.env.step(np.clip(targets, low, high).astype(np.float32))
        self.last_observation, self.last_info = obs, info

    def disconnect(self, torque_off: bool = True) -> None:
        """A simulated arm has no torque to drop; it just closes the simulation."""
        if self.connected:
            self.env.close()
            self.connected = False

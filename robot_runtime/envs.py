"""Gymnasium environments as the world model sees them: dict observations."""

from __future__ import annotations

import gymnasium
import numpy as np
from gymnasium import spaces


class DictObservation(gymnasium.ObservationWrapper):
    """Wraps a Box observation as ``{key: float32 vector}``."""

    def __init__(self, env: gymnasium.Env, key: str):
        super().__init__(env)
        box = env.observation_space
        self.key = key
        self.observation_space = spaces.Dict(
            {
                key: spaces.Box(
                    box.low.astype(np.float32), box.high.astype(np.float32), dtype=np.float32
                )
            }
        )

    def observation(self, observation):
        return {self.key: np.asarray(observation, dtype=np.float32)}


def make_env(env_id: str, obs_key: str = "state", **kwargs) -> gymnasium.Env:
    env = gymnasium.make(env_id, **kwargs)
    if not isinstance(env.observation_space, spaces.Dict):
        env = DictObservation(env, obs_key)
    return env

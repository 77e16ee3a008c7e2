"""Registers the simulated arm's environments with gymnasium (importing this module does it)."""

import gymnasium

from . import ENV_ID, MOVING_ENV_ID

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="sim.kiwi_grasp:KiwiGraspEnv", max_episode_steps=300)
if MOVING_ENV_ID not in gymnasium.registry:
    gymnasium.register(
        id=MOVING_ENV_ID,
        entry_point="sim.kiwi_grasp_moving:KiwiGraspMovingEnv",
        max_episode_steps=300,
    )

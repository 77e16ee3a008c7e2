"""Simulated Kiwi arm. Importing this package registers ``kiwi/Grasp-v0`` with gymnasium (the
environment module, and MuJoCo with it, load only when the environment is made)."""

import gymnasium

ENV_ID = "kiwi/Grasp-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="sim.kiwi_grasp:KiwiGraspEnv", max_episode_steps=300)

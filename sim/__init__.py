"""Simulated Kiwi arm. The package itself imports neither gymnasium nor MuJoCo: its pure modules
(``sim.kinematics``: the arm's geometry, joint limits and wrist camera; ``sim.perception``: the
camera frame) serve the real arm's runtime too, which must not load a simulator.
``import sim.envs`` registers ``kiwi/Grasp-v0`` (and ``kiwi/GraspMoving-v0``) with gymnasium, and
``gymnasium.make("sim.envs:kiwi/Grasp-v0")`` does that import itself (MuJoCo loads only when the
environment is made)."""

ENV_ID = "kiwi/Grasp-v0"
MOVING_ENV_ID = "kiwi/GraspMoving-v0"  # the cube slides (sim/kiwi_grasp_moving.py)

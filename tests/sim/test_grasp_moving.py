import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sim
import sim.envs  # noqa: F401  (registers kiwi/GraspMoving-v0)
from sim.kiwi_grasp import KiwiGraspEnv
from sim.kiwi_grasp_moving import KiwiGraspMovingEnv
from sim.perception import EXACT
from sim.scripted import ScriptedGrasp


def test_registered_id_passes_gymnasiums_env_checker():
    env = gymnasium.make(sim.MOVING_ENV_ID)
    assert isinstance(env.unwrapped, KiwiGraspMovingEnv)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_same_layout_as_the_static_task_for_the_same_seed():
    static, moving = KiwiGraspEnv(), KiwiGraspMovingEnv()
    _, info_static = static.reset(seed=11)
    _, info = moving.reset(seed=11)
    assert np.allclose(info["cube_pos"], info_static["cube_pos"])
    static.close()
    moving.close()


def test_the_cube_slides_across_its_bearing_towards_the_middle_at_its_speed():
    moving = KiwiGraspMovingEnv(cube_pose=(0.17, 0.08, 0.0))
    _, info = moving.reset(seed=11)
    start = info["cube_pos"].copy()
    speed = moving.episode_params["cube_speed_mps"]
    assert 0.02 <= speed <= 0.04
    hold = moving.joint_state()  # the arm stays home, far above the cube
    for _ in range(50):  # one second
        _, _, _, _, info = moving.step(hold)
    moved = info["cube_pos"][:2] - start[:2]
    assert np.linalg.norm(moved) == pytest.approx(speed, rel=0.1)
    radial = abs(np.dot(moved, start[:2])) / np.linalg.norm(start[:2])
    assert radial < 0.2 * np.linalg.norm(moved), "across the bearing, not along it"
    before, after = (
        np.arctan2(start[1], start[0]),
        np.arctan2(info["cube_pos"][1], moved[0] + start[0]),
    )
    assert abs(after) < abs(before), "towards the middle of the workspace"
    moving.close()


def test_a_grasp_aimed_where_the_cube_was_misses_it_and_snapshot_restores_the_slide():
    """The scripted grasp with exact perception aims at its first look: on the moving task the
    cube has gone by the time the fingers close."""
    env = KiwiGraspMovingEnv(noise=EXACT)
    obs, _ = env.reset(seed=4)
    saved = env.snapshot()
    policy = ScriptedGrasp()
    while not policy.done:
        obs, _, _, _, info = env.step(policy.act(obs))
    assert not info["is_success"]
    env.restore(saved)
    _, _, _, _, info = env.step(env.joint_state())
    assert np.linalg.norm(info["cube_vel"]) > 0.019, "the slide comes back with the snapshot"
    env.close()

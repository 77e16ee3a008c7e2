import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sim
import sim.envs  # noqa: F401  (registers kiwi/Grasp-v0)
from sim.kiwi_grasp import KiwiGraspEnv
from sim.perception import EXACT, PerceptionNoise
from sim.scripted import ScriptedGrasp


def run_scripted(env, seed):
    policy = ScriptedGrasp()
    obs, info = env.reset(seed=seed)
    while not policy.done:
        obs, reward, terminated, truncated, info = env.step(policy.act(obs))
    return info


def test_registered_id_passes_gymnasiums_env_checker():
    env = gymnasium.make(sim.ENV_ID)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_env_checker_with_cameras():
    env = KiwiGraspEnv(cameras=("front", "wrist"), image_size=32)
    check_env(env, skip_render_check=True)
    env.close()


def test_images_have_the_asked_shape_and_dtype():
    env = KiwiGraspEnv(cameras=("wrist", "front"), image_size=48)
    obs, _ = env.reset(seed=3)
    for cam in ("wrist", "front"):
        assert obs[cam].shape == (48, 48, 3) and obs[cam].dtype == np.uint8
        assert obs[cam].std() > 5, "a real picture, not a blank frame"
    env.close()


def test_same_seed_same_episode():
    def episode(seed):
        env = KiwiGraspEnv()
        policy = ScriptedGrasp()
        obs, info = env.reset(seed=seed)
        trace = [obs["object"].copy()]
        for _ in range(120):
            obs, *_ = env.step(policy.act(obs))
            trace.append(np.concatenate([obs["state"], obs["object"]]))
        return env.episode_params, np.concatenate(trace)

    params_a, trace_a = episode(11)
    params_b, trace_b = episode(11)
    params_c, _ = episode(12)
    assert params_a == params_b and params_a != params_c
    np.testing.assert_array_equal(trace_a, trace_b)


def test_scripted_policy_succeeds_on_an_easy_placement_with_exact_perception():
    env = KiwiGraspEnv(noise=EXACT, cube_pose=(0.19, 0.0, 0.0))
    info = run_scripted(env, seed=0)
    assert info["is_success"] and all(info["finger_contacts"]) and info["lifted_m"] > 0.05


def test_frictionless_contact_drops_the_cube():
    """The same grasp without friction: the fingers close on the cube but cannot lift it."""
    env = KiwiGraspEnv(noise=EXACT, cube_pose=(0.19, 0.0, 0.0), frictionless=True)
    info = run_scripted(env, seed=0)
    assert not info["is_success"] and info["lifted_m"] < 0.02


def test_perception_noise_shrinks_near_the_cube():
    noise = PerceptionNoise()
    far, near = noise.sigmas(0.27), noise.sigmas(0.13)
    assert far[0] == pytest.approx(0.016) and near[0] == pytest.approx(0.003)
    assert far[1] > 20 and near[1] < 5
    env = KiwiGraspEnv()
    env.reset(seed=0)
    errors = [
        np.abs(env._observation()["object"][:3] - env.true_object()[:3]).max() for _ in range(50)
    ]
    assert 0.003 < np.mean(errors) < 0.05  # fresh noise every frame, at the home-pose scale


def test_bad_actions_are_rejected():
    env = KiwiGraspEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="6 finite numbers"):
        env.step(np.full(6, np.nan))
    with pytest.raises(ValueError, match="unknown cameras"):
        KiwiGraspEnv(cameras=("top",))


def test_the_pure_geometry_module_holds_the_envs_joint_limits():
    from sim.kinematics import JOINT_LIMITS_DEG
    from sim.kiwi_grasp import ACTION_HIGH, ACTION_LOW

    assert np.allclose(JOINT_LIMITS_DEG[:, 0], ACTION_LOW, atol=1e-4)
    assert np.allclose(JOINT_LIMITS_DEG[:, 1], ACTION_HIGH, atol=1e-4)

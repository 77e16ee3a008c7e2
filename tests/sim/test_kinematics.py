import math

import mujoco
import numpy as np
import pytest

from sim.kinematics import JOINT_NAMES, LIMITS_RAD, Unreachable, forward, ik_dls, ik_top_down
from sim.kiwi_grasp import KiwiGraspEnv


@pytest.fixture(scope="module")
def arm():
    env = KiwiGraspEnv()
    env.reset(seed=0)
    yield env.model, env.data
    env.close()


def set_joints(model, data, q):
    for name, value in zip(JOINT_NAMES, q):
        data.qpos[model.joint(name).qposadr[0]] = value
    mujoco.mj_forward(model, data)


def test_forward_kinematics_matches_mujoco_sites(arm):
    model, data = arm
    rng = np.random.default_rng(0)
    for _ in range(100):
        q = rng.uniform(LIMITS_RAD[:, 0], LIMITS_RAD[:, 1])
        set_joints(model, data, q)
        pose = forward(q)
        np.testing.assert_allclose(pose.grasp, data.site("grasp").xpos, atol=1e-6)
        np.testing.assert_allclose(pose.camera_pos, data.cam("wrist").xpos, atol=1e-6)
        mj = data.cam("wrist").xmat.reshape(3, 3)
        np.testing.assert_allclose(
            pose.camera_rot, np.stack([mj[:, 0], -mj[:, 1], -mj[:, 2]], 1), atol=1e-6
        )


@pytest.mark.parametrize("radius", [0.15, 0.19, 0.23])
@pytest.mark.parametrize("bearing_deg", [-35.0, 0.0, 35.0])
@pytest.mark.parametrize("height", [0.024, 0.08])
def test_top_down_ik_reaches_the_workspace_in_mujoco(arm, radius, bearing_deg, height):
    model, data = arm
    b = math.radians(bearing_deg)
    target = np.array([radius * math.cos(b), radius * math.sin(b), height])
    yaw = 0.4
    q = ik_top_down(target, yaw)
    set_joints(model, data, q)
    np.testing.assert_allclose(data.site("grasp").xpos, target, atol=1e-6)
    hand = data.body("hand").xmat.reshape(3, 3)
    assert hand[2, 2] < -0.9999  # pointing straight down
    closing = hand[:, 1]
    angle = math.atan2(closing[1], closing[0])
    assert abs(math.sin(angle - yaw)) < 1e-6  # closing axis along yaw (mod 180 degrees)


def test_ik_reports_unreachable_points():
    with pytest.raises(Unreachable, match="out of reach"):
        ik_top_down(np.array([0.6, 0.0, 0.02]), 0.0)


def test_dls_ik_converges_to_a_point():
    q0 = np.array([0.0, 0.2, 0.3, 0.5, 0.0])
    target = forward(np.array([0.3, 0.5, -0.2, 0.5, 0.0])).grasp
    q, residual = ik_dls(target, q0)
    assert residual < 1e-4
    np.testing.assert_allclose(forward(q).grasp, target, atol=1e-4)

"""The observed cube pose keeps its sign: each column is clipped to its own bound."""

import numpy as np

from sim.kiwi_grasp import KiwiGraspEnv
from sim.perception import EXACT


def test_negative_yaw_is_observed_as_it_is():
    env = KiwiGraspEnv(noise=EXACT)
    yaws = []
    for seed in range(12):
        obs, _ = env.reset(seed=seed)
        true = env.true_object()
        np.testing.assert_allclose(obs["object"], true, atol=1e-4)
        yaws.append(true[3])
    env.close()
    assert min(yaws) < -5 and max(yaws) > 5, "the seeds cover both signs of yaw"

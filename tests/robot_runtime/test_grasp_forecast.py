"""The shipped grasp model's forecast, on constructed placements in the simulator: with the cube
centred between the fingers P(success) is high; with the aim a finger's width off along the
closing axis (a finger comes down on the cube) it drops."""

import numpy as np
import pytest
import torch

from robot_runtime.assets import resolve
from robot_runtime.controllers import GraspController, GraspPolicy
from robot_runtime.gate import GraspGate
from robot_runtime.grasp_training import load_grasp_predictor
from robot_runtime.lockstep import Condition, GraspLockstep

from .runtime_helpers import grasp_job


class Stop(Exception):
    pass


def forecast_at_decision(job, wm, predictor, seed: int, offset_m: float) -> float:
    forecasts = []

    class RecordingGate(GraspGate):
        def __call__(self, t, aim, roll_hint=0.0):
            forecasts.append(self.forecast(aim, roll_hint).p_success)
            raise Stop

    gate = RecordingGate(predictor, job.controller, job.runtime.rate_hz)
    controller = GraspController(job.controller, aim="track", aim_offset_m=(offset_m, 0.0))
    run = GraspLockstep(job, wm, Condition("compensated", 8, 10), seed,
                        GraspPolicy(controller, gate))
    with pytest.raises(Stop):
        run.run()
    return forecasts[0]


@pytest.mark.slow
def test_forecast_drops_when_the_aim_is_a_finger_width_off():
    torch.set_num_threads(1)
    job = grasp_job()
    wm, predictor, _, _ = load_grasp_predictor(resolve(job.runtime.checkpoint), samples=32)
    seeds = [200_010, 200_011, 200_012, 200_013]
    centred = [forecast_at_decision(job, wm, predictor, s, 0.0) for s in seeds]
    offset = [forecast_at_decision(job, wm, predictor, s, 0.020) for s in seeds]
    assert np.mean(centred) > np.mean(offset) + 0.25, (centred, offset)
    assert sum(c > o for c, o in zip(centred, offset)) >= 3

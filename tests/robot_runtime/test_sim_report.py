"""`kiwi sim`'s report from recorded telemetry written by hand (FAKE telemetry: the runtime's
"observation" messages are built here the way the runtime publishes them): honest outcomes,
per-attempt totals, and the latent's and the raw perception's errors in the world frame."""

import math

import numpy as np
import pytest

from robot_runtime import jsonout
from robot_runtime.dryrun import RunEnd
from robot_runtime.sim_report import (
    OUTCOMES,
    Estimate,
    Observation,
    Truth,
    attempt_outcome,
    perception_errors,
    summarize,
    world_pose,
)

from .runtime_helpers import grasp_job

JOINTS = np.array([10.0, 20.0, 30.0, 60.0, 15.0, 50.0])
CUBE = np.array([0.01, -0.02, 0.12, 10.0])  # camera frame


@pytest.mark.parametrize(
    "phase, t_end, success, expected",
    [
        ("done", 8.0, True, "success"),
        ("done", 8.0, False, "failure"),
        ("gave_up", 9.0, False, "gave_up"),
        ("lost", 9.0, False, "lost"),
        ("lift", 16.0, False, "timeout"),  # no final phase within episode_s
        ("lift", 16.0, True, "success"),  # a lifted cube is a success, whatever the phase
        ("approach", 3.0, False, "interrupted"),  # cut short by the run
        ("approach", 3.0, True, "interrupted"),
    ],
)
def test_outcomes_are_scored_by_the_truth_and_the_final_phase(phase, t_end, success, expected):
    end = {"t": t_end, "phase": phase}
    assert attempt_outcome(end, 0.0, success, 16.0, "interrupted") == expected
    assert attempt_outcome(None, 0.0, success, 16.0, "aborted") == "aborted"


def test_a_perfect_observation_has_no_error_in_either_frame():
    truth = [Truth(1.0, CUBE, False, 0, JOINTS)]
    obs = [Observation(1.0, CUBE.copy(), JOINTS, "applied")]
    assert np.allclose(perception_errors(obs, truth), 0.0, atol=1e-9)
    world = world_pose(CUBE, JOINTS)
    assert world.shape == (4,) and -45.0 <= world[3] < 45.0
    turned = JOINTS + np.array([0, 0, 0, 0, 30.0, 0])  # the wrist turns: the camera frame moves
    assert not np.allclose(world_pose(CUBE, turned)[:2], world[:2], atol=1e-3)


class FakeRun:
    """What the Recorder keeps, for two attempts (FAKE telemetry written by hand)."""

    def __init__(self):
        loop = {"ticks": 400, "overruns": 0, "jitter_us_p50": 50.0, "jitter_us_p99": 300.0}
        self.events = []
        for seed, t0, t1, phase, applied in ((9000, 0.0, 8.0, "done", 30), (9001, 10.0, 26.0,
                                                                         "lift", 40)):  # fmt: skip
            est = {"applied": applied, "last_age_ms": 150.0}
            self.events += [
                {"t": t0, "event": "attempt_start", "seed": seed},
                {
                    "t": t0 + 4.0,
                    "event": "phase",
                    "phase": "decision",
                    "p_success": 0.9,
                    "verdict": "commit",
                },  # fmt: skip
                {
                    "t": t1,
                    "event": "attempt_end",
                    "seed": seed,
                    "phase": phase,
                    "loop": loop,
                    "estimator": est,
                },  # fmt: skip
            ]
        times = np.arange(0.0, 26.0, 0.02)
        self.truths = [
            Truth(t, CUBE, bool(t > 6.0 and t < 9.0), int(t >= 10), JOINTS) for t in times
        ]
        off = np.array([0.004, 0.0, 0.0, 2.0])  # the latent: 4 mm and 2 deg off
        self.estimates = [Estimate(t, CUBE + off, JOINTS, int(t % 10 > 1)) for t in times[::5]]
        far = CUBE + np.array([0.3, 0.0, 0.0, 40.0])  # the untrained latent, before any observation
        self.estimates += [Estimate(0.5 + 0.001 * i, far, JOINTS, 0) for i in range(300)]
        noise = np.array([0.010, 0.0, 0.0, 6.0])  # raw perception: 10 mm and 6 deg off
        self.observations = [Observation(t, CUBE + noise, JOINTS, "applied") for t in times[::10]]
        self.last, self.world = {"phase": "lift"}, {"rejected": 0}


def test_the_summary_holds_outcomes_totals_and_both_errors():
    summary = summarize(FakeRun(), grasp_job(), 30.0, RunEnd("completed", 30.0))
    assert summary["attempts"] == 2 and summary["successes"] == 1
    assert summary["outcomes"] == {**dict.fromkeys(OUTCOMES, 0), "success": 1, "timeout": 1}
    assert summary["observations_applied"] == 70, "the sum of each attempt's own count"
    assert math.isclose(summary["estimate_error_mm_median"], 4.0, abs_tol=0.05)
    assert math.isclose(summary["perception_error_mm_median"], 10.0, abs_tol=0.05)
    # 300 estimates 40 deg off before the first observation (more than the scored ones) would
    # move the median; 2 deg in the camera frame is 1.8 in the world frame (the camera tilts)
    assert math.isclose(summary["estimate_error_deg_median"], 1.80, abs_tol=0.05), "not scored"
    assert 4.0 < summary["perception_error_deg_median"] < 8.0
    first = summary["per_attempt"][0]
    assert first["outcome"] == "success" and first["seed"] == 9000
    assert first["perception_error_mm_median"] is not None
    assert "NaN" not in jsonout.dumps(summary)

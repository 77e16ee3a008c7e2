import time

import numpy as np
import pytest
import torch

from robot_runtime.estimator import COMPENSATED, STALE, LatentEstimator

from .runtime_helpers import tiny_grasp_model

PERIOD = 0.02


def _inputs(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    actions = [torch.tensor(rng.uniform(-1, 1, (1, 6)), dtype=torch.float32) for _ in range(n)]
    obs = [
        {
            "state": rng.uniform(-50, 50, 6).astype(np.float32),
            "object": np.array([0.01, 0.02, 0.2, rng.uniform(-40, 40)], np.float32),
        }
        for _ in range(n)
    ]
    return actions, obs


def run(wm, actions, obs, deliveries, budget_s=1.0, mode=COMPENSATED, pause_at=None):
    """deliveries: {arrival tick: [capture ticks]}; returns the estimator after all ticks."""
    est = LatentEstimator(wm, PERIOD, budget_s=budget_s, mode=mode)
    est.reset(0.0)
    for k, action in enumerate(actions):
        est.poll()
        for capture in deliveries.get(k, []):
            est.correct(obs[capture], capture * PERIOD)
        if pause_at == k:
            time.sleep(0.05)  # let a background replay finish while ticks are "passing"
        est.predict(action, (k + 1) * PERIOD)
    deadline = time.time() + 2
    while est._job is not None and time.time() < deadline:
        est.poll()
        time.sleep(0.01)
    return est


@pytest.mark.parametrize("budget_s", [1.0, 0.0], ids=["inline", "background"])
def test_replay_equals_a_from_scratch_recomputation(budget_s):
    """Observations captured at ticks 5 and 15 arrive 7 ticks late; the corrected belief must
    equal the belief of an estimator that received them on time."""
    wm = tiny_grasp_model()
    actions, obs = _inputs(30)
    late = run(wm, actions, obs, {12: [5], 22: [15]}, budget_s, pause_at=13)
    on_time = run(wm, actions, obs, {5: [5], 15: [15]})
    assert late.stats.applied == 2
    assert torch.equal(late.state.deter, on_time.state.deter)
    assert torch.equal(late.state.stoch, on_time.state.stoch)
    if budget_s == 0.0:
        assert late.stats.background == 2


def test_without_replay_the_state_differs():
    wm = tiny_grasp_model()
    actions, obs = _inputs(30)
    stale = run(wm, actions, obs, {12: [5], 22: [15]}, mode=STALE)
    on_time = run(wm, actions, obs, {5: [5], 15: [15]})
    assert not torch.equal(stale.state.deter, on_time.state.deter)


def test_stale_out_of_order_future_and_too_old_are_dropped_and_counted():
    wm = tiny_grasp_model()
    actions, obs = _inputs(40)
    est = LatentEstimator(wm, PERIOD, buffer_ticks=16, budget_s=1.0)
    est.reset(0.0)
    for k in range(30):
        est.predict(actions[k], (k + 1) * PERIOD)
    now = 30 * PERIOD
    assert est.correct(obs[3], 3 * PERIOD) == "dropped_too_old"  # older than the ring
    assert est.correct(obs[25], 25 * PERIOD) == "applied"
    assert est.correct(obs[20], 20 * PERIOD) == "dropped_out_of_order"
    assert est.correct(obs[25], 25 * PERIOD) == "dropped_out_of_order"  # the same one again
    assert est.correct(obs[0], now + 1.0) == "dropped_future"
    assert est.stats.dropped == {"too_old": 1, "out_of_order": 2, "future": 1, "superseded": 0}
    assert est.stats.applied == 1 and est.stats.last_replay_ticks == 5
    assert est.stats.last_age_s == pytest.approx(5 * PERIOD)


def test_a_newer_observation_waits_for_a_running_replay_and_keeps_only_the_newest():
    wm = tiny_grasp_model()
    actions, obs = _inputs(40)
    est = LatentEstimator(wm, PERIOD, budget_s=0.0)  # every replay in the background
    est.reset(0.0)
    for k in range(30):
        est.predict(actions[k], (k + 1) * PERIOD)
    assert est.correct(obs[10], 10 * PERIOD) == "scheduled"
    assert est.correct(obs[12], 12 * PERIOD) == "queued"
    assert est.correct(obs[14], 14 * PERIOD) == "queued"  # supersedes 12
    deadline = time.time() + 2
    while est.stats.applied < 2 and time.time() < deadline:
        est.poll()
        time.sleep(0.005)
    assert est.stats.applied == 2 and est.stats.dropped["superseded"] == 1
    assert est.last_observed_index == 14

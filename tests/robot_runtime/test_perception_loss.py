"""Controllers obey the watchdog (issue 9, finding 4) and perception loss is a state (issue 10):
while observations are late or gone no commit happens and the arm searches for the cube
instead of cycling its phases on a stale belief; fresh observations bring a new approach; a
search that finds nothing ends the attempt as ``lost``. The gate never decides on an old
belief. Driven on a stepped clock (ticks of 20 ms, no sleeps)."""

from __future__ import annotations

import numpy as np

from robot_runtime.config import GraspControllerConfig, SafetySection
from robot_runtime.controllers import (
    APPROACH,
    CLOSE,
    DECIDE,
    LOST,
    SEARCH,
    GraspController,
    GraspPolicy,
)
from robot_runtime.gate import PENDING, Decision
from robot_runtime.safety import HOLD, NORMAL, SLOW, Watchdog

DT = 0.02
JOINTS = np.array([0.0, -70.0, 30.0, 90.0, 0.0, 100.0])


class FixedBeliefFake:
    """A fake estimator (named as such): a fixed cube estimate below the home camera; ``observe``
    counts an applied observation. The real estimator is driven by test_service.py and the
    end-to-end runs."""

    def __init__(self):
        class Stats:
            applied = 1
            last_age_s = 0.15

        self.stats = Stats()
        self.state = None  # the belief a gate would forecast from (the fake gates ignore it)

    def observe(self):
        self.stats.applied += 1

    def decode(self):
        return {"object": np.array([0.0, 0.02, 0.22, 10.0])}


class CountingGate:
    """A fake gate (named as such) that always commits, at once; the real one is in
    test_grasp.py."""

    in_flight = False
    threshold = 0.5

    def __init__(self):
        self.calls, self.decisions = 0, []

    def __call__(self, t, aim, roll_hint, belief=None):
        self.calls += 1
        self.decisions.append(Decision(t, 0.9, 0.0, 1.0, "commit"))
        return "commit"

    def discard(self):
        pass


def run(policy, modes, t0=0.0, est=None, observe_every=None):
    """Ticks the policy once per mode; an observation arrives every ``observe_every`` ticks
    while the mode is normal. Returns the phases seen and the targets."""
    est = est or FixedBeliefFake()
    phases, targets = [], []
    for k, mode in enumerate(modes):
        if observe_every and mode == NORMAL and k % observe_every == 0:
            est.observe()
        targets.append(policy.act(t0 + k * DT, k, JOINTS, est, mode))
        phases.append(policy.phase)
    return phases, targets


def test_no_commit_while_blind_the_arm_searches_then_approaches_again():
    gate = CountingGate()
    policy = GraspPolicy(GraspController(GraspControllerConfig(lost_after_s=60)), gate)
    policy.reset(0.0)
    est = FixedBeliefFake()
    phases, _ = run(policy, [NORMAL] * 100, est=est, observe_every=10)
    assert phases[-1] != SEARCH
    phases, targets = run(policy, [SLOW] * 50 + [HOLD] * 300, t0=2.0, est=est)
    assert set(phases) == {SEARCH}, "blind: the only phase is the search"
    assert gate.calls == 0
    assert all(t is not None and np.all(np.isfinite(t)) for t in targets), "it moves to look"
    assert policy.safety_mode(HOLD) == SLOW, "a search moves, slowly, while the watchdog holds"
    # Observations return: a new approach from the belief they made, then decide and commit.
    phases, _ = run(policy, [NORMAL] * 400, t0=9.0, est=est, observe_every=10)
    assert phases[0] == APPROACH and DECIDE in phases and CLOSE in phases and gate.calls == 1
    kinds = [e.kind for e in policy.events]
    assert kinds.count(SEARCH) == 1 and kinds.count(APPROACH) == 2


def test_a_search_that_finds_nothing_ends_the_attempt_as_lost():
    policy = GraspPolicy(GraspController(GraspControllerConfig(lost_after_s=2.0)))
    policy.reset(0.0)
    phases, _ = run(policy, [NORMAL] * 30 + [HOLD] * 150)
    assert phases[-1] == LOST and policy.finished
    lost = [e for e in policy.events if e.kind == LOST][0]
    assert lost.detail["searched_s"] >= 2.0
    search = [e for e in policy.events if e.kind == SEARCH][0]
    assert search.detail["was"] == APPROACH


def test_the_search_goes_back_to_where_the_cube_was_seen_then_looks_down_at_the_aim():
    from sim.kinematics import forward

    c = GraspControllerConfig(lost_after_s=4.0)
    policy = GraspPolicy(GraspController(c))
    policy.reset(0.0)
    run(policy, [NORMAL] * 30)  # the last observation came while the arm was at JOINTS
    _, targets = run(policy, [HOLD] * 190, t0=0.6)
    assert np.allclose(targets[10], np.append(JOINTS[:5], JOINTS[5]))  # back where it saw it
    seen = forward(np.radians(targets[10][:5])).camera_pos[2]
    down = forward(np.radians(targets[100][:5])).camera_pos[2]  # 2 s in: above the aim
    assert seen - down > 0.04, "the second stage looks down from pre-grasp height"
    assert all(t is not None for t in targets)


def test_the_gate_waits_for_a_fresh_belief_before_deciding():
    gate = CountingGate()
    c = GraspControllerConfig()
    policy = GraspPolicy(GraspController(c), gate, max_belief_age_s=0.5)
    policy.reset(0.0)
    est = FixedBeliefFake()
    # Observations every 0.2 s until 2.5 s, then none (the watchdog is kept normal here to
    # isolate the gate's own rule): at DECIDE (about 2.8 s) the belief is too old.
    phases = []
    for k in range(200):
        t = k * DT
        if t < 2.5 and k % 10 == 0:
            est.observe()
        policy.act(t, k, JOINTS, est, NORMAL)
        phases.append(policy.phase)
    assert DECIDE in phases and CLOSE not in phases and gate.calls == 0
    assert any(e.kind == "wait_fresh" for e in policy.events)
    assert policy._decide(200 * DT, policy.controller.aim, 0.0) == PENDING
    est.observe()  # a fresh observation: the gate decides
    policy.act(200 * DT, 200, JOINTS, est, NORMAL)
    policy.act(201 * DT, 201, JOINTS, est, NORMAL)
    assert gate.calls == 1 and policy.phase == CLOSE


def test_a_committed_grasp_finishes_and_is_exempt_from_the_watchdog():
    """Close, lift and hold follow the approved plan and read no belief: the runtime lets them
    finish when observations stop (the cube is often hidden between closing fingers)."""
    policy = GraspPolicy(GraspController(GraspControllerConfig()), CountingGate())
    policy.reset(0.0)
    est = FixedBeliefFake()
    phases = []
    for k in range(600):
        committed = policy.phase in (CLOSE, "lift", "hold")
        mode = HOLD if committed else NORMAL  # observations stop once it has committed
        if not committed and k % 10 == 0:
            est.observe()
        policy.act(k * DT, k, JOINTS, est, mode)
        phases.append(policy.phase)
        if policy.phase in (CLOSE, "lift", "hold"):
            assert policy.safety_mode(HOLD) == NORMAL
        if policy.finished:
            break
    assert phases[-1] == "done" and SEARCH not in phases


def test_the_watchdog_and_the_policy_together_on_a_stepped_clock():
    """Observations every 0.2 s, then none: the watchdog slows at 0.6 s; from that tick on the
    policy searches."""
    watchdog = Watchdog(SafetySection(slow_after_s=0.6, hold_after_s=1.5), 0.0)
    policy = GraspPolicy(GraspController(GraspControllerConfig(lost_after_s=30.0)))
    policy.reset(0.0)
    est, blind_from, phases = FixedBeliefFake(), None, []
    for k in range(400):
        t = k * DT
        if t < 1.0 and k % 10 == 0:
            watchdog.observed(t)
            est.observe()
        mode, _ = watchdog.update(t)
        if mode != NORMAL and blind_from is None:
            blind_from = k
        policy.act(t, k, JOINTS, est, mode)
        phases.append(policy.phase)
    assert blind_from is not None and abs(blind_from * DT - 1.4) < 0.05
    assert set(phases[blind_from:]) == {SEARCH}

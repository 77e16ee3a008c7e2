"""Controllers obey the watchdog (issue 9, finding 4): while observations are late or gone no
phase advances and no commit happens; the attempt resumes where it stopped when they return, or
ends as ``lost``. Driven on a stepped clock (ticks of 20 ms, no sleeps)."""

from __future__ import annotations

import numpy as np

from robot_runtime.config import GraspControllerConfig
from robot_runtime.controllers import CLOSE, DECIDE, LOST, GraspController, GraspPolicy
from robot_runtime.safety import HOLD, NORMAL, SLOW, SafetyConfig, Watchdog

DT = 0.02
JOINTS = np.array([0.0, -70.0, 30.0, 90.0, 0.0, 100.0])


class FixedBeliefFake:
    """A fake estimator (named as such): one applied observation and a fixed cube estimate below
    the home camera. The real estimator is driven by test_service.py and the end-to-end runs."""

    class stats:
        applied = 1

    def decode(self):
        return {"object": np.array([0.0, 0.02, 0.22, 10.0])}


class CountingGate:
    def __init__(self):
        self.calls = 0

    def __call__(self, t, aim, roll_hint):
        self.calls += 1
        return "commit"


def run(policy, modes, t0=0.0):
    """Ticks the policy once per mode in ``modes``; returns the phases seen and the targets."""
    est, phases, targets = FixedBeliefFake(), [], []
    for k, mode in enumerate(modes):
        targets.append(policy.act(t0 + k * DT, k, JOINTS, est, mode))
        phases.append(policy.phase)
    return phases, targets


def test_no_phase_advances_and_no_commit_while_the_watchdog_holds():
    gate = CountingGate()
    policy = GraspPolicy(GraspController(GraspControllerConfig(), gate), lost_after_s=60.0)
    policy.reset(0.0)
    # Normal until DECIDE is near, then 10 s of hold: the approach/look/descend take 2.8 s.
    phases, _ = run(policy, [NORMAL] * 100 + [HOLD] * 500)
    held_phase = phases[99]
    assert set(phases[100:]) == {held_phase}, "the phase moved while the watchdog held"
    assert gate.calls == 0
    assert all(t is None for t in run(policy, [SLOW] * 50, t0=12.0)[1]), "slow: no targets"
    # Observations return: the attempt resumes and goes on to decide and commit.
    phases, _ = run(policy, [NORMAL] * 400, t0=13.0)
    assert DECIDE in phases and CLOSE in phases and gate.calls == 1
    kinds = [e.kind for e in policy.events]
    assert kinds.count("paused") == 1 and kinds.count("resumed") == 1  # hold, then slow: one pause


def test_the_phase_clock_resumes_where_it_stopped():
    """The time spent held is not counted against the phase: after a hold in LOOK the arm looks
    for the rest of settle_s, not for zero seconds."""
    c = GraspControllerConfig()
    policy = GraspPolicy(GraspController(c), lost_after_s=60.0)
    policy.reset(0.0)
    ticks_to_look = int(c.approach_s / DT) + 3
    phases, _ = run(policy, [NORMAL] * ticks_to_look)
    assert phases[-1] == "look"
    entered = policy.controller.t_phase
    run(policy, [HOLD] * 200, t0=ticks_to_look * DT)  # 4 s held
    t = (ticks_to_look + 200) * DT
    phases, _ = run(policy, [NORMAL] * int(c.settle_s / DT - 5), t0=t)
    assert set(phases) == {"look"}
    assert policy.controller.t_phase > entered + 3.9


def test_an_attempt_held_past_lost_after_s_ends_as_lost():
    policy = GraspPolicy(GraspController(GraspControllerConfig()), lost_after_s=2.0)
    policy.reset(0.0)
    phases, _ = run(policy, [NORMAL] * 30 + [HOLD] * 150)
    assert phases[-1] == LOST and policy.finished
    lost = [e for e in policy.events if e.kind == LOST][0]
    assert lost.detail["held_s"] >= 2.0 and lost.detail["was"] == "approach"


def test_the_watchdog_and_the_policy_together_on_a_stepped_clock():
    """Observations every 0.2 s, then none: the watchdog slows at 0.6 s and holds at 1.5 s;
    from the first late tick on, the policy's phase is frozen."""
    watchdog = Watchdog(SafetyConfig(slow_after_s=0.6, hold_after_s=1.5), 0.0)
    policy = GraspPolicy(GraspController(GraspControllerConfig()), lost_after_s=30.0)
    policy.reset(0.0)
    est, frozen_from, phases = FixedBeliefFake(), None, []
    for k in range(400):
        t = k * DT
        if t < 1.0 and k % 10 == 0:
            watchdog.observed(t)
        mode, _ = watchdog.update(t)
        if mode != NORMAL and frozen_from is None:
            frozen_from = k
        policy.act(t, k, JOINTS, est, mode)
        phases.append(policy.phase)
    assert frozen_from is not None and abs(frozen_from * DT - 1.4) < 0.05
    assert set(phases[frozen_from:]) == {phases[frozen_from]}


def test_a_committed_grasp_is_open_loop_and_finishes():
    """Close, lift and hold follow the approved plan and read no belief: the runtime lets them
    finish when observations stop (the cube is often hidden between closing fingers)."""
    policy = GraspPolicy(GraspController(GraspControllerConfig(), CountingGate()))
    policy.reset(0.0)
    est, phases, open_loop = FixedBeliefFake(), [], []
    for k in range(600):
        policy.act(k * DT, k, JOINTS, est, NORMAL)
        phases.append(policy.phase)
        open_loop.append(policy.open_loop)
        if policy.finished:
            break
    assert phases[-1] == "done"
    assert {p for p, o in zip(phases, open_loop) if o} == {CLOSE, "lift", "hold"}
    assert not any(o for p, o in zip(phases, open_loop) if p in ("approach", "look", DECIDE))

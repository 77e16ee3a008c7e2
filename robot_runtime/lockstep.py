"""Lockstep mode: the runtime's estimator, controllers and safety in virtual time, one process.

Observation latency and rate are counted in ticks: an observation captured at tick k (every
``every`` ticks) reaches the estimator at tick k + ``delay``. Modes:

- ``oracle``: an observation every tick, no delay;
- ``stale``: delayed observations applied at their arrival tick as if fresh (no replay);
- ``compensated``: delayed observations applied at their capture tick and the actions since
  replayed (the runtime's way).

Deterministic for a seed, and faster than real time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .estimator import COMPENSATED, STALE, LatentEstimator

ORACLE = "oracle"


@dataclass(frozen=True)
class Condition:
    mode: str  # oracle, stale, compensated
    delay_ticks: int
    every_ticks: int


def estimator_for(wm, period_s: float, condition: Condition, seed: int) -> LatentEstimator:
    mode = STALE if condition.mode == STALE else COMPENSATED
    # Lockstep has no wall clock to protect: replays always run inline.
    return LatentEstimator(wm, period_s, buffer_ticks=512, mode=mode, seed=seed, budget_s=1e9)


class DelayLine:
    """Observations in flight: captured at tick k, delivered at tick k + delay."""

    def __init__(self, condition: Condition):
        self.condition = condition
        self.queue: list[tuple[int, int, dict]] = []  # (arrival tick, capture tick, obs)

    def capture(self, tick: int, obs: dict) -> None:
        c = self.condition
        every = 1 if c.mode == ORACLE else c.every_ticks
        delay = 0 if c.mode == ORACLE else c.delay_ticks
        if tick % every == 0:
            self.queue.append((tick + delay, tick, obs))

    def arrivals(self, tick: int) -> list[tuple[int, dict]]:
        due = [(cap, obs) for arrive, cap, obs in self.queue if arrive <= tick]
        self.queue = [q for q in self.queue if q[0] > tick]
        return due


@torch.no_grad()
def pendulum_episode(env, wm, behavior, condition: Condition, seed: int) -> float:
    """One Pendulum-v1 episode with the Dreamer actor on the latent; returns the return."""
    period = 0.05  # Pendulum-v1's dt
    est = estimator_for(wm, period, condition, seed)
    est.reset(0.0)
    line = DelayLine(condition)
    low, high = float(env.action_space.low[0]), float(env.action_space.high[0])
    obs, _ = env.reset(seed=seed)
    total, tick = 0.0, 0
    while True:
        line.capture(tick, {"state": np.asarray(obs["state"], np.float32)})
        for capture_tick, o in line.arrivals(tick):
            est.correct(o, capture_tick * period)
        action = behavior.policy(est.state, sample=False)  # [1, 1] in [-1, 1]
        env_action = low + (float(action[0, 0]) + 1.0) * 0.5 * (high - low)
        obs, reward, terminated, truncated, _ = env.step(np.array([env_action], np.float32))
        total += float(reward)
        est.predict(action, (tick + 1) * period)
        tick += 1
        if terminated or truncated:
            return total


class GraspLockstep:
    """The simulated grasp with the runtime's pieces in virtual time: the arm (in-process
    MuJoCo), the slow process's perception on rendered wrist frames, the delay line, the
    estimator, the grasp policy (and its gate) and safety. ``step()`` runs one tick."""

    def __init__(
        self, job, wm, condition: Condition, seed: int, policy=None, perception_seed: int = 0
    ):
        from drivers.sim_arm import SimArm
        from sim.perception import PerceptionNoise

        from .control import ControlStep
        from .perception import CubePerception
        from .policies import build_policy
        from .safety import BusHealth

        self.job, self.wm, self.condition = job, wm, condition
        self.period = 1.0 / job.runtime.rate_hz
        s = job.slow
        self.perception = CubePerception(
            PerceptionNoise(s.noise_far_m, s.noise_near_m, s.noise_far_deg, s.noise_near_deg),
            seed=perception_seed + seed,
        )
        self.arm = SimArm(seed=seed)
        self.arm.connect()
        self.env = self.arm.env
        sc, f = job.safety, job.runtime.faults
        self.control = ControlStep(
            wm,
            estimator_for(wm, self.period, condition, seed),
            policy or build_policy(job, "grasp", gated=False).policy,
            self.arm,
            sc,
            BusHealth(f.max_consecutive_failures, f.max_failure_rate, f.window_ticks),
            self.period,
        )
        self.control.start(0.0, self.arm.read_joints())
        self.estimator, self.policy = self.control.estimator, self.control.policy
        self.line = DelayLine(condition)
        self.tick = 0
        self.errors: list[float] = []

    @property
    def command(self) -> np.ndarray:
        return self.control.command

    @torch.no_grad()
    def step(self) -> None:
        """One tick: the slow process's capture (every ``every`` ticks), the arrivals of the
        delay line applied through the control step, then the control step itself."""
        tick, est, c = self.tick, self.estimator, self.condition
        t = tick * self.period
        joints = self.arm.read_joints()
        if c.mode == ORACLE or tick % c.every_ticks == 0:
            image = self.env.render_camera(
                "wrist", self.job.slow.image_size, self.job.slow.image_size
            )
            found = self.perception(image, joints)
            if found is not None:
                self.line.capture(tick, {"state": joints.astype(np.float32), "object": found})
        est.poll()
        for capture_tick, o in self.line.arrivals(tick):
            self.control.observe(o, capture_tick * self.period, t)
        self.control(tick, t)
        if est.stats.applied:
            guess = est.decode()["object"]
            self.errors.append(float(np.linalg.norm(guess[:3] - self.env.true_object()[:3]) * 1e3))
        self.tick += 1

    def run(self, until=None) -> dict:
        """Ticks to the end of the attempt (or until ``until()`` says so); the outcome."""
        max_ticks = int(self.job.sim.episode_s / self.period)
        while self.tick < max_ticks and not self.policy.finished:
            if until is not None and until():
                break
            self.step()
        info = self.arm.last_info or {}
        self.arm.disconnect()
        return {
            "success": bool(info.get("is_success", False)),
            "phase": self.policy.phase,
            "estimate_error_mm": float(np.median(self.errors)) if self.errors else float("nan"),
        }


def grasp_episode(job, wm, condition: Condition, seed: int, perception_seed: int = 0) -> dict:
    """One grasp attempt; returns success, the final phase and the estimate's error against the
    truth (median over the ticks after the first observation)."""
    return GraspLockstep(job, wm, condition, seed, perception_seed=perception_seed).run()

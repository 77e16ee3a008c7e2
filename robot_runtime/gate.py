"""The commit gate: at DECIDE, forecast the grasp with the current belief; commit above the
threshold, otherwise back off (the controller raises the gripper, looks again and re-plans,
within its retry bound). Every decision is kept for telemetry."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from sim.kinematics import reach_top_down

from .config import GraspControllerConfig


def commit_plan(
    xy: np.ndarray,
    yaw: float,
    roll_hint: float,
    c: GraspControllerConfig,
    rate_hz: float,
    horizon: int,
) -> np.ndarray:
    """``[horizon, 6]`` targets (degrees, gripper): hold the grasp pose and close the gripper
    over ``close_s``, then start to lift (what COMMIT does)."""
    close_ticks = max(1, int(round(c.close_s * rate_hz)))
    lift_ticks = max(1, int(round(c.lift_s * rate_hz)))
    rows = []
    for k in range(horizon):
        if k < close_ticks:
            s = (k + 1) / close_ticks
            z, grip = c.grasp_height_m, 100.0 * (1.0 - s * s * (3 - 2 * s))
        else:
            s = min(1.0, (k - close_ticks + 1) / lift_ticks)
            z, grip = (
                c.grasp_height_m + s * s * (3 - 2 * s) * (c.lift_height_m - c.grasp_height_m),
                0.0,
            )
        q = reach_top_down(xy, z, yaw, roll_hint)
        rows.append(np.append(np.degrees(q), grip))
    return np.array(rows, np.float32)


@dataclass
class Decision:
    t: float
    p_success: float
    spread: float
    ms: float
    verdict: str


PENDING = "pending"


@dataclass
class GraspGate:
    """``gate(t, aim, roll_hint)`` -> "commit" or "back_off". With ``background``, the forecast
    (K x H rollouts, ~15 ms here) runs on a worker thread from a copy of the belief, so it does
    not eat the tick it starts in: calls answer "pending" (the controller holds at DECIDE) until
    it is done. Lockstep runs keep it inline, so their results do not depend on timing."""

    predictor: object  # world_model.grasp.GraspPredictor
    config: GraspControllerConfig
    rate_hz: float
    threshold: float = 0.5
    estimator: object = None  # set by the policy before each tick
    decisions: list[Decision] = field(default_factory=list)
    background: bool = False
    _pending: Future | None = field(default=None, repr=False)
    _worker: ThreadPoolExecutor | None = field(default=None, repr=False)

    def forecast(self, aim: tuple[np.ndarray, float], roll_hint: float = 0.0, state=None):
        xy, yaw = aim
        plan = commit_plan(xy, yaw, roll_hint, self.config, self.rate_hz, self.predictor.horizon)
        return self.predictor.forecast(self.estimator.state if state is None else state, plan)

    def __call__(self, t: float, aim: tuple[np.ndarray, float], roll_hint: float = 0.0) -> str:
        if not self.background:
            return self._decide(t, self.forecast(aim, roll_hint))
        if self._pending is None:
            if self._worker is None:
                self._worker = ThreadPoolExecutor(1, thread_name_prefix="grasp-forecast")
            belief = type(self.estimator.state)(*(x.clone() for x in self.estimator.state))
            self._pending = self._worker.submit(self.forecast, aim, roll_hint, belief)
            return PENDING
        if not self._pending.done():
            return PENDING
        future, self._pending = self._pending, None
        return self._decide(t, future.result())  # a failed forecast raises here, in the tick

    def _decide(self, t: float, f) -> str:
        verdict = "commit" if f.p_success >= self.threshold else "back_off"
        self.decisions.append(Decision(t, f.p_success, f.spread, f.ms, verdict))
        return verdict

    @property
    def in_flight(self) -> bool:
        """A forecast of this gate's own is running (its belief was fresh when it started)."""
        return self._pending is not None

    def submit(self, fn, *args) -> Future:
        """Runs ``fn(*args)`` on the gate's worker thread (grasp queries from clients: they wait
        behind the gate's own forecast, never in the tick)."""
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="grasp-forecast")
        return self._worker.submit(fn, *args)

    def discard(self) -> None:
        """Forget a forecast in flight (a new attempt starts): it finishes unread."""
        self._pending = None

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker, self._pending = None, None

"""The commit gate: at DECIDE, forecast the grasp with the current belief; commit above the
threshold, otherwise back off (the controller raises the gripper, looks again and re-plans,
within its retry bound). Every decision is kept for telemetry."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sim.grasp_plan import commit_plan

from .config import GraspControllerConfig


@dataclass
class Decision:
    t: float
    p_success: float
    spread: float
    ms: float
    verdict: str  # "commit" or "back_off"
    aim: tuple | None = None  # (xy, yaw) the plan was made for
    roll_hint: float = 0.0


PENDING = "pending"


def decide(forecast, threshold: float, t: float, aim=None, roll_hint: float = 0.0) -> Decision:
    """The gate's rule, pure: commit when the forecast P(success) reaches the threshold."""
    verdict = "commit" if forecast.p_success >= threshold else "back_off"
    return Decision(t, forecast.p_success, forecast.spread, forecast.ms, verdict, aim, roll_hint)


def copy_belief(state):
    return type(state)(*(x.clone() for x in state))


@dataclass
class GraspGate:
    """``gate(t, aim, roll_hint, belief)`` -> "commit" or "back_off": the forecast of the commit
    plan from ``belief`` against the threshold (``decide``). With ``background``, the forecast
    (K x H rollouts, ~15 ms here) runs on a worker thread from a copy of the belief, so it does
    not eat the tick it starts in: calls answer "pending" (the controller holds at DECIDE) until
    it is done. Lockstep runs keep it inline, so their results do not depend on timing. Each
    decision is kept in ``decisions`` and passed to every ``on_decision(decision, belief)``
    callback (evaluations observe the gate this way)."""

    predictor: Any  # world_model.grasp.GraspPredictor
    config: GraspControllerConfig
    rate_hz: float
    threshold: float = 0.5
    decisions: list[Decision] = field(default_factory=list)
    background: bool = False
    on_decision: list = field(default_factory=list)
    _pending: tuple | None = field(default=None, repr=False)  # (future, belief copy)
    _worker: ThreadPoolExecutor | None = field(default=None, repr=False)

    def plan(self, aim: tuple[np.ndarray, float], roll_hint: float = 0.0) -> np.ndarray:
        xy, yaw = aim
        return commit_plan(xy, yaw, roll_hint, self.config, self.rate_hz, self.predictor.horizon)

    def forecast(self, aim: tuple[np.ndarray, float], roll_hint: float, state):
        return self.predictor.forecast(state, self.plan(aim, roll_hint))

    def __call__(self, t: float, aim: tuple[np.ndarray, float], roll_hint: float, belief) -> str:
        if not self.background:
            return self._decide(t, self.forecast(aim, roll_hint, belief), aim, roll_hint, belief)
        if self._pending is None:
            copy = copy_belief(belief)
            self._pending = (self.submit(self.forecast, aim, roll_hint, copy), copy)
            return PENDING
        future, copy = self._pending
        if not future.done():
            return PENDING
        self._pending = None
        # a failed forecast raises here, in the tick
        return self._decide(t, future.result(), aim, roll_hint, copy)

    def _decide(self, t: float, forecast, aim, roll_hint: float, belief) -> str:
        d = decide(forecast, self.threshold, t, aim, roll_hint)
        self.decisions.append(d)
        for callback in self.on_decision:
            callback(d, belief)
        return d.verdict

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

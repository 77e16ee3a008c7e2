"""One control step: read -> estimate -> policy -> safety -> write -> predict.

The realtime runtime (``service.Runtime``), the lockstep evaluations (``lockstep``) and
`kiwi bench loop` all call this step, so what is evaluated and benchmarked is what runs on the
robot. It holds the belief (``LatentEstimator``), the watchdog, the safety settings, the policy
and the arm; sockets, clocks, queries and telemetry belong to its callers, which pass the time
in. A failed bus cycle holds the last good joints and is counted in ``BusHealth``; past its
bounds ``fault`` says why the arm must stop, and the caller stops the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from drivers.errors import BusError

from .estimator import LatentEstimator
from .messages import Chunk
from .safety import BusHealth, SafetyConfig, Watchdog, safe_targets


class Policy(Protocol):
    """What the fast loop runs: joint targets from the belief, tick by tick."""

    @property
    def phase(self) -> str:
        """For people: what it is doing now."""
        ...

    @property
    def events(self) -> list:
        """GraspEvent-like records (phase changes, decisions), appended as they happen."""
        ...

    @property
    def finished(self) -> bool: ...

    def reset(self, t: float) -> None: ...

    def on_chunk(self, chunk: Chunk, t: float) -> None: ...

    def act(
        self, t: float, tick: int, joints: np.ndarray, estimator: LatentEstimator, mode: str
    ) -> np.ndarray | None:
        """Targets (degrees, gripper 0..100) or None to hold; ``mode`` is the watchdog's."""
        ...

    def safety_mode(self, mode: str) -> str:
        """The watchdog's mode as safety should apply it to what this policy does now."""
        ...


class ArmLike(Protocol):
    joint_names: tuple[str, ...]

    @property
    def limits(self) -> np.ndarray: ...

    def read_joints(self) -> np.ndarray: ...

    def write_targets(self, targets: np.ndarray) -> None: ...


@dataclass(frozen=True)
class StepResult:
    joints: np.ndarray  # what the step acted on (the last good reading if this one failed)
    mode: str  # the watchdog's
    mode_changed_from: str | None  # the watchdog's previous mode, when it just changed
    command: np.ndarray  # what went to the motors


class ControlStep:
    def __init__(
        self,
        wm,
        estimator: LatentEstimator,
        policy: Policy,
        arm: ArmLike,
        safety: SafetyConfig,
        health: BusHealth,
        period_s: float,
    ):
        self.wm, self.estimator, self.policy, self.arm = wm, estimator, policy, arm
        self.safety, self.health, self.period = safety, health, period_s
        # start() begins an attempt; until then the arm holds the (unknown) zero pose
        self.watchdog = Watchdog(safety, 0.0)
        self.joints = np.zeros(len(arm.joint_names))
        self.command = self.joints.copy()
        self.fault: str | None = None

    def start(self, t: float, joints: np.ndarray) -> None:
        """A new attempt at ``t``: a clean belief, watchdog and policy; the arm holds where it
        is."""
        self.estimator.reset(t)
        self.watchdog = Watchdog(self.safety, t)
        self.joints = np.asarray(joints, float).copy()
        self.command = self.joints.copy()
        use_limits = getattr(self.policy, "use_arm_limits", None)
        if use_limits is not None:  # the chunk modes refuse rows past this arm's own limits
            use_limits(self.arm.limits)
        self.policy.reset(t)

    # --- what the slow process sends (already checked by messages.py) -----------------------
    def observe(self, obs: dict[str, np.ndarray], t_capture: float, t: float) -> str:
        result = self.estimator.correct(obs, t_capture)
        if not result.startswith("dropped"):
            self.watchdog.observed(t)
        return result

    def chunk(self, chunk: Chunk, t: float) -> None:
        self.policy.on_chunk(chunk, t)
        self.watchdog.observed(t)

    # --- the step ---------------------------------------------------------------------------
    def __call__(self, k: int, t: float) -> StepResult:
        joints = self.read_joints()
        mode, changed = self.watchdog.update(t)
        targets = self.policy.act(t, k, joints, self.estimator, mode)
        if targets is None:  # nothing to do yet: hold
            targets = self.command
        command = safe_targets(
            np.asarray(targets, float),
            self.command,
            self.arm.limits,
            self.policy.safety_mode(mode),
            self.safety,
        )
        self.write_targets(command)
        self.command = command
        action = self.wm.normalize_action(torch.as_tensor(command, dtype=torch.float32)[None])
        self.estimator.predict(action, t + self.period)
        return StepResult(joints, mode, changed, command)

    def read_joints(self) -> np.ndarray:
        """The arm's joints, or the last good reading when this cycle's read failed."""
        try:
            joints = np.asarray(self.arm.read_joints(), float)
            if joints.shape != self.joints.shape or not np.all(np.isfinite(joints)):
                raise BusError(f"joint reading {joints!r} is not {len(self.joints)} numbers")
        except BusError as e:
            self._bus_cycle(False, f"read: {e}")
            return self.joints
        self._bus_cycle(True)
        self.joints = joints
        return joints

    def write_targets(self, targets: np.ndarray) -> None:
        try:
            self.arm.write_targets(targets)
        except BusError as e:
            self._bus_cycle(False, f"write: {e}")
            return
        self._bus_cycle(True)

    def _bus_cycle(self, ok: bool, error: str = "") -> None:
        reason = self.health.record(ok, error[:300])
        if reason is not None and self.fault is None:
            self.fault = f"servo bus: {reason}"

"""The top-down grasp's motion, one definition for everything that plans it: the scripted grasp
(sim/scripted.py), the runtime's grasp controller (robot_runtime/controllers.py) and the commit
plan the success predictor rolls forward (robot_runtime/gate.py). Pure numpy."""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from .kinematics import reach_top_down


def smoothstep(s: float) -> float:
    """0 -> 1 with zero speed at both ends (``s`` clipped to [0, 1])."""
    s = min(max(s, 0.0), 1.0)
    return s * s * (3.0 - 2.0 * s)


def wrap_quarter_rad(angle: float) -> float:
    """A cube looks the same every 90 degrees: an angle difference mapped to [-pi/4, pi/4)."""
    return (angle + math.pi / 4) % (math.pi / 2) - math.pi / 4


class CommitTiming(Protocol):
    """The controller config's part a commit plan reads (seconds and metres)."""

    @property
    def close_s(self) -> float: ...

    @property
    def lift_s(self) -> float: ...

    @property
    def grasp_height_m(self) -> float: ...

    @property
    def lift_height_m(self) -> float: ...


def commit_plan(
    xy: np.ndarray,
    yaw: float,
    roll_hint: float,
    c: CommitTiming,
    rate_hz: float,
    horizon: int,
) -> np.ndarray:
    """``[horizon, 6]`` targets (degrees, gripper): hold the grasp pose and close the gripper
    over ``close_s``, then start to lift (what COMMIT does), one row per control tick."""
    close_ticks = max(1, int(round(c.close_s * rate_hz)))
    lift_ticks = max(1, int(round(c.lift_s * rate_hz)))
    rows = []
    for k in range(horizon):
        if k < close_ticks:
            z, grip = c.grasp_height_m, 100.0 * (1.0 - smoothstep((k + 1) / close_ticks))
        else:
            s = smoothstep((k - close_ticks + 1) / lift_ticks)
            z, grip = c.grasp_height_m + s * (c.lift_height_m - c.grasp_height_m), 0.0
        q = reach_top_down(xy, z, yaw, roll_hint)
        rows.append(np.append(np.degrees(q), grip))
    return np.array(rows, np.float32)

"""A scripted top-down grasp: approach above the cube, descend, close, lift, hold.

It aims from one early, far look at the cube (the first frame's ``object`` estimate, ~16 mm
noise at the default settings), like a policy that commits to its first detection; that is why it
fails about half the time, and always for a physical reason (a finger lands on the cube, the cube
spins out, slips or is missed). It reads only the observation (joint state and the detection),
never the simulator, so it also runs on the real arm or inside the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .grasp_plan import smoothstep
from .kinematics import forward, reach_top_down
from .perception import camera_to_world

FINGERTIP_BELOW_GRASP_M = 0.020  # finger pads reach this far below the grasp point


@dataclass(frozen=True)
class GraspTiming:
    """Phase durations in seconds and heights of the grasp point in metres."""

    settle_s: float = 0.2
    approach_s: float = 1.2
    descend_s: float = 1.0
    close_s: float = 0.6
    lift_s: float = 1.0
    hold_s: float = 1.2
    pregrasp_height_m: float = 0.08
    lift_height_m: float = 0.09
    table_clearance_m: float = 0.004

    @property
    def grasp_height_m(self) -> float:
        return FINGERTIP_BELOW_GRASP_M + self.table_clearance_m

    @property
    def total_s(self) -> float:
        return (
            self.settle_s
            + self.approach_s
            + self.descend_s
            + self.close_s
            + self.lift_s
            + self.hold_s
        )


class ScriptedGrasp:
    """Call ``reset()`` at the start of an episode, then ``act(obs)`` every control tick (50 Hz);
    ``phase`` names what it is doing."""

    def __init__(self, timing: GraspTiming | None = None, control_hz: float = 50.0):
        self.timing = timing or GraspTiming()
        self.dt = 1.0 / control_hz
        self.reset()

    def reset(self) -> None:
        self.t = 0.0
        self.phase = "settle"
        self.target: tuple[np.ndarray, float] | None = None
        self._q_start: np.ndarray | None = None
        self._q_pre: np.ndarray | None = None

    def aim(self, obs: dict) -> tuple[np.ndarray, float]:
        """World-frame (cube xy, closing-axis yaw) from one detection and the joint state."""
        q = np.radians(obs["state"][:5])
        pose = forward(q)
        pos, yaw = camera_to_world(
            np.asarray(obs["object"], float), pose.camera_pos, pose.camera_rot
        )
        return pos[:2], yaw

    def _ik(self, xy: np.ndarray, z: float, yaw: float, hint: float) -> np.ndarray:
        return reach_top_down(xy, z, yaw, hint)

    def act(self, obs: dict) -> np.ndarray:
        tm = self.timing
        if self.target is None:
            self.target = self.aim(obs)
            self._q_start = np.radians(np.asarray(obs["state"][:5], float))
            xy, yaw = self.target
            self._q_pre = self._ik(xy, tm.pregrasp_height_m, yaw, self._q_start[4])
        xy, yaw = self.target
        hint = self._q_pre[4]
        t = self.t
        self.t += self.dt
        grip = 100.0
        ends = np.cumsum([tm.settle_s, tm.approach_s, tm.descend_s, tm.close_s, tm.lift_s])
        if t < ends[0]:
            self.phase, q = "settle", self._q_start
        elif t < ends[1]:
            s = smoothstep((t - ends[0]) / tm.approach_s)
            self.phase, q = "approach", self._q_start + s * (self._q_pre - self._q_start)
        elif t < ends[2]:
            s = smoothstep((t - ends[1]) / tm.descend_s)
            z = tm.pregrasp_height_m + s * (tm.grasp_height_m - tm.pregrasp_height_m)
            self.phase, q = "descend", self._ik(xy, z, yaw, hint)
        elif t < ends[3]:
            s = smoothstep((t - ends[2]) / tm.close_s)
            self.phase, q = "close", self._ik(xy, tm.grasp_height_m, yaw, hint)
            grip = 100.0 * (1.0 - s)
        elif t < ends[4]:
            s = smoothstep((t - ends[3]) / tm.lift_s)
            z = tm.grasp_height_m + s * (tm.lift_height_m - tm.grasp_height_m)
            self.phase, q, grip = "lift", self._ik(xy, z, yaw, hint), 0.0
        else:
            self.phase, q, grip = "hold", self._ik(xy, tm.lift_height_m, yaw, hint), 0.0
        return np.append(np.degrees(q), grip).astype(np.float32)

    @property
    def done(self) -> bool:
        return self.t >= self.timing.total_s

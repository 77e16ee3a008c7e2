"""Policies on the fast loop. Each takes the tick's inputs and returns joint targets (degrees,
gripper 0..100); none touches a socket or a clock.

- ``GraspController``: the grasp state machine on the latent. It aims at the cube as the world
  model currently believes it is (the decoded ``object`` estimate, moved to the world frame with
  the measured joints), re-aiming as corrections arrive; it looks from pre-grasp height before it
  descends, then closes, lifts and holds. A commit gate (robot_runtime/gate.py) may hold it at
  DECIDE.
- ``ChunkFollower``: the queue of a VLA's action chunks by timestep (overlapping steps blended
  old/new, LeRobot's way, or replaced); ``chunk_modes.ChunkPolicy`` follows it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sim.grasp_plan import smoothstep, wrap_quarter_rad
from sim.kinematics import Unreachable, forward, reach_top_down
from sim.perception import camera_to_world

from .config import GraspControllerConfig
from .gate import PENDING

APPROACH, LOOK, DESCEND, DECIDE, CLOSE, LIFT, HOLD, DONE = (
    "approach",
    "look",
    "descend",
    "decide",
    "close",
    "lift",
    "hold",
    "done",
)
BACK_OFF, GAVE_UP, LOST = "back_off", "gave_up", "lost"
WAIT, SEARCH = "wait", "search"
COMMITTED = (CLOSE, LIFT, HOLD)  # the approved plan, played from the aim fixed at DECIDE


def cube_in_world(object_cam: np.ndarray, joints_deg: np.ndarray) -> tuple[np.ndarray, float]:
    """(cube xy, closing yaw in radians) from a camera-frame estimate and the measured joints."""
    pose = forward(np.radians(np.asarray(joints_deg[:5], float)))
    pos, yaw = camera_to_world(np.asarray(object_cam, float), pose.camera_pos, pose.camera_rot)
    return pos[:2], yaw


@dataclass
class GraspEvent:
    t: float
    kind: str  # phase change or decision
    detail: dict = field(default_factory=dict)


def blend_aim(old, new, gain: float):
    """``gain`` of the way from aim ``old`` to ``new``; yaw the short way round (a cube looks
    the same every 90 degrees)."""
    d_yaw = wrap_quarter_rad(new[1] - old[1])
    return old[0] + gain * (np.asarray(new[0]) - old[0]), old[1] + gain * d_yaw


class GraspController:
    """Call ``reset(t, joints)`` per attempt, then ``act(t, joints, object_estimate)`` per tick.

    The aim (cube position and yaw in the world) is taken from the latent's estimate when the
    attempt starts and kept (``aim="first"``: plan once, like a policy that commits to its first
    detection), or re-taken every tick until the descent (``aim="track"``). At pre-grasp height
    the arm looks for ``settle_s`` (close observations sharpen the latent), descends, and at
    DECIDE asks ``gate(t, aim, roll_hint)`` (optional): "commit" or "back_off". A back-off rises
    to pre-grasp, looks again, re-aims from the latest estimate and descends again, at most
    ``max_retries`` times; then it gives up. Events (phase changes, decisions) accumulate in
    ``events`` for telemetry.
    """

    def __init__(
        self,
        config: GraspControllerConfig,
        gate: Callable | None = None,
        max_retries: int = 2,
        aim: str = "first",
        aim_offset_m: tuple[float, float] = (0.0, 0.0),
    ):
        """``aim_offset_m`` (along the closing axis, across it) shifts every aim: a deliberate
        misalignment, for demonstrations and tests of the forecast."""
        if aim not in ("first", "track"):
            raise ValueError(f"aim must be first or track, got {aim!r}")
        self.config, self.gate, self.max_retries, self.aim_mode = config, gate, max_retries, aim
        self.aim_offset = np.asarray(aim_offset_m, float)
        self._fresh = True
        self.seen_from: np.ndarray | None = None  # SEARCH: joints the cube was seen from
        self.events: list[GraspEvent] = []
        self.phase = DONE

    def reset(self, t: float, joints_deg: np.ndarray) -> None:
        self.phase, self.t_phase = APPROACH, t
        self.start_q = np.radians(np.asarray(joints_deg[:5], float))
        self.retries = 0
        self.aim: tuple[np.ndarray, float] | None = None
        self.roll_hint = float(self.start_q[4])
        self.events.append(GraspEvent(t, APPROACH))

    def _enter(self, phase: str, t: float, **detail) -> None:
        self.phase, self.t_phase = phase, t
        self.events.append(GraspEvent(t, phase, detail))

    def _aim_at(self, object_estimate: np.ndarray, joints_deg: np.ndarray):
        xy, yaw = cube_in_world(object_estimate, joints_deg)
        if self.aim_offset.any():
            along = np.array([np.cos(yaw), np.sin(yaw)])
            across = np.array([-along[1], along[0]])
            xy = xy + self.aim_offset[0] * along + self.aim_offset[1] * across
        return xy, yaw

    def act(
        self, t: float, joints_deg: np.ndarray, object_estimate: np.ndarray, fresh: bool = True
    ) -> np.ndarray:
        """Targets for this tick; an aim no pose can reach holds the arm where it is. ``fresh``:
        an observation corrected the estimate recently; tracking re-aims only then, so the arm
        does not follow the prior's drift after the cube has left the camera's view."""
        self._fresh = fresh
        try:
            return self._act(t, joints_deg, object_estimate)
        except Unreachable as e:
            if not self.events or self.events[-1].kind != "unreachable":
                self.events.append(GraspEvent(t, "unreachable", {"error": str(e)}))
            return np.asarray(joints_deg, float).copy()

    def _act(self, t: float, joints_deg: np.ndarray, object_estimate: np.ndarray) -> np.ndarray:
        c = self.config
        tracking = self.aim_mode == "track" and self.phase in (APPROACH, LOOK) and self._fresh
        if self.aim is None:
            self.aim = self._aim_at(object_estimate, joints_deg)
        elif tracking:
            self.aim = blend_aim(self.aim, self._aim_at(object_estimate, joints_deg), c.track_gain)
        xy, yaw = self.aim
        s = t - self.t_phase
        grip = 100.0
        if self.phase == APPROACH:  # from where the arm was to above the aim
            target = reach_top_down(xy, c.pregrasp_height_m, yaw, self.roll_hint)
            self.roll_hint = float(target[4])
            q = self.start_q + smoothstep(s / c.approach_s) * (target - self.start_q)
            if s >= c.approach_s:
                self._enter(LOOK, t)
        elif self.phase == LOOK:  # hold above the aim while close observations come in
            q = reach_top_down(xy, c.pregrasp_height_m, yaw, self.roll_hint)
            if s >= c.settle_s:
                self._enter(
                    DESCEND, t, aim_xy=[float(v) for v in xy], aim_yaw_deg=math.degrees(yaw)
                )
        elif self.phase == DESCEND:
            z = c.pregrasp_height_m + smoothstep(s / c.descend_s) * (
                c.grasp_height_m - c.pregrasp_height_m
            )
            q = reach_top_down(xy, z, yaw, self.roll_hint)
            if s >= c.descend_s:
                self._enter(DECIDE, t)
        elif self.phase == DECIDE:
            q = reach_top_down(xy, c.grasp_height_m, yaw, self.roll_hint)
            verdict = self.gate(t, self.aim, self.roll_hint) if self.gate else "commit"
            if verdict == PENDING:  # the forecast runs beside the loop: hold here
                pass
            elif verdict == "commit":
                self._enter(CLOSE, t)
            elif self.retries >= self.max_retries:
                self._enter(GAVE_UP, t, retries=self.retries)
            else:
                self.retries += 1
                self._enter(BACK_OFF, t, retry=self.retries)
        elif self.phase == BACK_OFF:  # up to pre-grasp, look, then re-plan from the latest belief
            z = c.grasp_height_m + smoothstep(s / c.descend_s) * (
                c.pregrasp_height_m - c.grasp_height_m
            )
            q = reach_top_down(xy, z, yaw, self.roll_hint)
            if s >= c.descend_s + c.settle_s:
                self.start_q = np.radians(np.asarray(joints_deg[:5], float))
                self.aim = self._aim_at(object_estimate, joints_deg)
                self._enter(APPROACH, t, replanned=True)
        elif self.phase == SEARCH:  # blind: back to where the camera last saw the cube, then
            s_search = t - self.t_phase  # look down from above the aim, then from higher
            grip = self.search_grip
            if self.seen_from is not None and s_search < c.lost_after_s / 3:
                q = self.seen_from
            elif s_search < 2 * c.lost_after_s / 3:
                q = reach_top_down(xy, c.pregrasp_height_m, yaw, self.roll_hint)
            else:  # a wider view, where the arm can reach it; else where it saw the cube
                try:
                    q = reach_top_down(xy, c.search_height_m, yaw, self.roll_hint)
                except Unreachable:
                    if self.seen_from is None:
                        raise
                    q = self.seen_from
        elif self.phase == CLOSE:
            q = reach_top_down(xy, c.grasp_height_m, yaw, self.roll_hint)
            grip = 100.0 * (1.0 - smoothstep(s / c.close_s))
            if s >= c.close_s:
                self._enter(LIFT, t)
        elif self.phase == LIFT:
            z = c.grasp_height_m + smoothstep(s / c.lift_s) * (c.lift_height_m - c.grasp_height_m)
            q, grip = reach_top_down(xy, z, yaw, self.roll_hint), 0.0
            if s >= c.lift_s:
                self._enter(HOLD, t)
        elif self.phase == HOLD:
            q, grip = reach_top_down(xy, c.lift_height_m, yaw, self.roll_hint), 0.0
            if s >= c.hold_s:
                self._enter(DONE, t)
        else:  # DONE or GAVE_UP: stay where the arm is, gripper as it is
            return np.asarray(joints_deg, float).copy()
        return np.append(np.degrees(q), grip)

    def search(
        self, t: float, joints_deg: np.ndarray, seen_from: np.ndarray | None = None, **detail
    ) -> None:
        """Observations stopped: look for the cube, gripper as it is: first from ``seen_from``
        (the joints of the last observation: the camera saw the cube from there), then from
        above where it is believed to be (pre-grasp height, then ``search_height_m``)."""
        self.search_grip = float(joints_deg[5])
        self.seen_from = None if seen_from is None else np.radians(np.asarray(seen_from[:5]))
        self._enter(SEARCH, t, **detail)

    def replan(self, t: float, joints_deg: np.ndarray, object_estimate: np.ndarray) -> None:
        """Fresh observations again: a new approach from where the arm is, aimed at the belief
        they made."""
        self.start_q = np.radians(np.asarray(joints_deg[:5], float))
        try:
            self.aim = self._aim_at(object_estimate, joints_deg)
        except Unreachable:
            pass  # keep the aim it had; the next ticks hold if that is unreachable too
        self._enter(APPROACH, t, replanned=True)

    def lose(self, t: float, **detail) -> None:
        self._enter(LOST, t, **detail)

    @property
    def finished(self) -> bool:
        return self.phase in (DONE, GAVE_UP, LOST)


class ChunkFollower:
    """Action chunks keyed by timestep: ``add(first_step, actions)`` merges a chunk (overlapping
    steps: ``old_weight * old + (1 - old_weight) * new``, LeRobot's weighted_average is 0.3/0.7;
    steps already executed are dropped), ``act(step)`` pops the action of that step (or None
    when the queue has run dry). The queue holds at most ``max_steps`` steps: the farthest
    future ones go first, so no sender can grow it without bound. ``replace``: a new chunk
    replaces every queued step from its first on (the newest wins; chunk_modes' latest and
    latent modes)."""

    def __init__(self, old_weight: float = 0.3, max_steps: int = 1000, replace: bool = False):
        self.old_weight = old_weight
        self.max_steps = max_steps
        self.replace = replace
        self.queue: dict[int, np.ndarray] = {}
        self.last_executed = -1

    def add(self, first_step: int, actions: np.ndarray) -> None:
        if self.replace:
            for step in [s for s in self.queue if s >= first_step]:
                del self.queue[step]
        for i, action in enumerate(np.asarray(actions, float)):
            step = first_step + i
            if step <= self.last_executed:
                continue
            if step in self.queue:
                self.queue[step] = (
                    self.old_weight * self.queue[step] + (1 - self.old_weight) * action
                )
            else:
                self.queue[step] = action
        if len(self.queue) > self.max_steps:
            for step in sorted(self.queue)[self.max_steps :]:
                del self.queue[step]

    def act(self, step: int) -> np.ndarray | None:
        for old in [s for s in self.queue if s < step]:
            del self.queue[old]
        action = self.queue.pop(step, None)
        if action is not None:
            self.last_executed = step
        return action

    def __len__(self) -> int:
        return len(self.queue)


def chunk_on_ticks(
    actions: np.ndarray, t_first: float, dt: float, t0: float, period: float
) -> tuple[int, np.ndarray]:
    """(first tick, ``[n, joints]`` actions on the loop's ticks) for a chunk whose rows are
    ``dt`` apart from ``t_first``; tick k is at ``t0 + k * period``. Rows at another rate are
    linearly interpolated onto the ticks they span."""
    if abs(dt - period) <= 1e-6:
        return int(round((t_first - t0) / period)), actions
    times = t_first + dt * np.arange(len(actions))
    first = int(round((times[0] - t0) / period))
    last = max(first, int(round((times[-1] - t0) / period)))
    ticks = np.arange(first, last + 1)
    resampled = np.stack(
        [np.interp(t0 + ticks * period, times, actions[:, j]) for j in range(actions.shape[1])],
        1,
    )
    return first, resampled


class GraspPolicy:
    """The grasp controller on the runtime: it waits for the first observation (an initial latent
    knows nothing of the cube), then acts on the decoded estimate every tick. With a gate
    (robot_runtime/gate.py), DECIDE forecasts the grasp from the current belief, and each
    decision becomes an event."""

    def __init__(
        self,
        controller: GraspController,
        gate=None,
        fresh_s: float = 0.5,
        max_belief_age_s: float = 0.8,
    ):
        self.controller = controller
        self.gate = gate
        self.fresh_s = fresh_s
        self.max_belief_age_s = max_belief_age_s
        self.estimator: Any = None  # the runtime's LatentEstimator, as of the last act()
        self._applied, self._t_observed = 0, -math.inf
        self._waiting_fresh = False
        self._seen_from: np.ndarray | None = None
        if gate is not None:
            controller.gate = self._decide
        self.waiting = True

    def belief_age(self, t: float) -> float:
        """Seconds since the newest observation in the belief was captured."""
        last_age = self.estimator.stats.last_age_s if self.estimator is not None else 0.0
        return t - self._t_observed + (last_age if math.isfinite(last_age) else 0.0)

    def _decide(self, t: float, aim, roll_hint: float) -> str:
        age = self.belief_age(t)
        if age > self.max_belief_age_s and not self.gate.in_flight:
            if not self._waiting_fresh:  # never decide on an old belief: wait for a fresh one
                self._waiting_fresh = True
                self.controller.events.append(
                    GraspEvent(t, "wait_fresh", {"belief_age_s": round(age, 3)})
                )
            return PENDING
        self._waiting_fresh = False
        verdict = self.gate(t, aim, roll_hint, self.estimator.state)
        if verdict == PENDING:
            return verdict
        d = self.gate.decisions[-1]
        self.controller.events.append(
            GraspEvent(
                t,
                "decision",
                {
                    "p_success": d.p_success,
                    "spread": d.spread,
                    "ms": d.ms,
                    "verdict": verdict,
                    "threshold": self.gate.threshold,
                },
            )
        )
        return verdict

    def reset(self, t: float) -> None:
        """A new attempt: it aims only after an observation captured after ``t`` (the estimator
        is reset at ``t`` too, so its counters start from zero)."""
        if self.gate is not None and hasattr(self.gate, "discard"):
            self.gate.discard()  # a forecast still in flight belongs to the attempt before
        self.waiting = True
        self._applied, self._t_observed = 0, -math.inf
        self._waiting_fresh = False
        self._seen_from = None
        self.controller.phase = WAIT
        self.controller.events.clear()

    def on_chunk(self, chunk, t: float) -> None:
        pass  # the grasp state machine plans its own motion

    def act(
        self, t: float, tick: int, joints: np.ndarray, estimator, mode: str = "normal"
    ) -> np.ndarray | None:
        """Targets for this tick, or None to hold. ``mode`` is the watchdog's. While it is not
        normal (observations are late or gone) the controller searches (SEARCH: back to the joints
        it last saw the cube from, then from above where it believes the cube is) instead of
        acting on a stale belief, and no commit happens; fresh
        observations bring a new approach from the belief they made; a search longer than
        ``lost_after_s`` ends the attempt as ``lost``. A committed grasp finishes regardless."""
        self.estimator = estimator
        if estimator.stats.applied != self._applied:
            self._applied, self._t_observed = estimator.stats.applied, t
            self._seen_from = np.asarray(joints, float).copy()
        c = self.controller
        if self.waiting:
            if estimator.stats.applied == 0:
                return None  # hold
            self.waiting = False
            c.reset(t, joints)
        if c.finished:
            return c.act(t, joints, estimator.decode()["object"], False)
        blind = mode != "normal"
        if c.phase == SEARCH:
            if not blind:
                c.replan(t, joints, estimator.decode()["object"])
            elif t - c.t_phase >= c.config.lost_after_s:
                c.lose(t, searched_s=round(t - c.t_phase, 3))
                return None
        elif blind and c.phase not in COMMITTED:
            if c.phase == DECIDE and self.gate is not None:
                self.gate.discard()  # a forecast from a belief about to go stale
            c.search(t, joints, self._seen_from, was=c.phase, watchdog=mode)
        fresh = t - self._t_observed <= self.fresh_s
        return c.act(t, joints, estimator.decode()["object"], fresh)

    def safety_mode(self, mode: str) -> str:
        """The watchdog's mode as safety applies it: a committed grasp follows the plan the gate
        approved (it reads no belief, so staleness cannot mislead it, and a half-closed gripper
        frozen on the cube is no safer); a search moves, slowly, to where it can see."""
        if mode == "normal":
            return mode
        if self.controller.phase in COMMITTED:
            return "normal"
        if self.controller.phase == SEARCH:
            return "slow"
        return mode

    @property
    def events(self) -> list[GraspEvent]:
        return self.controller.events

    @property
    def phase(self) -> str:
        return self.controller.phase

    @property
    def finished(self) -> bool:
        return self.controller.finished

"""Action chunks on the fast loop, three ways (``runtime.chunk_mode``).

A policy (a VLA, an imitation policy) answers an observation captured at ``t_capture`` with a
chunk of future joint targets, late: rows meant for times already gone are dropped, the rest
are placed on the loop's ticks (``chunk_on_ticks``). The modes differ in how a new chunk takes
over from the one being executed:

- ``latest``: the newest chunk wins from its first row still ahead (aligned by time); where it
  differs from the old one, the arm jumps (the safety step clamps the jump to a step per tick);
- ``blend``: LeRobot's async client: over the overlap, ``old_weight * old + (1 - old_weight) *
  new`` (0.3 / 0.7); still a jump, 70 % of the difference, at the first overlapping tick;
- ``latent``: the chunk is placed on the world model's belief at execution time. It was
  computed from the world at capture; the estimator's belief at the capture tick and its belief
  now (late observations replayed to now) say how far the object moved meanwhile, and the
  chunk's rows are moved by that displacement through the arm's Jacobian (``shift_rows``;
  once the hand closes, the object moves with it, so the shift stops growing). Then its rows
  are joined to what the loop is executing: the offset between the old chunk's row at the
  takeover tick and the new chunk's decays to zero with a smoothstep over ``join_rows`` or
  more (``join_offset``), so position and velocity stay continuous.
  Before the chunk takes over, the prior rolls it forward ``forecast_rows`` from the belief
  now; a chunk whose own rows over that horizon pass a joint limit or jump more than the
  safety step, or whose forecast joints pass a limit, is refused (the old one goes on) and
  counted by reason. The
  placement itself (shift and join) is clipped to the limits: it is ours, not the policy's.

Why anchor on the executing rows and not on the decoded joint state: targets lead the measured
joints by the servos' tracking lag, so re-anchoring rows on the joints would pull the arm back
by that lag at every boundary. The object term is what the world model adds: where the cube is
now against where it was when the policy looked. The shipped grasp model was trained on still
cubes, so its prior does not extrapolate a slide; the displacement comes from the observations
replayed into the belief since the capture (perception runs faster than the policy). The grasp
model's success head scores commit plans at DECIDE, not arbitrary chunks, so no chunk is
refused for a forecast failure yet.

Every mode's targets still pass ``safety.safe_targets`` in the control step.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from sim.grasp_plan import smoothstep
from sim.kinematics import JOINT_LIMITS_DEG, forward

from .config import ChunkExecution
from .controllers import ChunkFollower, GraspEvent, chunk_on_ticks, cube_in_world

LATEST, BLEND, LATENT = "latest", "blend", "latent"
MODES = (LATEST, BLEND, LATENT)


@dataclass
class ChunkStats:
    received: int = 0
    taken: int = 0  # chunks that took over
    refused: dict[str, int] = field(default_factory=dict)  # by reason
    superseded: int = 0  # latent: replaced by a newer chunk before the loop took it
    # ticks at which a chunk took over (for boundary jerk); bounded
    boundaries: deque = field(default_factory=lambda: deque(maxlen=4096))
    last_shift_mm: float = math.nan  # latent: the object shift applied to the last chunk
    last_join_deg: float = math.nan  # latent: the largest joint offset joined away

    def summary(self) -> dict:
        return {
            "received": self.received,
            "taken": self.taken,
            "refused": dict(self.refused),
            "superseded": self.superseded,
            "last_shift_mm": self.last_shift_mm,
            "last_join_deg": self.last_join_deg,
        }


# --- pure placement maths -------------------------------------------------------------------
def join_offset(
    rows: np.ndarray, anchor: np.ndarray, join_rows: int, max_step_deg: float
) -> np.ndarray:
    """``rows`` ``[n, joints]`` moved so the first equals ``anchor``, the offset fading to zero
    with a smoothstep (no jump in position, none in velocity at the end of the join) over
    ``join_rows`` rows, or more where the offset is large: the fade itself moves a joint at
    most half the safety step per row (a smoothstep's steepest slope is 1.5 / rows)."""
    offset = np.asarray(anchor, float) - rows[0]
    largest = float(np.abs(offset[:5]).max()) if len(offset) >= 5 else 0.0
    n = max(join_rows, math.ceil(1.5 * largest / (0.5 * max_step_deg)))
    weight = 1.0 - np.array([smoothstep(k / n) for k in range(len(rows))])
    return rows + weight[:, None] * offset


def grasp_jacobian(q_deg: np.ndarray) -> np.ndarray:
    """``[3, 3]``: the grasp point's motion (metres) per degree of pan, lift and elbow, with
    wrist_flex keeping the hand's pitch and wrist_roll its heading (a top-down hand stays
    top-down and its closing axis keeps its yaw)."""
    q = np.radians(np.asarray(q_deg[:5], float))
    base = forward(q).grasp
    h = math.radians(0.1)
    jac = np.zeros((3, 3))
    for j, dq in enumerate(([h, 0, 0, 0, -h], [0, h, 0, -h, 0], [0, 0, h, -h, 0])):
        jac[:, j] = (forward(q + np.array(dq)).grasp - base) / 0.1
    return jac


def shift_rows(
    rows: np.ndarray,
    shift_xy_m: np.ndarray,
    every: int = 10,
    damping: float = 1e-6,
    iterations: int = 3,
) -> np.ndarray:
    """Rows moved so the grasp point moves ``shift_xy_m`` on the table (height kept): a few
    Gauss-Newton steps of damped least squares on the Jacobian, solved at every ``every``-th
    row (and the last) and interpolated between (the rows of a chunk change smoothly); the
    wrist joints keep the hand's pitch and heading."""
    rows = np.asarray(rows, float)
    delta = np.array([shift_xy_m[0], shift_xy_m[1], 0.0])
    solved = sorted({*range(0, len(rows), every), len(rows) - 1})
    dqs = []
    for k in solved:
        goal = forward(np.radians(rows[k, :5])).grasp + delta
        q = rows[k].copy()
        for _ in range(iterations):
            err = goal - forward(np.radians(q[:5])).grasp
            if np.linalg.norm(err) < 1e-4:
                break
            jac = grasp_jacobian(q)
            dq = jac.T @ np.linalg.solve(jac @ jac.T + damping * np.eye(3), err)
            q[:3] += dq
            q[3] -= dq[1] + dq[2]
            q[4] -= dq[0]
        dqs.append(q - rows[k])
    dqs_arr = np.array(dqs)
    steps = np.arange(len(rows))
    offsets = np.stack([np.interp(steps, solved, dqs_arr[:, j]) for j in range(rows.shape[1])], 1)
    return rows + offsets


def unsafe_rows(
    rows: np.ndarray,
    previous: np.ndarray,
    limits: np.ndarray,
    max_step_deg: float,
    margin_deg: float,
) -> str | None:
    """Why a chunk's rows are unsafe (``limits``: a row past a joint limit by more than
    ``margin_deg``; ``jump``: a step from ``previous`` or between rows beyond the safety
    step), or None."""
    if np.any(rows < limits[:, 0] - margin_deg) or np.any(rows > limits[:, 1] + margin_deg):
        return "limits"
    steps = np.diff(np.vstack([previous[None], rows]), axis=0)
    if np.any(np.abs(steps[:, :5]) > max_step_deg + 1e-9):
        return "jump"
    return None


def unsafe_forecast(joints: np.ndarray, limits: np.ndarray, margin_deg: float) -> str | None:
    """``forecast_limits`` when the prior says the arm would pass a joint limit, else None."""
    arm = limits[:5]
    low, high = arm[:, 0] - margin_deg, arm[:, 1] + margin_deg
    if np.any(joints[:, :5] < low) or np.any(joints[:, :5] > high):
        return "forecast_limits"
    return None


# --- the world model's part -----------------------------------------------------------------
@torch.no_grad()
def object_xy(wm, state) -> np.ndarray:
    """The cube's table position (metres, world x, y) that a belief decodes to."""
    decoded = {k: v[0].numpy() for k, v in wm.decode(state).items()}
    xy, _ = cube_in_world(decoded["object"], decoded["state"])
    return xy


@torch.no_grad()
def forecast_joints(wm, state, rows: np.ndarray, seed: int) -> np.ndarray:
    """``[n, joints]``: the joints the prior predicts after each of ``rows`` (from ``state``,
    the belief at the tick the first row runs)."""
    actions = wm.normalize_action(torch.as_tensor(rows, dtype=torch.float32))
    gen = torch.Generator().manual_seed(seed)
    states = []
    for k in range(len(rows)):
        state = wm.img_step(state, actions[k : k + 1], gen)
        states.append(state)
    batch = type(state)(*(torch.cat(parts) for parts in zip(*states, strict=True)))
    return wm.decode(batch)["state"].numpy()


class ChunkPolicy:
    """Follows a policy's action chunks (``messages.Chunk``, already checked) in one of
    ``MODES``; no action queued: hold. ``limits`` ``[joints, 2]`` (until the control step
    passes the arm's own: ``use_arm_limits``) and ``max_step_deg`` are what safety applies,
    for the latent mode's refusals."""

    def __init__(
        self,
        period_s: float,
        mode: str = BLEND,
        config: ChunkExecution | None = None,
        limits: np.ndarray | None = None,
        max_step_deg: float = 4.0,
        max_steps: int = 1000,
    ):
        if mode not in MODES:
            raise ValueError(f"chunk mode must be one of {MODES}, got {mode!r}")
        self.period, self.mode = period_s, mode
        self.config = config or ChunkExecution()
        self.limits = np.asarray(JOINT_LIMITS_DEG if limits is None else limits, float)
        self.max_step_deg, self.max_steps = max_step_deg, max_steps
        self.events: list[GraspEvent] = []
        self.finished = False
        self.reset(0.0)

    def reset(self, t: float) -> None:
        self.t0 = t
        weight = self.config.old_weight if self.mode == BLEND else 0.0
        self.follower = ChunkFollower(weight, self.max_steps, replace=self.mode != BLEND)
        self.pending = None
        self.last_action: np.ndarray | None = None
        self._object_at_close: tuple[np.ndarray, float] | None = None
        self.stats = ChunkStats()
        self.phase = "waiting"

    def use_arm_limits(self, limits: np.ndarray) -> None:
        """The arm's joint limits ``[joints, 2]`` (the control step passes them at start)."""
        self.limits = np.asarray(limits, float)

    def on_chunk(self, chunk, t: float) -> None:
        self.stats.received += 1
        if self.mode == LATENT:  # placed at the next tick, on the belief of that tick
            if self.pending is not None:
                self.stats.superseded += 1
            self.pending = chunk
            return
        first, actions = chunk_on_ticks(
            chunk.actions, chunk.t_first, chunk.dt, self.t0, self.period
        )
        start = max(first, self.follower.last_executed + 1)
        if first + len(actions) <= start:
            self._refuse("stale")
            return
        self.follower.add(first, actions)
        self._taken(start)

    def safety_mode(self, mode: str) -> str:
        return mode

    def act(
        self, t: float, tick: int, joints: np.ndarray, estimator, mode: str = "normal"
    ) -> np.ndarray | None:
        if self.pending is not None:
            chunk, self.pending = self.pending, None
            self._place(chunk, tick, joints, estimator)
        action = self.follower.act(tick)
        self.phase = "following" if action is not None else "waiting"
        if action is not None:
            self.last_action = action
        return action

    # --- latent ----------------------------------------------------------------------------
    def _place(self, chunk, tick: int, joints: np.ndarray, estimator) -> None:
        c = self.config
        first, rows = chunk_on_ticks(chunk.actions, chunk.t_first, chunk.dt, self.t0, self.period)
        start = max(first, tick)
        if first + len(rows) <= start:
            self._refuse("stale")
            return
        rows = np.asarray(rows[start - first :], float)
        # the chunk as the policy sent it, over the horizon the prior forecasts: past a limit,
        # or jumping on its own, it is refused (a jump further ahead is judged by the chunks
        # that arrive before it runs)
        ahead = rows[: c.forecast_rows]
        reason = unsafe_rows(ahead, ahead[0], self.limits, self.max_step_deg, c.limit_margin_deg)
        t_capture = chunk.t_capture if math.isfinite(chunk.t_capture) else chunk.t_first
        shift = self._object_shift(estimator, t_capture, tick)
        if shift.any():
            rows = shift_rows(rows, shift)
        self.stats.last_shift_mm = float(np.linalg.norm(shift) * 1e3)
        queued = self.follower.queue.get(start)
        previous = self.last_action if self.last_action is not None else np.asarray(joints, float)
        anchor = queued if queued is not None else previous
        self.stats.last_join_deg = float(np.abs(anchor - rows[0])[:5].max())
        # the placement is ours: it starts where the arm is headed, and the shift never takes
        # a row past a limit (safety would clamp it there anyway)
        rows = join_offset(rows, anchor, c.join_rows, self.max_step_deg)
        rows = np.clip(rows, self.limits[:, 0], self.limits[:, 1])
        if reason is None and start == tick:
            ahead = rows[: c.forecast_rows]
            forecast = forecast_joints(estimator.wm, estimator.state, ahead, seed=tick)
            reason = unsafe_forecast(forecast, self.limits, c.forecast_margin_deg)
        if reason is not None:
            self._refuse(reason)
            return
        self.follower.add(start, rows)
        self._taken(start)

    def _object_shift(self, estimator, t_capture: float, tick: int) -> np.ndarray:
        """How far the object moved on the table between the chunk's capture and now, as the
        belief says. Once the hand closes, the belief's object moves with the hand: the object
        is then taken to stay where it was believed to be when the hand began to close, and a
        chunk captured after that is not moved."""
        c = self.config
        if not c.object_shift or not estimator.stats.applied:
            return np.zeros(2)
        then = estimator.state_at(t_capture)
        if then is None:
            return np.zeros(2)
        hand_open = self.last_action is None or self.last_action[5] > c.open_above
        if hand_open:
            now = object_xy(estimator.wm, estimator.state)
            self._object_at_close = (now, tick * self.period + self.t0)
        elif self._object_at_close is None or t_capture >= self._object_at_close[1]:
            return np.zeros(2)
        else:
            now = self._object_at_close[0]
        shift = now - object_xy(estimator.wm, then)
        norm = float(np.linalg.norm(shift))
        return shift * (c.max_shift_m / norm) if norm > c.max_shift_m else shift

    def _taken(self, tick: int) -> None:
        self.stats.taken += 1
        self.stats.boundaries.append(tick)

    def _refuse(self, reason: str) -> None:
        self.stats.refused[reason] = self.stats.refused.get(reason, 0) + 1
